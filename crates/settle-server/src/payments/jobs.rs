//! The payment jobs: expire old authorizations, resolve payments stuck in `processing`.
//!
//! Both are safe when several processes run them at once: each payment is claimed with a
//! compare-and-set on its version before anything is called, so one process works on it and
//! the others skip it.

use settle_connectors::ProviderStatus;
use settle_domain::{
    payment::{AuthorizationOutcome, Command, Payment, PaymentError, PaymentStatus},
    Timestamp,
};
use settle_store::{Mode, Scope};

use crate::{
    error::ApiError,
    payments::{payment_json, service},
    AppState,
};

/// Most payments one round of a job handles.
pub const JOB_BATCH_MAX: u32 = 100;
/// Syncs of one stuck payment before it is given up as failed.
pub const SYNC_ATTEMPTS_MAX: usize = 10;
/// Longest wait between two syncs of one payment.
pub const SYNC_BACKOFF_MAX_SECONDS: i64 = 3_600;

fn before(now: Timestamp, seconds: i64) -> Timestamp {
    Timestamp(now.0.saturating_sub(seconds.saturating_mul(1_000_000)))
}

/// Cancels (and voids) authorizations older than the configured lifetime. Returns how many.
pub async fn try_execute_authorization_expiry(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now();
    let ttl = i64::try_from(state.config.authorization_ttl.as_secs()).unwrap_or(i64::MAX);
    let due = {
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        tx.due_payments(PaymentStatus::RequiresCapture, before(now, ttl), now, JOB_BATCH_MAX)
            .await?
    };
    let mut expired = 0;
    for p in due {
        let actor = service::Actor {
            ctx: None,
            reason: Some("expired"),
        };
        let claimed = service::claim(state, &p.merchant_id, &p.id, &Command::Expire, None, &actor, &[]).await;
        let Ok((claimed, decision, prepared)) = claimed else {
            continue; // another process took it, or it changed meanwhile
        };
        let render = |p: &Payment| crate::context::Reply::json(axum::http::StatusCode::OK, &payment_json(p));
        let reason = Some("expired".into());
        match service::settle_claim(state, &claimed, &decision, &prepared, reason, &actor, &render, &[]).await {
            Ok(_) => expired += 1,
            Err(e) => tracing::warn!(payment = %p.id, error = ?e, "authorization expiry failed; retried next round"),
        }
    }
    state.metrics.job_changes("authorization_expiry", expired as u64);
    Ok(expired)
}

/// Asks the connector about payments left in `processing` (a delayed provider decision, or a
/// crash mid-authorization), with exponential backoff per payment and a bounded number of
/// tries. Returns how many payments changed status.
pub async fn try_execute_payment_sync(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now();
    let base = i64::try_from(state.config.payment_sync_interval.as_secs()).unwrap_or(1);
    let due = {
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        tx.due_payments(PaymentStatus::Processing, before(now, 0), now, JOB_BATCH_MAX)
            .await?
    };
    let mut changed = 0;
    for p in due {
        match sync_one(state, p, base, now).await {
            Ok(true) => changed += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = ?e, "payment sync failed; retried next round"),
        }
    }
    state.metrics.job_changes("payment_sync", changed as u64);
    Ok(changed)
}

async fn sync_one(state: &AppState, p: Payment, base: i64, now: Timestamp) -> Result<bool, ApiError> {
    let attempts = {
        let mut tx = state
            .store
            .begin(Scope::Merchant(p.merchant_id.clone()), Mode::Read)
            .await?;
        tx.list_attempts(&p.merchant_id, &p.id).await?
    };
    let syncs = attempts.iter().filter(|a| a.operation == "sync").count();
    let shift = u32::try_from(syncs.min(20)).unwrap_or(20);
    let wait = base.saturating_mul(1 << shift).min(SYNC_BACKOFF_MAX_SECONDS);
    if p.updated_at > before(now, wait) {
        return Ok(false);
    }
    let Some(claimed) = service::claim_as_is(state, &p).await? else {
        return Ok(false);
    };
    let actor = service::Actor {
        ctx: None,
        reason: Some("sync"),
    };
    let last = attempts.iter().rev().find(|a| a.operation == "authorize");
    let mut log = Vec::new();
    let outcome = match last {
        None => Some(declined("interrupted", "the authorization never reached a connector")),
        Some(_) if syncs >= SYNC_ATTEMPTS_MAX => {
            Some(declined("processing_timeout", "the connector did not decide in time"))
        }
        Some(a) => {
            let candidate = {
                let mut tx = state
                    .store
                    .begin(Scope::Merchant(claimed.merchant_id.clone()), Mode::Read)
                    .await?;
                service::account(state, tx.as_mut(), &claimed.merchant_id, &a.connector_account_id).await?
            };
            let status = service::sync_attempt(state, &claimed, &candidate, a, &actor, &mut log).await;
            match (status, a.provider_ref.clone().or(claimed.provider_ref.clone())) {
                (Some(ProviderStatus::Authorized), Some(provider_ref)) => Some(AuthorizationOutcome::Authorized {
                    connector_account_id: candidate.account_id.clone(),
                    connector_name: candidate.connector_name.clone(),
                    provider_ref,
                }),
                (Some(ProviderStatus::Declined(d)), _) => Some(declined(&d.code, &d.message)),
                (Some(ProviderStatus::NotFound | ProviderStatus::Voided), _) => Some(declined(
                    "authorization_not_found",
                    "the connector holds no authorization",
                )),
                _ => None,
            }
        }
    };
    let Some(outcome) = outcome else {
        service::release(state, &claimed, log).await?;
        return Ok(false);
    };
    let (next, changes, transfers) =
        service::after_authorization(state, &claimed, &outcome, &actor, &mut log, None).await?;
    service::finish(state, &claimed, &next, changes, log, &[], &actor, None, transfers).await?;
    tracing::info!(payment = %next.id, status = next.status.as_str(), "payment synced with its connector");
    Ok(next.status != PaymentStatus::Processing)
}

fn declined(code: &str, message: &str) -> AuthorizationOutcome {
    AuthorizationOutcome::Declined(PaymentError {
        code: code.into(),
        message: message.into(),
        connector: None,
    })
}
