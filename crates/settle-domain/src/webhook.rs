//! Outbound webhooks: endpoints, deliveries, and the rules of retrying.
//!
//! A delivery is one event for one endpoint. It is attempted until the endpoint answers 2xx,
//! with exponential backoff and jitter between attempts ([`retry_delay_seconds`]), for at most
//! [`RETRY_WINDOW_SECONDS`] after the event; then it is dead-lettered. An endpoint that has
//! failed every attempt for that long is disabled (see [`endpoint_after`]).

use std::net::IpAddr;

use crate::Timestamp;

/// How long a delivery is retried, and how long an endpoint may fail before it is disabled: 3 days.
pub const RETRY_WINDOW_SECONDS: i64 = 3 * 24 * 3600;
/// The wait after the first failed attempt; it doubles with each further failure…
pub const RETRY_BASE_SECONDS: i64 = 15;
/// …up to this (6 hours).
pub const RETRY_CAP_SECONDS: i64 = 6 * 3600;
/// How long a rotated-out secret keeps signing (24 hours).
pub const PREVIOUS_SECRET_SECONDS: i64 = 24 * 3600;

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub merchant_id: String,
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    /// Patterns (`*`, `payment.*`, `refund.failed`; see `event::selects`).
    pub enabled_events: Vec<String>,
    pub enabled: bool,
    /// The signing secret, sealed (AES-256-GCM).
    pub secret_sealed: Vec<u8>,
    /// The secret before the last rotation, which also signs until `previous_secret_expires_at`.
    pub previous_secret_sealed: Option<Vec<u8>>,
    pub previous_secret_expires_at: Option<Timestamp>,
    /// Since when every attempt has failed (`None` after a success).
    pub failing_since: Option<Timestamp>,
    pub disabled_reason: Option<String>,
    /// Which API the endpoint was made with, hence how its events look and are signed.
    pub api: Api,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The API an endpoint speaks: Settle's events (`Settle-Signature`), or Stripe-shaped events
/// (`Stripe-Signature`, Stripe's type names) for endpoints made under `/stripe/v1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Settle,
    Stripe,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Settle => "settle",
            Api::Stripe => "stripe",
        }
    }

    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "settle" => Some(Api::Settle),
            "stripe" => Some(Api::Stripe),
            _ => None,
        }
    }
}

impl Endpoint {
    /// The type an event of `kind` goes out as to this endpoint (`None`: it has no
    /// counterpart in the endpoint's API).
    pub fn type_of(&self, kind: &str) -> Option<&'static str> {
        match self.api {
            Api::Settle => crate::event::TYPES.iter().copied().find(|t| *t == kind),
            Api::Stripe => crate::event::stripe_type(kind),
        }
    }

    /// Whether the endpoint wants events of `kind` (a Settle type; a Stripe endpoint selects
    /// by the Stripe type it maps to).
    pub fn wants(&self, kind: &str) -> bool {
        self.enabled
            && self
                .type_of(kind)
                .is_some_and(|t| self.enabled_events.iter().any(|p| crate::event::selects(p, t)))
    }

    /// The sealed secrets that sign at `now`: the current one, and the previous one while it lasts.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&[u8]> {
        let mut secrets = vec![self.secret_sealed.as_slice()];
        if let (Some(previous), Some(until)) = (&self.previous_secret_sealed, self.previous_secret_expires_at) {
            if now < until {
                secrets.push(previous);
            }
        }
        secrets
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    Delivered,
    /// Given up after the retry window (or its endpoint is gone or disabled).
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// One event to deliver to one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub merchant_id: String,
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: i64,
    pub next_attempt_at: Timestamp,
    /// While in the future, one dispatcher owns the delivery (its attempt is in flight).
    pub lease_until: Option<Timestamp>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One HTTP request of a delivery, as the receiver answered it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryAttempt {
    pub merchant_id: String,
    pub id: String,
    pub delivery_id: String,
    pub endpoint_id: String,
    pub event_id: String,
    /// 1 for the first attempt.
    pub attempt: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    /// The first 1 KiB of the response body.
    pub response_body: Option<String>,
    /// Why no 2xx: a transport error (`timeout`, `connect`), or `status` for a non-2xx answer.
    pub error: Option<String>,
    pub created_at: Timestamp,
}

impl DeliveryAttempt {
    pub fn succeeded(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// The wait after `failures` failed attempts (1 for the first): 15 s doubling to at most 6 h,
/// then scaled by a jitter of ±20 % (`jitter_permille` in 0..=1000 maps onto 0.8..=1.2).
pub fn retry_delay_seconds(failures: i64, jitter_permille: u32) -> i64 {
    let doublings = u32::try_from(failures.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let delay = RETRY_BASE_SECONDS
        .saturating_mul(1_i64 << doublings)
        .min(RETRY_CAP_SECONDS);
    let scale = 800 + 400 * i64::from(jitter_permille.min(1000)) / 1000;
    (delay * scale / 1000).max(1)
}

/// The delivery after its attempt `attempt` ended at `now`: delivered, due again after the
/// backoff, or dead when the next attempt would fall outside the retry window.
pub fn after_attempt(delivery: &Delivery, attempt: &DeliveryAttempt, now: Timestamp, jitter_permille: u32) -> Delivery {
    let mut next = delivery.clone();
    next.attempts = attempt.attempt;
    next.lease_until = None;
    next.updated_at = now;
    next.last_status_code = attempt.status_code;
    next.last_error = attempt.error.clone();
    if attempt.succeeded() {
        next.status = DeliveryStatus::Delivered;
        return next;
    }
    let due = now.checked_add_seconds(retry_delay_seconds(attempt.attempt, jitter_permille));
    let window_end = delivery.created_at.checked_add_seconds(RETRY_WINDOW_SECONDS);
    match (due, window_end) {
        (Some(due), Some(end)) if due <= end => {
            next.status = DeliveryStatus::Pending;
            next.next_attempt_at = due;
        }
        _ => next.status = DeliveryStatus::Dead,
    }
    next
}

/// The endpoint after attempts to it ended at `now`; the flag says whether this disabled it.
/// An endpoint is disabled when it has failed every attempt for the whole retry window: either
/// its failures span [`RETRY_WINDOW_SECONDS`], or a delivery created while it was already
/// failing has just been dead-lettered (`died_created_at`: the creation of the oldest delivery
/// that died in this round), with no success since.
pub fn endpoint_after(
    endpoint: &Endpoint,
    succeeded: bool,
    died_created_at: Option<Timestamp>,
    now: Timestamp,
) -> (Endpoint, bool) {
    let mut next = endpoint.clone();
    if succeeded {
        next.failing_since = None;
        return (next, false);
    }
    let since = *next.failing_since.get_or_insert(now);
    let spans_window = since
        .checked_add_seconds(RETRY_WINDOW_SECONDS)
        .is_some_and(|end| now >= end);
    let outlived = died_created_at.is_some_and(|created| since <= created);
    let disable = next.enabled && (spans_window || outlived);
    if disable {
        next.enabled = false;
        next.disabled_reason = Some("failing_for_3_days".into());
        next.updated_at = now;
    }
    (next, disable)
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// site-local, carrier-grade NAT, unspecified, broadcast, multicast, documentation, benchmarking
/// or other special-purpose space (IPv6 addresses that carry an IPv4 address — mapped, NAT64,
/// 6to4 — are judged as that address; IPv4-compatible and local-use NAT64 ones are not public).
/// Outbound calls to addresses a merchant chose (webhook endpoints, connector `base_url`s) may
/// be refused to all the others, so that they cannot reach into the operator's own network.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 192 && b == 88 && v4.octets()[2] == 99)
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_ip(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            let embedded = |hi: u16, lo: u16| std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they embed.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public_ip(IpAddr::V4(embedded(segments[6], segments[7])));
            }
            if segments[0] == 0x2002 {
                return is_public_ip(IpAddr::V4(embedded(segments[1], segments[2])));
            }
            let first = segments[0];
            !(segments[..6] == [0; 6] // ::/96: unspecified, loopback, IPv4-compatible
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                || segments[..3] == [0x64, 0xff9b, 1] // local-use NAT64
                || segments[..4] == [0x100, 0, 0, 0] // discard-only
                || (first == 0x2001 && segments[1] < 0x0200) // Teredo, benchmarking, ORCHID, …
                || (first == 0x2001 && segments[1] == 0x0db8) // documentation
                || (first & 0xfff0) == 0x3ff0) // documentation (3fff::/20)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "198.18.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::7f00:1",
            "::808:808",
            "64:ff9b:1::808:808",
            "fec0::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "3fff::1",
            "192.0.0.8",
            "192.88.99.1",
        ] {
            assert!(!is_public_ip(private.parse().expect("ip")), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public_ip(public.parse().expect("ip")), "{public}");
        }
    }

    fn delivery() -> Delivery {
        Delivery {
            merchant_id: "m".into(),
            id: "wd".into(),
            endpoint_id: "we".into(),
            event_id: "evt".into(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: Timestamp(0),
            lease_until: None,
            last_status_code: None,
            last_error: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    fn attempt(n: i64, code: Option<i64>) -> DeliveryAttempt {
        DeliveryAttempt {
            merchant_id: "m".into(),
            id: format!("wa{n}"),
            delivery_id: "wd".into(),
            endpoint_id: "we".into(),
            event_id: "evt".into(),
            attempt: n,
            status_code: code,
            latency_ms: 1,
            response_body: None,
            error: None,
            created_at: Timestamp(0),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_with_bounded_jitter() {
        assert_eq!(retry_delay_seconds(1, 500), 15);
        assert_eq!(retry_delay_seconds(2, 500), 30);
        assert_eq!(retry_delay_seconds(3, 500), 60);
        assert_eq!(retry_delay_seconds(40, 500), RETRY_CAP_SECONDS);
        assert_eq!(retry_delay_seconds(1, 0), 12);
        assert_eq!(retry_delay_seconds(1, 1000), 18);
        assert_eq!(retry_delay_seconds(i64::MAX, u32::MAX), RETRY_CAP_SECONDS * 12 / 10);
    }

    #[test]
    fn a_failing_delivery_is_retried_for_three_days_then_dead() {
        let mut d = delivery();
        let mut now = Timestamp(0);
        let mut n = 0;
        while d.status == DeliveryStatus::Pending {
            n += 1;
            now = d.next_attempt_at.max(now);
            d = after_attempt(&d, &attempt(n, Some(500)), now, 1000);
            assert!(n < 100);
        }
        assert_eq!(d.status, DeliveryStatus::Dead);
        assert!(now.unix_seconds() <= RETRY_WINDOW_SECONDS);
        assert!(now.unix_seconds() > RETRY_WINDOW_SECONDS - RETRY_CAP_SECONDS * 12 / 10);
        assert!((15..40).contains(&n), "{n} attempts");
    }

    #[test]
    fn a_2xx_delivers() {
        let d = after_attempt(&delivery(), &attempt(3, Some(204)), Timestamp(5), 0);
        assert_eq!(d.status, DeliveryStatus::Delivered);
        assert_eq!(d.attempts, 3);
        let d = after_attempt(&delivery(), &attempt(1, Some(302)), Timestamp(5), 0);
        assert_eq!(d.status, DeliveryStatus::Pending);
    }

    #[test]
    fn an_endpoint_failing_for_three_days_is_disabled_once() {
        let endpoint = Endpoint {
            merchant_id: "m".into(),
            id: "we".into(),
            url: "http://127.0.0.1/".into(),
            description: None,
            enabled_events: vec!["*".into()],
            enabled: true,
            secret_sealed: vec![1],
            previous_secret_sealed: Some(vec![2]),
            previous_secret_expires_at: Some(Timestamp(10)),
            failing_since: None,
            disabled_reason: None,
            api: Api::Settle,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        };
        assert_eq!(endpoint.signing_secrets(Timestamp(9)).len(), 2);
        assert_eq!(endpoint.signing_secrets(Timestamp(10)).len(), 1);
        let (e, off) = endpoint_after(&endpoint, false, None, Timestamp(1_000_000));
        assert!(!off && e.enabled && e.failing_since == Some(Timestamp(1_000_000)));
        let later = Timestamp(1_000_000 + RETRY_WINDOW_SECONDS * 1_000_000);
        let (e2, off) = endpoint_after(&e, false, None, later);
        assert!(off && !e2.enabled);
        let (_, again) = endpoint_after(&e2, false, None, later);
        assert!(!again);
        let (healed, _) = endpoint_after(&endpoint, true, None, later);
        assert_eq!(healed.failing_since, None);
        // A delivery that died having been created while the endpoint was failing disables it;
        // one created before the failures began does not.
        let (_, off) = endpoint_after(&e, false, Some(Timestamp(1_000_000)), Timestamp(2_000_000));
        assert!(off);
        let (_, off) = endpoint_after(&e, false, Some(Timestamp(999_999)), Timestamp(2_000_000));
        assert!(!off);
    }
}
