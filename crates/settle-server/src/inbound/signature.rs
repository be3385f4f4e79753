//! Stripe's webhook signature scheme, which Settle's sandbox uses too (and outbound webhooks
//! may reuse: the scheme is the same with another header name).
//!
//! Header: `Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`,
//! with any number of `v1` entries (a provider rotating its secret signs with both) and other
//! schemes (`v0`) ignored. The key is the whole signing secret as text (`whsec_…`), as Stripe's
//! libraries use it. A signature is accepted when one `v1` matches (compared in constant time)
//! and `t` is within [`TOLERANCE_SECONDS`] of now, before or after.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header, as axum names it (lower case).
pub const HEADER: &str = "stripe-signature";
/// How far the signed time may be from now, either way.
pub const TOLERANCE_SECONDS: i64 = 300;
/// Most `v1` entries read from one header.
pub const SIGNATURES_MAX: usize = 8;
/// Longest header read.
pub const HEADER_LEN_MAX: usize = 2_048;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused. Every one is a 400 and nothing is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    Missing,
    /// Not `t=<integer>,v1=<64 hex digits>[,…]`.
    Malformed,
    /// No `v1` matches the body under the account's secret.
    Mismatch,
    /// `t` is more than the tolerance before or after now.
    OutsideTolerance,
}

impl SignatureError {
    pub fn code(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_invalid",
            SignatureError::OutsideTolerance => "signature_timestamp_outside_tolerance",
        }
    }

    pub fn message(self) -> String {
        match self {
            SignatureError::Missing => "the `Stripe-Signature` header is required".into(),
            SignatureError::Malformed => {
                "the `Stripe-Signature` header must be `t=<unix seconds>,v1=<hex HMAC-SHA256>`".into()
            }
            SignatureError::Mismatch => "no signature matches the body under this endpoint's signing secret".into(),
            SignatureError::OutsideTolerance => {
                format!("the signature's timestamp is more than {TOLERANCE_SECONDS} seconds from now")
            }
        }
    }
}

/// A parsed header: the signed time and the candidate signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub timestamp: i64,
    pub signatures: Vec<[u8; 32]>,
}

/// Parses `t=…,v1=…[,v1=…]`; unknown schemes are skipped, a repeated `t` is malformed.
pub fn parse(header: &str) -> Result<Parsed, SignatureError> {
    if header.len() > HEADER_LEN_MAX {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match key {
            "t" => {
                if timestamp.is_some() || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SignatureError::Malformed);
                }
                timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?);
            }
            "v1" => {
                let mut signature = [0u8; 32];
                hex::decode_to_slice(value, &mut signature).map_err(|_| SignatureError::Malformed)?;
                if signatures.len() == SIGNATURES_MAX {
                    return Err(SignatureError::Malformed);
                }
                signatures.push(signature);
            }
            _ => {}
        }
    }
    match timestamp {
        Some(timestamp) if !signatures.is_empty() => Ok(Parsed { timestamp, signatures }),
        _ => Err(SignatureError::Malformed),
    }
}

/// HMAC-SHA256 of `"<timestamp>.<body>"`. HMAC takes keys of any length, so this is `None`
/// never; a `None` would verify nothing and sign with an empty string.
fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Option<[u8; 32]> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).ok()?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac.finalize().into_bytes().into())
}

/// The `v1` signature of `body` signed at `timestamp`, in hex.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    mac(secret, timestamp, body).map(hex::encode).unwrap_or_default()
}

/// A whole header value: `t=<timestamp>,v1=<signature>`.
pub fn header(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// Verifies a header against the raw body at `now_unix` (seconds).
pub fn verify(header: Option<&str>, secret: &[u8], body: &[u8], now_unix: i64) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let parsed = parse(header)?;
    let expected = mac(secret, parsed.timestamp, body).ok_or(SignatureError::Mismatch)?;
    let matched = parsed
        .signatures
        .iter()
        .fold(subtle::Choice::from(0), |any, candidate| {
            any | candidate.ct_eq(&expected)
        });
    if !bool::from(matched) {
        return Err(SignatureError::Mismatch);
    }
    if now_unix.abs_diff(parsed.timestamp) > TOLERANCE_SECONDS.unsigned_abs() {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;

    #[test]
    fn a_signed_body_verifies_within_the_tolerance() {
        let h = header(SECRET, 1_000_000, BODY);
        assert_eq!(verify(Some(&h), SECRET, BODY, 1_000_000), Ok(()));
        assert_eq!(verify(Some(&h), SECRET, BODY, 1_000_300), Ok(()));
        assert_eq!(verify(Some(&h), SECRET, BODY, 999_700), Ok(()));
        assert_eq!(
            verify(Some(&h), SECRET, BODY, 1_000_301),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            verify(Some(&h), SECRET, BODY, 999_699),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn forged_missing_and_malformed_signatures_are_refused() {
        let h = header(b"whsec_other", 1_000_000, BODY);
        assert_eq!(verify(Some(&h), SECRET, BODY, 1_000_000), Err(SignatureError::Mismatch));
        let h = header(SECRET, 1_000_000, BODY);
        assert_eq!(
            verify(Some(&h), SECRET, b"{}", 1_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(None, SECRET, BODY, 0), Err(SignatureError::Missing));
        for bad in [
            "",
            "t=1",
            "v1=00",
            "t=x,v1=00",
            "t=1,v1=zz",
            "t=1,t=2,v1=0000000000000000000000000000000000000000000000000000000000000000",
            "t=-1,v1=0000000000000000000000000000000000000000000000000000000000000000",
            "garbage",
        ] {
            assert_eq!(parse(bad), Err(SignatureError::Malformed), "{bad}");
        }
    }

    #[test]
    fn any_of_several_v1_signatures_may_match_and_other_schemes_are_skipped() {
        let good = sign(SECRET, 42, BODY);
        let other = sign(b"whsec_old", 42, BODY);
        let h = format!("t=42, v0=abc, v1={other}, v1={good}");
        assert_eq!(verify(Some(&h), SECRET, BODY, 42), Ok(()));
        assert_eq!(parse(&h).map(|p| p.signatures.len()), Ok(2));
    }
}
