//! The payment jobs: expire old authorizations, resolve payments stuck in `processing`, recover
//! the claims of processes that died mid-call, and void authorizations that reached a provider
//! after Settle had moved on.
//!
//! All are safe when several processes run them at once: each payment is claimed with a
//! compare-and-set on its version before anything is called, so one process works on it and
//! the others skip it.
//!
//! Recovery reads the dead claim's plan. An authorization (`processing`) is synced by the
//! attempt references the claim fixed before calling anyone: one the provider holds is adopted,
//! and when no provider knows any of them the payment returns to `requires_payment_method`
//! (`interrupted`). A capture or cancel asks the connector for the payment's state: captured or
//! voided there, the step is finished here (ledger included); still authorized, the claim is
//! released and the client may retry; no answer, the claim is left to expire and tried again.

use settle_connectors::{ProviderStatus, Synced};
use settle_domain::{
    payment::{self, Attempt, AuthorizationOutcome, Command, Payment, PaymentError, PaymentStatus, Plan},
    postings, Timestamp,
};
use settle_store::{Mode, Scope};

use crate::{
    error::ApiError,
    payments::{connectors::Candidate, payment_json, service},
    AppState,
};

/// Most payments one round of a job handles.
pub const JOB_BATCH_MAX: u32 = 100;
/// How long an authorization whose expiry could not be concluded (its void failed, say), or that
/// just changed, waits before the expiry job tries it again. The job takes the least recently
/// changed first, so ones it cannot conclude go behind the others instead of taking every round;
/// each is tried (and logged) once a minute at most, until the operator settles it.
pub const EXPIRY_RETRY_SECONDS: i64 = 60;
/// Syncs of one stuck payment before it is given up as failed.
pub const SYNC_ATTEMPTS_MAX: usize = 10;
/// Longest wait between two syncs of one payment.
pub const SYNC_BACKOFF_MAX_SECONDS: i64 = 3_600;

/// `seconds` before `now`.
pub(crate) fn before(now: Timestamp, seconds: i64) -> Timestamp {
    Timestamp(now.0.saturating_sub(seconds.saturating_mul(1_000_000)))
}

/// Cancels (and voids) authorizations older than the configured lifetime. Returns how many.
pub async fn try_execute_authorization_expiry(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now();
    let ttl = i64::try_from(state.config.authorization_ttl.as_secs()).unwrap_or(i64::MAX);
    let due = {
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        let quiet_since = before(now, EXPIRY_RETRY_SECONDS);
        tx.due_payments(
            PaymentStatus::RequiresCapture,
            before(now, ttl),
            quiet_since,
            now,
            JOB_BATCH_MAX,
        )
        .await?
    };
    let mut expired = 0;
    for p in due {
        let actor = service::Actor {
            ctx: None,
            reason: Some("expired"),
        };
        let claimed = service::claim(
            state,
            &p.merchant_id,
            &p.id,
            &Command::Expire,
            None,
            Some("expired"),
            &actor,
            &[],
        )
        .await;
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
        tx.due_payments(PaymentStatus::Processing, now, now, now, JOB_BATCH_MAX)
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
        let mut tx = state.reader(&p.merchant_id).await?;
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
        _ if syncs >= SYNC_ATTEMPTS_MAX => Some(declined("processing_timeout", "the connector did not decide in time")),
        Some(a) => {
            let candidate = account_of(state, &claimed, &a.connector_account_id).await?;
            let synced = service::sync_attempt(
                state,
                &claimed,
                &candidate,
                &a.id,
                a.provider_ref.as_deref(),
                &actor,
                &mut log,
            )
            .await;
            match synced {
                Some(Synced {
                    status: ProviderStatus::Authorized | ProviderStatus::Captured,
                    provider_ref,
                }) => provider_ref
                    .or(a.provider_ref.clone())
                    .or(claimed.provider_ref.clone())
                    .map(|provider_ref| AuthorizationOutcome::Authorized {
                        connector_account_id: candidate.account_id.clone(),
                        connector_name: candidate.connector_name.clone(),
                        provider_ref,
                    }),
                Some(Synced {
                    status: ProviderStatus::Declined(d),
                    ..
                }) => Some(declined(&d.code, &d.message)),
                Some(Synced {
                    status: ProviderStatus::NotFound | ProviderStatus::Voided,
                    ..
                }) => Some(declined(
                    "authorization_not_found",
                    "the connector holds no authorization",
                )),
                _ => None,
            }
        }
        // The claim's process died before it stored any attempt: look for its planned ones.
        None => adopt_planned(state, &claimed, &actor, &mut log).await?,
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

async fn account_of(state: &AppState, payment: &Payment, account_id: &str) -> Result<Candidate, ApiError> {
    service::account(
        state,
        &mut state.lazy_reader(&payment.merchant_id),
        &payment.merchant_id,
        account_id,
    )
    .await
}

/// Syncs the attempt references a dead claim planned, in order. The first the provider holds
/// is adopted (an `authorize` attempt is recorded for it, so later syncs find it); `None` when
/// a provider could not be asked (tried again next round).
async fn adopt_planned(
    state: &AppState,
    claimed: &Payment,
    actor: &service::Actor<'_>,
    log: &mut Vec<Attempt>,
) -> Result<Option<AuthorizationOutcome>, ApiError> {
    let tries = match &claimed.plan {
        Some(Plan::Authorize { tries }) => tries.clone(),
        _ => Vec::new(),
    };
    for planned in tries {
        let candidate = account_of(state, claimed, &planned.connector_account_id).await?;
        let Some(synced) =
            service::sync_attempt(state, claimed, &candidate, &planned.reference, None, actor, log).await
        else {
            return Ok(None);
        };
        let (outcome, provider_ref) = match (synced.status, synced.provider_ref) {
            (ProviderStatus::Authorized | ProviderStatus::Captured, Some(r)) => ("succeeded", r),
            (ProviderStatus::Processing, Some(r)) => ("processing", r),
            (ProviderStatus::NotFound | ProviderStatus::Declined(_) | ProviderStatus::Voided, _) => continue,
            // Held there, but without the provider's id it can be neither adopted nor voided.
            _ => return Ok(None),
        };
        log.push(service::recovered_attempt(
            state,
            claimed,
            &candidate,
            &planned.reference,
            outcome,
            &provider_ref,
            actor,
        ));
        let (connector_account_id, connector_name) = (candidate.account_id.clone(), candidate.connector_name.clone());
        return Ok(Some(if outcome == "succeeded" {
            AuthorizationOutcome::Authorized {
                connector_account_id,
                connector_name,
                provider_ref,
            }
        } else {
            AuthorizationOutcome::Pending {
                connector_account_id,
                connector_name,
                provider_ref: Some(provider_ref),
            }
        }));
    }
    Ok(Some(declined(
        "interrupted",
        "the authorization was interrupted before any connector acted on it",
    )))
}

/// Finishes or releases the expired claims of captures and cancels (see the module doc).
/// Claims in `processing` are the sync job's. Returns how many payments changed.
pub async fn try_execute_claim_recovery(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now();
    let expired = {
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        tx.expired_claims(now, JOB_BATCH_MAX).await?
    };
    let mut changed = 0;
    for p in expired {
        if p.status == PaymentStatus::Processing {
            continue;
        }
        match recover_one(state, &p).await {
            Ok(true) => changed += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(payment = %p.id, error = ?e, "claim recovery failed; retried next round"),
        }
    }
    state.metrics.job_changes("claim_recovery", changed as u64);
    Ok(changed)
}

async fn recover_one(state: &AppState, p: &Payment) -> Result<bool, ApiError> {
    let Some(claimed) = service::claim_as_is(state, p).await? else {
        return Ok(false);
    };
    let actor = service::Actor {
        ctx: None,
        reason: Some("recovered"),
    };
    let (amount, reason) = match &claimed.plan {
        Some(Plan::Capture { amount }) => (Some(*amount), None),
        Some(Plan::Cancel { reason, void: true }) => (None, reason.clone()),
        // Nothing was called (or nothing is known to call): the claim just ends.
        _ => {
            service::release(state, &claimed, Vec::new()).await?;
            return Ok(false);
        }
    };
    let Some(account_id) = claimed.connector_account_id.clone() else {
        service::release(state, &claimed, Vec::new()).await?;
        return Ok(false);
    };
    let holder = account_of(state, &claimed, &account_id).await?;
    let mut log = Vec::new();
    let provider_ref = claimed.provider_ref.clone();
    let synced = service::sync_attempt(
        state,
        &claimed,
        &holder,
        &claimed.id,
        provider_ref.as_deref(),
        &actor,
        &mut log,
    )
    .await;
    let now = state.clock.now();
    let (next, transfers) = match (synced.map(|s| s.status), amount) {
        (Some(ProviderStatus::Captured), Some(amount)) => {
            let batch = postings::capture(&claimed, amount)
                .ok_or_else(|| ApiError::Internal("capture shares do not allocate".into()))?;
            (payment::captured(&claimed, amount, now), batch)
        }
        (Some(ProviderStatus::Voided), None) => {
            (payment::canceled(&claimed, reason, now), vec![postings::void(&claimed)])
        }
        (Some(ProviderStatus::Authorized), _) => {
            // The command never reached the connector: the client may send it again.
            service::release(state, &claimed, log).await?;
            return Ok(false);
        }
        // No answer, or not decided yet: leave the claim to expire and ask again.
        (None | Some(ProviderStatus::Processing), _) => {
            tracing::warn!(payment = %claimed.id, "claim recovery could not learn the connector's state");
            return Ok(false);
        }
        // A state this plan cannot explain (captured at the provider while canceling, voided
        // there while capturing): the claim ends, and the operator is told; asking again would
        // not change the answer.
        (Some(other), _) => {
            tracing::error!(payment = %claimed.id, provider_state = ?other, "the provider's state contradicts the interrupted step; the payment is left as it is for the operator to reconcile");
            service::release(state, &claimed, log).await?;
            return Ok(false);
        }
    };
    let changes = vec![service::change(state, Some(&claimed), &next, &actor, None)];
    service::finish(state, &claimed, &next, changes, log, &[], &actor, None, transfers).await?;
    tracing::info!(payment = %next.id, status = next.status.as_str(), "claim recovered from the connector's state");
    Ok(true)
}

/// How long after an authorize call with an unknown outcome its reference is looked up again.
pub const LATE_CHECK_AFTER_SECONDS: i64 = 600;
/// How long such a reference is looked for (beyond that, the provider's own expiry of an
/// uncaptured authorization releases it).
pub const LATE_CHECK_WINDOW_SECONDS: i64 = 48 * 3600;

/// Voids authorizations a provider made after Settle had moved on. An authorize call whose
/// outcome was unknown (a timeout, a 5xx) is synced before the next connector is tried, but a
/// request still on its way can reach the provider after that sync found nothing. So each such
/// reference is looked up once more [`LATE_CHECK_AFTER_SECONDS`] later, once its payment is no
/// longer being worked on; an authorization found there that is not the payment's own is voided.
/// The lookup is recorded as an attempt (`<reference>:late`), so each reference is looked up
/// once it got an answer (a provider that does not answer is asked again in later rounds,
/// within [`LATE_CHECK_WINDOW_SECONDS`]). Runs as a job of its own, so that a provider outage
/// holds up no other payment job. Returns how many authorizations it voided.
pub async fn try_execute_late_authorization_check(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now();
    let due = {
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        tx.unknown_authorizations(
            before(now, LATE_CHECK_WINDOW_SECONDS),
            before(now, LATE_CHECK_AFTER_SECONDS),
            JOB_BATCH_MAX,
        )
        .await?
    };
    let mut voided = 0;
    for attempt in due {
        match check_late(state, &attempt, now).await {
            Ok(true) => voided += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(attempt = %attempt.id, error = ?e, "late authorization check failed; retried next round")
            }
        }
    }
    state.metrics.job_changes("late_authorization_check", voided as u64);
    Ok(voided)
}

async fn check_late(state: &AppState, attempt: &Attempt, now: Timestamp) -> Result<bool, ApiError> {
    let payment = {
        let mut tx = state.reader(&attempt.merchant_id).await?;
        tx.get_payment(&attempt.merchant_id, &attempt.payment_id).await?
    };
    let Some(payment) = payment else { return Ok(false) };
    // Still being worked on (the sync job may adopt this very reference): a later round.
    if payment.status == PaymentStatus::Processing || payment.claimed_until.is_some_and(|until| until > now) {
        return Ok(false);
    }
    let mut log = Vec::new();
    let voided = match account_of(state, &payment, &attempt.connector_account_id).await {
        Ok(candidate) => match look_again(state, &payment, &candidate, attempt, &mut log).await {
            Some(voided) => voided,
            // The provider did not answer (an outage): asked again in a later round, within
            // the window, and nothing is recorded meanwhile.
            None => return Ok(false),
        },
        Err(e) => {
            tracing::error!(payment = %payment.id, attempt = %attempt.id, error = ?e, "an authorization that may have reached its provider late cannot be looked up: its connector account is unusable");
            false
        }
    };
    // The lookup is recorded whatever came of it, so the reference is looked up once: a
    // reference that cannot be settled must not hold up the others (rounds take the oldest).
    if log.is_empty() {
        log.push(Attempt {
            outcome: "error".into(),
            error_code: Some("connector_account_unusable".into()),
            latency_ms: 0,
            created_at: now,
            ..attempt.clone()
        });
    }
    if let Some(lookup) = log.first_mut() {
        lookup.id = settle_store::payments::late_check_id(&attempt.id);
        lookup.operation = "sync".into();
    }
    let mut tx = state.begin_write(&payment.merchant_id).await?;
    tx.insert_attempts(&log).await?;
    tx.commit().await?;
    Ok(voided)
}

/// Looks `attempt`'s reference up at `candidate` and voids what the provider holds under it
/// unless it is the payment's own authorization; whether it voided one (`None`: the provider
/// did not answer the lookup). Every call goes in `log`.
async fn look_again(
    state: &AppState,
    payment: &Payment,
    candidate: &Candidate,
    attempt: &Attempt,
    log: &mut Vec<Attempt>,
) -> Option<bool> {
    let actor = service::Actor {
        ctx: None,
        reason: Some("late_authorization"),
    };
    // By the attempt's reference alone, not by the payment's authorization.
    let unheld = Payment {
        provider_ref: None,
        ..payment.clone()
    };
    let synced = service::sync_attempt(state, &unheld, candidate, &attempt.id, None, &actor, log).await?;
    let stray = synced
        .provider_ref
        .filter(|r| payment.provider_ref.as_deref() != Some(r.as_str()));
    match (synced.status, stray) {
        (ProviderStatus::Authorized | ProviderStatus::Processing, Some(provider_ref)) => {
            let held = Payment {
                provider_ref: Some(provider_ref.clone()),
                ..payment.clone()
            };
            if service::void_now(state, candidate, &held, &actor, log).await.is_ok() {
                tracing::warn!(payment = %payment.id, provider_ref = %provider_ref, "an authorization the provider made after Settle moved on was voided");
                return Some(true);
            }
            tracing::error!(payment = %payment.id, provider_ref = %provider_ref, "an authorization the provider made after Settle moved on could not be voided; void it at the provider");
        }
        (ProviderStatus::Captured, Some(provider_ref)) => {
            tracing::error!(payment = %payment.id, provider_ref = %provider_ref, "the provider captured an authorization Settle had given up on; refund it at the provider");
        }
        _ => {}
    }
    Some(false)
}

fn declined(code: &str, message: &str) -> AuthorizationOutcome {
    AuthorizationOutcome::Declined(PaymentError {
        code: code.into(),
        message: message.into(),
        connector: None,
    })
}
