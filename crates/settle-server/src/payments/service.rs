//! The payment flows: claim the payment, call connectors, post to the ledger, store the result.
//!
//! Every flow that calls a connector has three steps, none holding a database transaction
//! across the network call:
//! 1. **claim** — one short transaction decides the command against the stored payment and
//!    stores it with `claimed_until` set (and `processing` for a confirm), compare-and-set on
//!    `version`: of concurrent commands exactly one claims, the others answer 409;
//!    the same transaction reads what the next step needs (the card, the connectors to try);
//! 2. **act** — the connector call(s);
//! 3. **finish** — one transaction, through the ledger's group-commit writer, posts the step's
//!    transfers and stores the payment at the version it claimed, its status history, its
//!    attempts, the audit row and the idempotency record: the money and the record of why it
//!    moved commit together or not at all. Transfer ids derive from the payment id, so a step
//!    finished twice is an `exists`.
//!
//! A crash between 1 and 3 leaves a claim that expires; the recovery job then resolves the
//! payment with its connector (see `jobs`).

use std::{sync::Arc, time::Instant};

use serde_json::json;
use settle_connectors::{AuthorizeRequest, CardData, ConnectorError, ConnectorResult, ProviderStatus, Synced};
use settle_domain::{
    event::{self, NewEvent},
    ledger::{Account, AccountFlags, Balances, Key, TransferRequest},
    payment::{
        self, Attempt, AuthorizationOutcome, CaptureMethod, Command, Decision, Payment, PaymentError, PaymentMethod,
        PaymentStatus, Plan, PlannedTry, Refusal, StatusChange,
    },
    postings,
    routing::RouteInput,
    tenancy::AuditEntry,
    Currency, Timestamp,
};

use crate::{
    cache::TtlCache,
    context::{Ctx, Reply},
    error::ApiError,
    events,
    ledger::{
        write_error,
        writer::{Then, WriteError},
    },
    payments::{
        connectors::{Candidate, Routing, BUILTIN_SANDBOX, FAILOVER_CANDIDATES_MAX},
        methods, payment_json,
    },
    AppState, LazyReader,
};

/// How many connector timeouts a claim lasts: longer than the slowest failover (each of
/// [`FAILOVER_CANDIDATES_MAX`] candidates' authorize, sync and void calls, then a capture, each
/// bounded by the connector timeout), with room to spare.
pub const CLAIM_TIMEOUTS: u32 = 12;

/// When a claim taken at `now` expires (two minutes with the default 10 s connector timeout).
pub fn claim_until(state: &AppState, now: Timestamp) -> Timestamp {
    let seconds = state.config.connector_timeout.as_secs().max(1) * u64::from(CLAIM_TIMEOUTS);
    now.checked_add_seconds(i64::try_from(seconds).unwrap_or(i64::MAX))
        .unwrap_or(now)
}

/// How long this process trusts its last copy of a payment or payment method before reading it.
pub const RECENT_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The payments and payment methods this process last wrote or read. A claim decides on the
/// remembered payment and stores it only at that version (every change of a payment's stored
/// fields moves its version), so a copy gone stale costs one read, never a wrong write. A card's
/// vaulted fields never change.
#[derive(Default)]
pub struct Recent {
    payments: TtlCache<String, Payment>,
    methods: TtlCache<String, PaymentMethod>,
}

impl Recent {
    fn key(merchant_id: &str, id: &str) -> String {
        format!("{merchant_id}/{id}")
    }

    pub fn payment(&self, merchant_id: &str, id: &str) -> Option<Payment> {
        self.payments.get(&Self::key(merchant_id, id), RECENT_TTL)
    }

    pub fn remember_payment(&self, payment: &Payment) {
        self.payments
            .put(Self::key(&payment.merchant_id, &payment.id), payment.clone());
    }

    pub fn method(&self, merchant_id: &str, id: &str) -> Option<PaymentMethod> {
        self.methods.get(&Self::key(merchant_id, id), RECENT_TTL)
    }

    pub fn remember_method(&self, method: &PaymentMethod) {
        self.methods
            .put(Self::key(&method.merchant_id, &method.id), method.clone());
    }
}

/// Who asked: a client request (with its context) or a job.
pub struct Actor<'a> {
    pub ctx: Option<&'a Ctx>,
    /// `reason` of the status changes a job makes (`expired`, `sync`).
    pub reason: Option<&'a str>,
}

impl Actor<'_> {
    fn request_id(&self) -> Option<String> {
        self.ctx.and_then(|c| c.request_id.clone())
    }
}

pub fn refusal(r: Refusal) -> ApiError {
    match r {
        Refusal::IllegalTransition { .. } | Refusal::InProgress(_) => ApiError::Conflict {
            code: if matches!(r, Refusal::InProgress(_)) {
                "payment_in_progress"
            } else {
                "payment_unexpected_state"
            },
            message: r.message(),
            param: None,
        },
        Refusal::MissingPaymentMethod => ApiError::Invalid {
            code: "parameter_missing",
            message: r.message(),
            param: Some("payment_method".into()),
        },
        Refusal::CaptureAmount { .. } => ApiError::invalid("amount", r.message()),
    }
}

/// A payment's status change: its history row and its domain event (the payment after it).
#[derive(Clone, Debug)]
pub struct Changed {
    pub row: StatusChange,
    pub event: NewEvent,
}

/// The status change `from → to` (`from` is `None` for a new payment).
pub fn change(
    state: &AppState,
    from: Option<&Payment>,
    to: &Payment,
    actor: &Actor<'_>,
    error_code: Option<String>,
) -> Changed {
    let kind = event::payment_event(from.map(|p| p.status), to.status);
    let event = events::new_event(state, &to.merchant_id, kind, "payment", &to.id, payment_json(to));
    let row = StatusChange {
        merchant_id: to.merchant_id.clone(),
        id: state.ids.make("pev"),
        payment_id: to.id.clone(),
        from_status: from.map(|p| p.status),
        to_status: to.status,
        reason: actor.reason.map(str::to_owned).or_else(|| {
            to.cancellation_reason
                .clone()
                .filter(|_| to.status == PaymentStatus::Canceled)
        }),
        connector: to.connector_name.clone(),
        error_code,
        request_id: actor.request_id(),
        created_at: state.clock.now(),
    };
    Changed { row, event }
}

/// What the act step needs, read in the claim's transaction.
pub enum Prepared {
    /// A confirm: the card (its CVC is taken once the claim commits) and the connectors to try.
    Authorize { card: CardData, candidates: Vec<Candidate> },
    /// A capture or void: the connector holding the authorization.
    Holder(Candidate),
    /// Nothing to call (a cancel before any authorization).
    Nothing,
}

/// Reads what `decision` needs (`known_method`: the payment's method, when the caller holds
/// it); an error aborts the claim, so nothing is half-written.
pub async fn prepare(
    state: &AppState,
    reader: &mut LazyReader<'_>,
    payment: &Payment,
    decision: &Decision,
    known_method: Option<&PaymentMethod>,
) -> Result<Prepared, ApiError> {
    match decision {
        Decision::Authorize => {
            let (card, brand) = methods::card_for(state, reader, payment, known_method).await?;
            let candidates = candidates_for(state, reader, payment, brand).await?;
            Ok(Prepared::Authorize { card, candidates })
        }
        Decision::Capture { .. } | Decision::Cancel { void: true } => {
            Ok(Prepared::Holder(holder(state, reader, payment).await?))
        }
        Decision::Cancel { void: false } | Decision::MethodAttached => Ok(Prepared::Nothing),
    }
}

/// Step 1: decides `command`, reads what the act step needs and stores the claim with its
/// plan. `new_method` is attached before the decision (a confirm with a new payment method);
/// `reason` is a cancel's.
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    state: &AppState,
    merchant_id: &str,
    id: &str,
    command: &Command,
    new_method: Option<&str>,
    reason: Option<&str>,
    actor: &Actor<'_>,
    audit: &[AuditEntry],
) -> Result<(Payment, Decision, Prepared), ApiError> {
    let attempt = |payment: Payment| try_claim(state, payment, command, new_method, reason, actor, audit);
    // This process's last copy first: it is stored only at its version, so a stale copy (or a
    // refusal decided on one) costs a read of the stored row, never a wrong write.
    if let Some(recent) = state.recent.payment(merchant_id, id) {
        match attempt(recent).await {
            Err(Unclaimed::Refused(_) | Unclaimed::Stale) => {}
            Err(Unclaimed::Failed(e)) => return Err(e),
            Ok(done) => return Ok(done),
        }
    }
    let stored = state
        .reader(merchant_id)
        .await?
        .get_payment(merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment", id))?;
    match attempt(stored.clone()).await {
        Ok(done) => Ok(done),
        Err(Unclaimed::Refused(r)) => Err(refusal(r)),
        Err(Unclaimed::Stale) => {
            let current = load_status(state, merchant_id, id).await?.unwrap_or(stored.status);
            Err(refusal(Refusal::InProgress(current)))
        }
        Err(Unclaimed::Failed(e)) => Err(e),
    }
}

/// Why [`try_claim`] claimed nothing.
enum Unclaimed {
    Refused(Refusal),
    /// The payment changed since `payment` was read.
    Stale,
    Failed(ApiError),
}

impl From<ApiError> for Unclaimed {
    fn from(e: ApiError) -> Self {
        Unclaimed::Failed(e)
    }
}

/// Claims `payment` as read (see [`claim`]).
#[allow(clippy::too_many_arguments)]
async fn try_claim(
    state: &AppState,
    mut payment: Payment,
    command: &Command,
    new_method: Option<&str>,
    reason: Option<&str>,
    actor: &Actor<'_>,
    audit: &[AuditEntry],
) -> Result<(Payment, Decision, Prepared), Unclaimed> {
    let now = state.clock.now();
    let before = payment.clone();
    let decision = payment::decide(&payment, command, new_method.is_some(), now).map_err(Unclaimed::Refused)?;
    if let Some(method) = new_method {
        payment.payment_method_id = Some(method.to_owned());
    }
    let merchant_id = payment.merchant_id.clone();
    let prepared = {
        let mut reader = state.lazy_reader(&merchant_id);
        prepare(state, &mut reader, &payment, &decision, None).await?
    };
    let claimed = claimed(state, &payment, &decision, reason, &prepared);
    let changes = if claimed.status == before.status {
        Vec::new()
    } else {
        vec![change(state, Some(&before), &claimed, actor, None)]
    };
    let rows = Then {
        payments: vec![(claimed.clone(), before.version)],
        changes,
        audit: audit.to_vec(),
        ..Then::default()
    };
    match post(state, &merchant_id, Vec::new(), Some(rows)).await {
        Ok(()) => {
            state.recent.remember_payment(&claimed);
            Ok((claimed, decision, prepared))
        }
        Err(PostError::Write(WriteError::Stale(_))) => Err(Unclaimed::Stale),
        Err(e) => Err(Unclaimed::Failed(e.into())),
    }
}

async fn load_status(state: &AppState, merchant_id: &str, id: &str) -> Result<Option<PaymentStatus>, ApiError> {
    let mut tx = state.reader(merchant_id).await?;
    Ok(tx.get_payment(merchant_id, id).await?.map(|p| p.status))
}

/// `payment` claimed for `decision`, with its plan: for an authorization, one attempt
/// reference per candidate, fixed before any call so that the recovery job can find them.
pub fn claimed(
    state: &AppState,
    payment: &Payment,
    decision: &Decision,
    reason: Option<&str>,
    prepared: &Prepared,
) -> Payment {
    let now = state.clock.now();
    let tries = match prepared {
        Prepared::Authorize { candidates, .. } => candidates
            .iter()
            .map(|c| PlannedTry {
                connector_account_id: c.account_id.clone(),
                reference: state.ids.make("att"),
            })
            .collect(),
        _ => Vec::new(),
    };
    let until = claim_until(state, now);
    payment::claimed(payment, payment::plan(decision, reason, tries), now, until)
}

/// Step 3: posts `transfers` and stores `next` over the claimed payment with its history,
/// attempts and audit rows, and (for a client request) the idempotency record with `reply`,
/// in one transaction.
#[allow(clippy::too_many_arguments)]
pub async fn finish(
    state: &AppState,
    claimed: &Payment,
    next: &Payment,
    changes: Vec<Changed>,
    attempts: Vec<Attempt>,
    audit: &[AuditEntry],
    actor: &Actor<'_>,
    reply: Option<&Reply>,
    transfers: Vec<TransferRequest>,
) -> Result<(), ApiError> {
    let record = match (actor.ctx, reply) {
        (Some(ctx), Some(reply)) => ctx.idempotency_record(reply, state.clock.now()),
        _ => None,
    };
    let rows = Then {
        payments: vec![(next.clone(), claimed.version)],
        attempts,
        changes,
        audit: audit.to_vec(),
        records: record.into_iter().collect(),
        ..Then::default()
    };
    write_with(state, &claimed.merchant_id, transfers, rows).await?;
    state.recent.remember_payment(next);
    Ok(())
}

/// Posts `transfers` and writes `then` in one of the ledger writer's group commits (with no
/// transfers, `then` alone still shares the group's transaction).
pub async fn write_with(
    state: &AppState,
    merchant_id: &str,
    transfers: Vec<TransferRequest>,
    then: Then,
) -> Result<(), ApiError> {
    post(state, merchant_id, transfers, Some(then))
        .await
        .map_err(ApiError::from)
}

/// Claims a payment for a job without a command (the sync job on a `processing` payment).
/// `None` when another process changed or claimed it first.
pub async fn claim_as_is(state: &AppState, payment: &Payment) -> Result<Option<Payment>, ApiError> {
    let now = state.clock.now();
    let mut claimed = payment.clone();
    claimed.claimed_until = Some(claim_until(state, now));
    claimed.version += 1;
    claimed.updated_at = now;
    let rows = Then {
        payments: vec![(claimed.clone(), payment.version)],
        ..Then::default()
    };
    match post(state, &payment.merchant_id, Vec::new(), Some(rows)).await {
        Ok(()) => Ok(Some(claimed)),
        Err(PostError::Write(WriteError::Stale(_))) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Asks the connector about an earlier authorization attempt (by the provider's id when
/// known, else by the attempt's reference); records the call.
pub async fn sync_attempt(
    state: &AppState,
    payment: &Payment,
    candidate: &Candidate,
    reference: &str,
    provider_ref: Option<&str>,
    actor: &Actor<'_>,
    attempts: &mut Vec<Attempt>,
) -> Option<Synced> {
    let started = Instant::now();
    let provider_ref = provider_ref.or(payment.provider_ref.as_deref());
    let answer = candidate.connector.sync(provider_ref, reference).await;
    let (outcome, code) = match &answer {
        Ok(synced) => (sync_outcome(&synced.status), None),
        Err(e) => (outcome_of(e), Some(e.code())),
    };
    let found = answer.as_ref().ok().and_then(|s| s.provider_ref.as_deref());
    attempts.push(attempt(
        state,
        payment,
        "sync",
        candidate,
        outcome,
        code,
        found.or(provider_ref),
        started,
        actor,
    ));
    answer.ok()
}

fn sync_outcome(status: &ProviderStatus) -> &'static str {
    match status {
        ProviderStatus::Authorized | ProviderStatus::Captured => "succeeded",
        ProviderStatus::Processing => "processing",
        ProviderStatus::Declined(_) => "declined",
        ProviderStatus::Voided | ProviderStatus::NotFound => "not_found",
    }
}

/// The `authorize` attempt of a dead claim, rebuilt from what its provider holds under the
/// planned reference.
pub fn recovered_attempt(
    state: &AppState,
    payment: &Payment,
    candidate: &Candidate,
    reference: &str,
    outcome: &str,
    provider_ref: &str,
    actor: &Actor<'_>,
) -> Attempt {
    let mut a = attempt(
        state,
        payment,
        "authorize",
        candidate,
        outcome,
        None,
        Some(provider_ref),
        Instant::now(),
        actor,
    );
    a.id = reference.to_owned();
    a
}

/// Whether a connector call's error leaves its outcome unknown (a timeout, a 5xx: the provider
/// may have acted).
pub fn outcome_unknown(e: &ApiError) -> bool {
    matches!(e, ApiError::Upstream { code, .. } if settle_store::payments::UNKNOWN_OUTCOME_CODES.contains(code))
}

/// Releases a claim without another change (a capture or void the connector refused). A
/// payment in `processing` keeps its plan: the sync job needs its attempt references.
pub async fn release(state: &AppState, claimed: &Payment, attempts: Vec<Attempt>) -> Result<(), ApiError> {
    store_claim(state, claimed, attempts, false).await
}

/// Stores a claim's `attempts` without another change, releasing the claim or (`keep`) leaving
/// it, with its plan, to expire and be recovered.
async fn store_claim(state: &AppState, claimed: &Payment, attempts: Vec<Attempt>, keep: bool) -> Result<(), ApiError> {
    let mut next = claimed.clone();
    if !keep {
        next.claimed_until = None;
        if next.status != PaymentStatus::Processing {
            next.plan = None;
        }
    }
    next.version += 1;
    next.updated_at = state.clock.now();
    let actor = Actor {
        ctx: None,
        reason: None,
    };
    finish(
        state,
        claimed,
        &next,
        Vec::new(),
        attempts,
        &[],
        &actor,
        None,
        Vec::new(),
    )
    .await
}

/// Makes sure the system accounts of `connector` and `currency` exist for the merchant.
pub async fn ensure_chart(
    state: &AppState,
    merchant_id: &str,
    connector: &str,
    currency: Currency,
) -> Result<(), ApiError> {
    let key = format!("{merchant_id}/{connector}/{}", currency.code());
    ensure_accounts(
        state,
        merchant_id,
        &key,
        &postings::chart(connector, currency),
        currency,
    )
    .await
}

/// Makes sure the system accounts of `chart` (ids and flags, all in `currency`) exist for the
/// merchant; `key` names the chart in the process's cache of charts known to exist.
pub async fn ensure_accounts(
    state: &AppState,
    merchant_id: &str,
    key: &str,
    chart: &[(String, AccountFlags)],
    currency: Currency,
) -> Result<(), ApiError> {
    if state.charts.lock().is_ok_and(|c| c.contains(key)) {
        return Ok(());
    }
    let keys: Vec<Key> = chart
        .iter()
        .map(|(id, _)| (merchant_id.to_owned(), id.clone()))
        .collect();
    let mut tx = state.begin_write(merchant_id).await?;
    let existing = tx.get_accounts(&keys, false).await?;
    for (id, flags) in chart {
        if existing.iter().any(|a| a.id == *id) {
            continue;
        }
        let account = Account {
            merchant_id: merchant_id.to_owned(),
            id: id.clone(),
            currency,
            code: None,
            name: Some(format!("Settle {}", id.trim_start_matches(postings::SYSTEM_PREFIX))),
            flags: *flags,
            metadata: json!({}),
            balances: Balances::default(),
            created_at: state.clock.now(),
        };
        match tx.insert_account(&account).await {
            Ok(()) => {}
            // Another process created it first: the transaction is unusable on PostgreSQL, so start over.
            Err(e) if e.is_conflict_on("ledger_accounts") => {
                drop(tx);
                return Box::pin(ensure_accounts(state, merchant_id, key, chart, currency)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    tx.commit().await?;
    if let Ok(mut charts) = state.charts.lock() {
        if charts.len() > 100_000 {
            charts.clear();
        }
        charts.insert(key.to_owned());
    }
    Ok(())
}

/// Posts transfers for a payment step (with `then`, written in the same transaction); every
/// transfer must be created or already exist.
pub async fn post(
    state: &AppState,
    merchant_id: &str,
    requests: Vec<TransferRequest>,
    then: Option<Then>,
) -> Result<(), PostError> {
    let results = state
        .writer
        .post(merchant_id, requests, true, then)
        .await
        .map_err(PostError::Write)?;
    match settle_domain::ledger::refusal(&results) {
        Some((_, e)) => Err(PostError::Refused(e.code().to_owned(), e.message())),
        None => Ok(()),
    }
}

#[derive(Debug)]
pub enum PostError {
    /// The ledger refused a transfer (a payee account's limit, say).
    Refused(String, String),
    Write(WriteError),
}

impl From<PostError> for ApiError {
    fn from(e: PostError) -> Self {
        match e {
            PostError::Refused(code, message) => {
                ApiError::Internal(format!("ledger refused a payment step: {code}: {message}"))
            }
            PostError::Write(e) => write_error(e),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attempt(
    state: &AppState,
    payment: &Payment,
    operation: &str,
    candidate: &Candidate,
    outcome: &str,
    error_code: Option<&str>,
    provider_ref: Option<&str>,
    started: Instant,
    actor: &Actor<'_>,
) -> Attempt {
    Attempt {
        merchant_id: payment.merchant_id.clone(),
        id: state.ids.make("att"),
        payment_id: payment.id.clone(),
        operation: operation.to_owned(),
        connector_account_id: candidate.account_id.clone(),
        connector: candidate.connector_name.clone(),
        outcome: outcome.to_owned(),
        error_code: error_code.map(str::to_owned),
        provider_ref: provider_ref.map(str::to_owned),
        request_id: actor.request_id(),
        latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        created_at: state.clock.now(),
    }
}

fn declined(code: &str, message: &str, connector: Option<&str>) -> AuthorizationOutcome {
    AuthorizationOutcome::Declined(PaymentError {
        code: code.to_owned(),
        message: message.to_owned(),
        connector: connector.map(str::to_owned),
    })
}

/// What a timed-out or failed authorization turned out to be, once synced (and voided).
enum Unknown {
    /// Nothing is held at that connector: try the next.
    Cleared,
    /// Something may be held and could not be voided: stop, the sync job resolves it.
    Stuck(Option<String>),
}

/// Step 2 of a confirm: tries the candidates in order until one authorizes, a card decision
/// ends the run, or the candidates run out. An attempt whose outcome is unknown (timeout,
/// provider failure) is synced, and voided if it did authorize, before the next connector is
/// tried, so the payment never holds two authorizations.
pub async fn authorize(
    state: &AppState,
    payment: &Payment,
    candidates: &[Candidate],
    card: &CardData,
    actor: &Actor<'_>,
) -> (AuthorizationOutcome, Vec<Attempt>) {
    let mut attempts = Vec::new();
    let mut last = declined("no_connector_available", "no connector could be tried", None);
    let mut tried = 0;
    for candidate in candidates {
        if tried == FAILOVER_CANDIDATES_MAX {
            break;
        }
        let merchant = &payment.merchant_id;
        let now = state.clock.now();
        if !state.connectors.allow(merchant, &candidate.account_id, now) {
            attempts.push(attempt(
                state,
                payment,
                "authorize",
                candidate,
                "skipped",
                Some("circuit_open"),
                None,
                Instant::now(),
                actor,
            ));
            continue;
        }
        tried += 1;
        let reference = planned_reference(payment, &candidate.account_id).unwrap_or_else(|| state.ids.make("att"));
        let request = AuthorizeRequest {
            reference: reference.clone(),
            amount: payment.amount,
            currency: payment.currency,
            card: card.clone(),
            description: payment.description.clone(),
        };
        let started = Instant::now();
        let answer = candidate.connector.authorize(&request).await;
        // The attempt's id is the reference the provider saw, so a lost answer can be synced.
        let mut record = |outcome: &str, code: Option<&str>, provider_ref: Option<&str>| {
            let mut a = attempt(
                state,
                payment,
                "authorize",
                candidate,
                outcome,
                code,
                provider_ref,
                started,
                actor,
            );
            a.id = reference.clone();
            attempts.push(a);
        };
        let name = Some(candidate.connector_name.as_str());
        match answer {
            Ok(auth) => {
                let healthy = !matches!(&auth.status, ProviderStatus::Declined(d) if d.retryable());
                state
                    .connectors
                    .record(merchant, &candidate.account_id, healthy, state.clock.now());
                let (outcome, code) = match &auth.status {
                    ProviderStatus::Authorized => ("succeeded", None),
                    ProviderStatus::Processing => ("processing", None),
                    ProviderStatus::Declined(d) => ("declined", Some(d.code.as_str())),
                    _ => ("error", Some("unexpected_status")),
                };
                let provider_ref = Some(auth.provider_ref.as_str()).filter(|r| !r.is_empty());
                record(outcome, code, provider_ref);
                match auth.status {
                    ProviderStatus::Authorized => {
                        return (
                            AuthorizationOutcome::Authorized {
                                connector_account_id: candidate.account_id.clone(),
                                connector_name: candidate.connector_name.clone(),
                                provider_ref: auth.provider_ref,
                            },
                            attempts,
                        )
                    }
                    ProviderStatus::Processing => {
                        return (
                            AuthorizationOutcome::Pending {
                                connector_account_id: candidate.account_id.clone(),
                                connector_name: candidate.connector_name.clone(),
                                provider_ref: provider_ref.map(str::to_owned),
                            },
                            attempts,
                        )
                    }
                    ProviderStatus::Declined(d) if d.retryable() => last = declined(&d.code, &d.message, name),
                    ProviderStatus::Declined(d) => return (declined(&d.code, &d.message, name), attempts),
                    _ => {
                        last = declined(
                            "connector_error",
                            "the connector answered with an unexpected status",
                            name,
                        )
                    }
                }
            }
            Err(e) => {
                state
                    .connectors
                    .record(merchant, &candidate.account_id, false, state.clock.now());
                record(outcome_of(&e), Some(e.code()), None);
                last = declined(e.code(), "the connector failed; no authorization was made", name);
                // Refused, or never sent: nothing to sync, the next candidate is tried.
                if matches!(e, ConnectorError::Rejected(_) | ConnectorError::Unreachable(_)) {
                    continue;
                }
                match resolve_unknown(state, payment, candidate, &reference, actor, &mut attempts).await {
                    Unknown::Cleared => {}
                    Unknown::Stuck(provider_ref) => {
                        return (
                            AuthorizationOutcome::Pending {
                                connector_account_id: candidate.account_id.clone(),
                                connector_name: candidate.connector_name.clone(),
                                provider_ref,
                            },
                            attempts,
                        )
                    }
                }
            }
        }
    }
    (last, attempts)
}

/// The attempt reference the claim planned for `account_id`.
fn planned_reference(payment: &Payment, account_id: &str) -> Option<String> {
    match &payment.plan {
        Some(Plan::Authorize { tries }) => tries
            .iter()
            .find(|t| t.connector_account_id == account_id)
            .map(|t| t.reference.clone()),
        _ => None,
    }
}

fn outcome_of(e: &ConnectorError) -> &'static str {
    match e {
        ConnectorError::Timeout => "timeout",
        ConnectorError::Unavailable(_) | ConnectorError::Rejected(_) | ConnectorError::Unreachable(_) => "error",
    }
}

/// Syncs an authorization whose answer was lost; voids it if the provider did authorize.
async fn resolve_unknown(
    state: &AppState,
    payment: &Payment,
    candidate: &Candidate,
    reference: &str,
    actor: &Actor<'_>,
    attempts: &mut Vec<Attempt>,
) -> Unknown {
    let Some(synced) = sync_attempt(state, payment, candidate, reference, None, actor, attempts).await else {
        return Unknown::Stuck(None);
    };
    match (synced.status, synced.provider_ref) {
        (ProviderStatus::NotFound | ProviderStatus::Declined(_) | ProviderStatus::Voided, _) => Unknown::Cleared,
        (ProviderStatus::Authorized, Some(provider_ref)) => {
            // Held there after all: release it before the next connector is tried.
            let started = Instant::now();
            let voided = candidate.connector.void(&provider_ref).await;
            let (outcome, code) = match &voided {
                Ok(()) => ("succeeded", None),
                Err(e) => (outcome_of(e), Some(e.code())),
            };
            attempts.push(attempt(
                state,
                payment,
                "void",
                candidate,
                outcome,
                code,
                Some(&provider_ref),
                started,
                actor,
            ));
            match voided {
                Ok(()) => Unknown::Cleared,
                Err(_) => Unknown::Stuck(Some(provider_ref)),
            }
        }
        // Processing, captured, or held without an id: stop here, the sync job resolves it.
        (_, provider_ref) => Unknown::Stuck(provider_ref),
    }
}

/// The routing input and candidates for a payment.
pub async fn candidates_for(
    state: &AppState,
    reader: &mut LazyReader<'_>,
    payment: &Payment,
    brand: Option<settle_domain::card::CardBrand>,
) -> Result<Vec<Candidate>, ApiError> {
    let routing = routing_of(state, reader, &payment.merchant_id).await?;
    let input = RouteInput {
        currency: payment.currency,
        amount: payment.amount,
        brand,
    };
    state.connectors.candidates(
        &state.vault,
        &routing.accounts,
        routing.rules.as_deref(),
        payment.connector.as_deref(),
        &input,
    )
}

/// After an authorization's outcome: the payment as it stands, the status changes and the
/// transfers to post (the hold, and with automatic capture the capture). An automatic capture
/// the connector refuses leaves the payment authorized (`requires_capture`), its attempt recorded.
pub async fn after_authorization(
    state: &AppState,
    claimed: &Payment,
    outcome: &AuthorizationOutcome,
    actor: &Actor<'_>,
    attempts: &mut Vec<Attempt>,
    holder: Option<&Candidate>,
) -> Result<(Payment, Vec<Changed>, Vec<TransferRequest>), ApiError> {
    let now = state.clock.now();
    let mut next = payment::authorization_ended(claimed, outcome, now);
    let error_code = next.last_payment_error.as_ref().map(|e| e.code.clone());
    let mut changes = vec![change(state, Some(claimed), &next, actor, error_code)];
    if let AuthorizationOutcome::Pending { .. } = outcome {
        // Still `processing`: the history says why.
        changes[0]
            .row
            .reason
            .get_or_insert_with(|| "pending_at_connector".to_owned());
    }
    let mut transfers = Vec::new();
    if let AuthorizationOutcome::Authorized { connector_name, .. } = outcome {
        ensure_chart(state, &next.merchant_id, connector_name, next.currency).await?;
        transfers.push(postings::authorization(&next, connector_name));
        if next.capture_method == CaptureMethod::Automatic {
            let holder = match holder {
                Some(h) if Some(&h.account_id) == next.connector_account_id.as_ref() => h.clone(),
                _ => self::holder(state, &mut state.lazy_reader(&next.merchant_id), &next).await?,
            };
            let before = next.clone();
            match capture_now(state, &holder, &next, next.amount, actor, attempts).await {
                Ok((captured, batch)) => {
                    next = captured;
                    transfers.extend(batch);
                    changes.push(change(state, Some(&before), &next, actor, None));
                }
                // The provider may have captured: the payment stays claimed for the capture, which
                // the recovery job finishes or releases from what the provider holds.
                Err(e) if outcome_unknown(&e) => {
                    tracing::warn!(payment = %next.id, error = ?e, "automatic capture has an unknown outcome; the recovery job settles it");
                    next.claimed_until = claimed.claimed_until;
                    next.plan = Some(Plan::Capture { amount: next.amount });
                }
                Err(e) => {
                    tracing::warn!(payment = %next.id, error = ?e, "automatic capture failed; the payment stays authorized")
                }
            }
        }
    }
    Ok((next, changes, transfers))
}

/// Captures at the connector; returns the captured payment and the ledger batch to post. A
/// capture the connector did not confirm (a timeout, or a refusal because the payment is
/// captured already: an earlier capture whose answer was lost, or a crash) is decided by what
/// the provider holds: captured there, it is captured here too.
pub async fn capture_now(
    state: &AppState,
    holder: &Candidate,
    payment: &Payment,
    amount: i64,
    actor: &Actor<'_>,
    attempts: &mut Vec<Attempt>,
) -> Result<(Payment, Vec<TransferRequest>), ApiError> {
    let provider_ref = payment.provider_ref.clone().unwrap_or_default();
    let started = Instant::now();
    let result = holder.connector.capture(&provider_ref, amount, payment.currency).await;
    let step = Step {
        operation: "capture",
        done: ProviderStatus::Captured,
        failed: "the connector did not capture",
    };
    step.settle(state, holder, payment, result, started, actor, attempts)
        .await?;
    let batch = postings::capture(payment, amount)
        .ok_or_else(|| ApiError::Internal("capture shares do not allocate".into()))?;
    Ok((payment::captured(payment, amount, state.clock.now()), batch))
}

/// Voids at the connector; returns the ledger void to post. A void the connector did not
/// confirm is decided by what the provider holds: voided there (an earlier void whose answer
/// was lost, the provider's own expiry of the authorization), it is voided here too.
pub async fn void_now(
    state: &AppState,
    holder: &Candidate,
    payment: &Payment,
    actor: &Actor<'_>,
    attempts: &mut Vec<Attempt>,
) -> Result<Vec<TransferRequest>, ApiError> {
    let provider_ref = payment.provider_ref.clone().unwrap_or_default();
    let started = Instant::now();
    let result = holder.connector.void(&provider_ref).await;
    let step = Step {
        operation: "void",
        done: ProviderStatus::Voided,
        failed: "the connector did not void the authorization",
    };
    step.settle(state, holder, payment, result, started, actor, attempts)
        .await?;
    Ok(vec![postings::void(payment)])
}

/// A connector call on an authorization (capture or void) and the provider state that shows it
/// done.
struct Step {
    operation: &'static str,
    done: ProviderStatus,
    failed: &'static str,
}

impl Step {
    /// Records the call's attempt; when the connector did not confirm it, asks the provider
    /// (recorded too) and counts it done if the provider shows it done.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        self,
        state: &AppState,
        holder: &Candidate,
        payment: &Payment,
        result: ConnectorResult<()>,
        started: Instant,
        actor: &Actor<'_>,
        attempts: &mut Vec<Attempt>,
    ) -> Result<(), ApiError> {
        let provider_ref = payment.provider_ref.clone().unwrap_or_default();
        let (outcome, code) = match &result {
            Ok(()) => ("succeeded", None),
            Err(e) => (outcome_of(e), Some(e.code())),
        };
        attempts.push(attempt(
            state,
            payment,
            self.operation,
            holder,
            outcome,
            code,
            Some(&provider_ref),
            started,
            actor,
        ));
        let Err(e) = result else { return Ok(()) };
        let synced = sync_attempt(
            state,
            payment,
            holder,
            &payment.id,
            Some(&provider_ref),
            actor,
            attempts,
        )
        .await;
        if synced.map(|s| s.status) == Some(self.done) {
            return Ok(());
        }
        Err(ApiError::Upstream {
            code: e.code(),
            message: format!("{}: {e}", self.failed),
        })
    }
}

/// The connector holding the payment's authorization.
pub async fn holder(state: &AppState, reader: &mut LazyReader<'_>, payment: &Payment) -> Result<Candidate, ApiError> {
    let account_id = payment
        .connector_account_id
        .as_deref()
        .ok_or_else(|| ApiError::Internal(format!("payment {} has no connector account", payment.id)))?;
    account(state, reader, &payment.merchant_id, account_id).await
}

/// A merchant's connector account (or the built-in sandbox), ready to call.
pub async fn account(
    state: &AppState,
    reader: &mut LazyReader<'_>,
    merchant_id: &str,
    account_id: &str,
) -> Result<Candidate, ApiError> {
    let routing = routing_of(state, reader, merchant_id).await?;
    let account = match routing.accounts.iter().find(|a| a.id == account_id) {
        Some(account) => Some(account.clone()),
        None if account_id == BUILTIN_SANDBOX => None,
        // Created through another process since the routing was cached.
        None => {
            reader
                .tx()
                .await?
                .get_connector_account(merchant_id, account_id)
                .await?
        }
    };
    state.connectors.for_account(&state.vault, account_id, account.as_ref())
}

/// The merchant's connector accounts and routing rules (cached; see `connectors`).
pub async fn routing_of(
    state: &AppState,
    reader: &mut LazyReader<'_>,
    merchant_id: &str,
) -> Result<Arc<Routing>, ApiError> {
    if let Some(routing) = state.connectors.cached_routing(merchant_id) {
        return Ok(routing);
    }
    let tx = reader.tx().await?;
    let accounts = tx.list_connector_accounts(merchant_id).await?;
    let rules = match tx.get_routing(merchant_id).await? {
        Some(v) => Some(
            crate::payments::routing_rules(&v)
                .map_err(|e| ApiError::Internal(format!("stored routing rules: {e:?}")))?,
        ),
        None => None,
    };
    let routing = Arc::new(Routing { accounts, rules });
    state.connectors.remember_routing(merchant_id, routing.clone());
    Ok(routing)
}

/// Capture or cancel of a claimed payment (steps 2 and 3); returns the stored payment.
#[allow(clippy::too_many_arguments)]
pub async fn settle_claim(
    state: &AppState,
    claimed: &Payment,
    decision: &Decision,
    prepared: &Prepared,
    reason: Option<String>,
    actor: &Actor<'_>,
    render: &(dyn Fn(&Payment) -> Result<Reply, ApiError> + Sync),
    audit: &[AuditEntry],
) -> Result<(Payment, Reply), ApiError> {
    let mut attempts = Vec::new();
    let holder = match prepared {
        Prepared::Holder(h) => Some(h),
        _ => None,
    };
    let acted = match (decision, holder) {
        (Decision::Capture { amount }, Some(h)) => capture_now(state, h, claimed, *amount, actor, &mut attempts).await,
        (Decision::Cancel { void: true }, Some(h)) => void_now(state, h, claimed, actor, &mut attempts)
            .await
            .map(|void| (payment::canceled(claimed, reason.clone(), state.clock.now()), void)),
        (Decision::Cancel { void: false }, _) => Ok((
            payment::canceled(claimed, reason.clone(), state.clock.now()),
            Vec::new(),
        )),
        _ => {
            return Err(ApiError::Internal(
                "settle_claim called without what its decision needs".into(),
            ))
        }
    };
    let (next, transfers) = match acted {
        Ok(acted) => acted,
        // The provider may have acted: the claim stays, for the recovery job to finish or
        // release from what the provider holds once it expires.
        Err(e) if outcome_unknown(&e) => {
            store_claim(state, claimed, attempts, true).await?;
            return Err(e);
        }
        Err(e) => {
            release(state, claimed, attempts).await?;
            return Err(e);
        }
    };
    let reply = render(&next)?;
    let changes = vec![change(state, Some(claimed), &next, actor, None)];
    finish(
        state,
        claimed,
        &next,
        changes,
        attempts,
        audit,
        actor,
        Some(&reply),
        transfers,
    )
    .await?;
    Ok((next, reply))
}
