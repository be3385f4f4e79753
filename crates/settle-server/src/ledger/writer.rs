//! The ledger writer: group commit, after TigerBeetle.
//!
//! Requests that post transfers do not open their own transaction. They queue a [`Command`]; a
//! writer task takes everything queued (up to [`GROUP_TRANSFERS_MAX`] transfers), opens one
//! transaction, locks the accounts the group touches (in key order, so concurrent writers and
//! processes cannot deadlock), loads the transfers it references, lets the pure ledger decide every
//! request in arrival order, writes the effects with the requests' audit rows and idempotency
//! records, commits once, and answers every request. Under load one fsync serves hundreds of
//! requests; with a single request the cost is that of an ordinary transaction.
//!
//! A request may carry [`Then`]: rows of its own (a payment's new state, say) made in the same
//! transaction when all its transfers were created or already existed, so the money and the
//! record of why it moved commit together.
//!
//! On PostgreSQL, commands that post no transfers (a payment's claim, a new payment: rows only)
//! have a queue and writer tasks of their own. They lock no ledger account, so their groups
//! commit beside the ledger's; both update payments in key order, so the two cannot deadlock.
//! SQLite's one write connection would only make them take turns: there they share the ledger's.
//!
//! If a group's transaction fails (a unique race with another process, say), each of its
//! requests is retried alone, so one request's failure never fails another's.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use settle_domain::{
    event::NewEvent,
    inbound::InboxEntry,
    invoice::{Invoice, PaymentEvent},
    ledger::{
        Account, Balances, Book, Effects, Key, PendingStatus, Transfer, TransferKind, TransferRequest, TransferResult,
    },
    payment::{Attempt, Payment, PaymentMethod, Refund, StatusChange},
    tenancy::{AuditEntry, IdempotencyRecord},
    Timestamp,
};
use settle_store::{DuePending, Engine, GroupRows, Mode, Records, Scope, Store, StoreError, Tx};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};

use axum::http::StatusCode;

use crate::{
    clock::Clock,
    context::Reply,
    ledger::{batch_data, TransferView},
    metrics::Metrics,
    payments::service::Changed,
};

/// Most transfers one group commit gathers.
pub const GROUP_TRANSFERS_MAX: usize = 8_192;
/// Tasks group-committing commands without transfers. Their groups lock no account, so two
/// overlap where one would wait on the other's round trips (measured with `settle bench
/// payments`, 32 clients on PostgreSQL: one 330–380 payments/s, two 330–410, three no better).
pub const ROWS_WRITERS: usize = 2;
/// How many writes of their own ([`Store::write_alone`]) the lanes may run at once with
/// `ledger_writers` writer tasks on the ledger's lane: one per writer task of either lane.
pub fn write_alone_tasks(ledger_writers: usize) -> u32 {
    u32::try_from(ROWS_WRITERS.saturating_add(ledger_writers)).unwrap_or(u32::MAX)
}

/// Most commands waiting for a writer before senders wait.
pub const QUEUE_COMMANDS_MAX: usize = 8_192;

/// What a request's reply looks like; rendered by the writer only when an idempotency record
/// must store it, otherwise by the request's own task after the commit (off the critical path).
pub trait ReplyShape: Send + Sync {
    fn status(&self, results: &[TransferResult]) -> StatusCode;
    fn render(&self, results: &[TransferResult]) -> Reply;
}

/// A committed request: its results, and its reply when the writer already rendered it.
pub struct Committed {
    pub results: Vec<TransferResult>,
    pub reply: Option<Reply>,
}

pub struct TransferCommand {
    pub merchant_id: String,
    pub requests: Vec<TransferRequest>,
    pub atomic: bool,
    pub shape: Arc<dyn ReplyShape>,
    /// Stored with a 2xx reply when the request carried an idempotency key (reply fields are filled in).
    pub idempotency: Option<IdempotencyRecord>,
    /// Written when the reply is 2xx (services posting on their own behalf write theirs).
    pub audit: Option<AuditEntry>,
    /// Written in the same transaction when every transfer was created or already existed.
    pub then: Option<Then>,
    /// For a client's transfers: the `transfer_batch.created` event to record (its `data` is
    /// filled with the transfers the request created) when it created any.
    pub announce: Option<NewEvent>,
    pub reply: oneshot::Sender<Result<Committed, WriteError>>,
}

/// A service's own rows, committed with its transfers: a payment step's new payment state,
/// history and attempts, a refund's outcome, an invoice with the payment events applied to it.
/// A group commit writes the rows of all its requests together (one statement per kind), so a
/// busy writer does not pay a round trip per request.
#[derive(Default)]
pub struct Then {
    /// New payment methods (a card given inline with a new payment), stored before the payments.
    pub new_methods: Vec<PaymentMethod>,
    /// New payments.
    pub new_payments: Vec<Payment>,
    /// Each stored only at the version its claim read (compare-and-set).
    pub payments: Vec<(Payment, i64)>,
    pub attempts: Vec<Attempt>,
    /// Status history rows, each with its domain event.
    pub changes: Vec<Changed>,
    /// Each concluded only while still `pending`.
    pub refunds: Vec<Refund>,
    /// Refund reservations given back (failed refunds): the refund's payment and amount.
    pub released: Vec<Refund>,
    /// Each stored only at the version its writer read (compare-and-set).
    pub invoices: Vec<(Invoice, i64)>,
    /// Invoice payment events with their outcome, each stored only while still `received`.
    pub invoice_payments: Vec<PaymentEvent>,
    pub audit: Vec<AuditEntry>,
    pub records: Vec<IdempotencyRecord>,
    /// Domain events besides those of the status changes.
    pub events: Vec<NewEvent>,
    /// Inbox entries concluded by this step, each stored only under the lease it was taken with.
    pub inbox: Vec<(InboxEntry, Timestamp)>,
}

impl Then {
    fn absorb(&mut self, other: &Then) {
        self.new_methods.extend(other.new_methods.iter().cloned());
        self.new_payments.extend(other.new_payments.iter().cloned());
        self.payments.extend(other.payments.iter().cloned());
        self.attempts.extend(other.attempts.iter().cloned());
        self.changes.extend(other.changes.iter().cloned());
        self.refunds.extend(other.refunds.iter().cloned());
        self.released.extend(other.released.iter().cloned());
        self.invoices.extend(other.invoices.iter().cloned());
        self.invoice_payments.extend(other.invoice_payments.iter().cloned());
        self.audit.extend(other.audit.iter().cloned());
        self.records.extend(other.records.iter().cloned());
        self.events.extend(other.events.iter().cloned());
        self.inbox.extend(other.inbox.iter().cloned());
    }

    /// Whether every row goes into one [`Tx::write_group`] (nothing whose precondition must run
    /// between the payments and the events).
    fn in_one_statement(&self) -> bool {
        self.invoices.is_empty()
            && self.invoice_payments.is_empty()
            && self.refunds.is_empty()
            && self.released.is_empty()
            && self.inbox.is_empty()
    }

    /// Writes `effects` (each account only at `balances_before`, when given) and every row as
    /// a transaction of its own ([`Store::write_alone`]): one round trip on PostgreSQL. Only for
    /// rows [`Then::in_one_statement`] can write.
    async fn write_alone(
        &self,
        store: &dyn Store,
        effects: &Effects,
        balances_before: &[Balances],
    ) -> Result<(), WriteError> {
        let (history, events) = (self.history(), self.events_in_order());
        let rows = GroupRows {
            effects: Some(effects),
            balances_before,
            ..self.rows(&history, &events)
        };
        match store.write_alone(&rows).await.map_err(write_conflict)? {
            true => Ok(()),
            false => Err(stale_payment()),
        }
    }

    /// Every row but the ledger's (and those [`Then::in_one_statement`] leaves out), with
    /// `history` and `events` made by [`Then::history`] and [`Then::events_in_order`].
    fn rows<'a>(&'a self, history: &'a [StatusChange], events: &'a [NewEvent]) -> GroupRows<'a> {
        GroupRows {
            new_methods: &self.new_methods,
            new_payments: &self.new_payments,
            payments: &self.payments,
            records: Records {
                attempts: &self.attempts,
                changes: history,
                events,
                audit: &self.audit,
            },
            idempotency: &self.records,
            ..GroupRows::default()
        }
    }

    fn history(&self) -> Vec<StatusChange> {
        self.changes.iter().map(|c| c.row.clone()).collect()
    }

    /// The status changes' events, then the others. A ledger group's events (a batch's, with
    /// every created transfer) are large: copied only when status changes come before them.
    fn events_in_order(&self) -> Cow<'_, [NewEvent]> {
        if self.changes.is_empty() {
            Cow::Borrowed(&self.events)
        } else {
            Cow::Owned(
                self.changes
                    .iter()
                    .map(|c| c.event.clone())
                    .chain(self.events.iter().cloned())
                    .collect(),
            )
        }
    }

    /// Writes `effects` and every row in `tx`; a failed precondition fails it all. Without
    /// invoices, refunds or inbox entries (whose preconditions must run between the payments
    /// and the events), everything is one [`Tx::write_group`]: one statement on PostgreSQL.
    pub async fn write(&self, tx: &mut dyn Tx, effects: Option<&Effects>) -> Result<(), WriteError> {
        let (history, events) = (self.history(), self.events_in_order());
        let all = GroupRows {
            effects,
            ..self.rows(&history, &events)
        };
        let one_statement = self.in_one_statement();
        let head = match one_statement {
            true => all,
            false => GroupRows {
                records: Records::default(),
                idempotency: &[],
                ..all
            },
        };
        if tx.write_group(&head).await.map_err(write_conflict)? != head.expected() {
            return Err(stale_payment());
        }
        if one_statement {
            return Ok(());
        }
        // Before any event row: the invoice's row lock orders the writers of its events.
        if tx.update_invoices(&self.invoices).await? != self.invoices.len() {
            return Err(WriteError::Stale("an invoice changed since it was read".into()));
        }
        if tx.conclude_payment_events(&self.invoice_payments).await? != self.invoice_payments.len() {
            return Err(WriteError::Stale(
                "an invoice payment event was concluded by another worker".into(),
            ));
        }
        for refund in &self.refunds {
            if !tx.update_refund(refund).await? {
                return Err(WriteError::Stale(format!(
                    "refund {} was concluded by another process",
                    refund.id
                )));
            }
        }
        for refund in &self.released {
            let (merchant, payment) = (&refund.merchant_id, &refund.payment_id);
            if !tx
                .add_refunded(merchant, payment, -refund.amount, refund.updated_at)
                .await?
            {
                return Err(WriteError::Stale(format!(
                    "refund {} reservation could not be released",
                    refund.id
                )));
            }
        }
        if tx.update_inbox_entries(&self.inbox).await? != self.inbox.len() {
            return Err(WriteError::Stale("an inbox entry was taken by another worker".into()));
        }
        let tail = GroupRows {
            records: all.records,
            idempotency: all.idempotency,
            ..GroupRows::default()
        };
        tx.write_group(&tail).await.map_err(write_conflict)?;
        Ok(())
    }
}

/// A store error, with the races another writer can cause told apart: its record of the same
/// idempotency key, or its event of the same aggregate. An event is numbered after the last one
/// its statement sees, so a concurrent change of the same payment committed first makes the
/// numbers collide (on PostgreSQL, before this statement's compare-and-set could say so).
fn write_conflict(e: StoreError) -> WriteError {
    if e.is_conflict_on("idempotency_keys") {
        WriteError::IdempotencyRace
    } else if e.is_conflict_on("events_aggregate_sequence") {
        WriteError::Stale("an event of the same aggregate was written concurrently".into())
    } else {
        WriteError::Store(e)
    }
}

fn stale_payment() -> WriteError {
    WriteError::Stale("a payment changed since it was read (a concurrent request, or a claim that expired)".into())
}

pub enum Command {
    Transfers(Box<TransferCommand>),
    Expire {
        due: Vec<DuePending>,
        reply: oneshot::Sender<Result<usize, WriteError>>,
    },
}

#[derive(Debug)]
pub enum WriteError {
    /// Another process stored this idempotency key first.
    IdempotencyRace,
    Store(StoreError),
    /// The writer is gone (shutting down).
    Closed,
    /// An optimistic group refused a transfer; it is decided again with its ids looked up,
    /// because a stored transfer of the same id answers `exists` before any other rule.
    Recheck,
    /// A [`Then`] found its precondition gone (a payment changed while claimed).
    Stale(String),
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(e)
    }
}

#[derive(Clone)]
pub struct LedgerWriter {
    ledger: Lane,
    /// Commands that post no transfers (a payment's claim, a new payment): they lock no
    /// account, so their groups commit beside the ledger's instead of waiting behind them.
    rows: Lane,
    worker: Arc<Worker>,
}

/// A queue and the writer tasks taking groups from it.
#[derive(Clone)]
struct Lane {
    queue: mpsc::Sender<Command>,
    /// One per writer task: a group of this lane is written only by whoever holds one, so
    /// at most that many at once, as the tasks alone would.
    turns: Arc<Semaphore>,
    /// How many turns there are: all of them free means nothing of this lane is being written.
    writers: u32,
}

/// The lanes' turns, taken from a [`LedgerWriter`] before it is dropped at shutdown: waiting on
/// them outlasts every write in flight, including those spawned at once by
/// [`LedgerWriter::submit`] for requests whose client has gone (the writer tasks alone do not).
pub struct Drained(Vec<(Arc<Semaphore>, u32)>);

impl Drained {
    /// Returns when every turn of every lane is free at once.
    pub async fn wait(self) {
        for (turns, writers) in self.0 {
            let _ = turns.acquire_many(writers).await;
        }
    }
}

impl LedgerWriter {
    /// Starts `writers` tasks sharing the ledger queue and, on PostgreSQL, [`ROWS_WRITERS`] for
    /// commands without transfers. They stop when every `LedgerWriter` clone is dropped and the
    /// queues are drained.
    pub fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        writers: usize,
    ) -> (LedgerWriter, Vec<tokio::task::JoinHandle<()>>) {
        let worker = Arc::new(Worker {
            store,
            clock,
            metrics,
            warm: std::sync::Mutex::default(),
        });
        let mut tasks = Vec::new();
        let mut lane = |count: usize| {
            let (queue, rx) = mpsc::channel(QUEUE_COMMANDS_MAX);
            let rx = Arc::new(Mutex::new(rx));
            let turns = Arc::new(Semaphore::new(count));
            tasks.extend((0..count).map(|_| worker.clone().run(rx.clone(), turns.clone())));
            Lane {
                queue,
                turns,
                writers: u32::try_from(count).unwrap_or(u32::MAX),
            }
        };
        let ledger = lane(writers.max(1));
        // SQLite has one write connection: writers beside the ledger's would only take turns on
        // it, in smaller groups, each with its own commit (measured with `settle bench payments`,
        // 32 clients, three alternating pairs: 212–284 payments/s with three writers, 248–331
        // with the one). There every command goes to the ledger's queue.
        let rows = match worker.store.engine() {
            Engine::Sqlite => ledger.clone(),
            Engine::Postgres => lane(ROWS_WRITERS),
        };
        let handles = tasks.into_iter().map(tokio::spawn).collect();
        (LedgerWriter { ledger, rows, worker }, handles)
    }

    /// Queues `command`; when its lane has nothing queued and a turn free, the command is
    /// written at once as a group of its own, by a task spawned here (on this thread: the
    /// request waits for no other thread to wake the writer, and the write completes even if
    /// the request is dropped).
    pub async fn submit(&self, command: Command) -> Result<(), WriteError> {
        let lane = match &command {
            Command::Transfers(t) if t.requests.is_empty() => &self.rows,
            _ => &self.ledger,
        };
        if lane.queue.capacity() == lane.queue.max_capacity() {
            if let Ok(turn) = lane.turns.clone().try_acquire_owned() {
                let worker = self.worker.clone();
                tokio::spawn(async move {
                    worker.execute(vec![command]).await;
                    drop(turn);
                });
                return Ok(());
            }
        }
        lane.queue.send(command).await.map_err(|_| WriteError::Closed)
    }

    /// What to wait on at shutdown, after the writer tasks have ended, so that no write is
    /// still running when the store closes.
    pub fn drained(&self) -> Drained {
        let mut lanes = vec![(self.ledger.turns.clone(), self.ledger.writers)];
        if !Arc::ptr_eq(&self.rows.turns, &self.ledger.turns) {
            lanes.push((self.rows.turns.clone(), self.rows.writers));
        }
        Drained(lanes)
    }

    /// Posts transfers for a service (payments, refunds): one group-committed request with no
    /// reply to render, no audit row and no idempotency record of its own.
    pub async fn post(
        &self,
        merchant_id: &str,
        requests: Vec<TransferRequest>,
        atomic: bool,
        then: Option<Then>,
    ) -> Result<Vec<TransferResult>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Transfers(Box::new(TransferCommand {
            merchant_id: merchant_id.to_owned(),
            requests,
            atomic,
            shape: Arc::new(Internal),
            idempotency: None,
            audit: None,
            then,
            announce: None,
            reply,
        })))
        .await?;
        Ok(answer.await.map_err(|_| WriteError::Closed)??.results)
    }
}

/// The shape of a service's own request: nothing to render.
struct Internal;

impl ReplyShape for Internal {
    fn status(&self, _results: &[TransferResult]) -> StatusCode {
        StatusCode::OK
    }

    fn render(&self, _results: &[TransferResult]) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: String::new(),
        }
    }
}

struct Worker {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    warm: std::sync::Mutex<Warm>,
}

/// How a group's book was read, and so how it is written.
enum Source {
    /// Locked and read in this open transaction: written in it, then committed.
    Locked(Box<dyn Tx>),
    /// From the writer's copies, with each account's balances as copied: written as one
    /// transaction of its own, each account only at those balances.
    Warm(HashMap<Key, Balances>),
}

/// Most accounts, and most pending transfers, the writer keeps copies of; past that it starts
/// over (each group then reads what it touches again, once).
const WARM_MAX: usize = 100_000;

/// What this writer last committed: the accounts it wrote, with their balances, and the
/// pending transfers it created and has not seen resolved. Copies, not the truth: a group
/// decided on them stores each account only at the balances it copied.
#[derive(Default)]
struct Warm {
    accounts: HashMap<Key, Account>,
    pending: HashMap<Key, Transfer>,
}

impl Warm {
    /// A book of everything `commands` touch, with each account's balances as copied; `None`
    /// when something is not here.
    fn book(&self, commands: &[TransferCommand]) -> Option<(Book, HashMap<Key, Balances>)> {
        let mut book = Book::new();
        let mut before = HashMap::new();
        let mut load = |key: Key, book: &mut Book| -> Option<()> {
            if let std::collections::hash_map::Entry::Vacant(slot) = before.entry(key) {
                let account = self.accounts.get(slot.key())?;
                slot.insert(account.balances);
                book.load_account(account.clone());
            }
            Some(())
        };
        for command in commands {
            let m = &command.merchant_id;
            for request in &command.requests {
                if let Some(p) = request.pending_id() {
                    let pending = self.pending.get(&(m.clone(), p.to_owned()))?;
                    load((m.clone(), pending.debit_account_id.clone()), &mut book)?;
                    load((m.clone(), pending.credit_account_id.clone()), &mut book)?;
                    book.load_transfer(pending.clone());
                    book.load_pending(m, p, PendingStatus::Pending);
                }
                for a in request.account_ids() {
                    load((m.clone(), a.to_owned()), &mut book)?;
                }
            }
        }
        Some((book, before))
    }

    /// Takes in what a group committed.
    fn remember(&mut self, effects: &Effects) {
        if self.accounts.len() > WARM_MAX || self.pending.len() > WARM_MAX {
            *self = Warm::default();
        }
        for account in &effects.accounts {
            self.accounts
                .insert((account.merchant_id.clone(), account.id.clone()), account.clone());
        }
        for transfer in &effects.transfers {
            if transfer.kind == TransferKind::Pending {
                self.pending
                    .insert((transfer.merchant_id.clone(), transfer.id.clone()), transfer.clone());
            }
        }
        for row in &effects.pending {
            if row.status != PendingStatus::Pending {
                self.pending.remove(&(row.merchant_id.clone(), row.transfer_id.clone()));
            }
        }
    }
}

impl Worker {
    async fn run(self: Arc<Self>, rx: Arc<Mutex<mpsc::Receiver<Command>>>, turns: Arc<Semaphore>) {
        loop {
            let group = {
                let mut rx = rx.lock().await;
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut transfers = command_size(&first);
                let mut group = vec![first];
                while transfers < GROUP_TRANSFERS_MAX {
                    match rx.try_recv() {
                        Ok(next) => {
                            transfers += command_size(&next);
                            group.push(next);
                        }
                        Err(_) => break,
                    }
                }
                group
            };
            let Ok(_turn) = turns.acquire().await else {
                return;
            };
            self.execute(group).await;
        }
    }

    async fn execute(&self, group: Vec<Command>) {
        let (transfers, expiries): (Vec<_>, Vec<_>) =
            group.into_iter().partition(|c| matches!(c, Command::Transfers(_)));
        for command in expiries {
            if let Command::Expire { due, reply } = command {
                let _ = reply.send(self.expire(&due).await);
            }
        }
        let mut commands: Vec<TransferCommand> = transfers
            .into_iter()
            .filter_map(|c| match c {
                Command::Transfers(t) => Some(*t),
                Command::Expire { .. } => None,
            })
            .collect();
        if commands.is_empty() {
            return;
        }
        let solo = commands.len() == 1;
        // Optimistic first: new transfer ids are the rule, so the group skips looking its ids up
        // and lets the unique key catch a reused one; then it is decided again with the lookup.
        let outcome = match self.commit_group(&commands, Lookup::Optimistic).await {
            Err(WriteError::Recheck) => self.commit_group(&commands, Lookup::Checked).await,
            Err(WriteError::Store(e)) if e.is_conflict_on("ledger_transfers") => {
                self.commit_group(&commands, Lookup::Checked).await
            }
            other => other,
        };
        match outcome {
            Ok(replies) => {
                for (command, reply) in commands.into_iter().zip(replies) {
                    let _ = command.reply.send(Ok(reply));
                }
            }
            Err(e) if solo => {
                if let Some(command) = commands.pop() {
                    let _ = command.reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = ?e, requests = commands.len(), "group commit failed; retrying its requests one by one");
                for command in commands {
                    let outcome = self.commit_group(std::slice::from_ref(&command), Lookup::Checked).await;
                    let _ = command
                        .reply
                        .send(outcome.and_then(|mut r| r.pop().ok_or(WriteError::Closed)));
                }
            }
        }
    }

    /// One transaction for all `commands`. Renders each reply; on error nothing was written.
    ///
    /// A group whose accounts and pending transfers this writer holds copies of (and every
    /// group of rows alone) is decided on those copies and written as one transaction of its
    /// own, each account only at the balances it was decided on: one round trip on PostgreSQL.
    /// Any other group, or one whose copies went stale (another process moved an account), is
    /// decided on rows locked in a transaction.
    async fn commit_group(&self, commands: &[TransferCommand], lookup: Lookup) -> Result<Vec<Committed>, WriteError> {
        let one_statement = commands
            .iter()
            .all(|c| c.then.as_ref().is_none_or(Then::in_one_statement));
        if one_statement && lookup == Lookup::Optimistic {
            let warm = self.warm.lock().ok().and_then(|w| w.book(commands));
            if let Some((book, before)) = warm {
                let ledger = commands.iter().any(|c| !c.requests.is_empty());
                match self
                    .decide_and_write(commands, lookup, book, Source::Warm(before))
                    .await
                {
                    // A copy gone stale: decided again on locked rows, without the copies.
                    Err(WriteError::Stale(_)) if ledger => self.forget(),
                    // A reused transfer id, say: the locked path meets it too and sends the
                    // group on to be checked; nothing says the copies are wrong.
                    Err(WriteError::Store(_)) if ledger => {}
                    done => return done,
                }
            }
        }
        let mut tx = self.store.begin(Scope::System, Mode::Write).await?;
        let book = load_book(tx.as_mut(), commands, lookup).await?;
        self.decide_and_write(commands, lookup, book, Source::Locked(tx)).await
    }

    async fn decide_and_write(
        &self,
        commands: &[TransferCommand],
        lookup: Lookup,
        mut book: Book,
        source: Source,
    ) -> Result<Vec<Committed>, WriteError> {
        let now = self.clock.now();
        let started = std::time::Instant::now();
        let mut replies = Vec::with_capacity(commands.len());
        let mut rows = Then::default();
        for command in commands {
            let results = book.apply(&command.merchant_id, &command.requests, command.atomic, now);
            if lookup == Lookup::Optimistic && results.iter().any(|r| matches!(r, TransferResult::Failed(_))) {
                return Err(WriteError::Recheck);
            }
            let mut reply = None;
            if let Some(then) = &command.then {
                if !results.iter().any(|r| matches!(r, TransferResult::Failed(_))) {
                    rows.absorb(then);
                }
            }
            if let Some(event) = &command.announce {
                let created: Vec<TransferView> = results
                    .iter()
                    .filter_map(|r| match r {
                        TransferResult::Created(t) => Some(TransferView::from(t)),
                        _ => None,
                    })
                    .collect();
                if !created.is_empty() {
                    let mut event = event.clone();
                    event.data = batch_data(&event.aggregate_id, created);
                    rows.events.push(event);
                }
            }
            if command.shape.status(&results).is_success() {
                rows.audit.extend(command.audit.clone());
                if let Some(mut record) = command.idempotency.clone() {
                    let rendered = command.shape.render(&results);
                    record.status_code = rendered.status.as_u16();
                    record.response_body = rendered.body.clone();
                    record.created_at = now;
                    rows.records.push(record);
                    reply = Some(rendered);
                }
            }
            replies.push(Committed { results, reply });
        }
        let effects = book.take_effects();
        let decided = started.elapsed();
        let warm = matches!(source, Source::Warm(_));
        match source {
            Source::Locked(mut tx) => {
                rows.write(tx.as_mut(), Some(&effects)).await?;
                tx.commit().await?;
            }
            Source::Warm(before) => {
                let balances: Vec<Balances> = effects
                    .accounts
                    .iter()
                    .filter_map(|a| before.get(&(a.merchant_id.clone(), a.id.clone())).copied())
                    .collect();
                if balances.len() != effects.accounts.len() {
                    return Err(WriteError::Stale("an account was not in the writer's copies".into()));
                }
                rows.write_alone(self.store.as_ref(), &effects, &balances).await?;
            }
        }
        if let Ok(mut copies) = self.warm.lock() {
            copies.remember(&effects);
        }
        self.metrics.ledger_commit(commands.len(), effects.transfers.len());
        tracing::debug!(
            requests = commands.len(),
            created = effects.transfers.len(),
            warm,
            decide_us = decided.as_micros() as u64,
            write_us = (started.elapsed() - decided).as_micros() as u64,
            "group committed"
        );
        Ok(replies)
    }

    /// Drops every copy (they may be stale).
    fn forget(&self) {
        if let Ok(mut copies) = self.warm.lock() {
            *copies = Warm::default();
        }
    }

    async fn expire(&self, due: &[DuePending]) -> Result<usize, WriteError> {
        let now = self.clock.now();
        let mut tx = self.store.begin(Scope::System, Mode::Write).await?;
        let keys: Vec<Key> = due
            .iter()
            .map(|d| (d.merchant_id.clone(), d.transfer_id.clone()))
            .collect();
        let pendings = tx.get_transfers(&keys).await?;
        let accounts: BTreeSet<Key> = pendings
            .iter()
            .flat_map(|t| {
                [
                    (t.merchant_id.clone(), t.debit_account_id.clone()),
                    (t.merchant_id.clone(), t.credit_account_id.clone()),
                ]
            })
            .collect();
        let mut book = Book::new();
        for account in tx.get_accounts(&accounts.into_iter().collect::<Vec<_>>(), true).await? {
            book.load_account(account);
        }
        for ((merchant, id), status) in tx.get_pending_statuses(&keys).await? {
            book.load_pending(&merchant, &id, status);
        }
        for t in pendings {
            book.load_transfer(t);
        }
        let released = due
            .iter()
            .filter(|d| book.expire(&d.merchant_id, &d.transfer_id, now))
            .count();
        let effects = book.take_effects();
        tx.write_ledger(&effects).await?;
        tx.commit().await?;
        if let Ok(mut copies) = self.warm.lock() {
            copies.remember(&effects);
        }
        Ok(released)
    }
}

fn command_size(command: &Command) -> usize {
    match command {
        Command::Transfers(t) => t.requests.len().max(1),
        Command::Expire { due, .. } => due.len().max(1),
    }
}

/// Whether a group looks up the transfer ids it is about to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    /// Assume they are new; a reused id fails the insert (unique key) and nothing is written.
    Optimistic,
    Checked,
}

/// Loads what the group's requests touch: referenced pending transfers, then (locked, in key
/// order) every account involved, then (when `Checked`) the transfers the requests name, and
/// the pending statuses.
async fn load_book(tx: &mut dyn Tx, commands: &[TransferCommand], lookup: Lookup) -> Result<Book, StoreError> {
    let mut request_keys = BTreeSet::new();
    let mut pending_keys = BTreeSet::new();
    let mut account_keys = BTreeSet::new();
    for command in commands {
        let m = &command.merchant_id;
        for r in &command.requests {
            if lookup == Lookup::Checked {
                request_keys.insert((m.clone(), r.id.clone()));
            }
            if let Some(p) = r.pending_id() {
                pending_keys.insert((m.clone(), p.to_owned()));
            }
            for a in r.account_ids() {
                account_keys.insert((m.clone(), a.to_owned()));
            }
        }
    }
    let pending_keys: Vec<Key> = pending_keys.into_iter().collect();
    let pendings = tx.get_transfers(&pending_keys).await?;
    for t in &pendings {
        account_keys.insert((t.merchant_id.clone(), t.debit_account_id.clone()));
        account_keys.insert((t.merchant_id.clone(), t.credit_account_id.clone()));
    }
    let mut book = Book::new();
    let account_keys: Vec<Key> = account_keys.into_iter().collect();
    for account in tx.get_accounts(&account_keys, true).await? {
        book.load_account(account);
    }
    for t in pendings {
        book.load_transfer(t);
    }
    if lookup == Lookup::Checked {
        let request_keys: Vec<Key> = request_keys.into_iter().collect();
        for t in tx.get_transfers(&request_keys).await? {
            book.load_transfer(t);
        }
    }
    for ((merchant, id), status) in tx.get_pending_statuses(&pending_keys).await? {
        book.load_pending(&merchant, &id, status);
    }
    Ok(book)
}
