//! The inbox worker: applies accepted provider events to their payments.
//!
//! A round leases up to [`ROUND_MAX`] due entries (status `received`, due now; several
//! processes share them: `FOR UPDATE SKIP LOCKED` on PostgreSQL, the lease on every engine) and
//! handles them one after the other, oldest first:
//! 1. read the event (`settle_domain::inbound::outcome`); a type Settle does not apply is
//!    `ignored` (`unsupported_event_type`);
//! 2. find the payment: by the provider's id (`provider_ref`), else by Settle's attempt
//!    reference in the event's `metadata.settle_reference`; none → tried again later with
//!    backoff, and `parked` after `ATTEMPTS_MAX` attempts (`payment_not_found`);
//! 3. decide (`settle_domain::inbound::decide`): apply, ignore with a reason (out of order,
//!    already there, another attempt), or wait (another request or job holds the payment);
//! 4. apply through the payment service: the same functions a confirm or the sync job use
//!    (`after_authorization`, the ledger postings, `change` for history and events), written
//!    by `service::write_with` — the ledger writer's transaction — together with the entry's
//!    new status. The payment is stored only at the version it was read (compare-and-set) and
//!    the entry only under its lease, so a concurrent change or a second worker rolls the
//!    whole step back and the entry is tried again: an event is applied at most once.
//!
//! Only an automatic-capture authorization calls a connector (the capture); it claims the
//! payment first, as every connector call does.

use serde_json::Value;
use settle_domain::{
    inbound::{self, InboxEntry, InboxStatus, Outcome, Step, Subject, Verdict},
    payment::{self, AuthorizationOutcome, CaptureMethod, Payment, PaymentError},
    postings, Timestamp,
};
use settle_store::{Mode, Scope};

use crate::{
    error::ApiError,
    ledger::writer::{Then, WriteError},
    payments::service::{self, Actor, Changed, PostError},
    AppState,
};

/// Most entries one round takes.
pub const ROUND_MAX: u32 = 100;

/// Applies the due inbox entries (one bounded round). Returns how many it handled (applied,
/// ignored, parked or rescheduled).
pub async fn try_execute_webhook_inbox(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now();
    let until = service::claim_until(state, now);
    let taken = {
        let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
        let taken = tx.take_inbox(now, until, ROUND_MAX).await?;
        tx.commit().await?;
        taken
    };
    let mut handled = 0;
    for entry in taken {
        match handle(state, &entry, until).await {
            Ok(()) => handled += 1,
            Err(e) => {
                tracing::warn!(entry = %entry.id, error = ?e, "applying a webhook failed; retried later");
                if reschedule(state, &entry, until, None, "error").await.is_ok() {
                    handled += 1;
                }
            }
        }
    }
    state.metrics.job_changes("webhook_inbox", handled as u64);
    Ok(handled)
}

async fn handle(state: &AppState, entry: &InboxEntry, leased: Timestamp) -> Result<(), ApiError> {
    let now = state.clock.now();
    let event: Value = serde_json::from_str(&entry.payload).unwrap_or(Value::Null);
    let Some((outcome, subject)) = inbound::outcome(&entry.kind, &event) else {
        return conclude(
            state,
            entry,
            leased,
            None,
            InboxStatus::Ignored,
            Some("unsupported_event_type"),
        )
        .await;
    };
    let Some(payment) = find(state, entry, &subject).await? else {
        return reschedule(state, entry, leased, None, "payment_not_found").await;
    };
    match inbound::decide(&payment, &outcome, &subject, &entry.connector_account_id, now) {
        Verdict::Ignore(reason) => {
            conclude(
                state,
                entry,
                leased,
                Some(&payment.id),
                InboxStatus::Ignored,
                Some(reason),
            )
            .await
        }
        Verdict::Wait => reschedule(state, entry, leased, Some(&payment.id), "payment_in_progress").await,
        Verdict::Apply(step) => match apply(state, entry, leased, &payment, &subject, &outcome, step).await {
            Err(ApiError::Internal(why)) if why.starts_with(STALE) => {
                reschedule(state, entry, leased, Some(&payment.id), "payment_changed").await
            }
            other => other,
        },
    }
}

/// The payment an event names: by the provider's id, else by Settle's attempt reference.
async fn find(state: &AppState, entry: &InboxEntry, subject: &Subject) -> Result<Option<Payment>, ApiError> {
    let merchant = &entry.merchant_id;
    let mut tx = state.store.begin(Scope::Merchant(merchant.clone()), Mode::Read).await?;
    if let Some(provider_ref) = &subject.provider_ref {
        if let Some(p) = tx.payment_by_provider_ref(merchant, provider_ref).await? {
            return Ok(Some(p));
        }
    }
    match &subject.reference {
        Some(reference) => Ok(tx.payment_by_attempt(merchant, reference).await?),
        None => Ok(None),
    }
}

/// Marks the entry `status` (applied or ignored) on its own.
async fn conclude(
    state: &AppState,
    entry: &InboxEntry,
    leased: Timestamp,
    payment_id: Option<&str>,
    status: InboxStatus,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    let mut next = inbound::concluded(entry, status, reason, state.clock.now());
    next.payment_id = payment_id.map(str::to_owned).or(next.payment_id);
    store_entry(state, &next, leased).await
}

/// Schedules the entry's next attempt (or parks it after the last one).
async fn reschedule(
    state: &AppState,
    entry: &InboxEntry,
    leased: Timestamp,
    payment_id: Option<&str>,
    reason: &str,
) -> Result<(), ApiError> {
    let mut next = inbound::retry_later(entry, reason, state.clock.now());
    next.payment_id = payment_id.map(str::to_owned).or(next.payment_id);
    if next.status == InboxStatus::Parked {
        tracing::warn!(entry = %entry.id, event = %entry.provider_event_id, reason, "webhook parked");
    }
    store_entry(state, &next, leased).await
}

async fn store_entry(state: &AppState, next: &InboxEntry, leased: Timestamp) -> Result<(), ApiError> {
    let mut tx = state
        .store
        .begin(Scope::Merchant(next.merchant_id.clone()), Mode::Write)
        .await?;
    if !tx.update_inbox(next, leased).await? {
        // The lease expired and another worker took the entry: its word counts.
        tracing::warn!(entry = %next.id, "inbox entry lease lost");
        return Ok(());
    }
    tx.commit().await?;
    Ok(())
}

/// The prefix of the error a lost compare-and-set (payment or entry) comes back as.
const STALE: &str = "stale: ";

/// Applies `step` to `payment` and marks the entry applied, in one transaction.
#[allow(clippy::too_many_arguments)]
async fn apply(
    state: &AppState,
    entry: &InboxEntry,
    leased: Timestamp,
    payment: &Payment,
    subject: &Subject,
    outcome: &Outcome,
    step: Step,
) -> Result<(), ApiError> {
    let now = state.clock.now();
    let actor = Actor {
        ctx: None,
        reason: Some("webhook"),
    };
    let connector_name = payment
        .connector_name
        .clone()
        .unwrap_or_else(|| entry.connector.clone());
    let authorized = || AuthorizationOutcome::Authorized {
        connector_account_id: entry.connector_account_id.clone(),
        connector_name: connector_name.clone(),
        provider_ref: subject.provider_ref.clone().unwrap_or_default(),
    };
    let mut attempts = Vec::new();
    let (base, next, changes, transfers) = match step {
        Step::Authorize => {
            // An automatic capture calls the connector: claim the payment first.
            let base = if payment.capture_method == CaptureMethod::Automatic {
                match service::claim_as_is(state, payment).await? {
                    Some(claimed) => claimed,
                    None => return Err(ApiError::Internal(format!("{STALE}payment changed before its claim"))),
                }
            } else {
                payment.clone()
            };
            let (next, changes, transfers) =
                service::after_authorization(state, &base, &authorized(), &actor, &mut attempts, None).await?;
            (base, next, changes, transfers)
        }
        Step::AuthorizeCaptured { amount } => {
            let held = payment::authorization_ended(payment, &authorized(), now);
            service::ensure_chart(state, &payment.merchant_id, &connector_name, payment.currency).await?;
            let mut transfers = vec![postings::authorization(&held, &connector_name)];
            transfers.extend(capture_batch(&held, amount)?);
            let captured = payment::captured(&held, amount, now);
            let changes = vec![
                service::change(state, Some(payment), &held, &actor, None),
                service::change(state, Some(&held), &captured, &actor, None),
            ];
            (payment.clone(), captured, changes, transfers)
        }
        Step::Capture { amount } => {
            let transfers = capture_batch(payment, amount)?;
            let captured = payment::captured(payment, amount, now);
            let changes = vec![service::change(state, Some(payment), &captured, &actor, None)];
            (payment.clone(), captured, changes, transfers)
        }
        Step::Fail { code, message } => {
            let declined = AuthorizationOutcome::Declined(PaymentError {
                code,
                message,
                connector: Some(connector_name.clone()),
            });
            let (next, changes, transfers) =
                service::after_authorization(state, payment, &declined, &actor, &mut attempts, None).await?;
            (payment.clone(), next, changes, transfers)
        }
        Step::Void => {
            let canceled = payment::canceled(payment, Some("canceled_at_provider".into()), now);
            let changes = vec![service::change(state, Some(payment), &canceled, &actor, None)];
            (payment.clone(), canceled, changes, vec![postings::void(payment)])
        }
    };
    let mut done = inbound::concluded(entry, InboxStatus::Applied, None, now);
    done.payment_id = Some(payment.id.clone());
    tracing::info!(payment = %payment.id, event = %entry.provider_event_id, kind = %entry.kind,
        outcome = ?std::mem::discriminant(outcome), status = next.status.as_str(), "webhook applied");
    write(state, &base, next, changes, attempts, transfers, done, leased).await
}

fn capture_batch(payment: &Payment, amount: i64) -> Result<Vec<settle_domain::ledger::TransferRequest>, ApiError> {
    postings::capture(payment, amount).ok_or_else(|| ApiError::Internal("capture shares do not allocate".into()))
}

/// The step's payment, history, attempts and the entry's new status, with its transfers, in
/// the ledger writer's transaction (`service::write_with`).
#[allow(clippy::too_many_arguments)]
async fn write(
    state: &AppState,
    base: &Payment,
    next: Payment,
    changes: Vec<Changed>,
    attempts: Vec<settle_domain::payment::Attempt>,
    transfers: Vec<settle_domain::ledger::TransferRequest>,
    done: InboxEntry,
    leased: Timestamp,
) -> Result<(), ApiError> {
    let then = Then {
        payments: vec![(next, base.version)],
        attempts,
        changes,
        inbox: vec![(done, leased)],
        ..Then::default()
    };
    match service::try_write_with(state, &base.merchant_id, transfers, then).await {
        Ok(()) => Ok(()),
        Err(PostError::Write(WriteError::Stale(why))) => Err(ApiError::Internal(format!("{STALE}{why}"))),
        Err(e) => Err(e.into()),
    }
}
