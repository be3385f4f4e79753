//! Background jobs. Each is a `try_execute_*` function that does one bounded round and reports
//! what it changed (tests call them directly); [`spawn`] only schedules them.

use std::time::Duration;

use settle_store::{Mode, Scope};
use tokio::{sync::oneshot, sync::watch, task::JoinHandle};

use crate::{
    error::ApiError,
    ledger::{write_error, writer::Command},
    AppState,
};

/// Most pending transfers one expiry round releases.
pub const EXPIRY_BATCH_MAX: u32 = 1_000;
/// Most idempotency keys one pruning round deletes.
pub const PRUNE_BATCH_MAX: u32 = 10_000;
/// Most fan-out and delivery rounds one tick of the webhook dispatcher runs (each bounded too).
pub const WEBHOOK_ROUNDS_MAX: usize = 50;
/// Most invoice payment rounds one tick runs (while each finds a full round of work).
pub const INVOICE_ROUNDS_PER_TICK_MAX: usize = 10;

/// Drains a backlog in bounded rounds: runs `round` while each does a full round's work (`full`),
/// at most `rounds` times; a failed round is logged and ends the drain until the next tick.
async fn drain<F, Fut>(rounds: usize, full: usize, what: &str, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, ApiError>>,
{
    for _ in 0..rounds {
        match round().await {
            Ok(n) if n == full => continue,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = ?e, "{what} failed");
                break;
            }
        }
    }
}

/// Releases pending transfers whose timeout has passed. Returns how many were released.
pub async fn try_execute_expiry(state: &AppState) -> Result<usize, ApiError> {
    let due = {
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        tx.due_pending(state.clock.now(), EXPIRY_BATCH_MAX).await?
    };
    if due.is_empty() {
        return Ok(0);
    }
    let (reply, answer) = oneshot::channel();
    state
        .writer
        .submit(Command::Expire { due, reply })
        .await
        .map_err(write_error)?;
    let released = answer.await.map_err(|_| ApiError::Unavailable)?.map_err(write_error)?;
    state
        .metrics
        .job_changes("pending_expiry", u64::try_from(released).unwrap_or(0));
    Ok(released)
}

/// Deletes idempotency keys older than the retention. Returns how many were deleted.
pub async fn try_execute_prune(state: &AppState) -> Result<u64, ApiError> {
    let retention = i64::try_from(state.config.idempotency_retention.as_micros()).unwrap_or(i64::MAX);
    let before = settle_domain::Timestamp(state.clock.now().0.saturating_sub(retention));
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    let deleted = tx.prune_idempotency(before, PRUNE_BATCH_MAX).await?;
    // A payment or refund answers a retry of its create only as long as the record would.
    tx.forget_request_keys(before, PRUNE_BATCH_MAX).await?;
    tx.commit().await?;
    state.metrics.job_changes("idempotency_prune", deleted);
    Ok(deleted)
}

/// Writes the API keys' `last_used_at` collected since the last round.
pub async fn try_execute_key_usage(state: &AppState) -> Result<usize, ApiError> {
    let used = state.auth.take_used();
    if used.is_empty() {
        return Ok(0);
    }
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    tx.touch_api_keys(&used).await?;
    tx.commit().await?;
    Ok(used.len())
}

/// Store upkeep off the writer's path (SQLite: a passive WAL checkpoint; PostgreSQL: the first
/// statistics of a table that has filled; see `Store::upkeep`).
pub async fn try_execute_upkeep(state: &AppState) -> Result<(), ApiError> {
    Ok(state.store.upkeep().await?)
}

pub fn spawn(state: AppState, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let expiry = state.config.expiry_interval;
    let housekeeping = state.config.housekeeping_interval;
    let payments = state.config.payment_sync_interval;
    let webhooks = state.config.webhook_interval;
    let inbox = state.config.webhook_inbox_interval;
    vec![
        tokio::spawn(every(
            webhooks,
            stop.clone(),
            state.clone(),
            Last::None,
            |s| async move {
                // Drain a backlog in bounded rounds.
                for _ in 0..WEBHOOK_ROUNDS_MAX {
                    let fanned = crate::webhooks::dispatch::try_execute_outbox(&s)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = ?e, "webhook fan-out failed");
                            0
                        });
                    let sent = crate::webhooks::dispatch::try_execute_deliveries(&s)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = ?e, "webhook delivery failed");
                            0
                        });
                    if fanned == 0 && sent == 0 {
                        break;
                    }
                }
            },
        )),
        tokio::spawn(every(inbox, stop.clone(), state.clone(), Last::None, |s| async move {
            drain(
                50,
                crate::inbound::worker::ROUND_MAX as usize,
                "webhook inbox round",
                || crate::inbound::worker::try_execute_webhook_inbox(&s),
            )
            .await;
        })),
        tokio::spawn(every(
            payments,
            stop.clone(),
            state.clone(),
            Last::None,
            |s| async move {
                if let Err(e) = crate::payments::jobs::try_execute_payment_sync(&s).await {
                    tracing::warn!(error = ?e, "payment sync failed");
                }
                if let Err(e) = crate::payments::refunds::try_execute_refund_sync(&s).await {
                    tracing::warn!(error = ?e, "refund sync failed");
                }
                if let Err(e) = crate::payments::jobs::try_execute_claim_recovery(&s).await {
                    tracing::warn!(error = ?e, "claim recovery failed");
                }
                if let Err(e) = crate::payments::jobs::try_execute_authorization_expiry(&s).await {
                    tracing::warn!(error = ?e, "authorization expiry failed");
                }
            },
        )),
        tokio::spawn(every(
            payments,
            stop.clone(),
            state.clone(),
            Last::None,
            |s| async move {
                if let Err(e) = crate::payments::jobs::try_execute_late_authorization_check(&s).await {
                    tracing::warn!(error = ?e, "late authorization check failed");
                }
            },
        )),
        tokio::spawn(every(
            payments,
            stop.clone(),
            state.clone(),
            Last::None,
            |s| async move {
                drain(
                    INVOICE_ROUNDS_PER_TICK_MAX,
                    crate::invoices::PAYMENT_EVENTS_PER_ROUND_MAX as usize,
                    "invoice payments",
                    || crate::invoices::try_execute_invoice_payments(&s),
                )
                .await;
            },
        )),
        tokio::spawn(every(expiry, stop.clone(), state.clone(), Last::None, |s| async move {
            if let Err(e) = try_execute_upkeep(&s).await {
                tracing::warn!(error = ?e, "store upkeep failed");
            }
            drain(10, EXPIRY_BATCH_MAX as usize, "pending expiry", || {
                try_execute_expiry(&s)
            })
            .await;
        })),
        tokio::spawn(every(housekeeping, stop, state, Last::Round, |s| async move {
            if let Err(e) = try_execute_prune(&s).await {
                tracing::warn!(error = ?e, "idempotency pruning failed");
            }
            if let Err(e) = try_execute_key_usage(&s).await {
                tracing::warn!(error = ?e, "api key usage flush failed");
            }
        })),
    ]
}

/// Runs `round` every `period` until `stop`. A round still running when the stop comes has the
/// request timeout to finish, then is abandoned: every job's writes are atomic and its work
/// durable (outbox, claims, inbox), so what an abandoned round left is picked up by the next
/// round of this or another process, as after a crash; a webhook receiver that never answers
/// must not hold a shutdown for minutes. Only a job that collects in memory (`Last::Round`)
/// runs one more round after the stop, so that nothing it holds is lost.
async fn every<F, Fut>(period: Duration, mut stop: watch::Receiver<bool>, state: AppState, last: Last, round: F)
where
    F: Fn(AppState) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let grace = state.config.request_timeout;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let running = round(state.clone());
                tokio::pin!(running);
                tokio::select! {
                    () = &mut running => {}
                    _ = stop.changed() => {
                        if tokio::time::timeout(grace, running).await.is_err() {
                            tracing::warn!("a job round still running at shutdown was abandoned; the next start resumes its work");
                        }
                        break;
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    if last == Last::Round {
        round(state).await;
    }
}

/// Whether a job runs one more round after the stop.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Last {
    Round,
    None,
}
