//! The operator API under `/admin/v1`: merchants and their API keys.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use settle_domain::{
    tenancy::{ApiKey, Merchant, MerchantStatus, Scopes},
    Currency, Timestamp,
};
use settle_store::{Mode, Scope};

use crate::{
    auth::{sha256_hex, API_KEY_LOOKUP_LEN, API_KEY_PREFIX},
    context::{Ctx, Reply},
    error::ApiError,
    extract::{JsonBody, Page},
    fields,
    ledger::{cursor_error, list_reply},
    AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/merchants", post(create_merchant).get(list_merchants))
        .route("/admin/v1/merchants/{id}", get(get_merchant))
        .route("/admin/v1/merchants/{id}/deactivate", post(deactivate_merchant))
        .route("/admin/v1/merchants/{id}/api_keys", post(create_key).get(list_keys))
        .route("/admin/v1/merchants/{id}/api_keys/{key_id}/revoke", post(revoke_key))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitBody {
    min: i64,
    max: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateMerchantBody {
    name: String,
    email: String,
    default_currency: Option<String>,
    amount_limits: Option<Map<String, Value>>,
    metadata: Option<Value>,
}

const EMAIL_LEN_MAX: usize = 254;

fn email(value: &str) -> Result<String, ApiError> {
    let value = value.trim().to_lowercase();
    let valid = value.len() <= EMAIL_LEN_MAX
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(value)
    } else {
        Err(ApiError::invalid("email", "`email` must be an email address"))
    }
}

/// `{"USD": {"min": 50, "max": 1000000}}`: per-currency payment amount limits in minor units.
fn amount_limits(value: Option<Map<String, Value>>) -> Result<Value, ApiError> {
    let mut out = Map::new();
    // The key each currency was given by: `usd` and `USD` are one currency, given twice.
    let mut given: Vec<(Currency, String)> = Vec::new();
    for (code, limit) in value.unwrap_or_default() {
        let param = format!("amount_limits.{code}");
        let currency: Currency = fields::currency(&code, &param)?;
        if let Some((_, first)) = given.iter().find(|(c, _)| *c == currency) {
            let param = format!("amount_limits.{first}");
            return Err(ApiError::invalid(
                &param,
                format!(
                    "`amount_limits` gives {} twice (`{first}` and `{code}`)",
                    currency.code()
                ),
            ));
        }
        given.push((currency, code.clone()));
        let limit: LimitBody = crate::extract::from_value(limit).map_err(|_| {
            ApiError::invalid(
                &param,
                format!("`{param}` must be {{\"min\": <minor units>, \"max\": <minor units>}}"),
            )
        })?;
        if limit.min < 1 || limit.max < limit.min {
            return Err(ApiError::invalid(&param, format!("`{param}` needs 1 <= min <= max")));
        }
        out.insert(
            currency.code().to_owned(),
            json!({ "min": limit.min, "max": limit.max }),
        );
    }
    Ok(Value::Object(out))
}

async fn create_merchant(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<CreateMerchantBody>,
) -> Result<Response, ApiError> {
    let name = fields::name(Some(body.name), "name")?.unwrap_or_default();
    let merchant = Merchant {
        id: state.ids.make("mer"),
        name,
        email: email(&body.email)?,
        default_currency: fields::currency(body.default_currency.as_deref().unwrap_or("USD"), "default_currency")?,
        amount_limits: amount_limits(body.amount_limits)?,
        metadata: fields::metadata(body.metadata, "metadata")?.unwrap_or_else(|| json!({})),
        status: MerchantStatus::Active,
        created_at: state.clock.now(),
        deactivated_at: None,
    };
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    match tx.insert_merchant(&merchant).await {
        Ok(()) => {}
        Err(e) if e.is_conflict_on("email") => {
            return Err(ApiError::Conflict {
                code: "email_taken",
                message: "a merchant with this email exists".into(),
                param: Some("email".into()),
            })
        }
        Err(e) => return Err(e.into()),
    }
    let reply = Reply::json(StatusCode::CREATED, &merchant_json(&merchant))?;
    let audit = ctx.audit(&state, &merchant.id, "merchant.create", "merchant", &merchant.id);
    ctx.commit(&state, tx, reply, &[audit]).await
}

async fn load_merchant(state: &AppState, id: &str) -> Result<Merchant, ApiError> {
    let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
    tx.get_merchant(id)
        .await?
        .ok_or_else(|| ApiError::not_found("merchant", id))
}

async fn get_merchant(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let merchant = load_merchant(&state, &id).await?;
    Ok(Reply::json(StatusCode::OK, &merchant_json(&merchant))?.into_response())
}

async fn list_merchants(State(state): State<AppState>, page: Page) -> Result<Response, ApiError> {
    let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
    let listing = tx.list_merchants(&page.0).await.map_err(|e| cursor_error(e, &page))?;
    list_reply(
        "/admin/v1/merchants",
        listing.items.iter().map(merchant_json).collect(),
        listing.has_more,
    )
}

async fn deactivate_merchant(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::JsonBody<crate::extract::NoFields>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    tx.get_merchant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("merchant", &id))?;
    tx.deactivate_merchant(&id, state.clock.now()).await?;
    let merchant = tx
        .get_merchant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("merchant", &id))?;
    let reply = Reply::json(StatusCode::OK, &merchant_json(&merchant))?;
    let audit = ctx.audit(&state, &id, "merchant.deactivate", "merchant", &id);
    let response = ctx.commit(&state, tx, reply, &[audit]).await?;
    state.auth.clear();
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    name: Option<String>,
    scopes: Option<Vec<String>>,
}

async fn create_key(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(merchant_id): Path<String>,
    JsonBody(body): JsonBody<CreateKeyBody>,
) -> Result<Response, ApiError> {
    let scopes = match body.scopes {
        None => Scopes::ALL,
        Some(names) => {
            let scopes = Scopes::parse(names.iter().map(String::as_str))
                .map_err(|unknown| ApiError::invalid("scopes", format!("unknown scope '{unknown}' (read, write)")))?;
            if scopes == Scopes::default() {
                return Err(ApiError::invalid(
                    "scopes",
                    "`scopes` must name at least one of read, write",
                ));
            }
            scopes
        }
    };
    let name = fields::name(body.name, "name")?;
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    let merchant = tx
        .get_merchant(&merchant_id)
        .await?
        .ok_or_else(|| ApiError::not_found("merchant", &merchant_id))?;
    if merchant.status != MerchantStatus::Active {
        return Err(ApiError::Unprocessable {
            code: "merchant_deactivated",
            message: "the merchant is deactivated".into(),
            param: None,
        });
    }
    let secret = state.ids.secret(API_KEY_PREFIX);
    let key = ApiKey {
        id: state.ids.make("key"),
        merchant_id: merchant_id.clone(),
        name,
        prefix: secret[..API_KEY_LOOKUP_LEN].to_owned(),
        secret_hash: sha256_hex(&secret),
        scopes,
        created_at: state.clock.now(),
        revoked_at: None,
        last_used_at: None,
    };
    tx.insert_api_key(&key).await?;
    let mut body = key_json(&key);
    body["secret"] = json!(secret);
    let reply = Reply::json(StatusCode::CREATED, &body)?;
    let audit = ctx.audit(&state, &merchant_id, "api_key.create", "api_key", &key.id);
    ctx.commit(&state, tx, reply, &[audit]).await
}

async fn list_keys(
    State(state): State<AppState>,
    Path(merchant_id): Path<String>,
    page: Page,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
    tx.get_merchant(&merchant_id)
        .await?
        .ok_or_else(|| ApiError::not_found("merchant", &merchant_id))?;
    let listing = tx
        .list_api_keys(&merchant_id, &page.0)
        .await
        .map_err(|e| cursor_error(e, &page))?;
    let url = format!("/admin/v1/merchants/{merchant_id}/api_keys");
    list_reply(&url, listing.items.iter().map(key_json).collect(), listing.has_more)
}

async fn revoke_key(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((merchant_id, key_id)): Path<(String, String)>,
    _: crate::extract::JsonBody<crate::extract::NoFields>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    tx.get_api_key(&merchant_id, &key_id)
        .await?
        .ok_or_else(|| ApiError::not_found("api key", &key_id))?;
    tx.revoke_api_key(&merchant_id, &key_id, state.clock.now()).await?;
    let key = tx
        .get_api_key(&merchant_id, &key_id)
        .await?
        .ok_or_else(|| ApiError::not_found("api key", &key_id))?;
    let reply = Reply::json(StatusCode::OK, &key_json(&key))?;
    let audit = ctx.audit(&state, &merchant_id, "api_key.revoke", "api_key", &key_id);
    let response = ctx.commit(&state, tx, reply, &[audit]).await?;
    state.auth.clear();
    Ok(response)
}

fn rfc3339(t: Option<Timestamp>) -> Value {
    t.map(|t| json!(t.to_rfc3339())).unwrap_or(Value::Null)
}

pub fn merchant_json(m: &Merchant) -> Value {
    json!({
        "object": "merchant",
        "id": m.id,
        "name": m.name,
        "email": m.email,
        "default_currency": m.default_currency.code(),
        "amount_limits": m.amount_limits,
        "metadata": m.metadata,
        "status": m.status.as_str(),
        "created": m.created_at.to_rfc3339(),
        "deactivated_at": rfc3339(m.deactivated_at),
    })
}

pub fn key_json(k: &ApiKey) -> Value {
    json!({
        "object": "api_key",
        "id": k.id,
        "merchant_id": k.merchant_id,
        "name": k.name,
        "prefix": k.prefix,
        "scopes": k.scopes.names(),
        "created": k.created_at.to_rfc3339(),
        "revoked_at": rfc3339(k.revoked_at),
        "last_used_at": rfc3339(k.last_used_at),
    })
}
