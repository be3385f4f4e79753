//! The card vault over HTTP (`/v1/payment_methods`) and the card data an authorization needs.
//!
//! A card number arrives only here or inline in a payment; it is validated, sealed
//! (AES-256-GCM) and fingerprinted, and only brand, last4 and expiry are ever shown. The CVC
//! is never stored: it waits in this process's memory ([`CvcCache`]) until the first
//! authorization takes it, or until it expires. A confirm served by another process, or
//! after the CVC expired, authorizes without a CVC, as saved cards do.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use settle_connectors::CardData;
use settle_domain::{
    card::{validate_card, CardBrand, CardInput},
    payment::{Payment, PaymentMethod},
    Secret,
};
use settle_store::Tx;

use crate::{
    context::{Ctx, Reply},
    error::ApiError,
    extract::{from_value, JsonBody},
    payments::{connectors::sealing_context, Render},
    AppState, LazyReader,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/payment_methods", post(create))
        .route("/v1/payment_methods/{id}", get(retrieve))
        .route("/v1/payment_methods/{id}/attach", post(attach))
        .route("/v1/payment_methods/{id}/detach", post(detach))
}

/// How long a CVC waits in memory for its authorization.
pub const CVC_TTL: Duration = Duration::from_secs(600);
/// Most CVCs held at once; beyond it the oldest are dropped.
pub const CVCS_MAX: usize = 100_000;

/// CVCs by `merchant/payment method`, in memory only.
#[derive(Default)]
pub struct CvcCache(Mutex<HashMap<String, (Secret<String>, Instant)>>);

impl CvcCache {
    fn put(&self, key: String, cvc: Secret<String>) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= CVCS_MAX {
                map.retain(|_, (_, at)| at.elapsed() < CVC_TTL);
                if map.len() >= CVCS_MAX {
                    map.clear();
                }
            }
            map.insert(key, (cvc, Instant::now()));
        }
    }

    fn take(&self, key: &str) -> Option<Secret<String>> {
        let (cvc, at) = self.0.lock().ok()?.remove(key)?;
        (at.elapsed() < CVC_TTL).then_some(cvc)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CardBody {
    number: Option<String>,
    exp_month: Option<i64>,
    exp_year: Option<i64>,
    cvc: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodBody {
    #[serde(rename = "type")]
    kind: String,
    card: Option<CardBody>,
}

/// A payment method given in a request: an id, or a card to vault.
pub enum MethodInput {
    Id(String),
    Card(Box<CardInputOwned>),
}

pub struct CardInputOwned {
    number: Secret<String>,
    exp_month: i64,
    exp_year: i64,
    cvc: Option<Secret<String>>,
    param: String,
}

impl MethodInput {
    /// A card given field by field; `param` names the card object in errors.
    pub fn card(number: String, exp_month: i64, exp_year: i64, cvc: Option<String>, param: &str) -> MethodInput {
        MethodInput::Card(Box::new(CardInputOwned {
            number: Secret::new(number),
            exp_month,
            exp_year,
            cvc: cvc.map(Secret::new),
            param: param.to_owned(),
        }))
    }

    /// `value` is a payment method id or `{"type": "card", "card": {…}}`.
    pub fn parse(value: Option<Value>, param: &str) -> Result<Option<MethodInput>, ApiError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(id)) => Ok(Some(MethodInput::Id(crate::fields::client_id(&id, param)?))),
            Some(v @ Value::Object(_)) => {
                let body: MethodBody = from_value(v).map_err(|e| prefix(e, param))?;
                Ok(Some(card_input(body, param)?))
            }
            Some(_) => Err(ApiError::invalid(
                param,
                format!("`{param}` must be a payment method id or a card object"),
            )),
        }
    }

    /// Stores a card (returning its new id) or checks that the id exists.
    pub async fn resolve(
        self,
        state: &AppState,
        tx: &mut dyn Tx,
        merchant_id: &str,
        param: &str,
    ) -> Result<String, ApiError> {
        let (method, new) = match self {
            MethodInput::Id(id) => (find(tx, merchant_id, &id, param).await?, false),
            MethodInput::Card(card) => (seal(state, merchant_id, *card)?, true),
        };
        if new {
            tx.insert_payment_method(&method).await?;
        }
        Ok(method.id)
    }

    /// The payment method named by id, or a card sealed into a new one that is not stored yet
    /// (`true`: the caller stores it with the rest of its write).
    pub async fn find_or_seal(
        self,
        state: &AppState,
        reader: &mut LazyReader<'_>,
        merchant_id: &str,
        param: &str,
    ) -> Result<(PaymentMethod, bool), ApiError> {
        match self {
            MethodInput::Id(id) => Ok((find(reader.tx().await?, merchant_id, &id, param).await?, false)),
            MethodInput::Card(card) => Ok((seal(state, merchant_id, *card)?, true)),
        }
    }
}

/// A payment method attached to a customer pays only for that customer, named (as Stripe
/// refuses a Customer's PaymentMethod without that Customer).
pub fn usable_for(method: &PaymentMethod, customer: Option<&str>) -> Result<(), ApiError> {
    match (method.customer_id.as_deref(), customer) {
        (Some(owner), Some(customer)) if owner != customer => Err(ApiError::invalid(
            "payment_method",
            format!(
                "payment method '{}' is attached to customer '{owner}', not to '{customer}'",
                method.id
            ),
        )),
        (Some(owner), None) => Err(ApiError::invalid(
            "payment_method",
            format!(
                "payment method '{}' is attached to customer '{owner}': give `customer` as well",
                method.id
            ),
        )),
        _ => Ok(()),
    }
}

async fn find(tx: &mut dyn Tx, merchant_id: &str, id: &str, param: &str) -> Result<PaymentMethod, ApiError> {
    tx.get_payment_method(merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::invalid(param, format!("no such payment method: '{id}'")))
}

/// Names errors of a nested card object after its place in the request.
fn prefix(e: ApiError, param: &str) -> ApiError {
    match e {
        ApiError::Invalid {
            code,
            message,
            param: Some(p),
        } => {
            let named = format!("{param}.{p}");
            ApiError::Invalid {
                code,
                message: message.replacen(&format!("`{p}`"), &format!("`{named}`"), 1),
                param: Some(named),
            }
        }
        other => other,
    }
}

/// `field` inside `param` (`payment_method.card`), or alone at the top level.
fn join(param: &str, field: &str) -> String {
    if param.is_empty() {
        field.to_owned()
    } else {
        format!("{param}.{field}")
    }
}

fn card_input(body: MethodBody, param: &str) -> Result<MethodInput, ApiError> {
    if body.kind != "card" {
        return Err(ApiError::invalid(
            join(param, "type"),
            "only `card` payment methods are supported",
        ));
    }
    let card = body.card.ok_or_else(|| ApiError::missing(join(param, "card")))?;
    let p = |f: &str| join(param, &format!("card.{f}"));
    Ok(MethodInput::Card(Box::new(CardInputOwned {
        number: Secret::new(card.number.ok_or_else(|| ApiError::missing(p("number")))?),
        exp_month: card.exp_month.ok_or_else(|| ApiError::missing(p("exp_month")))?,
        exp_year: card.exp_year.ok_or_else(|| ApiError::missing(p("exp_year")))?,
        cvc: card.cvc.map(Secret::new),
        param: join(param, "card"),
    })))
}

/// Validates and seals a card into a payment method (not stored yet); keeps its CVC in memory.
fn seal(state: &AppState, merchant_id: &str, card: CardInputOwned) -> Result<PaymentMethod, ApiError> {
    let now = state.clock.now();
    let input = CardInput {
        number: card.number.expose(),
        exp_month: card.exp_month,
        exp_year: card.exp_year,
        cvc: card.cvc.as_ref().map(|c| c.expose().as_str()),
    };
    let valid = validate_card(&input, now).map_err(|e| ApiError::Invalid {
        code: e.code,
        message: e.message,
        param: Some(format!("{}.{}", card.param, e.field)),
    })?;
    let id = state.ids.make("pm");
    let method = PaymentMethod {
        merchant_id: merchant_id.to_owned(),
        id: id.clone(),
        brand: valid.brand.as_str().to_owned(),
        last4: valid.last4.clone(),
        exp_month: valid.exp_month,
        exp_year: valid.exp_year,
        fingerprint: state.vault.fingerprint(merchant_id, &valid.number),
        number_sealed: state
            .vault
            .seal(valid.number.as_bytes(), &sealing_context(merchant_id, &id)),
        customer_id: None,
        created_at: now,
    };
    if let Some(cvc) = card.cvc {
        state.cvcs.put(sealing_context(merchant_id, &id), cvc);
    }
    Ok(method)
}

/// The card of a payment, opened for its authorization, without its CVC ([`take_cvc`] takes
/// that once the claim has committed). `known` is the payment's method when the caller holds it.
pub async fn card_for(
    state: &AppState,
    reader: &mut LazyReader<'_>,
    payment: &Payment,
    known: Option<&PaymentMethod>,
) -> Result<(CardData, Option<CardBrand>), ApiError> {
    let id = payment
        .payment_method_id
        .as_deref()
        .ok_or_else(|| ApiError::missing("payment_method"))?;
    let merchant_id = &payment.merchant_id;
    let method = match known.filter(|m| m.id == id).cloned() {
        Some(method) => method,
        None => match state.recent.method(merchant_id, id) {
            Some(method) => method,
            None => {
                let method = find(reader.tx().await?, merchant_id, id, "payment_method").await?;
                state.recent.remember_method(&method);
                method
            }
        },
    };
    usable_for(&method, payment.customer_id.as_deref())?;
    let context = sealing_context(&method.merchant_id, &method.id);
    let number = state.vault.open(&method.number_sealed, &context).map_err(|_| {
        ApiError::Internal(format!(
            "payment method {} does not open with this vault key",
            method.id
        ))
    })?;
    let number = String::from_utf8(number).map_err(|_| ApiError::Internal("vaulted card number is not text".into()))?;
    Ok((
        CardData {
            number: Secret::new(number),
            exp_month: method.exp_month,
            exp_year: method.exp_year,
            cvc: None,
        },
        CardBrand::parse(&method.brand),
    ))
}

/// The CVC given with the payment's card, if still held; it is forgotten here.
pub fn take_cvc(state: &AppState, payment: &Payment) -> Option<Secret<String>> {
    let id = payment.payment_method_id.as_deref()?;
    state.cvcs.take(&sealing_context(&payment.merchant_id, id))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let body: MethodBody = from_value(body)?;
    let render = |m: &PaymentMethod| Reply::json(StatusCode::CREATED, &method_json(m));
    create_method(&state, &ctx, card_input(body, "")?, &render).await
}

/// Vaults a card as a payment method.
pub async fn create_method(
    state: &AppState,
    ctx: &Ctx,
    card: MethodInput,
    render: Render<'_, PaymentMethod>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let MethodInput::Card(card) = card else {
        return Err(ApiError::Internal("create_method was given an id".into()));
    };
    let mut tx = state.begin_write(&merchant_id).await?;
    let method = seal(state, &merchant_id, *card)?;
    tx.insert_payment_method(&method).await?;
    let reply = render(&method)?;
    let audit = ctx.audit(
        state,
        &merchant_id,
        "payment_method.create",
        "payment_method",
        &method.id,
    );
    ctx.commit(state, tx, reply, &[audit]).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    customer: String,
}

async fn attach(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AttachBody>,
) -> Result<Response, ApiError> {
    let render = |m: &PaymentMethod| Reply::json(StatusCode::OK, &method_json(m));
    attach_method(&state, &ctx, &id, Some(&body.customer), &render).await
}

async fn detach(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::JsonBody<crate::extract::NoFields>,
) -> Result<Response, ApiError> {
    let render = |m: &PaymentMethod| Reply::json(StatusCode::OK, &method_json(m));
    attach_method(&state, &ctx, &id, None, &render).await
}

/// Attaches a payment method to a customer (`Some`) or detaches it from its customer (`None`).
pub async fn attach_method(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    customer: Option<&str>,
    render: Render<'_, PaymentMethod>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.begin_write(&merchant_id).await?;
    let mut method = tx
        .get_payment_method(&merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment method", id))?;
    if let Some(c) = customer {
        // Held until this transaction ends, so that the customer cannot be deleted under it.
        if !tx.hold_customer(&merchant_id, c).await? {
            return Err(ApiError::invalid("customer", format!("no such customer: '{c}'")));
        }
        if let Some(owner) = method.customer_id.as_deref().filter(|owner| *owner != c) {
            return Err(ApiError::Conflict {
                code: "payment_method_unexpected_state",
                message: format!("the payment method is attached to customer '{owner}': detach it first"),
                param: Some("customer".into()),
            });
        }
    } else if method.customer_id.is_none() {
        return Err(ApiError::Conflict {
            code: "payment_method_unexpected_state",
            message: "the payment method is not attached to a customer".into(),
            param: None,
        });
    }
    let was = method.customer_id.as_deref();
    if !tx.set_payment_method_customer(&merchant_id, id, was, customer).await? {
        // Another request attached or detached it since it was read.
        return Err(ApiError::Conflict {
            code: "payment_method_unexpected_state",
            message: "the payment method was attached or detached by another request: read it again".into(),
            param: None,
        });
    }
    method.customer_id = customer.map(str::to_owned);
    let action = if customer.is_some() {
        "payment_method.attach"
    } else {
        "payment_method.detach"
    };
    let audit = ctx.audit(state, &merchant_id, action, "payment_method", id);
    ctx.commit(state, tx, render(&method)?, &[audit]).await
}

async fn retrieve(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let method = tx
        .get_payment_method(&merchant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment method", &id))?;
    Ok(Reply::json(StatusCode::OK, &method_json(&method))?.into_response())
}

pub fn method_json(m: &PaymentMethod) -> Value {
    json!({
        "id": m.id,
        "object": "payment_method",
        "type": "card",
        "card": {
            "brand": m.brand,
            "last4": m.last4,
            "exp_month": m.exp_month,
            "exp_year": m.exp_year,
            "fingerprint": m.fingerprint,
        },
        "customer": m.customer_id,
        "created": m.created_at.to_rfc3339(),
    })
}
