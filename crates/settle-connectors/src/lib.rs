//! Adapters to payment providers.
//!
//! A [`Connector`] speaks one provider's protocol for one merchant connector account: it
//! authorizes a card (always with manual capture at the provider, so that Settle's capture is
//! one uniform step), captures, voids, refunds and asks for the state of an earlier payment or
//! refund. Two implementations: [`sandbox::Sandbox`], built in and deterministic by card number,
//! and [`stripe::Stripe`], which speaks Stripe's REST API to a configurable base URL.
//!
//! Architecture invariant: connectors decide nothing about payments. They report what the
//! provider said; retries, failover and state live in the server's payment service.

pub mod sandbox;
pub mod stripe;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use settle_domain::{Currency, Secret};

/// Connector names, as used in the API and in routing rules.
pub const CONNECTORS: &[&str] = &[sandbox::NAME, stripe::NAME];

/// Card data for one authorization. The CVC is present only when the customer just typed it.
#[derive(Clone, Debug)]
pub struct CardData {
    pub number: Secret<String>,
    pub exp_month: u32,
    pub exp_year: u32,
    pub cvc: Option<Secret<String>>,
}

#[derive(Clone, Debug)]
pub struct AuthorizeRequest {
    /// Settle's attempt id: sent to the provider as the idempotency key and in metadata, so
    /// that a call whose answer was lost can be found again by [`Connector::sync`].
    pub reference: String,
    pub amount: i64,
    pub currency: Currency,
    pub card: CardData,
    pub description: Option<String>,
}

/// What the provider did with an authorization request that it accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The provider's id for the payment (`pi_…` at Stripe).
    pub provider_ref: String,
    pub status: ProviderStatus,
}

/// A payment's state at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderStatus {
    /// Funds are held; capture or void next.
    Authorized,
    /// The provider has not decided yet; ask again later.
    Processing,
    Captured,
    Voided,
    /// The provider refused the card.
    Declined(Decline),
    /// The provider knows no such payment: the request never reached it.
    NotFound,
}

/// A refusal by the provider, with Stripe's decline codes (`card_declined`,
/// `insufficient_funds`, `processing_error`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decline {
    pub code: String,
    pub message: String,
}

impl Decline {
    /// Whether another connector may succeed where this one refused. A card decision
    /// (`card_declined`, `insufficient_funds`) is the issuer's and would be repeated.
    pub fn retryable(&self) -> bool {
        self.code == "processing_error"
    }
}

/// What [`Connector::sync`] learned about a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synced {
    /// The provider's id for the payment (`pi_…` at Stripe): `Some` whenever the provider knows
    /// the payment (any status but [`ProviderStatus::NotFound`]), so that a payment found by
    /// Settle's reference can be adopted (captured, voided) like one whose answer arrived.
    pub provider_ref: Option<String>,
    pub status: ProviderStatus,
}

/// A refund's state at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundStatus {
    Succeeded,
    Pending,
    Failed(Decline),
}

/// What the provider did with a refund request that it accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundOutcome {
    /// The provider's id for the refund (`re_…` at Stripe).
    pub provider_ref: String,
    pub status: RefundStatus,
}

/// Why a call did not give an answer the caller can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectorError {
    /// No answer in time: the provider may or may not have acted.
    Timeout,
    /// The provider failed (5xx, a connection reset, an answer cut off): it may or may not have
    /// acted.
    Unavailable(String),
    /// The provider could not be reached (no address, connection refused, TLS failed): the
    /// request never left, so it did not act.
    Unreachable(String),
    /// The provider refused the request itself (a 4xx other than a card decline): it did not act.
    Rejected(String),
}

impl std::fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectorError::Timeout => f.write_str("the provider did not answer in time"),
            ConnectorError::Unavailable(detail) => write!(f, "the provider failed: {detail}"),
            ConnectorError::Rejected(detail) => write!(f, "the provider rejected the request: {detail}"),
            ConnectorError::Unreachable(detail) => write!(f, "the provider could not be reached: {detail}"),
        }
    }
}

impl ConnectorError {
    pub fn code(&self) -> &'static str {
        match self {
            ConnectorError::Timeout => "connector_timeout",
            ConnectorError::Unavailable(_) => "connector_unavailable",
            ConnectorError::Rejected(_) => "connector_rejected",
            ConnectorError::Unreachable(_) => "connector_unreachable",
        }
    }
}

pub type ConnectorResult<T> = Result<T, ConnectorError>;

#[async_trait]
pub trait Connector: Send + Sync {
    fn name(&self) -> &'static str;
    /// Authorizes without capturing. A decline is `Ok` with [`ProviderStatus::Declined`].
    async fn authorize(&self, request: &AuthorizeRequest) -> ConnectorResult<Authorization>;
    /// Captures `amount` (≤ the authorized amount); the provider releases the rest.
    async fn capture(&self, provider_ref: &str, amount: i64, currency: Currency) -> ConnectorResult<()>;
    /// Releases an authorization.
    async fn void(&self, provider_ref: &str) -> ConnectorResult<()>;
    /// Refunds `amount` of a captured payment; `reference` is Settle's refund id (idempotency key).
    async fn refund(
        &self,
        provider_ref: &str,
        reference: &str,
        amount: i64,
        currency: Currency,
    ) -> ConnectorResult<RefundOutcome>;
    /// The payment's state at the provider, by its id or, when the authorization's answer was
    /// lost, by Settle's attempt id; with the provider's id for the payment whenever the provider
    /// knows it.
    async fn sync(&self, provider_ref: Option<&str>, reference: &str) -> ConnectorResult<Synced>;
    /// A refund's state at the provider, after its answer was lost or while it is pending: by
    /// the refund's id when known, otherwise by `reference` (Settle's refund id, sent with the
    /// refund) among the refunds of the payment `payment_provider_ref`. `Ok(None)` when the
    /// provider has no such refund: the refund request never reached it.
    async fn refund_status(
        &self,
        payment_provider_ref: &str,
        refund_provider_ref: Option<&str>,
        reference: &str,
    ) -> ConnectorResult<Option<RefundOutcome>>;
}

/// Settings every connector account may carry besides its credentials.
#[derive(Clone, Debug)]
pub struct ConnectorSettings {
    /// Longest wait for one provider call.
    pub timeout: Duration,
}

impl Default for ConnectorSettings {
    fn default() -> Self {
        ConnectorSettings {
            timeout: Duration::from_secs(10),
        }
    }
}

/// The credential keys the connector `name` takes (none for an unknown connector).
pub fn credential_keys(name: &str) -> &'static [&'static str] {
    match name {
        sandbox::NAME => sandbox::CREDENTIAL_KEYS,
        stripe::NAME => stripe::CREDENTIAL_KEYS,
        _ => &[],
    }
}

/// Builds the connector `name` from a connector account's decrypted credentials (a JSON
/// object; which keys each connector reads is documented on its module). The error names the
/// offending field.
pub fn build(
    name: &str,
    credentials: &Secret<Value>,
    settings: &ConnectorSettings,
    http: &reqwest::Client,
) -> Result<Arc<dyn Connector>, (String, String)> {
    match name {
        sandbox::NAME => Ok(Arc::new(
            sandbox::Sandbox::from_credentials(credentials.expose())?.with_settings(settings),
        )),
        stripe::NAME => Ok(Arc::new(stripe::Stripe::from_credentials(
            credentials.expose(),
            settings,
            http.clone(),
        )?)),
        other => Err(("connector".into(), format!("unknown connector '{other}'"))),
    }
}
