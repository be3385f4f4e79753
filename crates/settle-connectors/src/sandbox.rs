//! The built-in sandbox provider: deterministic by card number, no network, no state.
//!
//! | card number        | outcome |
//! |--------------------|---------|
//! | `4000000000000002` | declined, `card_declined` |
//! | `4000000000009995` | declined, `insufficient_funds` |
//! | `4000000000000119` | declined, `processing_error` (retryable: routing tries the next connector) |
//! | `4000000000000036` | the call times out (the provider never saw it: `sync` answers `NotFound`) |
//! | `4000000000000077` | `processing`; `sync` answers `Authorized` once `resolve_after_seconds` have passed |
//! | any other valid card | authorized |
//!
//! Credentials (a JSON object, all optional): `latency_ms` (0–60000, added to every call; a
//! latency beyond the connector timeout answers a timeout once the timeout has passed),
//! `failure` (`"server_error"` or `"timeout"`: every authorization fails that way, to simulate
//! an outage of this connector account), `resolve_after_seconds` (0–86400, default 5).
//!
//! The sandbox keeps no state: the provider reference it returns encodes what `sync` needs, so
//! any `settle` process can sync any sandbox payment, before or after a restart. `sync` with a
//! provider reference answers that reference back; without one it answers `NotFound` (a lost
//! authorization answer means, in the sandbox, that the call never reached it).
//!
//! Refunds always succeed at once, with the provider reference `sbx_re_<refund reference>`.
//! `refund_status` follows the same rule as `sync`: given the provider reference
//! `sbx_re_<reference>` it answers `Succeeded` with it; given none it answers `None`, "no such
//! refund": a refund whose answer never came did not reach the sandbox, and refunding again
//! with the same reference is safe. Any other refund provider reference (including one for
//! another reference), or a payment reference the sandbox never issued, is `Rejected`, as in
//! `capture`, `void` and `refund`.
//!
//! `failure` simulates an outage of authorizations only, as documented above: capture, void,
//! refund, `sync` and `refund_status` keep answering, so that payments made before the outage
//! can still be settled.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::Value;
use settle_domain::Currency;

use crate::{
    Authorization, AuthorizeRequest, Connector, ConnectorError, ConnectorResult, ConnectorSettings, Decline,
    ProviderStatus, RefundOutcome, RefundStatus, Synced,
};

pub const NAME: &str = "sandbox";

/// The keys a sandbox account's credentials may hold (`webhook_secret` signs its inbound
/// webhooks); any other is refused when the account is created.
pub const CREDENTIAL_KEYS: &[&str] = &["latency_ms", "failure", "resolve_after_seconds", "webhook_secret"];

pub const CARD_DECLINED: &str = "4000000000000002";
pub const CARD_INSUFFICIENT_FUNDS: &str = "4000000000009995";
pub const CARD_PROCESSING_ERROR: &str = "4000000000000119";
pub const CARD_TIMEOUT: &str = "4000000000000036";
pub const CARD_DELAYED: &str = "4000000000000077";

const LATENCY_MS_MAX: u64 = 60_000;
const RESOLVE_AFTER_SECONDS_MAX: u64 = 86_400;

/// A simulated outage of one connector account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    ServerError,
    Timeout,
}

#[derive(Clone, Debug)]
pub struct Sandbox {
    latency: Duration,
    /// The connector timeout: a latency beyond it answers [`ConnectorError::Timeout`] after it,
    /// as a slow provider would.
    timeout: Duration,
    failure: Option<Failure>,
    resolve_after: Duration,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            latency: Duration::ZERO,
            timeout: ConnectorSettings::default().timeout,
            failure: None,
            resolve_after: Duration::from_secs(5),
        }
    }
}

fn bounded(credentials: &Value, field: &str, max: u64) -> Result<Option<u64>, (String, String)> {
    match credentials.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err((
                format!("credentials.{field}"),
                format!("`credentials.{field}` must be an integer from 0 to {max}"),
            )),
        },
    }
}

impl Sandbox {
    pub fn from_credentials(credentials: &Value) -> Result<Sandbox, (String, String)> {
        if !credentials.is_object() && !credentials.is_null() {
            return Err(("credentials".into(), "`credentials` must be an object".into()));
        }
        let mut sandbox = Sandbox::default();
        if let Some(ms) = bounded(credentials, "latency_ms", LATENCY_MS_MAX)? {
            sandbox.latency = Duration::from_millis(ms);
        }
        if let Some(s) = bounded(credentials, "resolve_after_seconds", RESOLVE_AFTER_SECONDS_MAX)? {
            sandbox.resolve_after = Duration::from_secs(s);
        }
        sandbox.failure = match credentials.get("failure") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "server_error" => Some(Failure::ServerError),
            Some(Value::String(s)) if s == "timeout" => Some(Failure::Timeout),
            Some(_) => {
                return Err((
                    "credentials.failure".into(),
                    "`credentials.failure` must be \"server_error\", \"timeout\" or null".into(),
                ))
            }
        };
        Ok(sandbox)
    }

    /// This sandbox with the connector timeout of `settings`.
    pub fn with_settings(mut self, settings: &ConnectorSettings) -> Sandbox {
        self.timeout = settings.timeout;
        self
    }

    async fn delay(&self) -> ConnectorResult<()> {
        if self.latency > self.timeout {
            tokio::time::sleep(self.timeout).await;
            return Err(ConnectorError::Timeout);
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        Ok(())
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn decline(code: &str, message: &str) -> ProviderStatus {
    ProviderStatus::Declined(Decline {
        code: code.into(),
        message: message.into(),
    })
}

/// `sbx_<a|p>_<created unix ms>_<reference>`: authorized or processing, and since when.
fn provider_ref(processing: bool, reference: &str) -> String {
    format!("sbx_{}_{}_{reference}", if processing { 'p' } else { 'a' }, now_ms())
}

#[async_trait]
impl Connector for Sandbox {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn authorize(&self, request: &AuthorizeRequest) -> ConnectorResult<Authorization> {
        self.delay().await?;
        match self.failure {
            Some(Failure::ServerError) => return Err(ConnectorError::Unavailable("sandbox: HTTP 500".into())),
            Some(Failure::Timeout) => return Err(ConnectorError::Timeout),
            None => {}
        }
        let number = request.card.number.expose().as_str();
        let status = match number {
            CARD_DECLINED => decline("card_declined", "Your card was declined."),
            CARD_INSUFFICIENT_FUNDS => decline("insufficient_funds", "Your card has insufficient funds."),
            CARD_PROCESSING_ERROR => decline("processing_error", "An error occurred while processing your card."),
            CARD_TIMEOUT => return Err(ConnectorError::Timeout),
            CARD_DELAYED => ProviderStatus::Processing,
            _ => ProviderStatus::Authorized,
        };
        let provider_ref = match status {
            ProviderStatus::Declined(_) => String::new(),
            _ => provider_ref(status == ProviderStatus::Processing, &request.reference),
        };
        Ok(Authorization { provider_ref, status })
    }

    async fn capture(&self, provider_ref: &str, _amount: i64, _currency: Currency) -> ConnectorResult<()> {
        self.delay().await?;
        parse_ref(provider_ref)?;
        Ok(())
    }

    async fn void(&self, provider_ref: &str) -> ConnectorResult<()> {
        self.delay().await?;
        parse_ref(provider_ref)?;
        Ok(())
    }

    async fn refund(
        &self,
        provider_ref: &str,
        reference: &str,
        _amount: i64,
        _currency: Currency,
    ) -> ConnectorResult<RefundOutcome> {
        self.delay().await?;
        parse_ref(provider_ref)?;
        Ok(RefundOutcome {
            provider_ref: refund_ref(reference),
            status: RefundStatus::Succeeded,
        })
    }

    async fn sync(&self, provider_ref: Option<&str>, _reference: &str) -> ConnectorResult<Synced> {
        self.delay().await?;
        let Some(provider_ref) = provider_ref else {
            // Without a reference the authorization never got an answer: in the sandbox that
            // means the call never reached the provider.
            return Ok(Synced {
                provider_ref: None,
                status: ProviderStatus::NotFound,
            });
        };
        let (processing, created_ms) = parse_ref(provider_ref)?;
        let resolved = now_ms().saturating_sub(created_ms) >= self.resolve_after.as_millis();
        let status = if processing && !resolved {
            ProviderStatus::Processing
        } else {
            ProviderStatus::Authorized
        };
        Ok(Synced {
            provider_ref: Some(provider_ref.to_owned()),
            status,
        })
    }

    async fn refund_status(
        &self,
        payment_provider_ref: &str,
        refund_provider_ref: Option<&str>,
        reference: &str,
    ) -> ConnectorResult<Option<RefundOutcome>> {
        self.delay().await?;
        parse_ref(payment_provider_ref)?;
        let Some(refund_provider_ref) = refund_provider_ref else {
            // As in `sync`: a refund that never got an answer never reached the sandbox.
            return Ok(None);
        };
        if refund_provider_ref != refund_ref(reference) {
            return Err(ConnectorError::Rejected(format!(
                "sandbox: no such refund '{refund_provider_ref}'"
            )));
        }
        Ok(Some(RefundOutcome {
            provider_ref: refund_provider_ref.to_owned(),
            status: RefundStatus::Succeeded,
        }))
    }
}

/// `sbx_re_<reference>`: a sandbox refund, which always succeeded.
fn refund_ref(reference: &str) -> String {
    format!("sbx_re_{reference}")
}

fn parse_ref(provider_ref: &str) -> ConnectorResult<(bool, u128)> {
    let rejected = || ConnectorError::Rejected(format!("sandbox: no such payment '{provider_ref}'"));
    let mut parts = provider_ref.splitn(4, '_');
    if parts.next() != Some("sbx") {
        return Err(rejected());
    }
    let processing = match parts.next() {
        Some("a") => false,
        Some("p") => true,
        _ => return Err(rejected()),
    };
    let created_ms = parts.next().and_then(|s| s.parse().ok()).ok_or_else(rejected)?;
    Ok((processing, created_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CardData;
    use settle_domain::Secret;

    fn request(number: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            reference: "att_1".into(),
            amount: 1000,
            currency: Currency::parse("USD").expect("USD"),
            card: CardData {
                number: Secret::new(number.into()),
                exp_month: 12,
                exp_year: 2099,
                cvc: None,
            },
            description: None,
        }
    }

    #[tokio::test]
    async fn test_cards_answer_as_documented() {
        let sandbox = Sandbox::default();
        let ok = sandbox.authorize(&request("4242424242424242")).await.expect("answer");
        assert_eq!(ok.status, ProviderStatus::Authorized);
        assert_eq!(
            sandbox.sync(Some(&ok.provider_ref), "att_1").await,
            Ok(Synced {
                provider_ref: Some(ok.provider_ref.clone()),
                status: ProviderStatus::Authorized
            })
        );
        for (card, code) in [
            (CARD_DECLINED, "card_declined"),
            (CARD_INSUFFICIENT_FUNDS, "insufficient_funds"),
            (CARD_PROCESSING_ERROR, "processing_error"),
        ] {
            match sandbox.authorize(&request(card)).await.expect("answer").status {
                ProviderStatus::Declined(d) => assert_eq!(d.code, code),
                other => panic!("{card}: {other:?}"),
            }
        }
        assert_eq!(
            sandbox.authorize(&request(CARD_TIMEOUT)).await,
            Err(ConnectorError::Timeout)
        );
        assert_eq!(
            sandbox.sync(None, "att_1").await,
            Ok(Synced {
                provider_ref: None,
                status: ProviderStatus::NotFound
            })
        );
    }

    #[tokio::test]
    async fn delayed_card_resolves_after_the_configured_time() {
        let slow = Sandbox::from_credentials(&serde_json::json!({"resolve_after_seconds": 3600})).expect("valid");
        let auth = slow.authorize(&request(CARD_DELAYED)).await.expect("answer");
        assert_eq!(auth.status, ProviderStatus::Processing);
        let synced = slow.sync(Some(&auth.provider_ref), "att_1").await.expect("answer");
        assert_eq!(synced.status, ProviderStatus::Processing);
        assert_eq!(synced.provider_ref.as_deref(), Some(auth.provider_ref.as_str()));
        let fast = Sandbox::from_credentials(&serde_json::json!({"resolve_after_seconds": 0})).expect("valid");
        let synced = fast.sync(Some(&auth.provider_ref), "att_1").await.expect("answer");
        assert_eq!(synced.status, ProviderStatus::Authorized);
        assert_eq!(synced.provider_ref.as_deref(), Some(auth.provider_ref.as_str()));
    }

    #[tokio::test]
    async fn sync_answers_the_provider_ref_it_was_given() {
        let sandbox = Sandbox::default();
        let auth = sandbox.authorize(&request("4242424242424242")).await.expect("answer");
        let synced = sandbox.sync(Some(&auth.provider_ref), "att_1").await.expect("answer");
        assert_eq!(synced.provider_ref, Some(auth.provider_ref));
        assert_eq!(synced.status, ProviderStatus::Authorized);
        assert!(matches!(
            sandbox.sync(Some("pi_not_ours"), "att_1").await,
            Err(ConnectorError::Rejected(_))
        ));
    }

    #[tokio::test]
    async fn refund_status_is_succeeded_by_provider_ref_and_unknown_without_it() {
        let sandbox = Sandbox::default();
        let auth = sandbox.authorize(&request("4242424242424242")).await.expect("answer");
        let usd = Currency::parse("USD").expect("USD");
        let refund = sandbox
            .refund(&auth.provider_ref, "rfd_1", 400, usd)
            .await
            .expect("refunded");
        assert_eq!(
            sandbox
                .refund_status(&auth.provider_ref, Some(&refund.provider_ref), "rfd_1")
                .await,
            Ok(Some(refund.clone()))
        );
        assert_eq!(sandbox.refund_status(&auth.provider_ref, None, "rfd_1").await, Ok(None));
        for (payment, refund_ref) in [
            (auth.provider_ref.as_str(), "sbx_re_rfd_other"),
            (auth.provider_ref.as_str(), "re_123"),
            ("pi_not_ours", refund.provider_ref.as_str()),
        ] {
            assert!(
                matches!(
                    sandbox.refund_status(payment, Some(refund_ref), "rfd_1").await,
                    Err(ConnectorError::Rejected(_))
                ),
                "{payment} {refund_ref}"
            );
        }
        // An outage of authorizations leaves refunds and their status readable.
        let down = Sandbox::from_credentials(&serde_json::json!({"failure": "server_error"})).expect("valid");
        assert_eq!(
            down.refund_status(&auth.provider_ref, Some(&refund.provider_ref), "rfd_1")
                .await,
            Ok(Some(refund))
        );
    }

    #[test]
    fn bad_credentials_name_the_field() {
        let err = Sandbox::from_credentials(&serde_json::json!({"latency_ms": -1})).expect_err("refused");
        assert_eq!(err.0, "credentials.latency_ms");
        let err = Sandbox::from_credentials(&serde_json::json!({"failure": "boom"})).expect_err("refused");
        assert_eq!(err.0, "credentials.failure");
    }
}
