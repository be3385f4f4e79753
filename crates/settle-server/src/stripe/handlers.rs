//! The `/stripe/v1` routes: each parses Stripe's parameters, calls the service the native
//! route calls, and renders Stripe's shape.

use axum::{
    body::Body,
    extract::{Path, RawQuery, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde_json::{json, Value};
use settle_domain::{
    customer::CustomerFilter,
    event::{settle_type, EventFilter, STRIPE_TYPES},
    ledger::Key,
    payment::{CaptureMethod, Command, Payment, PaymentFilter, PaymentStatus},
    postings::merchant_pending_account,
    webhook::{Api, Endpoint},
    Currency,
};

use super::{list, merchant_of, shapes, Params};
use crate::{
    context::{Ctx, Reply},
    customers::{self, CustomerBody},
    error::ApiError,
    extract::read_body,
    fields,
    payments::{
        self, claim_and_settle, confirm_payment, create_payment, methods::MethodInput, new_payment, refunds,
        update_payment, PaymentUpdate, CANCELLATION_REASONS,
    },
    webhooks, AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/stripe/v1/payment_intents", post(create_intent).get(list_intents))
        .route(
            "/stripe/v1/payment_intents/{id}",
            get(retrieve_intent).post(update_intent),
        )
        .route("/stripe/v1/payment_intents/{id}/confirm", post(confirm_intent))
        .route("/stripe/v1/payment_intents/{id}/capture", post(capture_intent))
        .route("/stripe/v1/payment_intents/{id}/cancel", post(cancel_intent))
        .route("/stripe/v1/payment_methods", post(create_method).get(list_methods))
        .route("/stripe/v1/payment_methods/{id}", get(retrieve_method))
        .route("/stripe/v1/payment_methods/{id}/attach", post(attach_method))
        .route("/stripe/v1/payment_methods/{id}/detach", post(detach_method))
        .route("/stripe/v1/customers", post(create_customer).get(list_customers))
        .route(
            "/stripe/v1/customers/{id}",
            get(retrieve_customer).post(update_customer).delete(delete_customer),
        )
        .route("/stripe/v1/customers/{id}/payment_methods", get(customer_methods))
        .route("/stripe/v1/refunds", post(create_refund).get(list_refunds))
        .route("/stripe/v1/refunds/{id}", get(retrieve_refund))
        .route("/stripe/v1/charges", get(list_charges))
        .route("/stripe/v1/charges/{id}", get(retrieve_charge))
        .route("/stripe/v1/events", get(list_events))
        .route("/stripe/v1/events/{id}", get(retrieve_event))
        .route("/stripe/v1/balance", get(balance))
        .route(
            "/stripe/v1/webhook_endpoints",
            post(create_webhook_endpoint).get(list_webhook_endpoints),
        )
        .route(
            "/stripe/v1/webhook_endpoints/{id}",
            get(retrieve_webhook_endpoint)
                .post(update_webhook_endpoint)
                .delete(delete_webhook_endpoint),
        )
}

/// Stripe's test payment methods, mapped onto the sandbox connector's test cards.
pub const TEST_METHODS: &[(&str, &str)] = &[
    ("pm_card_visa", "4242424242424242"),
    ("pm_card_mastercard", "5555555555554444"),
    ("pm_card_amex", "378282246310005"),
    ("pm_card_chargeDeclined", "4000000000000002"),
    ("pm_card_chargeDeclinedInsufficientFunds", "4000000000009995"),
    ("pm_card_visa_chargeDeclinedProcessingError", "4000000000000119"),
];

fn method_input(state: &AppState, id: String) -> Result<MethodInput, ApiError> {
    if let Some((_, number)) = TEST_METHODS.iter().find(|(t, _)| *t == id) {
        let year = state.clock.now().to_rfc3339()[..4].parse::<i64>().unwrap_or(2030) + 3;
        let cvc = if number.len() == 15 { "1234" } else { "123" };
        return Ok(MethodInput::card(
            (*number).to_owned(),
            12,
            year,
            Some(cvc.into()),
            "payment_method",
        ));
    }
    if id.starts_with("pm_card_") {
        return Err(ApiError::invalid(
            "payment_method",
            format!("unknown test payment method '{id}'"),
        ));
    }
    Ok(MethodInput::Id(fields::client_id(&id, "payment_method")?))
}

/// The payment behind a `pi_…` (`what` = `payment_intent`) or `ch_…` (`charge`) id; an id
/// with the other prefix names no such object.
fn payment_id(id: &str, what: &'static str) -> Result<String, ApiError> {
    let prefix = if what == "charge" { "ch_" } else { "pi_" };
    id.strip_prefix(prefix)
        .map(|rest| format!("pay_{rest}"))
        .ok_or_else(|| ApiError::not_found(what, id))
}

/// The payment a list filter `field` (`payment_intent` or `charge`) names by `sent`; one
/// there is not is a 404 naming the filter, as Stripe answers.
async fn filtered_payment(state: &AppState, ctx: &Ctx, field: &'static str, sent: &str) -> Result<Payment, ApiError> {
    let missing = || ApiError::not_found_at(field, sent, field);
    let id = payment_id(sent, field).map_err(|_| missing())?;
    payments::load(state, ctx.merchant_id(), &id)
        .await
        .map_err(|e| match e {
            ApiError::NotFound { .. } => missing(),
            other => other,
        })
}

/// A native error about the payment behind the intent `id`, in the intent's terms: Settle's
/// own `pay_` id is not the caller's.
fn as_intent(id: &str) -> impl Fn(ApiError) -> ApiError + '_ {
    move |e| match e {
        ApiError::NotFound { what: "payment", .. } => ApiError::not_found("payment_intent", id),
        other => other,
    }
}

/// A call that takes no parameter but `expand`: any other, in its query string or its form
/// body, is refused naming it.
struct NoParams;

impl<S: Send + Sync> axum::extract::FromRequest<S> for NoParams {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        Params::parse(req.uri().query().unwrap_or(""))?.finish()?;
        let body = read_body(req.into_body()).await?;
        let body = std::str::from_utf8(&body).map_err(|_| ApiError::invalid("body", "the body must be UTF-8"))?;
        Params::parse(body)?.finish()?;
        Ok(NoParams)
    }
}

/// Answers for a payment intent; a card declined by this call is Stripe's 402 `card_error`
/// carrying the intent.
fn intent_reply(p: &Payment) -> Result<Reply, ApiError> {
    let declined = p.status == PaymentStatus::RequiresPaymentMethod && p.last_payment_error.is_some();
    if !declined {
        return Reply::json(StatusCode::OK, &shapes::intent(p));
    }
    let intent = shapes::intent(p);
    let mut error = intent["last_payment_error"].clone();
    error["payment_intent"] = intent;
    error["charge"] = Value::Null;
    Reply::json(StatusCode::PAYMENT_REQUIRED, &json!({ "error": error }))
}

fn plain_intent(p: &Payment) -> Result<Reply, ApiError> {
    Reply::json(StatusCode::OK, &shapes::intent(p))
}

async fn create_intent(State(state): State<AppState>, ctx: Ctx, body: String) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let amount = p.integer("amount")?.ok_or_else(|| ApiError::missing("amount"))?;
    fields::positive_amount(amount, "amount")?;
    let currency = fields::currency(
        &p.string("currency")?.ok_or_else(|| ApiError::missing("currency"))?,
        "currency",
    )?;
    let capture_method = match p.string("capture_method")?.as_deref() {
        None | Some("automatic" | "automatic_async") => CaptureMethod::Automatic,
        Some("manual") => CaptureMethod::Manual,
        Some(other) => {
            return Err(ApiError::invalid(
                "capture_method",
                format!("Invalid capture_method: {other} (automatic, automatic_async or manual)"),
            ))
        }
    };
    let confirm = p.boolean("confirm")?.unwrap_or(false);
    let method = p
        .string("payment_method")?
        .map(|id| method_input(&state, id))
        .transpose()?;
    let mut payment = new_payment(&state, &ctx, amount, currency, capture_method);
    payment.customer_id = p
        .string("customer")?
        .map(|c| fields::client_id(&c, "customer"))
        .transpose()?;
    payment.receipt_email = p
        .string("receipt_email")?
        .map(|e| fields::email(&e, "receipt_email"))
        .transpose()?;
    payment.description = crate::fields::description(p.string("description")?)?;
    payment.metadata = p.metadata()?.unwrap_or_else(|| json!({}));
    if let Some(fee) = p.integer("application_fee_amount")? {
        if fee < 0 || fee > amount {
            return Err(ApiError::invalid(
                "application_fee_amount",
                "`application_fee_amount` must be between 0 and `amount`",
            ));
        }
        payment.application_fee_amount = Some(fee);
    }
    card_only(&mut p)?;
    p.finish()?;
    let render = if confirm { intent_reply } else { plain_intent };
    create_payment(&state, &ctx, payment, method, confirm, &render).await
}

/// `payment_method_types` may only say `card`; `automatic_payment_methods` changes nothing
/// here (cards are the only method).
fn card_only(p: &mut Params) -> Result<(), ApiError> {
    if let Some(types) = p.take("payment_method_types") {
        let ok = types
            .as_array()
            .is_some_and(|t| t.iter().all(|v| v.as_str() == Some("card")));
        if !ok {
            return Err(ApiError::invalid(
                "payment_method_types",
                "only `card` payment methods are supported",
            ));
        }
    }
    p.take("automatic_payment_methods");
    Ok(())
}

async fn retrieve_intent(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref().unwrap_or(""))?.finish()?;
    let payment = payments::load(&state, ctx.merchant_id(), &payment_id(&id, "payment_intent")?)
        .await
        .map_err(as_intent(&id))?;
    Ok(plain_intent(&payment)?.into_response())
}

async fn update_intent(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: String,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let update = PaymentUpdate {
        amount: p.integer("amount")?,
        description: p
            .string("description")?
            .map(|d| crate::fields::description(Some(d).filter(|d| !d.is_empty())))
            .transpose()?,
        metadata: p.metadata()?,
    };
    p.finish()?;
    update_payment(&state, &ctx, &payment_id(&id, "payment_intent")?, update, &plain_intent)
        .await
        .map_err(as_intent(&id))
}

async fn confirm_intent(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: String,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let method = p
        .string("payment_method")?
        .map(|m| method_input(&state, m))
        .transpose()?;
    p.take("return_url");
    p.finish()?;
    confirm_payment(&state, &ctx, &payment_id(&id, "payment_intent")?, method, &intent_reply)
        .await
        .map_err(as_intent(&id))
}

async fn capture_intent(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: String,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let amount = p.integer("amount_to_capture")?;
    if let Some(a) = amount {
        fields::positive_amount(a, "amount_to_capture")?;
    }
    p.finish()?;
    let command = Command::Capture { amount };
    claim_and_settle(
        &state,
        &ctx,
        &payment_id(&id, "payment_intent")?,
        &command,
        None,
        &plain_intent,
    )
    .await
    .map_err(|e| match e {
        ApiError::Invalid { code, message, param } if param.as_deref() == Some("amount") => ApiError::Invalid {
            code,
            message,
            param: Some("amount_to_capture".into()),
        },
        other => as_intent(&id)(other),
    })
}

async fn cancel_intent(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: String,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let reason = p.string("cancellation_reason")?;
    if let Some(r) = &reason {
        if !CANCELLATION_REASONS.contains(&r.as_str()) {
            return Err(ApiError::invalid(
                "cancellation_reason",
                format!(
                    "`cancellation_reason` must be one of {}",
                    CANCELLATION_REASONS.join(", ")
                ),
            ));
        }
    }
    p.finish()?;
    let reason = Some(reason.unwrap_or_else(|| "requested_by_customer".into()));
    claim_and_settle(
        &state,
        &ctx,
        &payment_id(&id, "payment_intent")?,
        &Command::Cancel,
        reason,
        &plain_intent,
    )
    .await
    .map_err(as_intent(&id))
}

fn created_filter(p: &mut Params, filter: &mut PaymentFilter) -> Result<(), ApiError> {
    let Some(created) = p.take("created") else {
        return Ok(());
    };
    let seconds = |v: &Value, param: &str| {
        v.as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(settle_domain::Timestamp::from_unix_seconds)
            .ok_or_else(|| ApiError::invalid(param, format!("`{param}` must be unix seconds")))
    };
    match &created {
        Value::String(_) => {
            let t = seconds(&created, "created")?;
            filter.created_gte = Some(t);
            filter.created_lt = Some(settle_domain::Timestamp(t.0 + 1_000_000));
        }
        Value::Object(map) => {
            for (op, v) in map {
                let param = format!("created[{op}]");
                let t = seconds(v, &param)?;
                match op.as_str() {
                    "gte" => filter.created_gte = Some(t),
                    "gt" => filter.created_gte = Some(settle_domain::Timestamp(t.0 + 1_000_000)),
                    "lt" => filter.created_lt = Some(t),
                    "lte" => filter.created_lt = Some(settle_domain::Timestamp(t.0 + 1_000_000)),
                    _ => return Err(ApiError::invalid(param, "use created[gt|gte|lt|lte]")),
                }
            }
        }
        _ => {
            return Err(ApiError::invalid(
                "created",
                "`created` must be unix seconds or a range",
            ))
        }
    }
    Ok(())
}

/// One page of the merchant's payments for a list of payment intents or (`charges`) of charges:
/// the charge list reads only payments that have a charge, so a page holds up to `limit`
/// charges and `has_more` says whether more charges exist; a cursor naming a payment without
/// one names no object of the list.
async fn payments_page(
    state: &AppState,
    ctx: &Ctx,
    query: Option<String>,
    charges: bool,
) -> Result<settle_store::Listing<Payment>, ApiError> {
    let mut p = Params::parse(query.as_deref().unwrap_or(""))?;
    let page = p.page(|id| shapes::payment_id(id).unwrap_or_else(|| id.to_owned()))?;
    let mut filter = PaymentFilter {
        customer_id: p.string("customer")?,
        charged: charges,
        ..PaymentFilter::default()
    };
    created_filter(&mut p, &mut filter)?;
    let intent = p.string("payment_intent")?;
    p.finish()?;
    if let Some(customer) = &filter.customer_id {
        // A customer this merchant does not have is a 404 naming the filter, as the payment
        // method list answers (not an empty list).
        customers::load(state, ctx.merchant_id(), customer)
            .await
            .map_err(|e| match e {
                ApiError::NotFound { id, .. } => ApiError::not_found_at("customer", id, "customer"),
                other => other,
            })?;
    }
    if let Some(pi) = intent {
        // Charges of one payment intent: its charge, if it has one.
        let payment = filtered_payment(state, ctx, "payment_intent", &pi).await?;
        return Ok(settle_store::Listing {
            items: vec![payment]
                .into_iter()
                .filter(|p| !charges || p.status.has_charge(p.amount_captured))
                .collect(),
            has_more: false,
        });
    }
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    tx.list_payments(&merchant_id, &filter, &page.0)
        .await
        .map_err(|e| crate::ledger::cursor_error(e, &page))
}

async fn list_intents(
    State(state): State<AppState>,
    ctx: Ctx,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let listing = payments_page(&state, &ctx, query, false).await?;
    list(
        "payment_intents",
        listing.items.iter().map(shapes::intent).collect(),
        listing.has_more,
    )
}

/// A payment with its payment method, for its charge.
async fn charge_of(state: &AppState, merchant_id: &str, payment: &Payment) -> Result<Value, ApiError> {
    let method = match &payment.payment_method_id {
        Some(id) => {
            let mut tx = state.reader(merchant_id).await?;
            tx.get_payment_method(merchant_id, id).await?
        }
        None => None,
    };
    Ok(shapes::charge(&payments::payment_json(payment), method.as_ref()))
}

async fn retrieve_charge(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref().unwrap_or(""))?.finish()?;
    let payment = payments::load(&state, ctx.merchant_id(), &payment_id(&id, "charge")?)
        .await
        .map_err(|_| ApiError::not_found("charge", &id))?;
    if !payment.status.has_charge(payment.amount_captured) {
        return Err(ApiError::not_found("charge", &id));
    }
    Ok(Reply::json(StatusCode::OK, &charge_of(&state, ctx.merchant_id(), &payment).await?)?.into_response())
}

/// Charges: the payments that have one, newest first.
async fn list_charges(
    State(state): State<AppState>,
    ctx: Ctx,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let listing = payments_page(&state, &ctx, query, true).await?;
    let mut data = Vec::with_capacity(listing.items.len());
    for payment in &listing.items {
        data.push(charge_of(&state, ctx.merchant_id(), payment).await?);
    }
    list("charges", data, listing.has_more)
}

fn card_params(p: &mut Params) -> Result<MethodInput, ApiError> {
    match p.string("type")?.as_deref() {
        Some("card") => {}
        None => return Err(ApiError::missing("type")),
        Some(_) => return Err(ApiError::invalid("type", "only `card` payment methods are supported")),
    }
    let Some(Value::Object(mut card)) = p.take("card") else {
        return Err(ApiError::missing("card"));
    };
    let mut text = |name: &str| -> Result<Option<String>, ApiError> {
        match card.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(format!("card[{name}]"), "must be a string")),
        }
    };
    let number = text("number")?.ok_or_else(|| ApiError::missing("card[number]"))?;
    let int = |v: Option<String>, name: &str| -> Result<i64, ApiError> {
        let param = format!("card[{name}]");
        v.ok_or_else(|| ApiError::missing(&param))?
            .parse::<i64>()
            .map_err(|_| ApiError::invalid(&param, format!("`{param}` must be an integer")))
    };
    let exp_month = int(text("exp_month")?, "exp_month")?;
    let exp_year = int(text("exp_year")?, "exp_year")?;
    let cvc = text("cvc")?;
    if let Some(name) = card.keys().next() {
        return Err(ApiError::Invalid {
            code: "parameter_unknown",
            message: format!("Received unknown parameter: card[{name}]"),
            param: Some(format!("card[{name}]")),
        });
    }
    p.take("billing_details");
    Ok(MethodInput::card(number, exp_month, exp_year, cvc, "card"))
}

fn method_reply(m: &settle_domain::payment::PaymentMethod) -> Result<Reply, ApiError> {
    Reply::json(StatusCode::OK, &shapes::payment_method(m))
}

async fn create_method(State(state): State<AppState>, ctx: Ctx, body: String) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let card = card_params(&mut p)?;
    p.finish()?;
    payments::methods::create_method(&state, &ctx, card, &method_reply).await
}

async fn retrieve_method(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: NoParams,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let method = tx
        .get_payment_method(&merchant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment_method", &id))?;
    Ok(method_reply(&method)?.into_response())
}

async fn attach_method(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: String,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let customer = p.string("customer")?.ok_or_else(|| ApiError::missing("customer"))?;
    p.finish()?;
    payments::methods::attach_method(&state, &ctx, &id, Some(&customer), &method_reply).await
}

async fn detach_method(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: String,
) -> Result<Response, ApiError> {
    Params::parse(&body)?.finish()?;
    payments::methods::attach_method(&state, &ctx, &id, None, &method_reply).await
}

async fn methods_of(state: &AppState, ctx: &Ctx, customer: &str, mut p: Params) -> Result<Response, ApiError> {
    let page = p.page(str::to_owned)?;
    if let Some(t) = p.string("type")? {
        if t != "card" {
            return Err(ApiError::invalid("type", "only `card` payment methods are supported"));
        }
    }
    p.finish()?;
    let listing = customers::list_payment_methods(state, ctx.merchant_id(), customer, &page).await?;
    list(
        "payment_methods",
        listing.items.iter().map(shapes::payment_method).collect(),
        listing.has_more,
    )
}

async fn list_methods(
    State(state): State<AppState>,
    ctx: Ctx,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(query.as_deref().unwrap_or(""))?;
    let customer = p.string("customer")?.ok_or_else(|| ApiError::missing("customer"))?;
    methods_of(&state, &ctx, &customer, p).await.map_err(|e| match e {
        ApiError::NotFound { what, id, .. } => ApiError::not_found_at(what, id, "customer"),
        other => other,
    })
}

async fn customer_methods(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(query.as_deref().unwrap_or(""))?;
    methods_of(&state, &ctx, &id, p).await
}

fn customer_reply(c: &settle_domain::customer::Customer) -> Result<Reply, ApiError> {
    Reply::json(StatusCode::OK, &shapes::customer(c))
}

fn customer_body(body: &str) -> Result<CustomerBody, ApiError> {
    let map = super::form::parse(body)?;
    let mut map: serde_json::Map<String, Value> = map.into_iter().filter(|(k, _)| k != "expand").collect();
    if map.get("metadata").and_then(Value::as_str) == Some("") {
        map.remove("metadata");
    }
    CustomerBody::parse(Value::Object(map)).map_err(|e| match e {
        ApiError::Invalid { message, param, .. } if message.contains("unknown field") => ApiError::Invalid {
            code: "parameter_unknown",
            message: format!("Received unknown parameter (not supported by Settle's Stripe-compatible API): {message}"),
            param,
        },
        other => super::metadata_error(other),
    })
}

async fn create_customer(State(state): State<AppState>, ctx: Ctx, body: String) -> Result<Response, ApiError> {
    customers::create_customer(&state, &ctx, customer_body(&body)?, &customer_reply)
        .await
        .map_err(super::metadata_error)
}

async fn retrieve_customer(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: NoParams,
) -> Result<Response, ApiError> {
    let customer = customers::load(&state, ctx.merchant_id(), &id).await?;
    Ok(customer_reply(&customer)?.into_response())
}

async fn update_customer(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: String,
) -> Result<Response, ApiError> {
    customers::update_customer(&state, &ctx, &id, customer_body(&body)?, &customer_reply)
        .await
        .map_err(super::metadata_error)
}

async fn delete_customer(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: NoParams,
) -> Result<Response, ApiError> {
    let render = |id: &str| {
        Reply::json(
            StatusCode::OK,
            &json!({ "id": id, "object": "customer", "deleted": true }),
        )
    };
    customers::delete_customer(&state, &ctx, &id, &render).await
}

async fn list_customers(
    State(state): State<AppState>,
    ctx: Ctx,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(query.as_deref().unwrap_or(""))?;
    let page = p.page(str::to_owned)?;
    let filter = CustomerFilter {
        email: p.string("email")?.map(|e| e.trim().to_lowercase()),
    };
    p.finish()?;
    let listing = customers::list_customers(&state, ctx.merchant_id(), &filter, &page).await?;
    list(
        "customers",
        listing.items.iter().map(shapes::customer).collect(),
        listing.has_more,
    )
}

fn refund_reply(r: &settle_domain::payment::Refund) -> Result<Reply, ApiError> {
    Reply::json(StatusCode::OK, &shapes::refund(&refunds::refund_json(r)))
}

async fn create_refund(State(state): State<AppState>, ctx: Ctx, body: String) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let intent = p.string("payment_intent")?;
    let charge = p.string("charge")?;
    let given = if charge.is_some() && intent.is_none() {
        "charge"
    } else {
        "payment_intent"
    };
    let sent = intent.clone().or(charge.clone()).unwrap_or_default();
    let payment_id = match (intent, charge) {
        (Some(pi), None) => payment_id(&pi, "payment_intent")
            .map_err(|_| ApiError::invalid("payment_intent", format!("No such payment_intent: '{sent}'")))?,
        (None, Some(ch)) => {
            payment_id(&ch, "charge").map_err(|_| ApiError::invalid("charge", format!("No such charge: '{sent}'")))?
        }
        (None, None) => return Err(ApiError::missing("payment_intent")),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "charge",
                "give `payment_intent` or `charge`, not both",
            ))
        }
    };
    let body = refunds::CreateBody {
        payment_id,
        amount: p.integer("amount")?,
        reason: p.string("reason")?,
        metadata: p.metadata()?,
    };
    p.finish()?;
    refunds::create_refund(&state, &ctx, body, &refund_reply)
        .await
        .map_err(|e| in_stripe_terms(e, given, &sent))
}

/// A native refund error in the terms of the Stripe request: the field it names is the one
/// that gave the payment (`payment_intent` or `charge`), and an unknown payment is named by the
/// id that was sent.
fn in_stripe_terms(e: ApiError, given: &'static str, sent: &str) -> ApiError {
    let rename = |param: Option<String>| match param.as_deref() {
        Some("payment_id") => Some(given.to_owned()),
        _ => param,
    };
    match e {
        ApiError::Invalid { code, message, param } => ApiError::Invalid {
            code,
            message: if param.as_deref() == Some("payment_id") && message.starts_with("no such payment") {
                format!("No such {given}: '{sent}'")
            } else {
                message
            },
            param: rename(param),
        },
        ApiError::Conflict { code, message, param } => ApiError::Conflict {
            code,
            message,
            param: rename(param),
        },
        ApiError::Unprocessable { code, message, param } => ApiError::Unprocessable {
            code,
            message,
            param: rename(param),
        },
        ApiError::NotFound { what: "payment", .. } => ApiError::not_found_at(given, sent, given),
        other => other,
    }
}

async fn retrieve_refund(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: NoParams,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let refund = tx
        .get_refund(&merchant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("refund", &id))?;
    Ok(refund_reply(&refund)?.into_response())
}

async fn list_refunds(
    State(state): State<AppState>,
    ctx: Ctx,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(query.as_deref().unwrap_or(""))?;
    let page = p.page(str::to_owned)?;
    let filter = match (p.string("payment_intent")?, p.string("charge")?) {
        (Some(pi), _) => Some(("payment_intent", pi)),
        (None, Some(ch)) => Some(("charge", ch)),
        (None, None) => None,
    };
    p.finish()?;
    let payment = match filter {
        Some((field, sent)) => Some(filtered_payment(&state, &ctx, field, &sent).await?.id),
        None => None,
    };
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let listing = tx
        .list_refunds(&merchant_id, payment.as_deref(), &page.0)
        .await
        .map_err(|e| crate::ledger::cursor_error(e, &page))?;
    let data = listing
        .items
        .iter()
        .map(|r| shapes::refund(&refunds::refund_json(r)))
        .collect();
    list("refunds", data, listing.has_more)
}

async fn retrieve_event(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: NoParams,
) -> Result<Response, ApiError> {
    let event = crate::events::load(&state, ctx.merchant_id(), &id).await?;
    let shaped = shapes::event(&event).ok_or_else(|| ApiError::not_found("event", &id))?;
    Ok(Reply::json(StatusCode::OK, &shaped)?.into_response())
}

async fn list_events(State(state): State<AppState>, ctx: Ctx, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let mut p = Params::parse(query.as_deref().unwrap_or(""))?;
    let page = p.page(str::to_owned)?;
    let mut filter = EventFilter {
        kinds: STRIPE_TYPES.iter().map(|(k, _)| (*k).to_owned()).collect(),
        ..EventFilter::default()
    };
    if let Some(t) = p.string("type")? {
        let kind = settle_type(&t).ok_or_else(|| ApiError::invalid("type", format!("Settle sends no `{t}` events")))?;
        filter.kinds = vec![kind.to_owned()];
    }
    let mut created = PaymentFilter::default();
    created_filter(&mut p, &mut created)?;
    filter.created_gte = created.created_gte;
    filter.created_lt = created.created_lt;
    p.finish()?;
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let listing = tx
        .list_events(&merchant_id, &filter, &page.0)
        .await
        .map_err(|e| crate::ledger::cursor_error(e, &page))?;
    list(
        "events",
        listing.items.iter().filter_map(shapes::event).collect(),
        listing.has_more,
    )
}

/// The merchant's balance: what its `merchant_pending` ledger accounts hold, per currency.
/// Settle has no payouts yet, so nothing is `available`.
async fn balance(State(state): State<AppState>, ctx: Ctx, _: crate::extract::NoQuery) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let keys: Vec<Key> = settle_domain::money::CURRENCIES
        .iter()
        .filter_map(|c| Currency::parse(c.code))
        .map(|c| (merchant_id.clone(), merchant_pending_account(c)))
        .collect();
    let mut tx = state.reader(&merchant_id).await?;
    let mut accounts = tx.get_accounts(&keys, false).await?;
    accounts.sort_by(|a, b| a.currency.code().cmp(b.currency.code()));
    let entry = |amount: i128, currency: Currency| json!({ "amount": amount, "currency": currency.code().to_lowercase(), "source_types": { "card": amount } });
    let pending: Vec<Value> = accounts
        .iter()
        .map(|a| entry(a.balances.balance(a.flags.normal_side()), a.currency))
        .collect();
    let available: Vec<Value> = accounts.iter().map(|a| entry(0, a.currency)).collect();
    let body = json!({ "object": "balance", "available": available, "pending": pending, "livemode": false });
    Ok(Reply::json(StatusCode::OK, &body)?.into_response())
}

/// `api_version` is accepted and answered with [`shapes::API_VERSION`]: events are rendered in
/// one version only.
fn webhook_api_version(p: &mut Params) -> Result<(), ApiError> {
    p.string("api_version").map(drop)
}

async fn create_webhook_endpoint(State(state): State<AppState>, ctx: Ctx, body: String) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let input = webhooks::EndpointInput {
        url: p.string("url")?.ok_or_else(|| ApiError::missing("url"))?,
        enabled_events: p
            .strings("enabled_events")?
            .ok_or_else(|| ApiError::missing("enabled_events"))?,
        description: p.string("description")?,
        // Stripe's create takes no `disabled`.
        enabled: None,
    };
    webhook_api_version(&mut p)?;
    p.finish()?;
    webhooks::create_endpoint(
        &state,
        &ctx,
        Api::Stripe,
        input,
        StatusCode::OK,
        shapes::webhook_endpoint,
    )
    .await
}

async fn retrieve_webhook_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: NoParams,
) -> Result<Response, ApiError> {
    let endpoint = webhooks::load_endpoint(&state, ctx.merchant_id(), &id, Some(Api::Stripe)).await?;
    Ok(Reply::json(StatusCode::OK, &shapes::webhook_endpoint(&endpoint))?.into_response())
}

async fn update_webhook_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: String,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let changes = webhooks::EndpointChanges {
        url: p.string("url")?,
        enabled_events: p.strings("enabled_events")?,
        description: p.string("description")?,
        enabled: p.boolean("disabled")?.map(|disabled| !disabled),
    };
    p.finish()?;
    webhooks::update_endpoint(&state, &ctx, &id, Some(Api::Stripe), changes, shapes::webhook_endpoint).await
}

async fn delete_webhook_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: NoParams,
) -> Result<Response, ApiError> {
    let shape = |e: &Endpoint| json!({ "id": e.id, "object": "webhook_endpoint", "deleted": true });
    webhooks::delete_endpoint(&state, &ctx, &id, Some(Api::Stripe), shape).await
}

async fn list_webhook_endpoints(
    State(state): State<AppState>,
    ctx: Ctx,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(query.as_deref().unwrap_or(""))?;
    let page = p.page(str::to_owned)?;
    p.finish()?;
    let listing = webhooks::list_endpoints(&state, ctx.merchant_id(), Some(Api::Stripe), &page).await?;
    list(
        "webhook_endpoints",
        listing.items.iter().map(shapes::webhook_endpoint).collect(),
        listing.has_more,
    )
}

/// The `expand[]` layer: reads the list from the query or form body, lets the request run,
/// then replaces the named ids in a successful answer with their objects (`data.<field>` in
/// lists). Known fields: `latest_charge`, `customer`, `payment_method`, `payment_intent`.
pub async fn expand(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = read_body(body).await else {
        return ApiError::invalid("body", "the request body could not be read").into_response();
    };
    let source = match parts.method {
        axum::http::Method::GET | axum::http::Method::DELETE => parts.uri.query().unwrap_or("").to_owned(),
        _ => String::from_utf8_lossy(&bytes).into_owned(),
    };
    let fields = match super::form::parse(&source) {
        Ok(mut map) => match map.remove("expand") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => return ApiError::invalid("expand", "`expand` must be a list").into_response(),
        },
        Err(e) => return e.into_response(),
    };
    const KNOWN: &[&str] = &["latest_charge", "customer", "payment_method", "payment_intent"];
    if let Some(bad) = fields
        .iter()
        .find(|f| !KNOWN.contains(&f.strip_prefix("data.").unwrap_or(f)))
    {
        return ApiError::invalid("expand", format!("This property cannot be expanded ({bad})")).into_response();
    }
    let req = Request::from_parts(parts, Body::from(bytes));
    let merchant = merchant_of(&req);
    let response = next.run(req).await;
    let (Some(merchant), false) = (merchant, fields.is_empty()) else {
        return response;
    };
    if response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = read_body(body).await else {
        return ApiError::Internal("response body unreadable".into()).into_response();
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    for field in &fields {
        let result = match field.strip_prefix("data.") {
            Some(inner) => {
                let mut outcome = Ok(());
                if let Some(items) = value["data"].as_array_mut() {
                    for item in items {
                        outcome = outcome.and(expand_one(&state, &merchant, item, inner).await);
                    }
                }
                outcome
            }
            None => expand_one(&state, &merchant, &mut value, field).await,
        };
        if let Err(e) = result {
            return e.into_response();
        }
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(value.to_string()))
}

async fn expand_one(state: &AppState, merchant_id: &str, object: &mut Value, field: &str) -> Result<(), ApiError> {
    let Some(id) = object.get(field).and_then(Value::as_str).map(str::to_owned) else {
        return Ok(());
    };
    let expanded = match field {
        "latest_charge" => {
            let payment = payments::load(state, merchant_id, &payment_id(&id, "charge")?).await?;
            charge_of(state, merchant_id, &payment).await?
        }
        "payment_intent" => {
            shapes::intent(&payments::load(state, merchant_id, &payment_id(&id, "payment_intent")?).await?)
        }
        "customer" => match customers::load(state, merchant_id, &id).await {
            Ok(c) => shapes::customer(&c),
            // A deleted customer, as Stripe shows one.
            Err(ApiError::NotFound { .. }) => json!({ "id": id, "object": "customer", "deleted": true }),
            Err(e) => return Err(e),
        },
        _ => {
            let mut tx = state.reader(merchant_id).await?;
            let method = tx
                .get_payment_method(merchant_id, &id)
                .await?
                .ok_or_else(|| ApiError::not_found("payment_method", &id))?;
            shapes::payment_method(&method)
        }
    };
    object[field] = expanded;
    Ok(())
}
