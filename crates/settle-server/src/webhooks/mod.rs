//! Outbound webhooks over HTTP: a merchant's endpoints (create with a signing secret shown
//! once, list, get, update, delete, rotate the secret), every delivery attempt to an endpoint,
//! and redelivery of an event. The dispatcher that delivers is in [`dispatch`].
//!
//! Signing secrets are `whsec_` + 43 base62 characters, stored sealed (AES-256-GCM under the
//! vault key, the endpoint's merchant and id as associated data). A rotation keeps the old
//! secret signing for 24 hours, so a receiver can switch over without missing an event.

pub mod dispatch;

use axum::{
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use settle_domain::{
    event,
    webhook::{self, Api, Delivery, DeliveryAttempt, DeliveryStatus, Endpoint},
};
use settle_store::{events::ENDPOINTS_MAX, Listing, Mode, Scope, Tx};

use crate::{
    context::{Ctx, Reply},
    error::ApiError,
    events::{load as load_event, new_event},
    extract::{page_and_filters, JsonBody, Page},
    fields,
    ledger::{cursor_error, list_reply},
    AppState,
};

/// Longest endpoint URL.
pub const URL_LEN_MAX: usize = 2_048;
/// Most patterns in `enabled_events`.
pub const PATTERNS_MAX: usize = 64;
const SECRET_PREFIX: &str = "whsec_";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhook_endpoints", post(create).get(list))
        .route("/v1/webhook_endpoints/{id}", get(retrieve).post(update).delete(delete))
        .route("/v1/webhook_endpoints/{id}/rotate_secret", post(rotate))
        .route("/v1/webhook_endpoints/{id}/deliveries", get(deliveries))
        .route("/v1/events/{id}/redeliver", post(redeliver))
}

pub(crate) fn sealing_context(merchant_id: &str, id: &str) -> String {
    format!("webhook_endpoint:{merchant_id}:{id}")
}

/// The endpoint's signing secrets in clear, current first (the previous one while it lasts).
pub fn secrets(state: &AppState, endpoint: &Endpoint, now: settle_domain::Timestamp) -> Result<Vec<String>, ApiError> {
    let context = sealing_context(&endpoint.merchant_id, &endpoint.id);
    endpoint
        .signing_secrets(now)
        .into_iter()
        .map(|sealed| {
            let plain = state
                .vault
                .open(sealed, &context)
                .map_err(|_| ApiError::Internal(format!("webhook endpoint {} secret unreadable", endpoint.id)))?;
            String::from_utf8(plain).map_err(|_| ApiError::Internal("webhook secret is not UTF-8".into()))
        })
        .collect()
}

pub fn endpoint_json(e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "object": "webhook_endpoint",
        "url": e.url,
        "description": e.description,
        "enabled_events": e.enabled_events,
        "status": if e.enabled { "enabled" } else { "disabled" },
        "api": e.api.as_str(),
        "disabled_reason": e.disabled_reason,
        "failing_since": e.failing_since.map(|t| t.to_rfc3339()),
        "previous_secret_expires_at": e.previous_secret_expires_at.map(|t| t.to_rfc3339()),
        "created": e.created_at.to_rfc3339(),
        "updated": e.updated_at.to_rfc3339(),
    })
}

fn attempt_json(a: &DeliveryAttempt) -> Value {
    json!({
        "id": a.id,
        "object": "webhook_delivery_attempt",
        "delivery_id": a.delivery_id,
        "endpoint_id": a.endpoint_id,
        "event_id": a.event_id,
        "attempt": a.attempt,
        "status_code": a.status_code,
        "succeeded": a.succeeded(),
        "latency_ms": a.latency_ms,
        "response_body": a.response_body,
        "error": a.error,
        "created": a.created_at.to_rfc3339(),
    })
}

fn delivery_json(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "object": "webhook_delivery",
        "endpoint_id": d.endpoint_id,
        "event_id": d.event_id,
        "status": d.status.as_str(),
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at.to_rfc3339(),
        "created": d.created_at.to_rfc3339(),
    })
}

/// Checks an endpoint URL: http or https, a host, no credentials, no fragment, at most
/// [`URL_LEN_MAX`] characters as stored (normalized); and when private targets are refused, no loopback or private address literal
/// and no `localhost` (names are checked again when resolved, at each delivery).
pub fn check_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid("url", format!("`url` {why}"));
    if url.len() > URL_LEN_MAX {
        return Err(bad(&format!("must be at most {URL_LEN_MAX} characters")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("is not a valid URL: {e}")))?;
    // Written as `scheme://host…`: a URL parser repairs `http:///x` or `http:x` into a URL of
    // host `x`, which is not what was written.
    let after_scheme = url.trim().split_once(':').map_or("", |(_, rest)| rest);
    if !after_scheme.starts_with("//") || after_scheme[2..].starts_with(['/', '\\']) || url.contains('\\') {
        return Err(bad(
            "must be written as http://host/… or https://host/…, without backslashes",
        ));
    }
    crate::fields::no_card_number(url, "url")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must use http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    parsed.host_str().ok_or_else(|| bad("must name a host"))?;
    if !crate::outbound::url_allowed(parsed.as_str(), state.config.webhook_private_targets) {
        return Err(bad(
            "points at a loopback or private address, which this server refuses (see SETTLE_WEBHOOK_PRIVATE_TARGETS)",
        ));
    }
    if parsed.fragment().is_some() {
        return Err(bad("must not have a `#` fragment (it is never sent)"));
    }
    // The URL as stored: non-ASCII characters percent-encoded, which may triple its length.
    let normalized = parsed.to_string();
    if normalized.len() > URL_LEN_MAX {
        return Err(bad(&format!(
            "must be at most {URL_LEN_MAX} characters once normalized (non-ASCII characters are percent-encoded)"
        )));
    }
    Ok(normalized)
}

/// Checks `enabled_events` against the endpoint's API: Settle's types and patterns, or the
/// Stripe types Settle sends (see `event::STRIPE_TYPES`). Each pattern is kept once.
fn check_patterns(api: Api, patterns: Vec<String>) -> Result<Vec<String>, ApiError> {
    if patterns.is_empty() || patterns.len() > PATTERNS_MAX {
        return Err(ApiError::invalid(
            "enabled_events",
            format!("`enabled_events` must list 1 to {PATTERNS_MAX} event types"),
        ));
    }
    let (valid, what): (fn(&str) -> bool, &str) = match api {
        Api::Settle => (event::is_valid_pattern, "an event type"),
        Api::Stripe => (event::is_valid_stripe_pattern, "a Stripe event type Settle sends"),
    };
    for (i, p) in patterns.iter().enumerate() {
        if !valid(p) {
            return Err(ApiError::invalid(
                format!("enabled_events[{i}]"),
                format!("`{p}` is not {what}, `<object>.*` or `*`"),
            ));
        }
    }
    let mut unique: Vec<String> = Vec::with_capacity(patterns.len());
    for p in patterns {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    Ok(unique)
}

/// How an API shows an endpoint.
pub type Shape = fn(&Endpoint) -> Value;

/// A new endpoint's fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointInput {
    pub url: String,
    pub enabled_events: Vec<String>,
    pub description: Option<String>,
    /// `false` makes it disabled (by the merchant) from the start.
    pub enabled: Option<bool>,
}

/// Changes to an endpoint; an absent field is kept.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub enabled_events: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// What a change to an endpoint records and answers.
struct Change<'a> {
    kind: &'static str,
    action: &'static str,
    status: StatusCode,
    /// A new signing secret, shown in this answer only.
    secret: Option<&'a str>,
}

/// Writes the endpoint's event and replies with it; the secret is left out of the stored
/// idempotent reply.
async fn finish(
    state: &AppState,
    ctx: &Ctx,
    mut tx: Box<dyn Tx>,
    endpoint: &Endpoint,
    change: Change<'_>,
    shape: Shape,
) -> Result<Response, ApiError> {
    let merchant_id = &endpoint.merchant_id;
    tx.insert_events(&[new_event(
        state,
        merchant_id,
        change.kind,
        "webhook_endpoint",
        &endpoint.id,
        endpoint_json(endpoint),
    )])
    .await?;
    let mut shown = shape(endpoint);
    let mut kept = shown.clone();
    if let Some(secret) = change.secret {
        shown["secret"] = json!(secret);
        kept["secret"] = json!(format!(
            "{SECRET_PREFIX}… (shown once; rotate the secret for a new one)"
        ));
    }
    let audit = ctx.audit(state, merchant_id, change.action, "webhook_endpoint", &endpoint.id);
    let reply = Reply::json(change.status, &shown)?;
    let kept = Reply::json(change.status, &kept)?;
    ctx.commit_keeping(state, tx, reply, &kept, &[audit]).await
}

/// Creates an endpoint speaking `api`, with a new signing secret shown once.
pub async fn create_endpoint(
    state: &AppState,
    ctx: &Ctx,
    api: Api,
    input: EndpointInput,
    status: StatusCode,
    shape: Shape,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let url = check_url(state, &input.url)?;
    let enabled_events = check_patterns(api, input.enabled_events)?;
    let description = crate::fields::description(input.description)?;
    let id = state.ids.make("we");
    let secret = state.ids.secret(SECRET_PREFIX);
    let now = state.clock.now();
    let endpoint = Endpoint {
        merchant_id: merchant_id.clone(),
        id: id.clone(),
        url,
        description,
        enabled_events,
        enabled: input.enabled.unwrap_or(true),
        secret_sealed: state.vault.seal(secret.as_bytes(), &sealing_context(&merchant_id, &id)),
        previous_secret_sealed: None,
        previous_secret_expires_at: None,
        failing_since: None,
        disabled_reason: (input.enabled == Some(false)).then(|| "disabled_by_merchant".to_owned()),
        api,
        created_at: now,
        updated_at: now,
    };
    let mut tx = state.begin_write(&merchant_id).await?;
    if tx.count_endpoints(&merchant_id).await? >= i64::from(ENDPOINTS_MAX) {
        return Err(ApiError::Unprocessable {
            code: "too_many_endpoints",
            message: format!("a merchant may have at most {ENDPOINTS_MAX} webhook endpoints"),
            param: None,
        });
    }
    tx.insert_endpoint(&endpoint).await?;
    let change = Change {
        kind: "webhook_endpoint.created",
        action: "webhook_endpoint.create",
        status,
        secret: Some(&secret),
    };
    finish(state, ctx, tx, &endpoint, change, shape).await
}

/// The endpoint `id` of the merchant; with `api`, only if it speaks that API (the Stripe layer
/// sees only the endpoints made through it; the native API sees all).
async fn load(tx: &mut dyn Tx, merchant_id: &str, id: &str, api: Option<Api>) -> Result<Endpoint, ApiError> {
    tx.get_endpoint(merchant_id, id)
        .await?
        .filter(|e| api.is_none_or(|a| a == e.api))
        .ok_or_else(|| ApiError::not_found("webhook endpoint", id))
}

pub async fn load_endpoint(
    state: &AppState,
    merchant_id: &str,
    id: &str,
    api: Option<Api>,
) -> Result<Endpoint, ApiError> {
    let mut tx = state.reader(merchant_id).await?;
    load(tx.as_mut(), merchant_id, id, api).await
}

pub async fn list_endpoints(
    state: &AppState,
    merchant_id: &str,
    api: Option<Api>,
    page: &Page,
) -> Result<Listing<Endpoint>, ApiError> {
    let mut tx = state.reader(merchant_id).await?;
    tx.list_endpoints(merchant_id, api, &page.0)
        .await
        .map_err(|e| cursor_error(e, page))
}

/// Applies `changes` to the endpoint `id` (of `api`, when given).
pub async fn update_endpoint(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    api: Option<Api>,
    changes: EndpointChanges,
    shape: Shape,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let url = changes.url.map(|u| check_url(state, &u)).transpose()?;
    let description = crate::fields::description(changes.description)?;
    let mut tx = state.begin_write(&merchant_id).await?;
    let mut endpoint = load(tx.as_mut(), &merchant_id, id, api).await?;
    if let Some(patterns) = changes.enabled_events {
        endpoint.enabled_events = check_patterns(endpoint.api, patterns)?;
    }
    if let Some(url) = url {
        endpoint.url = url;
    }
    if description.is_some() {
        endpoint.description = description;
    }
    if let Some(enabled) = changes.enabled {
        if enabled && !endpoint.enabled {
            endpoint.failing_since = None;
            endpoint.disabled_reason = None;
        }
        if !enabled && endpoint.enabled {
            endpoint.disabled_reason = Some("disabled_by_merchant".into());
        }
        endpoint.enabled = enabled;
    }
    endpoint.updated_at = state.clock.now();
    tx.update_endpoint(&endpoint).await?;
    let change = Change {
        kind: "webhook_endpoint.updated",
        action: "webhook_endpoint.update",
        status: StatusCode::OK,
        secret: None,
    };
    finish(state, ctx, tx, &endpoint, change, shape).await
}

/// Deletes the endpoint `id` (of `api`, when given); its pending deliveries die at their next
/// round. `shape` renders the deleted endpoint.
pub async fn delete_endpoint(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    api: Option<Api>,
    shape: Shape,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.begin_write(&merchant_id).await?;
    let endpoint = load(tx.as_mut(), &merchant_id, id, api).await?;
    tx.delete_endpoint(&merchant_id, id).await?;
    let mut data = endpoint_json(&endpoint);
    data["deleted"] = json!(true);
    let event = new_event(
        state,
        &merchant_id,
        "webhook_endpoint.deleted",
        "webhook_endpoint",
        id,
        data,
    );
    tx.insert_events(&[event]).await?;
    let audit = ctx.audit(state, &merchant_id, "webhook_endpoint.delete", "webhook_endpoint", id);
    ctx.commit(state, tx, Reply::json(StatusCode::OK, &shape(&endpoint))?, &[audit])
        .await
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<EndpointInput>,
) -> Result<Response, ApiError> {
    create_endpoint(&state, &ctx, Api::Settle, body, StatusCode::CREATED, endpoint_json).await
}

async fn retrieve(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let endpoint = load_endpoint(&state, ctx.merchant_id(), &id, None).await?;
    Ok(Reply::json(StatusCode::OK, &endpoint_json(&endpoint))?.into_response())
}

async fn list(State(state): State<AppState>, ctx: Ctx, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let (page, _) = page_and_filters(query.as_deref().unwrap_or(""), &[])?;
    let listing = list_endpoints(&state, ctx.merchant_id(), None, &page).await?;
    list_reply(
        "/v1/webhook_endpoints",
        listing.items.iter().map(endpoint_json).collect(),
        listing.has_more,
    )
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<EndpointChanges>,
) -> Result<Response, ApiError> {
    update_endpoint(&state, &ctx, &id, None, body, endpoint_json).await
}

async fn rotate(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: JsonBody<crate::extract::NoFields>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.begin_write(&merchant_id).await?;
    let mut endpoint = load(tx.as_mut(), &merchant_id, &id, None).await?;
    let now = state.clock.now();
    let secret = state.ids.secret(SECRET_PREFIX);
    endpoint.previous_secret_sealed = Some(std::mem::replace(
        &mut endpoint.secret_sealed,
        state.vault.seal(secret.as_bytes(), &sealing_context(&merchant_id, &id)),
    ));
    endpoint.previous_secret_expires_at = now.checked_add_seconds(webhook::PREVIOUS_SECRET_SECONDS);
    endpoint.updated_at = now;
    tx.update_endpoint(&endpoint).await?;
    let change = Change {
        kind: "webhook_endpoint.updated",
        action: "webhook_endpoint.rotate_secret",
        status: StatusCode::OK,
        secret: Some(&secret),
    };
    finish(&state, &ctx, tx, &endpoint, change, endpoint_json).await
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
    _: JsonBody<crate::extract::NoFields>,
) -> Result<Response, ApiError> {
    let shape = |e: &Endpoint| {
        let mut data = endpoint_json(e);
        data["deleted"] = json!(true);
        data
    };
    delete_endpoint(&state, &ctx, &id, None, shape).await
}

async fn deliveries(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (page, _) = page_and_filters(query.as_deref().unwrap_or(""), &[])?;
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    load(tx.as_mut(), &merchant_id, &id, None).await?;
    let listing = tx
        .list_delivery_attempts(&merchant_id, &id, &page.0)
        .await
        .map_err(|e| cursor_error(e, &page))?;
    list_reply(
        &format!("/v1/webhook_endpoints/{id}/deliveries"),
        listing.items.iter().map(attempt_json).collect(),
        listing.has_more,
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RedeliverBody {
    endpoint_id: Option<String>,
}

/// Queues the event again: for the named endpoint (enabled, whatever its `enabled_events`), or
/// for every enabled endpoint that wants it. 202 with the new deliveries.
async fn redeliver(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RedeliverBody>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    if let Some(e) = &body.endpoint_id {
        fields::client_id(e, "endpoint_id")?;
    }
    let event = load_event(&state, &merchant_id, &id).await?;
    let mut tx = state.begin_write(&merchant_id).await?;
    let targets: Vec<Endpoint> = match &body.endpoint_id {
        Some(endpoint_id) => {
            let endpoint = tx.get_endpoint(&merchant_id, endpoint_id).await?.ok_or_else(|| {
                ApiError::invalid("endpoint_id", format!("no such webhook endpoint: '{endpoint_id}'"))
            })?;
            if !endpoint.enabled {
                return Err(ApiError::Conflict {
                    code: "endpoint_disabled",
                    message: "the webhook endpoint is disabled; enable it first".into(),
                    param: Some("endpoint_id".into()),
                });
            }
            if endpoint.type_of(&event.kind).is_none() {
                return Err(ApiError::invalid(
                    "endpoint_id",
                    format!(
                        "the endpoint speaks the {} API, which has no `{}` events",
                        endpoint.api.as_str(),
                        event.kind
                    ),
                ));
            }
            vec![endpoint]
        }
        None => tx
            .enabled_endpoints(&merchant_id)
            .await?
            .into_iter()
            .filter(|e| e.wants(&event.kind))
            .collect(),
    };
    let now = state.clock.now();
    let queued: Vec<Delivery> = targets
        .iter()
        .map(|e| dispatch::delivery(&state, e, &event.id, now))
        .collect();
    tx.insert_deliveries(&queued).await?;
    let reply = Reply::json(
        StatusCode::ACCEPTED,
        &json!({ "object": "list", "data": queued.iter().map(delivery_json).collect::<Vec<_>>() }),
    )?;
    let audit = ctx.audit(&state, &merchant_id, "event.redeliver", "event", &id);
    ctx.commit(&state, tx, reply, &[audit]).await
}

/// How many deliveries of every merchant are in `status` (benchmarks and tests).
pub async fn count(state: &AppState, status: DeliveryStatus) -> Result<i64, ApiError> {
    let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
    Ok(tx.count_deliveries(status).await?)
}
