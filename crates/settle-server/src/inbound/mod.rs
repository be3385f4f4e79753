//! Inbound provider webhooks: `POST /webhooks/{connector}/{connector_account_id}`, the inbox,
//! the worker that applies it, and the operator's view (`GET /admin/v1/webhook_inbox`).
//!
//! The endpoint is public (no API key: the provider signs instead). In order:
//! 1. the path names a connector account (found by id across merchants, in the system scope)
//!    of the path's connector, else 404 — an unknown id, a wrong connector and another
//!    merchant's id all answer the same;
//! 2. the raw body (1 MiB at most) is verified against the account's signing secret
//!    (`signature`: Stripe's scheme, 300 s tolerance against `state.clock`) — bad, missing or
//!    malformed signatures and stale or future timestamps answer 400 and store nothing;
//! 3. the body must be a JSON object with an event `id` and `type` (400 otherwise);
//! 4. the entry is queued for the inbox writer (`writer`: group commit) and the handler answers
//!    200 once it is committed, `"duplicate": true` when the merchant's inbox already held the
//!    event (it is not applied again).
//!
//! Applying is asynchronous (`worker`), serialized per payment by the payment's compare-and-set
//! and claims, through the payment service. The sandbox sends its delayed outcomes through this
//! very endpoint (`sandbox`).
//!
//! Signing secrets live in the connector account's sealed credentials (`webhook_secret`):
//! a Stripe account's is copied from Stripe by the merchant; a sandbox account gets one
//! generated at creation (shown once) unless given. Verified endpoints are cached for
//! [`ENDPOINT_CACHE_TTL`]: credentials never change after creation.
//!
//! Architecture invariant: nothing unverified is stored, and the secret is never logged.

pub mod sandbox;
pub mod signature;
pub mod worker;
pub mod writer;

use std::{
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde_json::{json, Value};
use settle_domain::{
    inbound::{InboxEntry, InboxStatus, EVENT_FIELD_LEN_MAX},
    payment::ConnectorAccount,
    Secret,
};
use settle_store::{Mode, Scope};

use crate::{
    cache::TtlCache,
    context::Reply,
    error::ApiError,
    extract::{page_and_filters, read_body},
    ledger::{cursor_error, list_reply},
    payments::connectors::sealing_context,
    AppState,
};
use writer::InboxWriter;

/// How long a verified endpoint (account, merchant, secret) is trusted without a database read.
pub const ENDPOINT_CACHE_TTL: Duration = Duration::from_secs(60);
/// The credentials field holding an account's signing secret.
pub const SECRET_FIELD: &str = "webhook_secret";
/// The prefix of signing secrets (Stripe's, and the ones Settle generates).
pub const SECRET_PREFIX: &str = "whsec_";
const SECRET_LEN_MAX: usize = 255;

/// A connector account as a webhook endpoint.
pub struct Endpoint {
    pub merchant_id: String,
    pub account_id: String,
    pub connector: String,
    pub secret: Option<Secret<String>>,
}

/// The inbound side's share of the application state.
pub struct Inbound {
    pub writer: InboxWriter,
    endpoints: TtlCache<String, Arc<Endpoint>>,
    /// For the sandbox's own webhooks to this process.
    pub http: reqwest::Client,
    /// Sandbox webhooks scheduled and not yet sent (bounded by `sandbox::SCHEDULED_MAX`).
    pub scheduled: AtomicUsize,
}

impl Inbound {
    pub fn new(writer: InboxWriter) -> Inbound {
        Inbound {
            writer,
            endpoints: TtlCache::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            scheduled: AtomicUsize::new(0),
        }
    }
}

/// The endpoint of connector account `account_id`, whichever merchant owns it.
pub async fn endpoint(state: &AppState, account_id: &str) -> Result<Option<Arc<Endpoint>>, ApiError> {
    if let Some(endpoint) = state.inbound.endpoints.get(account_id, ENDPOINT_CACHE_TTL) {
        return Ok(Some(endpoint));
    }
    let account = {
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        tx.find_connector_account(account_id).await?
    };
    let Some(account) = account else {
        return Ok(None);
    };
    let endpoint = Arc::new(Endpoint {
        secret: secret_of(state, &account)?,
        merchant_id: account.merchant_id,
        account_id: account.id,
        connector: account.connector,
    });
    state
        .inbound
        .endpoints
        .put(endpoint.account_id.clone(), endpoint.clone());
    Ok(Some(endpoint))
}

/// Opens an account's credentials and takes its signing secret, if it has one.
pub fn secret_of(state: &AppState, account: &ConnectorAccount) -> Result<Option<Secret<String>>, ApiError> {
    let credentials = credentials_of(state, account)?;
    Ok(credentials
        .get(SECRET_FIELD)
        .and_then(Value::as_str)
        .map(|s| Secret::new(s.to_owned())))
}

/// An account's decrypted credentials.
pub fn credentials_of(state: &AppState, account: &ConnectorAccount) -> Result<Value, ApiError> {
    let context = sealing_context(&account.merchant_id, &account.id);
    let plain = state
        .vault
        .open(&account.credentials_sealed, &context)
        .map_err(|_| ApiError::Internal(format!("connector account {} credentials do not open", account.id)))?;
    serde_json::from_slice(&plain)
        .map_err(|_| ApiError::Internal(format!("connector account {} credentials unreadable", account.id)))
}

/// Checks a `webhook_secret` given in a new account's credentials and, for a sandbox account
/// without one, generates it (into `credentials`). Returns the generated secret, to be shown
/// once.
pub fn prepare_secret(state: &AppState, connector: &str, credentials: &mut Value) -> Result<Option<String>, ApiError> {
    let param = format!("credentials.{SECRET_FIELD}");
    match credentials.get(SECRET_FIELD) {
        None | Some(Value::Null) => {}
        Some(Value::String(s))
            if s.starts_with(SECRET_PREFIX)
                && s.len() > SECRET_PREFIX.len()
                && s.len() <= SECRET_LEN_MAX
                && s.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            return Ok(None)
        }
        // The message never repeats the value.
        Some(_) => {
            return Err(ApiError::invalid(
                param,
                format!(
                    "`credentials.{SECRET_FIELD}` must be a signing secret starting with `{SECRET_PREFIX}` \
                     (printable ASCII, at most {SECRET_LEN_MAX} characters)"
                ),
            ))
        }
    }
    if connector != settle_connectors::sandbox::NAME {
        if let Some(map) = credentials.as_object_mut() {
            map.remove(SECRET_FIELD);
        }
        return Ok(None);
    }
    let secret = state.ids.secret(SECRET_PREFIX);
    if let Some(map) = credentials.as_object_mut() {
        map.insert(SECRET_FIELD.into(), Value::String(secret.clone()));
    }
    Ok(Some(secret))
}

/// The path a provider posts an account's events to.
pub fn webhook_path(connector: &str, account_id: &str) -> String {
    format!("/webhooks/{connector}/{account_id}")
}

pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/{connector}/{account_id}", post(receive))
}

pub fn admin_router() -> Router<AppState> {
    Router::new().route("/admin/v1/webhook_inbox", get(list))
}

fn endpoint_not_found(account_id: &str) -> ApiError {
    ApiError::not_found_at("connector account", account_id, "account_id")
}

async fn receive(
    State(state): State<AppState>,
    Path((connector, account_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !settle_connectors::CONNECTORS.contains(&connector.as_str()) || account_id.len() > EVENT_FIELD_LEN_MAX {
        return Err(endpoint_not_found(&account_id));
    }
    let endpoint = endpoint(&state, &account_id)
        .await?
        .filter(|e| e.connector == connector)
        .ok_or_else(|| endpoint_not_found(&account_id))?;
    let Some(secret) = &endpoint.secret else {
        return Err(ApiError::Invalid {
            code: "webhook_secret_not_configured",
            message: format!(
                "this connector account has no `credentials.{SECRET_FIELD}`: create one with the signing secret"
            ),
            param: None,
        });
    };
    let bytes = read_body(body).await?;
    let header = match headers.get(signature::HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| signature_error(signature::SignatureError::Malformed))?,
        ),
    };
    let now = state.clock.now();
    signature::verify(header, secret.expose().as_bytes(), &bytes, now.unix_seconds()).map_err(signature_error)?;
    let (event_id, kind) = event_fields(&bytes)?;
    let payload = String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::Invalid {
        code: "invalid_json",
        message: "the body is not UTF-8 JSON".into(),
        param: Some("body".into()),
    })?;
    let entry = InboxEntry {
        merchant_id: endpoint.merchant_id.clone(),
        id: state.ids.make("whin"),
        connector: endpoint.connector.clone(),
        connector_account_id: endpoint.account_id.clone(),
        provider_event_id: event_id.clone(),
        kind,
        payload,
        status: InboxStatus::Received,
        attempts: 0,
        next_attempt_at: now,
        reason: None,
        payment_id: None,
        created_at: now,
        updated_at: now,
    };
    let new = state.inbound.writer.insert(entry).await?;
    tracing::debug!(account = %endpoint.account_id, event = %event_id, duplicate = !new, "webhook accepted");
    let body = json!({ "object": "webhook_receipt", "received": true, "duplicate": !new, "event_id": event_id });
    Ok(Reply::json(StatusCode::OK, &body)?.into_response())
}

fn signature_error(e: signature::SignatureError) -> ApiError {
    ApiError::Invalid {
        code: e.code(),
        message: e.message(),
        param: Some("Stripe-Signature".into()),
    }
}

/// The event's `id` and `type`: strings of 1–255 printable characters.
fn event_fields(bytes: &[u8]) -> Result<(String, String), ApiError> {
    let value = crate::extract::parse_json(bytes)?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::invalid(
            "body",
            "the body must be a JSON object (a provider event)",
        ));
    };
    // The ids Settle looks a payment up by: one with a NUL could not be compared (PostgreSQL
    // refuses it in text). A NUL elsewhere is kept in the stored payload as JSON escapes it.
    for (pointer, param) in [
        ("/data/object/id", "data.object.id"),
        (
            "/data/object/metadata/settle_reference",
            "data.object.metadata.settle_reference",
        ),
    ] {
        if value
            .pointer(pointer)
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains('\0'))
        {
            return Err(ApiError::invalid(
                param,
                format!("`{param}` must not contain a NUL character"),
            ));
        }
    }
    let field = |name: &str| -> Result<String, ApiError> {
        match object.get(name) {
            None | Some(Value::Null) => Err(ApiError::missing(name)),
            Some(Value::String(s))
                if !s.is_empty() && s.chars().count() <= EVENT_FIELD_LEN_MAX && !s.chars().any(char::is_control) =>
            {
                Ok(s.clone())
            }
            Some(_) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a string of 1 to {EVENT_FIELD_LEN_MAX} printable characters"),
            )),
        }
    };
    Ok((field("id")?, field("type")?))
}

/// The operator's view of one inbox entry.
pub fn entry_json(e: &InboxEntry) -> Value {
    json!({
        "id": e.id,
        "object": "webhook_inbox_entry",
        "merchant_id": e.merchant_id,
        "connector": e.connector,
        "connector_account_id": e.connector_account_id,
        "event_id": e.provider_event_id,
        "type": e.kind,
        "status": e.status.as_str(),
        "attempts": e.attempts,
        "next_attempt": (e.status == InboxStatus::Received).then(|| e.next_attempt_at.to_rfc3339()),
        "reason": e.reason,
        "payment_id": e.payment_id,
        "payload": serde_json::from_str::<Value>(&e.payload).unwrap_or(Value::Null),
        "created": e.created_at.to_rfc3339(),
        "updated": e.updated_at.to_rfc3339(),
    })
}

async fn list(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let (page, filters) = page_and_filters(query.as_deref().unwrap_or(""), &["status", "merchant_id"])?;
    let mut status = None;
    let mut merchant_id = None;
    for (name, value) in filters {
        if name == "status" {
            status = Some(InboxStatus::parse(&value).ok_or_else(|| {
                ApiError::invalid("status", "`status` must be one of received, applied, ignored, parked")
            })?);
        } else {
            merchant_id = Some(value);
        }
    }
    let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
    let listing = tx
        .list_inbox(status, merchant_id.as_deref(), &page.0)
        .await
        .map_err(|e| cursor_error(e, &page))?;
    list_reply(
        "/admin/v1/webhook_inbox",
        listing.items.iter().map(entry_json).collect(),
        listing.has_more,
    )
}
