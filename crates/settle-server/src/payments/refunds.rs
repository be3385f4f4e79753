//! Refunds (`/v1/refunds`).
//!
//! 1. One transaction reserves the amount on the payment — a single `UPDATE` that adds it to
//!    `amount_refunded` only if the total stays within `amount_captured` (and a CHECK
//!    constraint says the same), so concurrent refunds cannot over-refund — and stores the
//!    refund as `pending` with what it takes from each share of the capture.
//! 2. The ledger holds each share's part (share account → the connector's clearing account).
//!    A payee that no longer holds its part refuses the hold: the refund fails, the reservation
//!    is released.
//! 3. The connector that captured the payment refunds it; its answer posts the holds
//!    (`succeeded`) or voids them and releases the reservation (`failed`), in one transaction
//!    with the refund's new status. No answer in time leaves the refund `pending`.

use std::time::Instant;

use axum::{
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use settle_connectors::{ConnectorError, ConnectorResult, RefundOutcome, RefundStatus as ProviderRefund};
use settle_domain::{
    event::{self, NewEvent},
    ledger::TransferRequest,
    payment::{decide_refund, Payment, Refund, RefundRefusal, RefundStatus},
    postings, Timestamp,
};
use settle_store::{Mode, Scope};

use crate::{
    context::{Ctx, Reply},
    error::ApiError,
    events,
    extract::{page_and_filters, JsonBody},
    fields,
    ledger::{
        cursor_error, list_reply,
        writer::{Then, WriteError},
    },
    payments::{
        connectors::Candidate,
        jobs,
        service::{self, PostError},
    },
    AppState, LazyReader,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/refunds", post(create).get(list))
        .route("/v1/refunds/{id}", get(retrieve))
}

pub const REFUND_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub payment_id: String,
    pub amount: Option<i64>,
    pub reason: Option<String>,
    pub metadata: Option<Value>,
}

fn refusal(r: RefundRefusal) -> ApiError {
    match r {
        RefundRefusal::NotCaptured(status) => ApiError::Conflict {
            code: "payment_unexpected_state",
            message: format!(
                "only succeeded payments can be refunded (current status: {})",
                status.as_str()
            ),
            param: Some("payment_id".into()),
        },
        RefundRefusal::ExceedsCaptured { refundable } => ApiError::Unprocessable {
            code: "amount_too_large",
            message: format!("the refund exceeds what remains refundable ({refundable})"),
            param: Some("amount".into()),
        },
    }
}

/// What step 1 found to do.
enum Reserved {
    /// A new pending refund, reserved on its payment, to be executed by the holder.
    New(Box<(Payment, Refund, Candidate)>),
    /// The refund this request's `Idempotency-Key` already created: a retry whose first try
    /// stored the refund but not its idempotency record (its process died, or another process
    /// is still executing it).
    Existing(Box<Refund>),
}

/// The refund this request's `key` already created, as the answer to give: the refund, 409
/// while its request may still be running (pending and younger than the sync job's wait), or
/// 422 when the key was used for another refund. `None` without a key or such a refund.
async fn by_key(
    state: &AppState,
    tx: &mut dyn settle_store::Tx,
    merchant_id: &str,
    body: &CreateBody,
    key: Option<&str>,
    now: Timestamp,
) -> Result<Option<Result<Reserved, ApiError>>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    let Some(existing) = tx.refund_by_idempotency_key(merchant_id, key).await? else {
        return Ok(None);
    };
    Ok(Some(
        if existing.payment_id != body.payment_id || body.amount.is_some_and(|a| a != existing.amount) {
            Err(ApiError::IdempotencyReused { mismatch: "body" })
        } else if existing.status == RefundStatus::Pending && existing.updated_at >= sync_horizon(state, now) {
            Err(ApiError::IdempotencyInUse)
        } else {
            Ok(Reserved::Existing(Box::new(existing)))
        },
    ))
}

/// Step 1: reserve and store the pending refund.
async fn reserve(state: &AppState, ctx: &Ctx, body: CreateBody) -> Result<Reserved, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let now = state.clock.now();
    let key = ctx.idempotency.as_ref().map(|d| d.key.clone());
    let mut tx = state.begin_write(&merchant_id).await?;
    if let Some(found) = by_key(state, tx.as_mut(), &merchant_id, &body, key.as_deref(), now).await? {
        return found;
    }
    let payment = tx
        .get_payment(&merchant_id, &body.payment_id)
        .await?
        .ok_or_else(|| ApiError::invalid("payment_id", format!("no such payment: '{}'", body.payment_id)))?;
    let amount = decide_refund(&payment, body.amount).map_err(refusal)?;
    if !tx.add_refunded(&merchant_id, &payment.id, amount, now).await? {
        // A concurrent refund took what this one needed (the row was locked until it committed):
        // perhaps this very request, sent to another process too, whose refund is now visible.
        if let Some(found) = by_key(state, tx.as_mut(), &merchant_id, &body, key.as_deref(), now).await? {
            return found;
        }
        let current = tx.get_payment(&merchant_id, &payment.id).await?.unwrap_or(payment);
        return Err(refusal(decide_refund(&current, Some(amount)).err().unwrap_or(
            RefundRefusal::ExceedsCaptured {
                refundable: current.amount_captured - current.amount_refunded,
            },
        )));
    }
    // Read after the reservation: the row lock orders this after every earlier refund.
    let payment = tx
        .get_payment(&merchant_id, &payment.id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment", &body.payment_id))?;
    let shares = postings::shares(&payment).len();
    let mut taken = vec![0i64; shares];
    for earlier in tx.refunds_of(&merchant_id, &payment.id).await? {
        if earlier.status != RefundStatus::Failed {
            for (t, p) in taken.iter_mut().zip(&earlier.parts) {
                *t += p;
            }
        }
    }
    let parts = postings::refund_parts(&payment, amount, &taken)
        .ok_or_else(|| ApiError::Internal(format!("refund of {amount} does not allocate over {taken:?}")))?;
    let refund = Refund {
        merchant_id: merchant_id.clone(),
        id: state.ids.make("re"),
        payment_id: payment.id.clone(),
        amount,
        currency: payment.currency,
        status: RefundStatus::Pending,
        reason: body.reason,
        metadata: fields::metadata(body.metadata, "metadata")?.unwrap_or_else(|| json!({})),
        parts,
        connector_account_id: payment.connector_account_id.clone(),
        provider_ref: None,
        failure_code: None,
        created_at: now,
        updated_at: now,
        idempotency_key: key,
    };
    match tx.insert_refund(&refund).await {
        // Another process stored a refund of this key since the lookup above.
        Err(e) if e.is_conflict_on("refunds") && refund.idempotency_key.is_some() => {
            return Err(ApiError::IdempotencyRaceLost)
        }
        inserted => inserted?,
    }
    // The payment's own event: its refunded amount grew (Stripe's `charge.refunded`).
    let refunded = events::new_event(
        state,
        &merchant_id,
        "payment.refunded",
        "payment",
        &payment.id,
        crate::payments::payment_json(&payment),
    );
    tx.insert_events(&[refund_event(state, &refund), refunded]).await?;
    tx.insert_audit(&[ctx.audit(state, &merchant_id, "refund.create", "refund", &refund.id)])
        .await?;
    let holder = service::holder(state, &mut LazyReader::over(tx.as_mut()), &payment).await?;
    tx.commit().await?;
    Ok(Reserved::New(Box::new((payment, refund, holder))))
}

/// Step 3's bookkeeping, written with the refund's settling transfers: the refund's outcome
/// (only while still `pending`), the reservation given back if it failed, the idempotency record.
async fn conclude(
    state: &AppState,
    ctx: Option<&Ctx>,
    refund: &Refund,
    reply: Reply,
    transfers: Vec<TransferRequest>,
) -> Result<Concluded, ApiError> {
    let record = ctx
        .filter(|_| reply.status.is_success())
        .and_then(|ctx| ctx.idempotency_record(&reply, state.clock.now()));
    let rows = Then {
        events: [refund]
            .into_iter()
            .filter(|r| r.status != RefundStatus::Pending)
            .map(|r| refund_event(state, r))
            .collect(),
        refunds: vec![refund.clone()],
        released: [refund.clone()]
            .into_iter()
            .filter(|r| r.status == RefundStatus::Failed)
            .collect(),
        records: record.into_iter().collect(),
        ..Then::default()
    };
    match service::post(state, &refund.merchant_id, transfers, Some(rows)).await {
        Ok(()) => Ok(Concluded::Here(reply)),
        // Nothing of this conclusion was written. Another process concluding the refund first
        // (its sync job, when this request outlasted the job's wait) is no error: the refund is
        // as that process left it.
        Err(PostError::Write(WriteError::Stale(why))) => {
            let stored = state
                .reader(&refund.merchant_id)
                .await?
                .get_refund(&refund.merchant_id, &refund.id)
                .await?;
            match stored {
                Some(stored) if stored.status != RefundStatus::Pending => {
                    tracing::debug!(refund = %refund.id, "refund concluded by another process");
                    Ok(Concluded::Elsewhere(Box::new(stored)))
                }
                _ => Err(ApiError::Internal(why)),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Who concluded a refund: this process (with the reply it stored), or another one first.
enum Concluded {
    Here(Reply),
    Elsewhere(Box<Refund>),
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let render = |r: &Refund| Reply::json(StatusCode::CREATED, &refund_json(r));
    create_refund(&state, &ctx, body, &render).await
}

/// Refunds (part of) a captured payment through the connector that captured it.
pub async fn create_refund(
    state: &AppState,
    ctx: &Ctx,
    body: CreateBody,
    render: crate::payments::Render<'_, Refund>,
) -> Result<Response, ApiError> {
    fields::client_id(&body.payment_id, "payment_id")?;
    if let Some(a) = body.amount {
        fields::positive_amount(a, "amount")?;
    }
    if let Some(r) = &body.reason {
        if !REFUND_REASONS.contains(&r.as_str()) {
            return Err(ApiError::invalid(
                "reason",
                format!("`reason` must be one of {}", REFUND_REASONS.join(", ")),
            ));
        }
    }
    fields::metadata(body.metadata.clone(), "metadata")?;
    let (payment, mut refund, candidate) = match reserve(state, ctx, body).await? {
        Reserved::New(reserved) => *reserved,
        Reserved::Existing(refund) => return Ok(render(&refund)?.into_response()),
    };
    let connector = payment.connector_name.clone().unwrap_or_default();
    let legs = postings::refund_legs(&payment, &refund.id, &refund.parts);
    match service::post(
        state,
        &payment.merchant_id,
        postings::refund_holds(&legs, &connector, payment.currency),
        None,
    )
    .await
    {
        Ok(()) => {}
        Err(PostError::Refused(code, message)) => {
            refund.status = RefundStatus::Failed;
            refund.failure_code = Some(code.clone());
            refund.updated_at = state.clock.now();
            // Answered with a 422, which stores no idempotency record: a retry of the same key
            // runs again, as after any failed request, instead of finding this refund.
            refund.idempotency_key = None;
            let reply = Reply::json(StatusCode::UNPROCESSABLE_ENTITY, &refund_json(&refund))?;
            if let Concluded::Elsewhere(stored) = conclude(state, Some(ctx), &refund, reply, Vec::new()).await? {
                return Ok(render(&stored)?.into_response());
            }
            return Err(ApiError::Unprocessable {
                code: "refund_failed",
                message: format!(
                    "the ledger refused the refund ({code}: {message}); refund {} failed",
                    refund.id
                ),
                param: None,
            });
        }
        Err(e) => return Err(e.into()),
    }
    let started = Instant::now();
    let answer = candidate
        .connector
        .refund(
            payment.provider_ref.as_deref().unwrap_or_default(),
            &refund.id,
            refund.amount,
            payment.currency,
        )
        .await;
    tracing::debug!(refund = %refund.id, latency_ms = started.elapsed().as_millis() as u64, "connector refund answered");
    apply(&mut refund, answer, state.clock.now());
    let transfers = settling(&refund, &legs);
    match conclude(state, Some(ctx), &refund, render(&refund)?, transfers).await? {
        Concluded::Here(reply) => Ok(reply.into_response()),
        Concluded::Elsewhere(stored) => Ok(render(&stored)?.into_response()),
    }
}

/// The refund after the connector's answer: no answer (timeout, provider failure) leaves it
/// `pending` with the error as its failure code until the sync job learns the outcome.
fn apply(refund: &mut Refund, answer: ConnectorResult<RefundOutcome>, now: Timestamp) {
    refund.updated_at = now;
    match answer {
        Ok(outcome) => {
            refund.provider_ref = Some(outcome.provider_ref);
            match outcome.status {
                ProviderRefund::Succeeded => {
                    refund.status = RefundStatus::Succeeded;
                    // An earlier call's error (a timeout that left it pending) no longer applies.
                    refund.failure_code = None;
                }
                ProviderRefund::Pending => {}
                ProviderRefund::Failed(d) => {
                    refund.status = RefundStatus::Failed;
                    refund.failure_code = Some(d.code);
                }
            }
        }
        // Refused, or never sent: the provider did not refund.
        Err(e @ (ConnectorError::Rejected(_) | ConnectorError::Unreachable(_))) => {
            refund.status = RefundStatus::Failed;
            refund.failure_code = Some(e.code().to_owned());
        }
        Err(e) => refund.failure_code = Some(e.code().to_owned()),
    }
}

/// The transfers that settle the refund's holds: posted when it succeeded, voided when it failed.
fn settling(refund: &Refund, legs: &[postings::RefundLeg]) -> Vec<TransferRequest> {
    match refund.status {
        RefundStatus::Succeeded => postings::refund_settle(legs, true),
        RefundStatus::Failed => postings::refund_settle(legs, false),
        RefundStatus::Pending => Vec::new(),
    }
}

/// A `pending` refund last changed before this is the sync job's: its request is taken to be
/// gone. One changed since may still be in its request's hands.
fn sync_horizon(state: &AppState, now: Timestamp) -> Timestamp {
    let wait = i64::try_from(state.config.payment_sync_interval.as_secs()).unwrap_or(i64::MAX);
    jobs::before(now, wait)
}

/// Asks the connector about refunds left `pending` (no answer in time, a provider that decides
/// later, or a process that died mid-refund) and concludes those it has decided. A refund the
/// provider never received is sent again under the same reference (its idempotency key).
/// Safe with several processes: a refund is concluded only while still `pending`. Returns how
/// many refunds were concluded.
pub async fn try_execute_refund_sync(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now();
    let due = {
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        tx.pending_refunds(sync_horizon(state, now), jobs::JOB_BATCH_MAX)
            .await?
    };
    let mut concluded = 0;
    for refund in due {
        let id = refund.id.clone();
        match sync_refund(state, refund).await {
            Ok(true) => concluded += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(refund = %id, error = ?e, "refund sync failed; retried next round"),
        }
    }
    state.metrics.job_changes("refund_sync", concluded as u64);
    Ok(concluded)
}

async fn sync_refund(state: &AppState, mut refund: Refund) -> Result<bool, ApiError> {
    let merchant_id = refund.merchant_id.clone();
    let (payment, holder) = {
        let mut tx = state.reader(&merchant_id).await?;
        let payment = tx
            .get_payment(&merchant_id, &refund.payment_id)
            .await?
            .ok_or_else(|| ApiError::Internal(format!("refund {} has no payment", refund.id)))?;
        let account_id = refund
            .connector_account_id
            .clone()
            .or(payment.connector_account_id.clone())
            .unwrap_or_default();
        let holder = service::account(state, &mut LazyReader::over(tx.as_mut()), &merchant_id, &account_id).await?;
        (payment, holder)
    };
    let legs = postings::refund_legs(&payment, &refund.id, &refund.parts);
    let connector = payment.connector_name.clone().unwrap_or_default();
    // The holds exist unless the refunding process died before posting them.
    let holds = postings::refund_holds(&legs, &connector, payment.currency);
    if let Err(e) = service::post(state, &merchant_id, holds, None).await {
        let PostError::Refused(code, _) = e else {
            return Err(e.into());
        };
        refund.status = RefundStatus::Failed;
        refund.failure_code = Some(code);
        refund.updated_at = state.clock.now();
        let reply = Reply::json(StatusCode::OK, &refund_json(&refund))?;
        let concluded = conclude(state, None, &refund, reply, Vec::new()).await?;
        return Ok(matches!(concluded, Concluded::Here(_)));
    }
    let payment_ref = payment.provider_ref.clone().unwrap_or_default();
    let known = holder
        .connector
        .refund_status(&payment_ref, refund.provider_ref.as_deref(), &refund.id)
        .await;
    let answer = match known {
        Ok(Some(outcome)) => Ok(outcome),
        Ok(None) => {
            holder
                .connector
                .refund(&payment_ref, &refund.id, refund.amount, payment.currency)
                .await
        }
        // A lookup that could not be made, or was refused, decides nothing about the earlier
        // call (which may have refunded): the refund stays pending.
        Err(ConnectorError::Unreachable(m) | ConnectorError::Rejected(m)) => Err(ConnectorError::Unavailable(m)),
        Err(e) => Err(e),
    };
    apply(&mut refund, answer, state.clock.now());
    let transfers = settling(&refund, &legs);
    let reply = Reply::json(StatusCode::OK, &refund_json(&refund))?;
    let concluded = conclude(state, None, &refund, reply, transfers).await?;
    Ok(matches!(concluded, Concluded::Here(_)) && refund.status != RefundStatus::Pending)
}

async fn retrieve(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let refund = tx
        .get_refund(&merchant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("refund", &id))?;
    Ok(Reply::json(StatusCode::OK, &refund_json(&refund))?.into_response())
}

async fn list(State(state): State<AppState>, ctx: Ctx, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let (page, filters) = page_and_filters(query.as_deref().unwrap_or(""), &["payment_id"])?;
    let payment_id = filters.into_iter().next().map(|(_, v)| v);
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let listing = tx
        .list_refunds(&merchant_id, payment_id.as_deref(), &page.0)
        .await
        .map_err(|e| cursor_error(e, &page))?;
    list_reply(
        "/v1/refunds",
        listing.items.iter().map(refund_json).collect(),
        listing.has_more,
    )
}

/// The event of a refund's creation or conclusion.
fn refund_event(state: &AppState, refund: &Refund) -> NewEvent {
    let kind = event::refund_event(refund.status);
    events::new_event(
        state,
        &refund.merchant_id,
        kind,
        "refund",
        &refund.id,
        refund_json(refund),
    )
}

pub fn refund_json(r: &Refund) -> Value {
    json!({
        "id": r.id,
        "object": "refund",
        "payment_id": r.payment_id,
        "amount": r.amount,
        "currency": r.currency.code(),
        "status": r.status.as_str(),
        "reason": r.reason,
        "metadata": r.metadata,
        "failure_code": r.failure_code,
        "created": r.created_at.to_rfc3339(),
        "updated": r.updated_at.to_rfc3339(),
    })
}
