//! Stripe's REST API, spoken to a configurable base URL (the real API or a fake such as
//! `localstripe`).
//!
//! Credentials (a JSON object): `api_key` (required, a secret key `sk_…`, sent as
//! `Authorization: Bearer …`) and `base_url` (optional, `http` or `https`, default
//! `https://api.stripe.com`). Every HTTP call is bounded by [`ConnectorSettings::timeout`];
//! bodies are form-encoded with Stripe's bracket nesting (`metadata[settle_reference]=…`).
//!
//! | Settle call | Stripe calls |
//! |-------------|--------------|
//! | authorize | `POST /v1/payment_methods` (`type=card`, `card[…]`), then `POST /v1/payment_intents` with `payment_method`, `capture_method=manual`, `confirm=true`, `payment_method_types[0]=card`, `metadata[settle_reference]`; `Idempotency-Key: <reference>` (`<reference>:payment_method` for the first call) |
//! | capture | `POST /v1/payment_intents/{id}/capture` with `amount_to_capture` |
//! | void | `POST /v1/payment_intents/{id}/cancel` |
//! | refund | `POST /v1/refunds` with `payment_intent`, `amount`, `metadata[settle_reference]`; `Idempotency-Key: <reference>` |
//! | sync by id | `GET /v1/payment_intents/{id}` (404: `NotFound`) |
//! | sync by reference | `GET /v1/payment_intents?limit=100&starting_after=…`, filtered here on `metadata.settle_reference`; answers the found intent's id |
//! | refund status by id | `GET /v1/refunds/{id}` (404: `None`; a refund of another payment intent: `Rejected`) |
//! | refund status by reference | `GET /v1/refunds?payment_intent={id}&limit=100&starting_after=…`, filtered here on `metadata.settle_reference` (none: `None`) |
//!
//! PaymentIntent status → [`ProviderStatus`]: `requires_capture` → `Authorized`, `processing` →
//! `Processing`, `succeeded` → `Captured`, `canceled` → `Voided`, `requires_payment_method` with a
//! `last_payment_error` → `Declined`. Settle performs no customer authentication, so
//! `requires_action` (3-D Secure) is `Declined` with `authentication_required`, and an intent that
//! was never confirmed (`requires_confirmation`, or `requires_payment_method` without an error) is
//! `Declined` with `payment_intent_incomplete`: neither will progress without someone acting.
//!
//! Refund status → [`RefundStatus`]: `succeeded` → `Succeeded`, `pending` and `requires_action`
//! → `Pending`, `failed` → `Failed` with the `failure_reason` (`refund_failed` without one),
//! `canceled` → `Failed` with the `failure_reason` (`refund_canceled` without one).
//!
//! Declines: a card error (HTTP 402) is `Ok` with `Declined`. The code is Stripe's `decline_code`
//! when the error's `code` is the generic `card_declined` and a `decline_code` (such as
//! `insufficient_funds`) is present, because it is the more specific of the two; otherwise the
//! error's `code`. The same rule reads a PaymentIntent's `last_payment_error`.
//!
//! Errors: other 4xx → [`ConnectorError::Rejected`]; 5xx, 409 (an idempotent request still in
//! flight) and 429 (rate limited) → [`ConnectorError::Unavailable`], since the provider may have
//! acted or the request may be retried; a connection never made (no address, refused, TLS failed)
//! → [`ConnectorError::Unreachable`], since the request never left; one cut off → `Unavailable`;
//! no answer within the timeout → [`ConnectorError::Timeout`]. Error texts never carry the API key, card number or
//! CVC: the key travels only in a header, card data only in the payment-method body, and digit
//! runs long enough to be a card number are redacted from messages the provider sends back.
//!
//! Sync by reference uses the list endpoint rather than the search API
//! (`/v1/payment_intents/search?query=metadata['settle_reference']:'…'`): search is not available
//! in `localstripe`, and at Stripe its index lags writes by up to a minute, so a payment whose
//! answer was just lost could wrongly look absent. Listing is consistent; Stripe lists newest
//! first, so the payment sought is normally on the first page. The scan reads at most
//! [`LIST_MAX_PAGES`] pages of [`LIST_PAGE_SIZE`]; `NotFound` is answered only after the whole
//! list has been read, and a scan that hits the page limit is `Unavailable` (unknown, not absent).
//!
//! A refund whose id is unknown is found the same way, among the refunds of its payment intent:
//! the list of refunds narrowed by `payment_intent`, which Stripe documents and `localstripe`
//! implements (it narrows to the intent's latest charge), so no extra call for the charge id is
//! needed; Stripe has no search API for refunds. The refund carries Settle's refund id as
//! `metadata[settle_reference]`, the key the authorization uses; `None` ("no such refund") is
//! answered only after the whole list has been read, with the same page limit. An unknown
//! payment intent is a 404 there: `Rejected`, as for a refund of it.
//!
//! Known differences of `localstripe` (the fake server used by the integration test): it rejects
//! `description` on a PaymentIntent and a card without a CVC (both `Rejected` there); it declines
//! at confirmation only `4000000000000341` (`card_declined`, without `decline_code`), while
//! Stripe's other decline test cards (`…0002`, `…9995`) authorize; its 402 errors do not carry
//! the PaymentIntent, so such a decline has an empty `provider_ref`; it ignores
//! `Idempotency-Key`; and its refunds are always `succeeded` at once (no `pending`, `failed` or
//! `canceled`), so those states are tested only against loopback fakes.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use settle_domain::{Currency, Secret};

use crate::{
    Authorization, AuthorizeRequest, Connector, ConnectorError, ConnectorResult, ConnectorSettings, Decline,
    ProviderStatus, RefundOutcome, RefundStatus, Synced,
};

pub const NAME: &str = "stripe";

/// The keys a Stripe account's credentials may hold (`webhook_secret` verifies its inbound
/// webhooks); any other is refused when the account is created.
pub const CREDENTIAL_KEYS: &[&str] = &["api_key", "base_url", "webhook_secret"];

pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";

/// PaymentIntents asked for per page when syncing by reference (Stripe's maximum).
pub const LIST_PAGE_SIZE: u32 = 100;
/// Pages read at most when syncing by reference.
pub const LIST_MAX_PAGES: u32 = 10;

/// The metadata key that carries Settle's attempt or refund id, and its form field.
const REFERENCE_KEY: &str = "settle_reference";
const REFERENCE_FIELD: &str = "metadata[settle_reference]";

/// A Stripe account: its secret key and where its API lives.
#[derive(Clone, Debug)]
pub struct Stripe {
    api_key: Secret<String>,
    /// Without a trailing slash; paths such as `/v1/refunds` are appended.
    base_url: String,
    timeout: Duration,
    http: reqwest::Client,
}

fn field_error(field: &str, message: &str) -> (String, String) {
    (
        format!("credentials.{field}"),
        format!("`credentials.{field}` {message}"),
    )
}

impl Stripe {
    pub fn from_credentials(
        credentials: &Value,
        settings: &ConnectorSettings,
        http: reqwest::Client,
    ) -> Result<Stripe, (String, String)> {
        if !credentials.is_object() {
            return Err((
                "credentials".into(),
                "`credentials` must be an object with an `api_key`".into(),
            ));
        }
        let api_key = match credentials.get("api_key") {
            Some(Value::String(key)) => key,
            None | Some(Value::Null) => {
                return Err(field_error("api_key", "is required: a Stripe secret key (sk_…)"));
            }
            Some(_) => return Err(field_error("api_key", "must be a string: a Stripe secret key (sk_…)")),
        };
        // The message never repeats the key, not even in part.
        if !api_key.starts_with("sk_") || api_key.len() <= 3 {
            return Err(field_error(
                "api_key",
                "must be a Stripe secret key, starting with `sk_`",
            ));
        }
        if !api_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(field_error(
                "api_key",
                "must be a Stripe secret key: printable ASCII without spaces",
            ));
        }
        let base_url = match credentials.get("base_url") {
            None | Some(Value::Null) => DEFAULT_BASE_URL.to_owned(),
            Some(Value::String(s)) => parse_base_url(s)?,
            Some(_) => return Err(field_error("base_url", "must be a string: an http or https URL")),
        };
        Ok(Stripe {
            api_key: Secret::new(api_key.clone()),
            base_url,
            timeout: settings.timeout,
            http,
        })
    }

    /// The base URL calls go to (never secret).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// One HTTP call. `Ok` carries either the 2xx body or a 4xx that the caller interprets;
    /// everything that leaves the outcome unknown is already an error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        form: Option<&[(&str, String)]>,
        idempotency_key: Option<&str>,
    ) -> ConnectorResult<Reply> {
        let url = format!("{}{path}", self.base_url);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(self.api_key.expose())
            .timeout(self.timeout);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(form) = form {
            request = request.form(form);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport_error)?;
        tracing::debug!(connector = NAME, %method, path, status = status.as_u16(), "provider call");
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return json.map(Reply::Success).ok_or_else(|| {
                ConnectorError::Unavailable(format!("stripe: HTTP {status} with a body that is not JSON"))
            });
        }
        let error = json
            .as_ref()
            .and_then(|v| v.get("error"))
            .cloned()
            .unwrap_or(Value::Null);
        if status.is_server_error() || status == StatusCode::CONFLICT || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(ConnectorError::Unavailable(describe(status, &error)));
        }
        if status.is_client_error() {
            return Ok(Reply::Failure { status, error });
        }
        // A 1xx or a 3xx the client did not follow: Stripe sends neither, so the base URL is wrong.
        Err(ConnectorError::Unavailable(describe(status, &error)))
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> ConnectorResult<Reply> {
        self.call(Method::GET, path, query, None, None).await
    }

    async fn post(&self, path: &str, form: &[(&str, String)], idempotency_key: Option<&str>) -> ConnectorResult<Reply> {
        self.call(Method::POST, path, &[], Some(form), idempotency_key).await
    }

    /// Reads a list endpoint (`path`, narrowed by `filter`), page by page, for the object whose
    /// `metadata.settle_reference` is `reference`. `Ok(None)` only once the whole list was read;
    /// a scan that hits [`LIST_MAX_PAGES`] is `Unavailable`. `what` names the objects in errors.
    async fn find_in_list(
        &self,
        path: &str,
        filter: &[(&str, String)],
        what: &str,
        reference: &str,
    ) -> ConnectorResult<Option<Value>> {
        let mut starting_after: Option<String> = None;
        for _ in 0..LIST_MAX_PAGES {
            let mut query = filter.to_vec();
            query.push(("limit", LIST_PAGE_SIZE.to_string()));
            if let Some(after) = &starting_after {
                query.push(("starting_after", after.clone()));
            }
            let page = match self.get(path, &query).await? {
                Reply::Success(page) => page,
                Reply::Failure { status, error } => return Err(rejected(status, &error)),
            };
            let malformed = || ConnectorError::Unavailable(format!("stripe: malformed list of {what}s"));
            let data = page.get("data").and_then(Value::as_array).ok_or_else(malformed)?;
            if let Some(object) = data.iter().find(|object| {
                object
                    .get("metadata")
                    .and_then(|m| m.get(REFERENCE_KEY))
                    .and_then(Value::as_str)
                    == Some(reference)
            }) {
                return Ok(Some(object.clone()));
            }
            if page.get("has_more").and_then(Value::as_bool) != Some(true) {
                return Ok(None);
            }
            let last = data
                .last()
                .and_then(|object| object.get("id"))
                .and_then(Value::as_str)
                .ok_or_else(malformed)?;
            if starting_after.as_deref() == Some(last) {
                return Err(malformed());
            }
            starting_after = Some(last.to_owned());
        }
        Err(ConnectorError::Unavailable(format!(
            "stripe: no {what} with this reference among the {} most recent; its fate is unknown",
            LIST_PAGE_SIZE * LIST_MAX_PAGES
        )))
    }

    /// Reads the list of PaymentIntents for the one carrying `reference`.
    async fn find_by_reference(&self, reference: &str) -> ConnectorResult<Synced> {
        match self
            .find_in_list("/v1/payment_intents", &[], "payment intent", reference)
            .await?
        {
            Some(intent) => Ok(Synced {
                provider_ref: Some(object_id(&intent, "payment intent")?),
                status: payment_intent_status(&intent)?,
            }),
            None => Ok(Synced {
                provider_ref: None,
                status: ProviderStatus::NotFound,
            }),
        }
    }
}

fn parse_base_url(raw: &str) -> Result<String, (String, String)> {
    let invalid = || field_error("base_url", "must be an http or https URL without query or fragment");
    let url = Url::parse(raw).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(invalid());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(field_error(
            "base_url",
            "must not carry credentials: put the key in `credentials.api_key`",
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The answer to a call that reached Stripe and was not a server failure.
#[derive(Debug)]
enum Reply {
    Success(Value),
    /// A 4xx with Stripe's `error` object (or `null` when the body had none).
    Failure {
        status: StatusCode,
        error: Value,
    },
}

fn transport_error(err: reqwest::Error) -> ConnectorError {
    if err.is_timeout() {
        return ConnectorError::Timeout;
    }
    let kind = if err.is_connect() {
        "could not connect"
    } else if err.is_body() || err.is_decode() {
        "the response broke off"
    } else {
        "the request failed"
    };
    // The chain names the host and the OS error; requests carry no secret in their URL.
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    let detail = format!("stripe: {kind} ({})", redact(&detail));
    // A connection never made carried no request: the provider cannot have acted on it.
    if err.is_connect() {
        ConnectorError::Unreachable(detail)
    } else {
        ConnectorError::Unavailable(detail)
    }
}

/// Replaces runs of 12 or more digits (what a card number looks like) with `[redacted]`.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 12 {
            out.push_str("[redacted]");
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

/// Longest provider message kept, in characters.
const MESSAGE_CHARS_MAX: usize = 500;
/// Longest provider code kept.
const CODE_LEN_MAX: usize = 64;

/// The provider's message as Settle keeps it: card numbers redacted, at most
/// [`MESSAGE_CHARS_MAX`] [`printable`] characters.
fn error_message(error: &Value) -> Option<String> {
    error
        .get("message")
        .and_then(Value::as_str)
        .map(|m| printable(&redact(m), MESSAGE_CHARS_MAX))
}

/// The first `max` characters of text a provider sent, control characters (a NUL, which no
/// PostgreSQL text takes, say) as spaces.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A code the provider sent (a decline code, a refund's failure reason), if it is shaped as
/// one: 1-64 of `a-z A-Z 0-9 _`. Anything else is no code.
fn provider_code(value: Option<&Value>) -> Option<&str> {
    value
        .and_then(Value::as_str)
        .filter(|c| (1..=CODE_LEN_MAX).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// `stripe: HTTP 400: <Stripe's message>`.
fn describe(status: StatusCode, error: &Value) -> String {
    match error_message(error) {
        Some(message) => format!("stripe: HTTP {}: {message}", status.as_u16()),
        None => format!("stripe: HTTP {}", status.as_u16()),
    }
}

fn rejected(status: StatusCode, error: &Value) -> ConnectorError {
    ConnectorError::Rejected(describe(status, error))
}

/// A card error (a 402's `error`, or a PaymentIntent's `last_payment_error`) as a [`Decline`]:
/// the `decline_code` when the `code` is only the generic `card_declined`, otherwise the `code`.
fn decline_from(error: &Value) -> Decline {
    let text = |key: &str| provider_code(error.get(key));
    let code = match (text("code"), text("decline_code")) {
        (Some("card_declined") | None, Some(decline_code)) => decline_code,
        (Some(code), _) => code,
        (None, None) => "card_declined",
    };
    Decline {
        code: code.to_owned(),
        message: error_message(error).unwrap_or_else(|| "The card was declined.".to_owned()),
    }
}

fn declined(code: &str, message: &str) -> ProviderStatus {
    ProviderStatus::Declined(Decline {
        code: code.to_owned(),
        message: message.to_owned(),
    })
}

/// Maps a PaymentIntent object to Settle's view of it.
fn payment_intent_status(intent: &Value) -> ConnectorResult<ProviderStatus> {
    let status = intent.get("status").and_then(Value::as_str).unwrap_or_default();
    let last_error = intent.get("last_payment_error").filter(|e| e.is_object());
    Ok(match (status, last_error) {
        ("requires_capture", _) => ProviderStatus::Authorized,
        ("processing", _) => ProviderStatus::Processing,
        ("succeeded", _) => ProviderStatus::Captured,
        ("canceled", _) => ProviderStatus::Voided,
        ("requires_payment_method", Some(error)) => ProviderStatus::Declined(decline_from(error)),
        ("requires_action", _) => declined(
            "authentication_required",
            "The card requires customer authentication (3-D Secure), which Settle does not perform.",
        ),
        ("requires_payment_method" | "requires_confirmation", _) => declined(
            "payment_intent_incomplete",
            "The payment intent was never confirmed with a card.",
        ),
        (other, _) => {
            return Err(ConnectorError::Unavailable(format!(
                "stripe: unexpected payment intent status '{}'",
                printable(other, 40)
            )))
        }
    })
}

/// Maps a Refund object to Settle's view of it: `succeeded` → `Succeeded`, `pending` and
/// `requires_action` → `Pending`, `failed` and `canceled` → `Failed` with Stripe's
/// `failure_reason` as the code (`refund_failed`, `refund_canceled` without one).
fn refund_outcome(refund: &Value) -> ConnectorResult<RefundOutcome> {
    let provider_ref = object_id(refund, "refund")?;
    let failed = |default_code: &str, message: &str| {
        RefundStatus::Failed(Decline {
            code: provider_code(refund.get("failure_reason"))
                .unwrap_or(default_code)
                .to_owned(),
            message: message.to_owned(),
        })
    };
    let status = match refund.get("status").and_then(Value::as_str).unwrap_or_default() {
        "succeeded" => RefundStatus::Succeeded,
        "pending" | "requires_action" => RefundStatus::Pending,
        "failed" => failed("refund_failed", "Stripe could not refund the payment."),
        "canceled" => failed("refund_canceled", "The refund was canceled at Stripe."),
        other => {
            return Err(ConnectorError::Unavailable(format!(
                "stripe: unexpected refund status '{}'",
                printable(other, 40)
            )))
        }
    };
    Ok(RefundOutcome { provider_ref, status })
}

/// The id of the PaymentIntent a 402 refers to, when Stripe includes it.
fn intent_id_of_error(error: &Value) -> String {
    error
        .pointer("/payment_intent/id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn object_id(object: &Value, what: &str) -> ConnectorResult<String> {
    object
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| is_stripe_id(id))
        .map(str::to_owned)
        .ok_or_else(|| ConnectorError::Unavailable(format!("stripe: the {what} in the answer has no id")))
}

/// Stripe ids are ASCII letters, digits and underscores; anything else would change the URL path.
fn is_stripe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn checked_id(provider_ref: &str) -> ConnectorResult<&str> {
    if is_stripe_id(provider_ref) {
        Ok(provider_ref)
    } else {
        Err(ConnectorError::Rejected(
            "stripe: the provider reference is not a Stripe id".into(),
        ))
    }
}

#[async_trait]
impl Connector for Stripe {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn authorize(&self, request: &AuthorizeRequest) -> ConnectorResult<Authorization> {
        let card = &request.card;
        let mut method_form = vec![
            ("type", "card".to_owned()),
            ("card[number]", card.number.expose().clone()),
            ("card[exp_month]", card.exp_month.to_string()),
            ("card[exp_year]", card.exp_year.to_string()),
        ];
        if let Some(cvc) = &card.cvc {
            method_form.push(("card[cvc]", cvc.expose().clone()));
        }
        let method_key = format!("{}:payment_method", request.reference);
        let payment_method = match self
            .post("/v1/payment_methods", &method_form, Some(&method_key))
            .await?
        {
            Reply::Success(method) => object_id(&method, "payment method")?,
            Reply::Failure { status, error } if status == StatusCode::PAYMENT_REQUIRED => {
                return Ok(Authorization {
                    provider_ref: String::new(),
                    status: ProviderStatus::Declined(decline_from(&error)),
                })
            }
            Reply::Failure { status, error } => return Err(rejected(status, &error)),
        };
        drop(method_form);

        let mut intent_form = vec![
            ("amount", request.amount.to_string()),
            ("currency", request.currency.code().to_ascii_lowercase()),
            ("capture_method", "manual".to_owned()),
            ("confirm", "true".to_owned()),
            ("payment_method", payment_method),
            ("payment_method_types[0]", "card".to_owned()),
            (REFERENCE_FIELD, request.reference.clone()),
        ];
        if let Some(description) = &request.description {
            intent_form.push(("description", description.clone()));
        }
        match self
            .post("/v1/payment_intents", &intent_form, Some(&request.reference))
            .await?
        {
            Reply::Success(intent) => Ok(Authorization {
                provider_ref: object_id(&intent, "payment intent")?,
                status: payment_intent_status(&intent)?,
            }),
            Reply::Failure { status, error } if status == StatusCode::PAYMENT_REQUIRED => Ok(Authorization {
                provider_ref: intent_id_of_error(&error),
                status: ProviderStatus::Declined(decline_from(&error)),
            }),
            Reply::Failure { status, error } => Err(rejected(status, &error)),
        }
    }

    async fn capture(&self, provider_ref: &str, amount: i64, _currency: Currency) -> ConnectorResult<()> {
        let id = checked_id(provider_ref)?;
        // A retried capture whose first answer was lost gets the first answer back.
        let key = format!("capture:{id}:{amount}");
        let form = [("amount_to_capture", amount.to_string())];
        match self
            .post(&format!("/v1/payment_intents/{id}/capture"), &form, Some(&key))
            .await?
        {
            Reply::Success(_) => Ok(()),
            Reply::Failure { status, error } => Err(rejected(status, &error)),
        }
    }

    async fn void(&self, provider_ref: &str) -> ConnectorResult<()> {
        let id = checked_id(provider_ref)?;
        let key = format!("void:{id}");
        match self
            .post(&format!("/v1/payment_intents/{id}/cancel"), &[], Some(&key))
            .await?
        {
            Reply::Success(_) => Ok(()),
            Reply::Failure { status, error } => Err(rejected(status, &error)),
        }
    }

    async fn refund(
        &self,
        provider_ref: &str,
        reference: &str,
        amount: i64,
        _currency: Currency,
    ) -> ConnectorResult<RefundOutcome> {
        let id = checked_id(provider_ref)?;
        let form = [
            ("payment_intent", id.to_owned()),
            ("amount", amount.to_string()),
            (REFERENCE_FIELD, reference.to_owned()),
        ];
        match self.post("/v1/refunds", &form, Some(reference)).await? {
            Reply::Success(refund) => refund_outcome(&refund),
            Reply::Failure { status, error } => Err(rejected(status, &error)),
        }
    }

    async fn sync(&self, provider_ref: Option<&str>, reference: &str) -> ConnectorResult<Synced> {
        let Some(provider_ref) = provider_ref.filter(|r| !r.is_empty()) else {
            return self.find_by_reference(reference).await;
        };
        let id = checked_id(provider_ref)?;
        match self.get(&format!("/v1/payment_intents/{id}"), &[]).await? {
            Reply::Success(intent) => Ok(Synced {
                provider_ref: Some(id.to_owned()),
                status: payment_intent_status(&intent)?,
            }),
            Reply::Failure { status, .. } if status == StatusCode::NOT_FOUND => Ok(Synced {
                provider_ref: None,
                status: ProviderStatus::NotFound,
            }),
            Reply::Failure { status, error } => Err(rejected(status, &error)),
        }
    }

    async fn refund_status(
        &self,
        payment_provider_ref: &str,
        refund_provider_ref: Option<&str>,
        reference: &str,
    ) -> ConnectorResult<Option<RefundOutcome>> {
        let payment = checked_id(payment_provider_ref)?;
        let Some(refund_provider_ref) = refund_provider_ref.filter(|r| !r.is_empty()) else {
            let filter = [("payment_intent", payment.to_owned())];
            return match self.find_in_list("/v1/refunds", &filter, "refund", reference).await? {
                Some(refund) => refund_outcome(&refund).map(Some),
                None => Ok(None),
            };
        };
        let id = checked_id(refund_provider_ref)?;
        let refund = match self.get(&format!("/v1/refunds/{id}"), &[]).await? {
            Reply::Success(refund) => refund,
            Reply::Failure { status, .. } if status == StatusCode::NOT_FOUND => return Ok(None),
            Reply::Failure { status, error } => return Err(rejected(status, &error)),
        };
        match refund.get("payment_intent").and_then(Value::as_str) {
            Some(intent) if intent != payment => Err(ConnectorError::Rejected(
                "stripe: the refund belongs to another payment intent".into(),
            )),
            _ => refund_outcome(&refund).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(credentials: Value) -> Result<Stripe, (String, String)> {
        Stripe::from_credentials(&credentials, &ConnectorSettings::default(), reqwest::Client::new())
    }

    #[test]
    fn credentials_are_checked_field_by_field() {
        let ok = build(json!({"api_key": "sk_test_abc", "base_url": "http://127.0.0.1:9/"})).expect("valid");
        assert_eq!(ok.base_url(), "http://127.0.0.1:9");
        assert!(!format!("{ok:?}").contains("sk_test_abc"));
        assert_eq!(
            build(json!({"api_key": "sk_live_x"})).expect("valid").base_url(),
            DEFAULT_BASE_URL
        );
        for (credentials, field) in [
            (json!(null), "credentials"),
            (json!({}), "credentials.api_key"),
            (json!({"api_key": 7}), "credentials.api_key"),
            (json!({"api_key": "pk_test_abc"}), "credentials.api_key"),
            (json!({"api_key": "sk_test abc"}), "credentials.api_key"),
            (
                json!({"api_key": "sk_t", "base_url": "ftp://x"}),
                "credentials.base_url",
            ),
            (
                json!({"api_key": "sk_t", "base_url": "not a url"}),
                "credentials.base_url",
            ),
            (
                json!({"api_key": "sk_t", "base_url": "http://u:p@host"}),
                "credentials.base_url",
            ),
            (json!({"api_key": "sk_t", "base_url": 1}), "credentials.base_url"),
        ] {
            let err = build(credentials.clone()).expect_err("refused");
            assert_eq!(err.0, field, "{credentials}");
            assert!(
                !err.1.contains("pk_test_abc") && !err.1.contains("sk_test"),
                "{}",
                err.1
            );
        }
    }

    #[test]
    fn the_more_specific_decline_code_wins() {
        let generic = json!({"code": "card_declined", "decline_code": "insufficient_funds", "message": "m"});
        assert_eq!(decline_from(&generic).code, "insufficient_funds");
        let specific = json!({"code": "expired_card", "decline_code": "expired_card"});
        assert_eq!(decline_from(&specific).code, "expired_card");
        let processing = json!({"code": "processing_error"});
        assert!(decline_from(&processing).retryable());
        assert_eq!(decline_from(&json!({"code": "card_declined"})).code, "card_declined");
        assert_eq!(decline_from(&json!({})).code, "card_declined");
        // What is not shaped as a code is none; a message is printable and bounded.
        let hostile = json!({"code": "card_declined", "decline_code": "bad\u{0}code", "message": format!("a\u{0}b{}", "x".repeat(900))});
        let d = decline_from(&hostile);
        assert_eq!(d.code, "card_declined");
        assert!(
            d.message.starts_with("a b") && d.message.chars().count() == MESSAGE_CHARS_MAX,
            "{}",
            d.message
        );
        assert_eq!(decline_from(&json!({"code": "x".repeat(65)})).code, "card_declined");
        let refund = json!({"id": "re_1", "status": "failed", "failure_reason": "a b"});
        match refund_outcome(&refund).expect("outcome").status {
            RefundStatus::Failed(d) => assert_eq!(d.code, "refund_failed"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payment_intent_statuses_map_to_provider_statuses() {
        let status = |v: Value| payment_intent_status(&v).expect("known");
        assert_eq!(
            status(json!({"status": "requires_capture"})),
            ProviderStatus::Authorized
        );
        assert_eq!(status(json!({"status": "processing"})), ProviderStatus::Processing);
        assert_eq!(status(json!({"status": "succeeded"})), ProviderStatus::Captured);
        assert_eq!(status(json!({"status": "canceled"})), ProviderStatus::Voided);
        let failed = json!({"status": "requires_payment_method",
            "last_payment_error": {"code": "card_declined", "decline_code": "do_not_honor", "message": "no"}});
        assert_eq!(status(failed), declined("do_not_honor", "no"));
        match status(json!({"status": "requires_action"})) {
            ProviderStatus::Declined(d) => assert_eq!(d.code, "authentication_required"),
            other => panic!("{other:?}"),
        }
        match status(json!({"status": "requires_payment_method", "last_payment_error": null})) {
            ProviderStatus::Declined(d) => assert_eq!(d.code, "payment_intent_incomplete"),
            other => panic!("{other:?}"),
        }
        assert!(payment_intent_status(&json!({"status": "bogus"})).is_err());
    }

    #[test]
    fn card_numbers_are_redacted_from_messages() {
        assert_eq!(
            redact("card 4242424242424242 and cvc 123, HTTP 402"),
            "card [redacted] and cvc 123, HTTP 402"
        );
        assert_eq!(redact("12345678901"), "12345678901");
    }

    #[test]
    fn ids_that_would_change_the_path_are_refused() {
        assert!(is_stripe_id("pi_3MtwBwLkdIwHu7ix28a3tqPa"));
        for bad in ["", "pi/../x", "pi_1?x=1", "pi 1", "pi_%2F"] {
            assert!(!is_stripe_id(bad), "{bad}");
        }
    }
}
