//! Payments over HTTP: `/v1/payments`, `/v1/payment_methods`, `/v1/refunds`,
//! `/v1/connector_accounts`, `/v1/routing`, and the reference lists `/v1/currencies` and
//! `/v1/payment_method_types`.

pub mod connectors;
pub mod jobs;
pub mod methods;
pub mod refunds;
pub mod service;
pub mod setup;

use axum::{
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use settle_connectors::CONNECTORS;
use settle_domain::{
    card::CardBrand,
    payment::{
        self, AuthorizationOutcome, CaptureMethod, Command, Customer, Payment, PaymentFilter, PaymentStatus, Split,
    },
    postings::SYSTEM_PREFIX,
    routing::{Conditions, Rule, RULES_MAX},
    tenancy::Merchant,
    Currency, Timestamp,
};

use crate::{
    context::{Ctx, Reply},
    error::ApiError,
    extract::{page_and_filters, JsonBody},
    fields,
    ledger::{
        cursor_error, list_reply,
        writer::{Then, WriteError},
    },
    AppState,
};
use methods::MethodInput;
use service::{Actor, PostError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/payments", post(create).get(list))
        .route("/v1/payments/{id}", get(retrieve).post(update))
        .route("/v1/payments/{id}/confirm", post(confirm))
        .route("/v1/payments/{id}/capture", post(capture))
        .route("/v1/payments/{id}/cancel", post(cancel))
        .route("/v1/payments/{id}/events", get(events))
        .route("/v1/payments/{id}/attempts", get(attempts))
        .route("/v1/currencies", get(currencies))
        .route("/v1/payment_method_types", get(payment_method_types))
        .merge(methods::router())
        .merge(refunds::router())
        .merge(setup::router())
}

pub const SPLITS_MAX: usize = 10;
pub const CANCELLATION_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer", "abandoned"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerBody {
    email: String,
    name: Option<String>,
    phone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    payee_account_id: String,
    amount: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    amount: i64,
    currency: String,
    capture_method: Option<String>,
    #[serde(default)]
    confirm: bool,
    payment_method: Option<Value>,
    /// A customer id (`cus_…`), or the customer's contact details.
    customer: Option<Value>,
    receipt_email: Option<String>,
    description: Option<String>,
    metadata: Option<Value>,
    splits: Option<Vec<SplitBody>>,
    application_fee_amount: Option<i64>,
    connector: Option<String>,
}

/// The merchant's limits for `currency` in minor units: its own, or 0.01–100,000.00 in major
/// units (at least one minor unit).
pub fn amount_limits(merchant: &Merchant, currency: Currency) -> (i64, i64) {
    let configured = &merchant.amount_limits[currency.code()];
    if let (Some(min), Some(max)) = (configured["min"].as_i64(), configured["max"].as_i64()) {
        return (min, max);
    }
    let unit = 10i64.pow(u32::from(currency.exponent()));
    ((unit / 100).max(1), unit.saturating_mul(100_000))
}

/// A payment's limits for `currency`: the merchant's, never above [`payment::AMOUNT_MAX`].
/// (An invoice takes the merchant's limits as they are: a payment of one the ledger refuses is
/// rejected, where a payment step the ledger refused after its connector acted could not be.)
pub fn payment_limits(merchant: &Merchant, currency: Currency) -> (i64, i64) {
    let (min, max) = amount_limits(merchant, currency);
    (min.min(payment::AMOUNT_MAX), max.min(payment::AMOUNT_MAX))
}

/// `amount` (named by `param`) checked against `(min, max)` for `currency`.
pub fn within_limits((min, max): (i64, i64), currency: Currency, amount: i64, param: &str) -> Result<(), ApiError> {
    if (min..=max).contains(&amount) {
        return Ok(());
    }
    Err(out_of_range(param, min, max, currency))
}

/// 422 `amount_out_of_range`: a business rule (the merchant's limits), not malformed input.
pub fn out_of_range(param: &str, min: i64, max: i64, currency: Currency) -> ApiError {
    ApiError::Unprocessable {
        code: "amount_out_of_range",
        message: format!(
            "`{param}` must be between {min} and {max} {} minor units for this merchant",
            currency.code()
        ),
        param: Some(param.to_owned()),
    }
}

fn customer(body: Option<CustomerBody>) -> Result<Option<Customer>, ApiError> {
    let Some(c) = body else { return Ok(None) };
    let email = fields::email(&c.email, "customer.email")?;
    let phone = fields::phone(c.phone, "customer.phone")?;
    Ok(Some(Customer {
        email,
        name: fields::name(c.name, "customer.name")?,
        phone,
    }))
}

fn splits(body: Option<Vec<SplitBody>>, amount: i64, fee: Option<i64>) -> Result<Vec<Split>, ApiError> {
    let body = body.unwrap_or_default();
    if body.len() > SPLITS_MAX {
        return Err(ApiError::invalid("splits", format!("at most {SPLITS_MAX} splits")));
    }
    let mut out = Vec::with_capacity(body.len());
    let mut total = fee.unwrap_or(0);
    for (i, s) in body.into_iter().enumerate() {
        let param = format!("splits[{i}].payee_account_id");
        let id = fields::client_id(&s.payee_account_id, &param)?;
        if id.starts_with(SYSTEM_PREFIX) {
            return Err(ApiError::invalid(param, "payees cannot be Settle's own accounts"));
        }
        if out.iter().any(|o: &Split| o.payee_account_id == id) {
            return Err(ApiError::invalid(param, "each payee account may appear once"));
        }
        let amount_param = format!("splits[{i}].amount");
        fields::positive_amount(s.amount, &amount_param)?;
        total = total
            .checked_add(s.amount)
            .ok_or_else(|| ApiError::invalid(&amount_param, "splits overflow"))?;
        out.push(Split {
            payee_account_id: id,
            amount: s.amount,
        });
    }
    if total > amount {
        return Err(ApiError::invalid(
            "splits",
            "the splits and `application_fee_amount` together exceed `amount`",
        ));
    }
    Ok(out)
}

/// Payee accounts must exist in the payment's currency and accept credits without limit.
async fn check_payees(tx: &mut dyn settle_store::Tx, merchant_id: &str, payment: &Payment) -> Result<(), ApiError> {
    let keys: Vec<_> = payment
        .splits
        .iter()
        .map(|s| (merchant_id.to_owned(), s.payee_account_id.clone()))
        .collect();
    let accounts = tx.get_accounts(&keys, false).await?;
    for (i, split) in payment.splits.iter().enumerate() {
        let param = format!("splits[{i}].payee_account_id");
        let Some(account) = accounts.iter().find(|a| a.id == split.payee_account_id) else {
            return Err(ApiError::invalid(
                param,
                format!("no ledger account '{}'", split.payee_account_id),
            ));
        };
        if account.currency != payment.currency {
            return Err(ApiError::invalid(
                param,
                "the payee account's currency differs from the payment's",
            ));
        }
        if account.flags.credits_must_not_exceed_debits {
            return Err(ApiError::invalid(
                param,
                "the payee account refuses credits (credits_must_not_exceed_debits)",
            ));
        }
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let currency = fields::currency(&body.currency, "currency")?;
    fields::positive_amount(body.amount, "amount")?;
    let capture_method = match body.capture_method.as_deref() {
        None => CaptureMethod::Automatic,
        Some(m) => CaptureMethod::parse(m).ok_or_else(|| {
            ApiError::invalid("capture_method", "`capture_method` must be \"automatic\" or \"manual\"")
        })?,
    };
    if let Some(fee) = body.application_fee_amount {
        if fee < 0 {
            return Err(ApiError::invalid(
                "application_fee_amount",
                "`application_fee_amount` must be ≥ 0",
            ));
        }
    }
    if let Some(c) = &body.connector {
        if !CONNECTORS.contains(&c.as_str()) {
            return Err(ApiError::invalid(
                "connector",
                format!("`connector` must be one of {}", CONNECTORS.join(", ")),
            ));
        }
    }
    let method = MethodInput::parse(body.payment_method, "payment_method")?;
    let mut payment = new_payment(&state, &ctx, body.amount, currency, capture_method);
    match body.customer {
        None => {}
        Some(Value::String(id)) => payment.customer_id = Some(fields::client_id(&id, "customer")?),
        Some(other) if !other.is_object() => {
            return Err(ApiError::invalid(
                "customer",
                "`customer` must be a customer id or an object",
            ))
        }
        Some(other) => {
            let body: CustomerBody = crate::extract::from_value(other).map_err(|e| match e {
                ApiError::Invalid {
                    code,
                    message,
                    param: Some(p),
                } => ApiError::Invalid {
                    code,
                    message: message.replacen(&format!("`{p}`"), &format!("`customer.{p}`"), 1),
                    param: Some(format!("customer.{p}")),
                },
                other => other,
            })?;
            payment.customer = customer(Some(body))?;
        }
    }
    payment.receipt_email = body
        .receipt_email
        .map(|e| fields::email(&e, "receipt_email"))
        .transpose()?;
    payment.description = fields::description(body.description)?;
    payment.metadata = fields::metadata(body.metadata, "metadata")?.unwrap_or_else(|| json!({}));
    payment.splits = splits(body.splits, body.amount, body.application_fee_amount)?;
    payment.application_fee_amount = body.application_fee_amount;
    payment.connector = body.connector;
    let render = |p: &Payment| Reply::json(StatusCode::CREATED, &payment_json(p));
    create_payment(&state, &ctx, payment, method, body.confirm, &render).await
}

/// A new payment of `amount` in `currency`, before any of its optional details are set.
pub fn new_payment(
    state: &AppState,
    ctx: &Ctx,
    amount: i64,
    currency: Currency,
    capture_method: CaptureMethod,
) -> Payment {
    let now = state.clock.now();
    Payment {
        merchant_id: ctx.merchant_id().to_owned(),
        id: state.ids.make("pay"),
        amount,
        currency,
        capture_method,
        status: PaymentStatus::RequiresPaymentMethod,
        amount_capturable: 0,
        amount_captured: 0,
        amount_refunded: 0,
        payment_method_id: None,
        customer_id: None,
        customer: None,
        receipt_email: None,
        description: None,
        metadata: json!({}),
        splits: Vec::new(),
        application_fee_amount: None,
        connector: None,
        connector_account_id: None,
        connector_name: None,
        provider_ref: None,
        last_payment_error: None,
        cancellation_reason: None,
        authorized_at: None,
        claimed_until: None,
        plan: None,
        idempotency_key: ctx.idempotency.as_ref().map(|d| d.key.clone()),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

/// How a payment is answered: the native API's JSON, or the Stripe-compatible layer's.
pub type Render<'a, T> = &'a (dyn Fn(&T) -> Result<Reply, ApiError> + Sync);

/// Creates a payment (parsed and checked field by field), confirming it at once if asked.
pub async fn create_payment(
    state: &AppState,
    ctx: &Ctx,
    mut payment: Payment,
    method: Option<MethodInput>,
    confirm: bool,
    render: Render<'_, Payment>,
) -> Result<Response, ApiError> {
    let merchant_id = payment.merchant_id.clone();
    let currency = payment.currency;
    if confirm && method.is_none() {
        return Err(ApiError::missing("payment_method"));
    }
    // Everything the payment needs is read first (most creates read nothing); its rows are
    // then written in one of the ledger writer's group commits.
    let mut reader = state.lazy_reader(&merchant_id);
    if let Some(key) = &payment.idempotency_key {
        // A retry of a request whose process died before storing its idempotency record.
        if let Some(existing) = reader.tx().await?.payment_by_idempotency_key(&merchant_id, key).await? {
            if (existing.amount, existing.currency, existing.capture_method)
                != (payment.amount, payment.currency, payment.capture_method)
            {
                return Err(ApiError::IdempotencyReused { mismatch: "body" });
            }
            // Claimed: its confirm may still be running in another process.
            if existing.claimed_until.is_some_and(|until| until > state.clock.now()) {
                return Err(ApiError::IdempotencyInUse);
            }
            return Ok(render(&existing)?.into_response());
        }
    }
    if let Some(id) = &payment.customer_id {
        let found = reader
            .tx()
            .await?
            .get_customer(&merchant_id, id)
            .await?
            .ok_or_else(|| ApiError::invalid("customer", format!("no such customer: '{id}'")))?;
        if payment.customer.is_none() {
            payment.customer = found.contact();
        }
    }
    let merchant = ctx.merchant().ok_or(ApiError::Unauthenticated)?;
    within_limits(payment_limits(merchant, currency), currency, payment.amount, "amount")?;
    if !payment.splits.is_empty() {
        check_payees(reader.tx().await?, &merchant_id, &payment).await?;
    }
    let mut known = None;
    let mut new_methods = Vec::new();
    if let Some(method) = method {
        let (method, new) = method
            .find_or_seal(state, &mut reader, &merchant_id, "payment_method")
            .await?;
        methods::usable_for(&method, payment.customer_id.as_deref())?;
        payment.payment_method_id = Some(method.id.clone());
        payment.status = PaymentStatus::RequiresConfirmation;
        if new {
            new_methods.push(method.clone());
        }
        known = Some(method);
    }
    let actor = Actor {
        ctx: Some(ctx),
        reason: None,
    };
    let mut changes = vec![service::change(state, None, &payment, &actor, None)];
    let audit = vec![ctx.audit(state, &merchant_id, "payment.create", "payment", &payment.id)];
    let authorize = payment::Decision::Authorize;
    let prepared = if confirm {
        let prepared = service::prepare(state, &mut reader, &payment, &authorize, known.as_ref()).await?;
        let created = payment.clone();
        payment = service::claimed(state, &payment, &authorize, None, &prepared);
        payment.version = created.version;
        changes.push(service::change(state, Some(&created), &payment, &actor, None));
        Some(prepared)
    } else {
        None
    };
    drop(reader);
    // A confirming create answers after its authorization; any other answers now, and its
    // idempotency record commits with the payment.
    let next = match prepared {
        Some(prepared) => Next::Confirm(prepared),
        None => Next::Answer(render(&payment)?),
    };
    let records = match &next {
        Next::Answer(reply) => ctx.idempotency_record(reply, state.clock.now()).into_iter().collect(),
        Next::Confirm(_) => Vec::new(),
    };
    let rows = Then {
        new_methods,
        new_payments: vec![payment.clone()],
        changes,
        audit,
        records,
        ..Then::default()
    };
    match service::post(state, &merchant_id, Vec::new(), Some(rows)).await {
        Ok(()) => {
            state.recent.remember_payment(&payment);
            if let Some(method) = &known {
                state.recent.remember_method(method);
            }
        }
        Err(PostError::Write(WriteError::Store(e)))
            if e.is_conflict_on("payments") && payment.idempotency_key.is_some() =>
        {
            // Another process is creating the payment of this key right now.
            return Err(ApiError::IdempotencyRaceLost);
        }
        Err(e) => return Err(e.into()),
    }
    match next {
        Next::Confirm(prepared) => run_confirm(state, &payment, prepared, &actor, render).await,
        Next::Answer(reply) => Ok(reply.into_response()),
    }
}

/// What a created payment does once stored.
enum Next {
    Confirm(service::Prepared),
    Answer(Reply),
}

/// Authorizes a claimed (`processing`) payment and stores the outcome.
async fn run_confirm(
    state: &AppState,
    claimed: &Payment,
    prepared: service::Prepared,
    actor: &Actor<'_>,
    render: Render<'_, Payment>,
) -> Result<Response, ApiError> {
    let service::Prepared::Authorize { mut card, candidates } = prepared else {
        return Err(ApiError::Internal("a confirm was prepared without its card".into()));
    };
    card.cvc = methods::take_cvc(state, claimed);
    let (outcome, mut attempts) = service::authorize(state, claimed, &candidates, &card, actor).await;
    // From here an authorization may exist: on error the claim is left to expire and the
    // recovery job finishes the payment with its connector.
    let holder = candidates
        .iter()
        .find(|c| matches!(&outcome, AuthorizationOutcome::Authorized { connector_account_id, .. } if *connector_account_id == c.account_id));
    let (next, changes, transfers) =
        service::after_authorization(state, claimed, &outcome, actor, &mut attempts, holder).await?;
    let reply = render(&next)?;
    service::finish(
        state,
        claimed,
        &next,
        changes,
        attempts,
        &[],
        actor,
        Some(&reply),
        transfers,
    )
    .await?;
    // A sandbox account sends the delayed outcome as a webhook (when Settle knows its own URL).
    crate::inbound::sandbox::schedule(state, &next);
    Ok(reply.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    payment_method: Option<Value>,
}

async fn confirm(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ConfirmBody>,
) -> Result<Response, ApiError> {
    let method = MethodInput::parse(body.payment_method, "payment_method")?;
    let render = |p: &Payment| Reply::json(StatusCode::OK, &payment_json(p));
    confirm_payment(&state, &ctx, &id, method, &render).await
}

/// Confirms a payment, with a new payment method if one is given.
pub async fn confirm_payment(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    method: Option<MethodInput>,
    render: Render<'_, Payment>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let new_method = match method {
        Some(method) => {
            let mut tx = state.begin_write(&merchant_id).await?;
            let id = method
                .resolve(state, tx.as_mut(), &merchant_id, "payment_method")
                .await?;
            tx.commit().await?;
            Some(id)
        }
        None => None,
    };
    let actor = Actor {
        ctx: Some(ctx),
        reason: None,
    };
    let audit = [ctx.audit(state, &merchant_id, "payment.confirm", "payment", id)];
    let confirm = Command::Confirm;
    let (claimed, _, prepared) = service::claim(
        state,
        &merchant_id,
        id,
        &confirm,
        new_method.as_deref(),
        None,
        &actor,
        &audit,
    )
    .await?;
    run_confirm(state, &claimed, prepared, &actor, render).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    amount: Option<i64>,
    description: Option<String>,
    metadata: Option<Value>,
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Response, ApiError> {
    let changes = PaymentUpdate {
        amount: body.amount,
        description: body.description.map(|d| fields::description(Some(d))).transpose()?,
        metadata: fields::metadata(body.metadata, "metadata")?,
    };
    let render = |p: &Payment| Reply::json(StatusCode::OK, &payment_json(p));
    update_payment(&state, &ctx, &id, changes, &render).await
}

/// What an update may change, before the payment is confirmed.
#[derive(Default)]
pub struct PaymentUpdate {
    pub amount: Option<i64>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
    /// Merged into the stored metadata; a key with an empty value is removed (Stripe's rule).
    pub metadata: Option<Value>,
}

/// Changes the amount, description or metadata of a payment not yet confirmed (metadata and
/// description also later). Records `payment.updated`.
pub async fn update_payment(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    update: PaymentUpdate,
    render: Render<'_, Payment>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.begin_write(&merchant_id).await?;
    let stored = tx
        .get_payment(&merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment", id))?;
    let mut next = stored.clone();
    let now = state.clock.now();
    if let Some(amount) = update.amount {
        fields::positive_amount(amount, "amount")?;
        let open = matches!(
            stored.status,
            PaymentStatus::RequiresPaymentMethod | PaymentStatus::RequiresConfirmation
        );
        if !open || stored.claimed_until.is_some_and(|t| t > now) {
            return Err(ApiError::Conflict {
                code: "payment_unexpected_state",
                message: format!(
                    "the amount can change only before the payment is confirmed (current status: {})",
                    stored.status.as_str()
                ),
                param: Some("amount".into()),
            });
        }
        let merchant = tx.get_merchant(&merchant_id).await?.ok_or(ApiError::Unauthenticated)?;
        within_limits(
            payment_limits(&merchant, stored.currency),
            stored.currency,
            amount,
            "amount",
        )?;
        let taken: i64 =
            stored.splits.iter().map(|s| s.amount).sum::<i64>() + stored.application_fee_amount.unwrap_or(0);
        if taken > amount {
            return Err(ApiError::invalid(
                "amount",
                "the splits and fee of this payment exceed the new `amount`",
            ));
        }
        next.amount = amount;
    }
    if let Some(d) = update.description {
        next.description = d;
    }
    if let Some(changes) = update.metadata {
        next.metadata = fields::merge_metadata(&next.metadata, changes, "metadata")?;
    }
    next.version += 1;
    next.updated_at = now;
    if !tx.update_payment(&next, stored.version).await? {
        return Err(service::refusal(payment::Refusal::InProgress(stored.status)));
    }
    tx.insert_events(&[crate::events::new_event(
        state,
        &merchant_id,
        "payment.updated",
        "payment",
        &next.id,
        payment_json(&next),
    )])
    .await?;
    let audit = [ctx.audit(state, &merchant_id, "payment.update", "payment", id)];
    ctx.commit(state, tx, render(&next)?, &audit).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CaptureBody {
    amount: Option<i64>,
}

async fn capture(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CaptureBody>,
) -> Result<Response, ApiError> {
    if let Some(a) = body.amount {
        fields::positive_amount(a, "amount")?;
    }
    let command = Command::Capture { amount: body.amount };
    let render = |p: &Payment| Reply::json(StatusCode::OK, &payment_json(p));
    claim_and_settle(&state, &ctx, &id, &command, None, &render).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

async fn cancel(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CancelBody>,
) -> Result<Response, ApiError> {
    if let Some(r) = &body.reason {
        if !CANCELLATION_REASONS.contains(&r.as_str()) {
            return Err(ApiError::invalid(
                "reason",
                format!("`reason` must be one of {}", CANCELLATION_REASONS.join(", ")),
            ));
        }
    }
    let reason = Some(body.reason.unwrap_or_else(|| "requested_by_customer".into()));
    let render = |p: &Payment| Reply::json(StatusCode::OK, &payment_json(p));
    claim_and_settle(&state, &ctx, &id, &Command::Cancel, reason, &render).await
}

/// Captures or cancels a payment (`command`), answering with `render`.
pub async fn claim_and_settle(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    command: &Command,
    reason: Option<String>,
    render: Render<'_, Payment>,
) -> Result<Response, ApiError> {
    let action = match command {
        Command::Capture { .. } => "payment.capture",
        _ => "payment.cancel",
    };
    let merchant_id = ctx.merchant_id().to_owned();
    let actor = Actor {
        ctx: Some(ctx),
        reason: None,
    };
    let audit = [ctx.audit(state, &merchant_id, action, "payment", id)];
    let (claimed, decision, prepared) = service::claim(
        state,
        &merchant_id,
        id,
        command,
        None,
        reason.as_deref(),
        &actor,
        &audit,
    )
    .await?;
    let (_, reply) = service::settle_claim(state, &claimed, &decision, &prepared, reason, &actor, render, &[]).await?;
    Ok(reply.into_response())
}

pub async fn load(state: &AppState, merchant_id: &str, id: &str) -> Result<Payment, ApiError> {
    let mut tx = state.reader(merchant_id).await?;
    tx.get_payment(merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment", id))
}

async fn retrieve(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let payment = load(&state, ctx.merchant_id(), &id).await?;
    Ok(Reply::json(StatusCode::OK, &payment_json(&payment))?.into_response())
}

pub(crate) fn timestamp_param(value: &str, param: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse_rfc3339(value)
        .or_else(|| value.parse::<i64>().ok().and_then(Timestamp::from_unix_seconds))
        .ok_or_else(|| ApiError::invalid(param, format!("`{param}` must be an RFC 3339 time or unix seconds")))
}

async fn list(State(state): State<AppState>, ctx: Ctx, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let (page, filters) = page_and_filters(
        query.as_deref().unwrap_or(""),
        &["status", "customer_email", "created[gte]", "created[lt]"],
    )?;
    let mut filter = PaymentFilter::default();
    for (name, value) in filters {
        match name.as_str() {
            "status" => {
                filter.status = Some(PaymentStatus::parse(&value).ok_or_else(|| {
                    let valid: Vec<&str> = PaymentStatus::ALL.iter().map(|s| s.as_str()).collect();
                    ApiError::invalid("status", format!("`status` must be one of {}", valid.join(", ")))
                })?)
            }
            "customer_email" => filter.customer_email = Some(value.trim().to_lowercase()),
            "created[gte]" => filter.created_gte = Some(timestamp_param(&value, "created[gte]")?),
            _ => filter.created_lt = Some(timestamp_param(&value, "created[lt]")?),
        }
    }
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let listing = tx
        .list_payments(&merchant_id, &filter, &page.0)
        .await
        .map_err(|e| cursor_error(e, &page))?;
    list_reply(
        "/v1/payments",
        listing.items.iter().map(payment_json).collect(),
        listing.has_more,
    )
}

async fn events(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    load(&state, &merchant_id, &id).await?;
    let mut tx = state.reader(&merchant_id).await?;
    let rows = tx.list_status_changes(&merchant_id, &id).await?;
    let data = rows
        .iter()
        .map(|c| {
            json!({
                "id": c.id, "object": "payment_event", "payment_id": c.payment_id,
                "from": c.from_status.map(PaymentStatus::as_str), "to": c.to_status.as_str(),
                "reason": c.reason, "connector": c.connector, "error_code": c.error_code,
                "request_id": c.request_id, "created": c.created_at.to_rfc3339(),
            })
        })
        .collect();
    list_reply(&format!("/v1/payments/{id}/events"), data, false)
}

async fn attempts(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    load(&state, &merchant_id, &id).await?;
    let mut tx = state.reader(&merchant_id).await?;
    let rows = tx.list_attempts(&merchant_id, &id).await?;
    let data = rows
        .iter()
        .map(|a| {
            json!({
                "id": a.id, "object": "payment_attempt", "payment_id": a.payment_id, "operation": a.operation,
                "connector_account_id": a.connector_account_id, "connector": a.connector, "outcome": a.outcome,
                "error_code": a.error_code, "provider_ref": a.provider_ref, "request_id": a.request_id,
                "latency_ms": a.latency_ms, "created": a.created_at.to_rfc3339(),
            })
        })
        .collect();
    list_reply(&format!("/v1/payments/{id}/attempts"), data, false)
}

pub fn payment_json(p: &Payment) -> Value {
    json!({
        "id": p.id,
        "object": "payment",
        "amount": p.amount,
        "currency": p.currency.code(),
        "capture_method": p.capture_method.as_str(),
        "status": p.status.as_str(),
        "amount_capturable": p.amount_capturable,
        "amount_captured": p.amount_captured,
        "amount_refunded": p.amount_refunded,
        "refund_status": p.refund_status(),
        "payment_method": p.payment_method_id,
        "customer": p.customer.as_ref().map(|c| json!({ "email": c.email, "name": c.name, "phone": c.phone })),
        "customer_id": p.customer_id,
        "receipt_email": p.receipt_email,
        "description": p.description,
        "metadata": p.metadata,
        "splits": p.splits.iter().map(|s| json!({ "payee_account_id": s.payee_account_id, "amount": s.amount })).collect::<Vec<_>>(),
        "application_fee_amount": p.application_fee_amount,
        "connector": p.connector_name.as_ref().or(p.connector.as_ref()),
        "connector_account_id": p.connector_account_id,
        "last_payment_error": p.last_payment_error.as_ref().map(|e| json!({ "code": e.code, "message": e.message, "connector": e.connector })),
        "cancellation_reason": p.cancellation_reason,
        "authorized": p.authorized_at.map(|t| t.to_rfc3339()),
        "created": p.created_at.to_rfc3339(),
        "updated": p.updated_at.to_rfc3339(),
    })
}

async fn currencies(_: crate::extract::NoQuery) -> Response {
    let data: Vec<Value> = settle_domain::money::CURRENCIES
        .iter()
        .map(|c| json!({ "code": c.code, "name": c.name, "symbol": c.symbol, "exponent": c.exponent }))
        .collect();
    Json(json!({ "object": "list", "url": "/v1/currencies", "has_more": false, "data": data })).into_response()
}

async fn payment_method_types(_: crate::extract::NoQuery) -> Response {
    let types = [
        ("card", vec!["sandbox", "stripe"]),
        ("bank_transfer", vec![]),
        ("e_wallet", vec![]),
        ("crypto", vec![]),
    ];
    let data: Vec<Value> = types
        .iter()
        .map(|(t, c)| json!({ "type": t, "connectors": c, "available": !c.is_empty() }))
        .collect();
    Json(json!({ "object": "list", "url": "/v1/payment_method_types", "has_more": false, "data": data }))
        .into_response()
}

use axum::Json;

/// Parses stored or submitted routing rules.
pub fn routing_rules(value: &Value) -> Result<Vec<Rule>, ApiError> {
    let Some(items) = value.as_array() else {
        return Err(ApiError::invalid("rules", "`rules` must be an array"));
    };
    if items.len() > RULES_MAX {
        return Err(ApiError::invalid("rules", format!("at most {RULES_MAX} rules")));
    }
    items.iter().enumerate().map(|(i, item)| rule(i, item)).collect()
}

/// Parses routing rules a client submitted: [`routing_rules`], and each rule can match some
/// payment. Rules stored before these checks are still read by [`routing_rules`].
pub fn submitted_routing_rules(value: &Value) -> Result<Vec<Rule>, ApiError> {
    let rules = routing_rules(value)?;
    for (i, rule) in rules.iter().enumerate() {
        let c = &rule.conditions;
        let p = |f: &str| format!("rules[{i}].conditions.{f}");
        if let (Some(min), Some(max)) = (c.amount_min, c.amount_max) {
            if min > max {
                let param = p("amount_max");
                return Err(ApiError::invalid(
                    &param,
                    format!("`{param}` must be at least `amount_min` ({min})"),
                ));
            }
        }
        let currencies = c.currencies.as_ref().map(|v| v.iter().map(|c| c.code()).collect());
        let brands = c.card_brands.as_ref().map(|v| v.iter().map(|b| b.as_str()).collect());
        for (field, listed, what, known) in [
            (
                "currencies",
                currencies,
                "currency",
                settle_domain::money::CURRENCIES.len(),
            ),
            ("card_brands", brands, "card brand", CardBrand::ALL.len()),
        ] {
            let Some(listed): Option<Vec<&str>> = listed else {
                continue;
            };
            let param = p(field);
            if listed.is_empty() {
                return Err(ApiError::invalid(
                    &param,
                    format!("`{param}` must list at least one {what} (leave it out to match any)"),
                ));
            }
            if listed.len() > known {
                return Err(ApiError::invalid(
                    &param,
                    format!("`{param}` may list at most {known} values, each once"),
                ));
            }
            if let Some((j, twice)) = listed.iter().enumerate().find(|(j, l)| listed[..*j].contains(l)) {
                return Err(ApiError::invalid(
                    format!("{param}[{j}]"),
                    format!("`{param}` lists {twice} twice"),
                ));
            }
        }
    }
    Ok(rules)
}

fn rule(i: usize, item: &Value) -> Result<Rule, ApiError> {
    let p = |f: &str| format!("rules[{i}].{f}");
    let Some(obj) = item.as_object() else {
        return Err(ApiError::invalid(format!("rules[{i}]"), "each rule must be an object"));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["connector_account_id", "conditions"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(p(k), format!("unknown field `{}`", p(k))));
    }
    let account = match obj.get("connector_account_id") {
        None | Some(Value::Null) => return Err(ApiError::missing(p("connector_account_id"))),
        Some(Value::String(account)) => account,
        Some(_) => {
            let param = p("connector_account_id");
            return Err(ApiError::invalid(&param, format!("`{param}` must be a string")));
        }
    };
    let c = obj.get("conditions").cloned().unwrap_or_else(|| json!({}));
    let Some(c) = c.as_object() else {
        return Err(ApiError::invalid(p("conditions"), "`conditions` must be an object"));
    };
    let mut conditions = Conditions {
        currencies: None,
        amount_min: None,
        amount_max: None,
        card_brands: None,
    };
    for (k, v) in c.iter().filter(|(_, v)| !v.is_null()) {
        let param = p(&format!("conditions.{k}"));
        let strings = || -> Result<Vec<&str>, ApiError> {
            v.as_array()
                .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                .ok_or_else(|| ApiError::invalid(&param, format!("`{param}` must be an array of strings")))
        };
        let amount = || {
            v.as_i64()
                .filter(|a| *a >= 0)
                .ok_or_else(|| ApiError::invalid(&param, format!("`{param}` must be an amount ≥ 0")))
        };
        match k.as_str() {
            "currencies" => {
                conditions.currencies = Some(
                    strings()?
                        .into_iter()
                        .map(|s| fields::currency(s, &param))
                        .collect::<Result<_, _>>()?,
                )
            }
            "card_brands" => {
                conditions.card_brands = Some(
                    strings()?
                        .into_iter()
                        .map(|s| {
                            CardBrand::parse(s)
                                .ok_or_else(|| ApiError::invalid(&param, format!("unknown card brand '{s}'")))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
            "amount_min" => conditions.amount_min = Some(amount()?),
            "amount_max" => conditions.amount_max = Some(amount()?),
            other => return Err(ApiError::invalid(&param, format!("unknown condition `{other}`"))),
        }
    }
    Ok(Rule {
        connector_account_id: account.to_owned(),
        conditions,
    })
}

pub fn rule_json(r: &Rule) -> Value {
    let c = &r.conditions;
    json!({
        "connector_account_id": r.connector_account_id,
        "conditions": {
            "currencies": c.currencies.as_ref().map(|v| v.iter().map(|c| c.code()).collect::<Vec<_>>()),
            "amount_min": c.amount_min,
            "amount_max": c.amount_max,
            "card_brands": c.card_brands.as_ref().map(|v| v.iter().map(|b| b.as_str()).collect::<Vec<_>>()),
        }
    })
}
