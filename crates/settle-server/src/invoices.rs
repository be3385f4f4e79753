//! Invoices over HTTP, and the worker that applies payment events to them (seed 003).
//!
//! - `POST /v1/invoices` (a `draft`), `GET /v1/invoices` (`status`, `customer_email`),
//!   `GET /v1/invoices/{id}`, `POST /v1/invoices/{id}/send`, `POST /v1/invoices/{id}/void`,
//!   `GET /v1/invoices/{id}/payments` (every payment event received for it, with its outcome).
//! - `POST /v1/invoice_payments` `{event_id, type: "payment", invoice_id, amount_cents}`: the
//!   event is put in the inbox (`invoice_payment_events`, unique per merchant and event id) and
//!   answered 202; a duplicate delivery answers 202 with `duplicate: true` and the stored event.
//! - [`try_execute_invoice_payments`]: one bounded round of the worker.
//!
//! How a payment is applied exactly once, with several workers (tasks or `settle` processes)
//! racing: a round reads up to [`PAYMENT_EVENTS_PER_ROUND_MAX`] `received` events, groups them by
//! invoice and lets `settle_domain::invoice::apply_events` decide each group. Each group commits
//! in one transaction of the ledger writer: the transfers of the applied payments (ids derived
//! from the event ids, so a repeated one is an `exists`), the invoice at the version the round
//! read (compare-and-set), the events moved `received → applied | rejected` only while still
//! `received`, and the domain events. A worker that lost a race fails its precondition, writes
//! nothing, and the events are looked at again by the next round. Within one invoice the events
//! are applied one after the other; distinct invoices commit concurrently.
//!
//! Every change records its domain event in the same transaction: `invoice.created`,
//! `invoice.sent`, `invoice.voided`, `invoice.payment_applied`, `invoice.paid`,
//! `invoice.payment_rejected` (data: the invoice after the change). Every writer of an invoice's
//! events first updates the invoice at the version it read, so events are numbered in order.

use std::collections::{BTreeMap, BTreeSet};

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
    invoice::{
        self, Command, IllegalTransition, Invoice, InvoiceFilter, InvoiceStatus, PaymentEvent, PaymentEventStatus,
        Rejection,
    },
    ledger::{Key, TransferError, TransferRequest},
    Currency, Timestamp,
};
use settle_store::{Mode, Scope};
use tokio::task::JoinSet;

use crate::{
    context::{Ctx, Reply},
    error::ApiError,
    events::new_event,
    extract::{page_and_filters, JsonBody, Page},
    fields,
    ledger::{
        cursor_error, list_reply, write_error,
        writer::{Then, WriteError},
    },
    payments::{self, amount_limits, timestamp_param},
    AppState,
};

/// Most payment events one worker round looks at.
pub const PAYMENT_EVENTS_PER_ROUND_MAX: u32 = 1_000;
/// How often a send or void re-reads an invoice that a worker changed under it.
pub const COMMAND_RETRIES_MAX: usize = 3;
/// Latest due date accepted: 9999-12-31T23:59:59Z.
pub const DUE_DATE_SECONDS_MAX: i64 = 253_402_300_799;
/// The only payment event type.
pub const PAYMENT_TYPE: &str = "payment";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/invoices", post(create).get(list))
        .route("/v1/invoices/{id}", get(retrieve))
        .route("/v1/invoices/{id}/send", post(send))
        .route("/v1/invoices/{id}/void", post(void))
        .route("/v1/invoices/{id}/payments", get(payments_of))
        .route("/v1/invoice_payments", post(receive))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerBody {
    email: String,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    customer: CustomerBody,
    amount_due: i64,
    currency: String,
    due_date: Option<Value>,
    description: Option<String>,
    metadata: Option<Value>,
}

/// Seed 003's payment event.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentBody {
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    invoice_id: String,
    amount_cents: i64,
}

/// `due_date`: RFC 3339, or unix seconds (a number or a string of digits), up to the year 9999.
fn due_date(value: Option<Value>) -> Result<Option<Timestamp>, ApiError> {
    let parsed = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64().and_then(Timestamp::from_unix_seconds),
        Some(Value::String(s)) => timestamp_param(&s, "due_date").ok(),
        Some(_) => None,
    };
    match parsed {
        Some(t) if (0..=DUE_DATE_SECONDS_MAX).contains(&t.unix_seconds()) => Ok(Some(t)),
        _ => Err(ApiError::invalid(
            "due_date",
            "`due_date` must be an RFC 3339 time or unix seconds, between 1970 and 9999",
        )),
    }
}

/// The calling merchant, for its amount limits (see `payments::amount_limits`).
async fn merchant(
    tx: &mut dyn settle_store::Tx,
    merchant_id: &str,
) -> Result<settle_domain::tenancy::Merchant, ApiError> {
    tx.get_merchant(merchant_id).await?.ok_or(ApiError::Unauthenticated)
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let now = state.clock.now();
    let customer_email = fields::email(&body.customer.email, "customer.email")?;
    let customer_name = fields::name(body.customer.name, "customer.name")?;
    fields::positive_amount(body.amount_due, "amount_due")?;
    let currency = fields::currency(&body.currency, "currency")?;
    let due_date = due_date(body.due_date)?;
    let description = fields::description(body.description)?;
    let metadata = fields::metadata(body.metadata, "metadata")?.unwrap_or_else(|| json!({}));
    let mut tx = state.begin_write(&merchant_id).await?;
    let merchant = merchant(tx.as_mut(), &merchant_id).await?;
    payments::within_limits(
        amount_limits(&merchant, currency),
        currency,
        body.amount_due,
        "amount_due",
    )?;
    let invoice = Invoice {
        merchant_id: merchant_id.clone(),
        id: state.ids.make("inv"),
        status: InvoiceStatus::Draft,
        currency,
        amount_due: body.amount_due,
        amount_paid: 0,
        customer_email,
        customer_name,
        description,
        metadata,
        due_date,
        sent_at: None,
        paid_at: None,
        voided_at: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    tx.insert_invoice(&invoice).await?;
    let data = invoice_json(&invoice);
    tx.insert_events(&[new_event(
        &state,
        &merchant_id,
        "invoice.created",
        "invoice",
        &invoice.id,
        data.clone(),
    )])
    .await?;
    let audit = [ctx.audit(&state, &merchant_id, "invoice.create", "invoice", &invoice.id)];
    ctx.commit(&state, tx, Reply::json(StatusCode::CREATED, &data)?, &audit)
        .await
}

fn illegal(refusal: IllegalTransition) -> ApiError {
    ApiError::Conflict {
        code: "invoice_unexpected_state",
        message: refusal.message(),
        param: None,
    }
}

async fn send(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::JsonBody<crate::extract::NoFields>,
) -> Result<Response, ApiError> {
    command(&state, &ctx, &id, Command::Send).await
}

async fn void(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::JsonBody<crate::extract::NoFields>,
) -> Result<Response, ApiError> {
    command(&state, &ctx, &id, Command::Void).await
}

/// Sends or voids: decide against the stored invoice, store it at the version read (a worker
/// that applied a payment meanwhile makes it read again), record the event.
async fn command(state: &AppState, ctx: &Ctx, id: &str, command: Command) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.begin_write(&merchant_id).await?;
    for _ in 0..COMMAND_RETRIES_MAX {
        let invoice = tx
            .get_invoice(&merchant_id, id)
            .await?
            .ok_or_else(|| ApiError::not_found("invoice", id))?;
        let next = invoice::decide(&invoice, command, state.clock.now()).map_err(illegal)?;
        if tx.update_invoices(&[(next.clone(), invoice.version)]).await? != 1 {
            continue;
        }
        let data = invoice_json(&next);
        tx.insert_events(&[new_event(
            state,
            &merchant_id,
            command.event(),
            "invoice",
            id,
            data.clone(),
        )])
        .await?;
        let action = format!("invoice.{}", command.name());
        let audit = [ctx.audit(state, &merchant_id, &action, "invoice", id)];
        return ctx.commit(state, tx, Reply::json(StatusCode::OK, &data)?, &audit).await;
    }
    Err(ApiError::Conflict {
        code: "invoice_in_progress",
        message: "payments are being applied to this invoice; retry shortly".into(),
        param: None,
    })
}

async fn load(state: &AppState, merchant_id: &str, id: &str) -> Result<Invoice, ApiError> {
    let mut tx = state.reader(merchant_id).await?;
    tx.get_invoice(merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", id))
}

async fn retrieve(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let invoice = load(&state, ctx.merchant_id(), &id).await?;
    Ok(Reply::json(StatusCode::OK, &invoice_json(&invoice))?.into_response())
}

async fn list(State(state): State<AppState>, ctx: Ctx, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let (page, filters) = page_and_filters(query.as_deref().unwrap_or(""), &["status", "customer_email"])?;
    let mut filter = InvoiceFilter::default();
    for (name, value) in filters {
        match name.as_str() {
            "status" => {
                filter.status = Some(InvoiceStatus::parse(&value).ok_or_else(|| {
                    ApiError::invalid("status", "`status` must be draft, sent, partially_paid, paid or void")
                })?)
            }
            _ => filter.customer_email = Some(value.trim().to_lowercase()),
        }
    }
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let listing = tx
        .list_invoices(&merchant_id, &filter, &page.0)
        .await
        .map_err(|e| cursor_error(e, &page))?;
    list_reply(
        "/v1/invoices",
        listing.items.iter().map(invoice_json).collect(),
        listing.has_more,
    )
}

async fn payments_of(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    page: Page,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    load(&state, &merchant_id, &id).await?;
    let mut tx = state.reader(&merchant_id).await?;
    let listing = tx
        .list_payment_events(&merchant_id, &id, &page.0)
        .await
        .map_err(|e| cursor_error(e, &page))?;
    list_reply(
        &format!("/v1/invoices/{id}/payments"),
        listing.items.iter().map(payment_event_json).collect(),
        listing.has_more,
    )
}

/// Receives a payment event: 202 once it is durably in the inbox (or already was).
async fn receive(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<PaymentBody>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let now = state.clock.now();
    let event_id = invoice::parse_uuid(&body.event_id)
        .ok_or_else(|| ApiError::invalid("event_id", "`event_id` must be a UUID (8-4-4-4-12 hexadecimal digits)"))?;
    if body.kind != PAYMENT_TYPE {
        return Err(ApiError::invalid("type", "`type` must be \"payment\""));
    }
    let invoice_id = fields::client_id(&body.invoice_id, "invoice_id")?;
    fields::positive_amount(body.amount_cents, "amount_cents")?;
    let mut tx = state.begin_write(&merchant_id).await?;
    let invoice = tx
        .get_invoice(&merchant_id, &invoice_id)
        .await?
        .ok_or_else(|| ApiError::not_found_at("invoice", &invoice_id, "invoice_id"))?;
    let (_, max) = amount_limits(&merchant(tx.as_mut(), &merchant_id).await?, invoice.currency);
    if body.amount_cents > max {
        return Err(payments::out_of_range("amount_cents", 1, max, invoice.currency));
    }
    let event = PaymentEvent {
        merchant_id: merchant_id.clone(),
        id: state.ids.make("ipe"),
        event_id,
        invoice_id,
        amount: body.amount_cents,
        currency: invoice.currency,
        status: PaymentEventStatus::Received,
        reason: None,
        transfer_id: None,
        created_at: now,
        updated_at: now,
    };
    let fresh = tx.insert_payment_event(&event).await?;
    let stored = if fresh {
        event
    } else {
        let stored = tx
            .get_payment_event(&merchant_id, &event.event_id)
            .await?
            .ok_or_else(|| ApiError::Internal("a duplicate payment event vanished".into()))?;
        if (&stored.invoice_id, stored.amount) != (&event.invoice_id, event.amount) {
            return Err(ApiError::Unprocessable {
                code: "event_id_reused",
                message: format!(
                    "event `{}` was already received for invoice `{}` with `amount_cents` {}: \
                     a redelivery must repeat the event, a new payment needs a new `event_id`",
                    stored.event_id, stored.invoice_id, stored.amount
                ),
                param: Some("event_id".into()),
            });
        }
        stored
    };
    let mut data = payment_event_json(&stored);
    data["duplicate"] = Value::Bool(!fresh);
    let audit = [ctx.audit(
        &state,
        &merchant_id,
        "invoice_payment.receive",
        "invoice_payment",
        &stored.id,
    )];
    ctx.commit(&state, tx, Reply::json(StatusCode::ACCEPTED, &data)?, &audit)
        .await
}

/// One round of the worker: applies (or rejects) up to [`PAYMENT_EVENTS_PER_ROUND_MAX`]
/// received payment events, each invoice's in one transaction. Returns how many events this
/// round concluded; events another worker concluded first, or whose invoice changed under
/// this round, are left to the next round. An error is returned after every invoice of the
/// round was tried.
pub async fn try_execute_invoice_payments(state: &AppState) -> Result<usize, ApiError> {
    let (received, invoices) = {
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        let received = tx.received_payment_events(PAYMENT_EVENTS_PER_ROUND_MAX).await?;
        if received.is_empty() {
            return Ok(0);
        }
        let keys: BTreeSet<Key> = received
            .iter()
            .map(|e| (e.merchant_id.clone(), e.invoice_id.clone()))
            .collect();
        let invoices = tx.get_invoices(&keys.into_iter().collect::<Vec<_>>()).await?;
        (received, invoices)
    };
    let mut groups: BTreeMap<Key, Vec<PaymentEvent>> = BTreeMap::new();
    for event in received {
        groups
            .entry((event.merchant_id.clone(), event.invoice_id.clone()))
            .or_default()
            .push(event);
    }
    let mut invoices: BTreeMap<Key, Invoice> = invoices
        .into_iter()
        .map(|i| ((i.merchant_id.clone(), i.id.clone()), i))
        .collect();
    let mut tasks = JoinSet::new();
    for (key, events) in groups {
        let invoice = invoices.remove(&key);
        let state = state.clone();
        tasks.spawn(async move { conclude(&state, &key.0, invoice, &events).await });
    }
    let mut concluded = 0;
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(n)) => concluded += n,
            Ok(Err(e)) => {
                tracing::warn!(error = ?e, "applying invoice payments failed; retried next round");
                failure.get_or_insert(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "an invoice payment task ended abnormally");
                failure.get_or_insert(ApiError::Internal(format!("invoice payment task: {e}")));
            }
        }
    }
    state
        .metrics
        .job_changes("invoice_payments", u64::try_from(concluded).unwrap_or(0));
    match failure {
        Some(e) => Err(e),
        None => Ok(concluded),
    }
}

/// Concludes one invoice's events; `Ok(0)` when another worker got there first. When the
/// ledger refuses an event's transfer (its account's totals would overflow), that event is
/// rejected, the events before it are decided again, and those after it wait for the next
/// round: a refusal is concluded, never retried forever ahead of other merchants' events.
async fn conclude(
    state: &AppState,
    merchant_id: &str,
    invoice: Option<Invoice>,
    events: &[PaymentEvent],
) -> Result<usize, ApiError> {
    let currency = invoice.as_ref().map(|i| i.currency);
    let mut refused: Option<usize> = None;
    loop {
        let (transfers, then) = plan(state, invoice.clone(), events, refused);
        let transfer_id = match commit(state, merchant_id, currency, transfers, then).await? {
            Committed::Concluded(n) => return Ok(n),
            Committed::Refused(transfer_id) => transfer_id,
        };
        // Each pass refuses an earlier event than the last, so this ends.
        let at = events
            .iter()
            .position(|e| invoice::transfer_id(&e.event_id) == transfer_id)
            .filter(|at| refused.is_none_or(|before| *at < before))
            .ok_or_else(|| {
                ApiError::Internal(format!("the ledger refused transfer {transfer_id} of no pending event"))
            })?;
        refused = Some(at);
    }
}

/// What one invoice's events do: the transfers to post, and the rows to write with them
/// (with the event at `refused`, if any, rejected because the ledger refused its transfer).
fn plan(
    state: &AppState,
    invoice: Option<Invoice>,
    events: &[PaymentEvent],
    refused: Option<usize>,
) -> (Vec<TransferRequest>, Then) {
    let now = state.clock.now();
    let Some(invoice) = invoice else {
        let concluded = events
            .iter()
            .map(|e| e.rejected(Rejection::InvoiceNotFound, now))
            .collect();
        return (
            Vec::new(),
            Then {
                invoice_payments: concluded,
                ..Then::default()
            },
        );
    };
    let outcome = match refused {
        Some(at) => invoice::apply_events_refusing(&invoice, events, at, now),
        None => invoice::apply_events(&invoice, events, now),
    };
    let records = outcome
        .records
        .iter()
        .map(|(kind, after)| {
            new_event(
                state,
                &invoice.merchant_id,
                kind,
                "invoice",
                &invoice.id,
                invoice_json(after),
            )
        })
        .collect();
    let then = Then {
        invoices: vec![(outcome.invoice, invoice.version)],
        invoice_payments: outcome.concluded,
        events: records,
        ..Then::default()
    };
    (outcome.transfers, then)
}

/// What committing one plan came to.
enum Committed {
    /// This many events concluded (0: another worker got there first).
    Concluded(usize),
    /// The ledger refused the transfer with this id; nothing was written.
    Refused(String),
}

/// Commits one invoice's plan.
async fn commit(
    state: &AppState,
    merchant_id: &str,
    currency: Option<Currency>,
    transfers: Vec<TransferRequest>,
    then: Then,
) -> Result<Committed, ApiError> {
    let concluded = then.invoice_payments.len();
    let written = match currency {
        Some(currency) if !transfers.is_empty() => {
            let key = format!("{merchant_id}/invoices/{}", currency.code());
            payments::service::ensure_accounts(state, merchant_id, &key, &invoice::chart(currency), currency).await?;
            let ids: Vec<String> = transfers.iter().map(|t| t.id.clone()).collect();
            let posted = state.writer.post(merchant_id, transfers, true, Some(then)).await;
            if let Some((at, e)) = posted
                .as_ref()
                .ok()
                .and_then(|results| settle_domain::ledger::refusal(results))
            {
                if !final_refusal(e) {
                    // Nothing was written: the events stay `received`.
                    return Err(ApiError::Internal(format!(
                        "the ledger refused invoice payment transfer {}: {}: {}",
                        ids[at],
                        e.code(),
                        e.message()
                    )));
                }
                tracing::warn!(
                    merchant_id,
                    transfer_id = %ids[at],
                    code = e.code(),
                    "the ledger refused an invoice payment for good (overflow); the event is rejected"
                );
                return Ok(Committed::Refused(ids[at].clone()));
            }
            posted.map(|_| ())
        }
        _ => write_alone(state, &then).await,
    };
    match written {
        Ok(()) => Ok(Committed::Concluded(concluded)),
        Err(e) if lost_race(&e) => Ok(Committed::Concluded(0)),
        Err(e) => Err(write_error(e)),
    }
}

/// Whether a refusal is the payment's own and final (its accounts' totals would overflow, and
/// totals only grow), so that its event is rejected. Any other refusal is a fault to look into:
/// the events stay `received` and the round fails loudly.
fn final_refusal(e: &TransferError) -> bool {
    matches!(e, TransferError::OverflowsDebits | TransferError::OverflowsCredits)
}

/// Writes rows that move no money (rejections only) in a transaction of their own.
async fn write_alone(state: &AppState, then: &Then) -> Result<(), WriteError> {
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    then.write(tx.as_mut(), None).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether another worker (or a send/void) changed the invoice or its events first.
fn lost_race(e: &WriteError) -> bool {
    match e {
        WriteError::Stale(_) => true,
        WriteError::Store(e) => e.is_conflict_on("events") || e.is_conflict_on("invoice_payment_events"),
        _ => false,
    }
}

fn ts(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

pub fn invoice_json(i: &Invoice) -> Value {
    json!({
        "id": i.id,
        "object": "invoice",
        "status": i.status.as_str(),
        "currency": i.currency.code(),
        "amount_due": i.amount_due,
        "amount_paid": i.amount_paid,
        "amount_remaining": i.amount_remaining(),
        "amount_overpaid": i.amount_overpaid(),
        "customer": { "email": i.customer_email, "name": i.customer_name },
        "description": i.description,
        "metadata": i.metadata,
        "due_date": ts(i.due_date),
        "sent_at": ts(i.sent_at),
        "paid_at": ts(i.paid_at),
        "voided_at": ts(i.voided_at),
        "created": i.created_at.to_rfc3339(),
        "updated": i.updated_at.to_rfc3339(),
    })
}

pub fn payment_event_json(e: &PaymentEvent) -> Value {
    json!({
        "id": e.id,
        "object": "invoice_payment",
        "event_id": e.event_id,
        "type": PAYMENT_TYPE,
        "invoice_id": e.invoice_id,
        "amount": e.amount,
        "currency": e.currency.code(),
        "status": e.status.as_str(),
        "reason": e.reason.map(Rejection::code),
        "reason_message": e.reason.map(Rejection::message),
        "transfer_id": e.transfer_id,
        "created": e.created_at.to_rfc3339(),
        "updated": e.updated_at.to_rfc3339(),
    })
}
