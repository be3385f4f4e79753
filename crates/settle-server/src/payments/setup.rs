//! A merchant's connector accounts (`/v1/connector_accounts`) and routing rules (`/v1/routing`).

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use settle_connectors::CONNECTORS;
use settle_domain::payment::ConnectorAccount;

use crate::{
    context::{Ctx, Reply},
    error::ApiError,
    events::new_event,
    extract::JsonBody,
    fields,
    payments::{connectors::sealing_context, rule_json, submitted_routing_rules},
    AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/connector_accounts", post(create).get(list))
        .route("/v1/connector_accounts/{id}", post(update).get(retrieve))
        .route("/v1/routing", post(put_routing).get(get_routing))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    connector: String,
    label: Option<String>,
    credentials: Option<Value>,
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    if !CONNECTORS.contains(&body.connector.as_str()) {
        return Err(ApiError::invalid(
            "connector",
            format!("`connector` must be one of {}", CONNECTORS.join(", ")),
        ));
    }
    let mut credentials = body.credentials.unwrap_or_else(|| json!({}));
    if !credentials.is_object() {
        return Err(ApiError::invalid("credentials", "`credentials` must be an object"));
    }
    // The webhook signing secret: checked, or generated for a sandbox account (shown once).
    let generated = crate::inbound::prepare_secret(&state, &body.connector, &mut credentials)?;
    state.connectors.check_credentials(&body.connector, &credentials)?;
    let id = state.ids.make("mca");
    let account = ConnectorAccount {
        merchant_id: merchant_id.clone(),
        id: id.clone(),
        connector: body.connector,
        label: fields::name(body.label, "label")?,
        credentials_sealed: state
            .vault
            .seal(credentials.to_string().as_bytes(), &sealing_context(&merchant_id, &id)),
        enabled: true,
        created_at: state.clock.now(),
    };
    let mut tx = state.begin_write(&merchant_id).await?;
    tx.insert_connector_account(&account).await?;
    let data = account_json(&state, &account);
    let event = new_event(
        &state,
        &merchant_id,
        "connector_account.created",
        "connector_account",
        &id,
        data.clone(),
    );
    tx.insert_events(&[event]).await?;
    let reply = Reply::json(StatusCode::CREATED, &data)?;
    let audit = ctx.audit(
        &state,
        &merchant_id,
        "connector_account.create",
        "connector_account",
        &id,
    );
    // The stored reply (an idempotent replay) never holds the generated secret.
    let response = ctx.commit(&state, tx, reply, &[audit]).await?;
    state.connectors.forget_routing(&merchant_id);
    match generated {
        Some(secret) => {
            let mut shown = data;
            shown["webhook_secret"] = json!(secret);
            Ok(Reply::json(StatusCode::CREATED, &shown)?.into_response())
        }
        None => Ok(response),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    enabled: Option<bool>,
    /// Never changed: read only to say so.
    credentials: Option<serde::de::IgnoredAny>,
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Response, ApiError> {
    if body.credentials.is_some() {
        return Err(ApiError::invalid(
            "credentials",
            "a connector account's `credentials` cannot be changed: create a new account and disable this one",
        ));
    }
    let enabled = body.enabled.ok_or_else(|| ApiError::missing("enabled"))?;
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.begin_write(&merchant_id).await?;
    if !tx.set_connector_account_enabled(&merchant_id, &id, enabled).await? {
        return Err(ApiError::not_found("connector account", &id));
    }
    let account = tx
        .get_connector_account(&merchant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("connector account", &id))?;
    let data = account_json(&state, &account);
    let event = new_event(
        &state,
        &merchant_id,
        "connector_account.updated",
        "connector_account",
        &id,
        data.clone(),
    );
    tx.insert_events(&[event]).await?;
    let reply = Reply::json(StatusCode::OK, &data)?;
    let audit = ctx.audit(
        &state,
        &merchant_id,
        "connector_account.update",
        "connector_account",
        &id,
    );
    let response = ctx.commit(&state, tx, reply, &[audit]).await?;
    state.connectors.forget_routing(&merchant_id);
    Ok(response)
}

async fn retrieve(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let account = tx
        .get_connector_account(&merchant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("connector account", &id))?;
    Ok(Reply::json(StatusCode::OK, &account_json(&state, &account))?.into_response())
}

async fn list(State(state): State<AppState>, ctx: Ctx, _: crate::extract::NoQuery) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let accounts = tx.list_connector_accounts(&merchant_id).await?;
    let data: Vec<Value> = accounts.iter().map(|a| account_json(&state, a)).collect();
    crate::ledger::list_reply("/v1/connector_accounts", data, false)
}

/// Credentials are never shown, not even masked.
fn account_json(state: &AppState, a: &ConnectorAccount) -> Value {
    json!({
        "id": a.id,
        "object": "connector_account",
        "connector": a.connector,
        "label": a.label,
        "enabled": a.enabled,
        "webhook_path": crate::inbound::webhook_path(&a.connector, &a.id),
        "circuit": state.connectors.breaker_state(&a.merchant_id, &a.id),
        "created": a.created_at.to_rfc3339(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingBody {
    rules: Value,
}

async fn put_routing(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<RoutingBody>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let rules = submitted_routing_rules(&body.rules)?;
    let mut tx = state.begin_write(&merchant_id).await?;
    for (i, rule) in rules.iter().enumerate() {
        let known = tx
            .get_connector_account(&merchant_id, &rule.connector_account_id)
            .await?
            .is_some();
        if !known {
            return Err(ApiError::invalid(
                format!("rules[{i}].connector_account_id"),
                format!("no such connector account: '{}'", rule.connector_account_id),
            ));
        }
    }
    let stored = Value::Array(rules.iter().map(rule_json).collect());
    tx.put_routing(&merchant_id, &stored, state.clock.now()).await?;
    let data = json!({ "object": "routing", "rules": stored });
    let event = new_event(
        &state,
        &merchant_id,
        "routing_rules.updated",
        "routing_rules",
        &merchant_id,
        data.clone(),
    );
    tx.insert_events(&[event]).await?;
    let reply = Reply::json(StatusCode::OK, &data)?;
    let audit = ctx.audit(&state, &merchant_id, "routing.update", "routing", &merchant_id);
    let response = ctx.commit(&state, tx, reply, &[audit]).await?;
    state.connectors.forget_routing(&merchant_id);
    Ok(response)
}

async fn get_routing(
    State(state): State<AppState>,
    ctx: Ctx,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let rules = tx.get_routing(&merchant_id).await?.unwrap_or_else(|| json!([]));
    Ok(Reply::json(StatusCode::OK, &json!({ "object": "routing", "rules": rules }))?.into_response())
}
