//! The inbox worker: applies accepted provider events to their payments.
//!
//! A round leases up to [`ROUND_MAX`] due entries (status `received`, due now; several
//! processes share them: `FOR UPDATE SKIP LOCKED` on PostgreSQL, the lease on every engine),
//! groups them by the payment they name, reads the round's payments by their providers' ids in
//! one statement per merchant, and handles each group in the order its entries were stored
//! (groups run concurrently; a group reads its payment again only after a change):
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
//! Entries that change no payment (ignored, rescheduled, parked) are written together at the
//! end of the round, in one transaction, each under its lease; an applied entry is written with
//! its payment step.
//!
//! Only an automatic-capture authorization calls a connector (the capture); it claims the
//! payment first, as every connector call does.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde_json::Value;
use settle_domain::{
    inbound::{self, InboxEntry, InboxStatus, Outcome, Step, Subject, Verdict},
    payment::{self, AuthorizationOutcome, CaptureMethod, Payment, PaymentError},
    postings, Timestamp,
};
use settle_store::{Mode, Scope};
use tokio::{sync::Semaphore, task::JoinSet};

use crate::{
    error::ApiError,
    ledger::writer::{Then, WriteError},
    payments::service::{self, Actor, Changed, PostError},
    AppState,
};

/// Most entries one round takes.
pub const ROUND_MAX: u32 = 500;
/// Most payments' entries handled at once in one round.
pub const GROUPS_IN_FLIGHT: usize = 64;

/// Applies the due inbox entries (one bounded round). Returns how many it handled (applied,
/// ignored, parked or rescheduled).
///
/// The round's entries are grouped by the payment they name (merchant and subject). A group is
/// handled in stored order, reading its payment once and again only after a step changed it;
/// different groups run concurrently (at most [`GROUPS_IN_FLIGHT`]), since they touch
/// different payments.
pub async fn try_execute_webhook_inbox(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now();
    let until = service::claim_until(state, now);
    if !state
        .store
        .begin(Scope::System, Mode::Read)
        .await?
        .inbox_due(now)
        .await?
    {
        return Ok(0);
    }
    let taken = {
        let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
        let taken = tx.take_inbox(now, until, ROUND_MAX).await?;
        tx.commit().await?;
        taken
    };
    let count = taken.len();
    // Entries concluded without touching their payment (ignored, rescheduled, parked) are
    // written together at the end of the round: one commit instead of one per entry. Their
    // decisions changed no payment, so writing them later changes nothing else.
    let mut later = Vec::new();
    let mut groups: Vec<(GroupKey, Vec<Member>)> = Vec::new();
    for entry in taken {
        let event: Value = serde_json::from_str(&entry.payload).unwrap_or(Value::Null);
        let Some((outcome, subject)) = inbound::outcome(&entry.kind, &event) else {
            later.push(concluded(
                &entry,
                None,
                InboxStatus::Ignored,
                "unsupported_event_type",
                now,
            ));
            continue;
        };
        let key = (
            entry.merchant_id.clone(),
            subject.provider_ref.clone(),
            subject.reference.clone(),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push((entry, outcome, subject)),
            None => groups.push((key, vec![(entry, outcome, subject)])),
        }
    }
    let mut found = prefetch(state, &groups).await;
    let limit = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    let mut running = JoinSet::new();
    for (key, members) in groups {
        let (state, limit) = (state.clone(), limit.clone());
        // Found by the provider's id: the group starts from it; otherwise `find` looks again
        // (also by Settle's reference).
        let mut payment = found.remove(&key).map(Some);
        running.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let mut later = Vec::new();
            for (entry, outcome, subject) in members {
                if let Err(e) = handle(&state, &entry, &outcome, &subject, until, &mut payment, &mut later).await {
                    tracing::warn!(entry = %entry.id, error = ?e, "applying a webhook failed; retried later");
                    later.push(inbound::retry_later(&entry, "error", state.clock.now()));
                    payment = None;
                }
            }
            later
        });
    }
    while let Some(done) = running.join_next().await {
        match done {
            Ok(entries) => later.extend(entries),
            Err(e) => tracing::error!(error = %e, "an inbox group task failed; its leases will expire"),
        }
    }
    for entry in later.iter().filter(|e| e.status == InboxStatus::Parked) {
        tracing::warn!(entry = %entry.id, event = %entry.provider_event_id, reason = ?entry.reason, "webhook parked");
    }
    store_entries(state, &later, until).await?;
    state.metrics.job_changes("webhook_inbox", count as u64);
    Ok(count)
}

/// The payment an inbox entry names: its merchant, the provider's id, Settle's reference.
type GroupKey = (String, Option<String>, Option<String>);

/// Reads the round's payments by their providers' ids: one statement per merchant (per
/// [`ROUND_MAX`] ids) instead of one read per group. A payment read here may change before its
/// group runs; a step on it is written only at the version read (compare-and-set), so a stale
/// read costs a retry, never a wrong write. A read that fails (an event stored with an id the
/// database refuses to compare, say) is skipped: each of those groups then reads its own
/// payment, so the failure is its entries' alone, not the round's.
async fn prefetch(state: &AppState, groups: &[(GroupKey, Vec<Member>)]) -> HashMap<GroupKey, Payment> {
    let mut refs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((merchant, provider_ref, _), _) in groups {
        if let Some(r) = provider_ref {
            refs.entry(merchant.as_str()).or_default().push(r.clone());
        }
    }
    let mut by_ref: HashMap<(String, String), Payment> = HashMap::new();
    for (merchant, refs) in refs {
        match by_provider_refs(state, merchant, &refs).await {
            Ok(found) => by_ref.extend(found.into_iter().map(|(r, p)| ((merchant.to_owned(), r), p))),
            Err(e) => {
                tracing::warn!(merchant, error = ?e, "reading a round's payments failed; each group reads its own")
            }
        }
    }
    groups
        .iter()
        .filter_map(|(key, _)| {
            let (merchant, provider_ref, _) = key;
            let p = by_ref.get(&(merchant.clone(), provider_ref.clone()?))?;
            Some((key.clone(), p.clone()))
        })
        .collect()
}

/// One merchant's payments by their providers' ids (oldest first: a reference held twice ends
/// with the newest payment, as `find` reads).
async fn by_provider_refs(
    state: &AppState,
    merchant: &str,
    refs: &[String],
) -> Result<Vec<(String, Payment)>, ApiError> {
    let mut tx = state.reader(merchant).await?;
    let mut found = Vec::new();
    for chunk in refs.chunks(ROUND_MAX as usize) {
        for p in tx.payments_by_provider_refs(merchant, chunk).await? {
            if let Some(r) = p.provider_ref.clone() {
                found.push((r, p));
            }
        }
    }
    Ok(found)
}
/// An entry with what its event says.
type Member = (InboxEntry, Outcome, Subject);

/// Handles one entry. `payment` caches the group's payment as last read (`None`: read it);
/// a step that changed the payment, or failed to, clears it.
async fn handle(
    state: &AppState,
    entry: &InboxEntry,
    outcome: &Outcome,
    subject: &Subject,
    leased: Timestamp,
    payment: &mut Option<Option<Payment>>,
    later: &mut Vec<InboxEntry>,
) -> Result<(), ApiError> {
    let now = state.clock.now();
    if payment.is_none() {
        *payment = Some(find(state, entry, subject).await?);
    }
    let Some(Some(current)) = payment.as_ref() else {
        later.push(retry(entry, None, "payment_not_found", now));
        return Ok(());
    };
    let id = Some(current.id.as_str());
    match inbound::decide(current, outcome, subject, &entry.connector_account_id, now) {
        Verdict::Ignore(reason) => later.push(concluded(entry, id, InboxStatus::Ignored, reason, now)),
        Verdict::Wait => later.push(retry(entry, id, "payment_in_progress", now)),
        Verdict::Apply(step) => {
            let result = apply(state, entry, leased, current, subject, outcome, step).await;
            let id = current.id.clone();
            *payment = None;
            match result {
                Err(ApiError::Internal(why)) if why.starts_with(STALE) => {
                    later.push(retry(entry, Some(&id), "payment_changed", state.clock.now()))
                }
                other => return other,
            }
        }
    }
    Ok(())
}

/// The payment an event names: by the provider's id, else by Settle's attempt reference.
async fn find(state: &AppState, entry: &InboxEntry, subject: &Subject) -> Result<Option<Payment>, ApiError> {
    let merchant = &entry.merchant_id;
    let mut tx = state.reader(merchant).await?;
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

/// The entry concluded `status` (ignored) for `reason`.
fn concluded(
    entry: &InboxEntry,
    payment_id: Option<&str>,
    status: InboxStatus,
    reason: &str,
    now: Timestamp,
) -> InboxEntry {
    let mut next = inbound::concluded(entry, status, Some(reason), now);
    next.payment_id = payment_id.map(str::to_owned).or(next.payment_id);
    next
}

/// The entry due again later (or parked after its last attempt).
fn retry(entry: &InboxEntry, payment_id: Option<&str>, reason: &str, now: Timestamp) -> InboxEntry {
    let mut next = inbound::retry_later(entry, reason, now);
    next.payment_id = payment_id.map(str::to_owned).or(next.payment_id);
    next
}

/// Stores entries' new states in one transaction, each only under the lease it was taken with.
async fn store_entries(state: &AppState, entries: &[InboxEntry], leased: Timestamp) -> Result<(), ApiError> {
    if entries.is_empty() {
        return Ok(());
    }
    let leased: Vec<(InboxEntry, Timestamp)> = entries.iter().map(|e| (e.clone(), leased)).collect();
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    let stored = tx.update_inbox_entries(&leased).await?;
    if stored < entries.len() {
        // Leases expired and another worker took those entries: its word counts.
        tracing::warn!(lost = entries.len() - stored, "inbox entry leases lost");
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
    match service::post(state, &base.merchant_id, transfers, Some(then)).await {
        Ok(()) => Ok(()),
        Err(PostError::Write(WriteError::Stale(why))) => Err(ApiError::Internal(format!("{STALE}{why}"))),
        Err(e) => Err(e.into()),
    }
}
