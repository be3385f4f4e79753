//! Settle's storage port and its two adapters.
//!
//! [`Store`] opens transactions; [`Tx`] is everything the services may do inside one. The SQLite
//! adapter is the embedded default, the PostgreSQL adapter is for production. Both implement the
//! same port with the same SQL wherever the dialects agree (the shared bodies live in `shared.rs`
//! and are stamped out once per engine); they differ only where the engines do: bulk writes, row
//! locks and row-level security. One conformance suite (the server's integration tests) runs
//! against both.
//!
//! Architecture invariant: this crate decides nothing. It loads and stores domain values; which
//! transfer is accepted is decided by `settle_domain::ledger`.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use settle_domain::{
    ledger::{Account, Effects, Key, PendingStatus, Transfer},
    tenancy::{ApiKey, AuditEntry, IdempotencyRecord, Merchant},
    Timestamp,
};

/// The rows [`Tx::insert_records`] writes together.
#[derive(Clone, Copy, Default)]
pub struct Records<'a> {
    pub attempts: &'a [settle_domain::payment::Attempt],
    pub changes: &'a [settle_domain::payment::StatusChange],
    pub events: &'a [settle_domain::event::NewEvent],
    pub audit: &'a [AuditEntry],
}

impl Records<'_> {
    pub fn is_empty(&self) -> bool {
        self.attempts.is_empty() && self.changes.is_empty() && self.events.is_empty() && self.audit.is_empty()
    }
}

/// What [`Tx::write_group`] writes together: a group commit's ledger effects and rows. On
/// PostgreSQL that is one statement, so one round trip, however many kinds of rows it holds.
#[derive(Clone, Copy, Default)]
pub struct GroupRows<'a> {
    pub effects: Option<&'a Effects>,
    /// When not empty, the balances each of `effects.accounts` must still have (in order) for
    /// it to be stored, and each row of `effects.pending` whose transfer is not created beside
    /// it must be stored and still `pending` (a resolution): compare-and-sets, for a group
    /// decided on what was read earlier.
    pub balances_before: &'a [settle_domain::ledger::Balances],
    pub new_methods: &'a [settle_domain::payment::PaymentMethod],
    pub new_payments: &'a [settle_domain::payment::Payment],
    /// Each stored only at the version given with it (compare-and-set).
    pub payments: &'a [(settle_domain::payment::Payment, i64)],
    pub records: Records<'a>,
    pub idempotency: &'a [IdempotencyRecord],
}

/// `effects.pending` split into the rows of transfers created beside them (new rows) and the
/// others (resolutions of pending transfers stored earlier).
fn split_pending(
    effects: &Effects,
) -> (
    Vec<settle_domain::ledger::PendingRow>,
    Vec<settle_domain::ledger::PendingRow>,
) {
    let created: std::collections::HashSet<(&str, &str)> = effects
        .transfers
        .iter()
        .map(|t| (t.merchant_id.as_str(), t.id.as_str()))
        .collect();
    effects
        .pending
        .iter()
        .cloned()
        .partition(|row| created.contains(&(row.merchant_id.as_str(), row.transfer_id.as_str())))
}

impl GroupRows<'_> {
    /// How many rows the compare-and-sets must store: the payments and, when balances before
    /// are given, the accounts and the pending rows.
    pub fn expected(&self) -> usize {
        let ledger = match (self.effects, self.balances_before.is_empty()) {
            (Some(effects), false) => effects.accounts.len() + effects.pending.len(),
            _ => 0,
        };
        self.payments.len() + ledger
    }
}

#[macro_use]
mod shared;
#[macro_use]
pub mod payments;
#[macro_use]
pub mod customers;
#[macro_use]
pub mod events;
#[macro_use]
pub mod invoices;
#[macro_use]
pub mod inbox;
mod migrate;
mod pg_writes;
mod postgres;
mod sqlite;

pub use customers::CustomerTx;
pub use events::EventTx;
pub use inbox::InboxTx;
pub use invoices::InvoiceTx;
pub use payments::PaymentTx;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// Whose rows a transaction may see. On PostgreSQL this sets `settle.merchant_id`, which the
/// row-level security policies compare with each row's `merchant_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Merchant(String),
    /// Internal jobs, the ledger writer and the operator API: every merchant.
    System,
}

/// Reads go to a pool of readers; writes on SQLite go through its single writer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Read,
    /// A read that sees one consistent snapshot across all its statements (`verify` on a live
    /// database): REPEATABLE READ on PostgreSQL; every SQLite read transaction already is one.
    Snapshot,
    Write,
}

#[derive(Debug)]
pub enum StoreError {
    /// A unique constraint refused the write; the text names the constraint or its columns.
    Conflict(String),
    /// A pagination cursor (`starting_after` / `ending_before`) names no row.
    CursorNotFound,
    /// A stored value could not be read back as a domain value.
    Corrupt(String),
    /// A text value the database cannot hold (PostgreSQL refuses a NUL character). The edges
    /// refuse such input naming its field; this is the last word for any they miss.
    Unstorable,
    Database(sqlx::Error),
}

impl StoreError {
    /// Whether this is a unique violation on `table` (PostgreSQL names the constraint, SQLite
    /// the columns; both contain the table name).
    pub fn is_conflict_on(&self, table: &str) -> bool {
        matches!(self, StoreError::Conflict(detail) if detail.contains(table))
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict(detail) => write!(f, "unique constraint violated: {detail}"),
            StoreError::CursorNotFound => f.write_str("pagination cursor not found"),
            StoreError::Corrupt(detail) => write!(f, "stored value unreadable: {detail}"),
            StoreError::Unstorable => f.write_str("a text value contains a character the database cannot store"),
            StoreError::Database(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Database(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                let detail = db
                    .constraint()
                    .map(str::to_owned)
                    .unwrap_or_else(|| db.message().to_owned());
                return StoreError::Conflict(detail);
            }
            // character_not_in_repertoire: a NUL in text, on PostgreSQL.
            if db.code().as_deref() == Some("22021") {
                return StoreError::Unstorable;
            }
        }
        StoreError::Database(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Cursor pagination, newest first.
#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    /// 1–100.
    pub limit: u32,
    pub starting_after: Option<String>,
    pub ending_before: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

/// A pending transfer that is due for release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuePending {
    pub merchant_id: String,
    pub transfer_id: String,
}

/// Connection settings shared by both adapters.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub pool_size_max: u32,
    /// Most [`Store::write_alone`] statements running at once (one per writer task of the
    /// server's lanes). On PostgreSQL they have connections of their own beside the pool of
    /// `pool_size_max`, opened as they are first needed.
    pub write_alone_max: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pool_size_max: 16,
            write_alone_max: 4,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// Opens a store from a URL: `postgres://…` / `postgresql://…`, or `sqlite://path` / a plain path.
pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url, options).await?))
    } else {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        Ok(Arc::new(SqliteStore::open(std::path::Path::new(path), options).await?))
    }
}

/// Changed rows after which [`Store::upkeep`] gives a never-analyzed PostgreSQL table its first
/// statistics.
pub const FIRST_ANALYZE_ROWS: i64 = 200;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn engine(&self) -> Engine;
    /// Applies pending migrations; safe when several processes start at once.
    async fn migrate(&self) -> Result<()>;
    /// Whether Settle's migrations were ever applied to this database (`false`: a new one).
    async fn has_schema(&self) -> Result<bool>;
    async fn ping(&self) -> Result<()>;
    async fn begin(&self, scope: Scope, mode: Mode) -> Result<Box<dyn Tx>>;
    /// Writes `rows` (every merchant's) as a transaction of their own, all or nothing: `false`
    /// when a compare-and-set failed, and then nothing was written. On PostgreSQL that is one
    /// statement, so one round trip with its commit.
    async fn write_alone(&self, rows: &GroupRows<'_>) -> Result<bool>;
    /// Connections currently checked out of the pools.
    fn connections_in_use(&self) -> u32;
    /// Whether the database would let this process bypass row-level security (superuser or
    /// BYPASSRLS on PostgreSQL; always false on SQLite, which has none).
    async fn bypasses_row_security(&self) -> Result<bool>;
    /// Background upkeep that must stay off the writer's path (a job runs it every second). On
    /// SQLite: copies the write-ahead log into the database file (a passive checkpoint, which
    /// never blocks the writer). On PostgreSQL: the first `ANALYZE` of each of Settle's tables
    /// once it holds [`FIRST_ANALYZE_ROWS`] changed rows — PostgreSQL plans a session's
    /// foreign-key checks once, and planned over empty tables a check may read every payment of
    /// the merchant until autovacuum's first `ANALYZE`, which can come a minute or more later.
    async fn upkeep(&self) -> Result<()>;
    /// Refreshes the query planner's statistics of every Settle table now (PostgreSQL: `ANALYZE`
    /// of the tables in the current schema; SQLite's planner uses none for Settle's queries).
    /// Benchmarks call it during their warm-up.
    async fn refresh_statistics(&self) -> Result<()>;
    async fn close(&self);
}

/// Where a sealed value comes from (each kind binds its row with its own sealing context).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedKind {
    CardNumber,
    ConnectorCredentials,
    WebhookSecret,
}

/// A value sealed by the card vault and the row it belongs to (see [`Tx::sealed_sample`]).
#[derive(Clone, Debug)]
pub struct SealedSample {
    pub kind: SealedKind,
    pub merchant_id: String,
    pub id: String,
    pub sealed: Vec<u8>,
}

/// One database transaction. Dropping it without [`Tx::commit`] rolls it back.
#[async_trait]
pub trait Tx: PaymentTx + CustomerTx + EventTx + InvoiceTx + InboxTx + Send {
    async fn commit(self: Box<Self>) -> Result<()>;

    async fn get_setting(&mut self, name: &str) -> Result<Option<String>>;
    async fn put_setting(&mut self, name: &str, value: &str) -> Result<()>;
    /// Stores the setting unless one of that name exists: whether this call stored it (when
    /// several processes start at once, exactly one does).
    async fn insert_setting_if_absent(&mut self, name: &str, value: &str) -> Result<bool>;
    /// One value sealed by the card vault with the row it is bound to, to check a vault key
    /// against: the first vaulted card's number, else the first connector account's
    /// credentials, else the first webhook endpoint's secret; `None` when nothing is sealed.
    async fn sealed_sample(&mut self) -> Result<Option<SealedSample>>;

    async fn insert_merchant(&mut self, merchant: &Merchant) -> Result<()>;
    async fn get_merchant(&mut self, id: &str) -> Result<Option<Merchant>>;
    async fn list_merchants(&mut self, page: &PageRequest) -> Result<Listing<Merchant>>;
    async fn deactivate_merchant(&mut self, id: &str, at: Timestamp) -> Result<()>;

    async fn insert_api_key(&mut self, key: &ApiKey) -> Result<()>;
    async fn get_api_key(&mut self, merchant_id: &str, id: &str) -> Result<Option<ApiKey>>;
    async fn list_api_keys(&mut self, merchant_id: &str, page: &PageRequest) -> Result<Listing<ApiKey>>;
    async fn revoke_api_key(&mut self, merchant_id: &str, id: &str, at: Timestamp) -> Result<()>;
    /// Keys whose prefix matches, each with its merchant.
    async fn find_api_keys(&mut self, prefix: &str) -> Result<Vec<(ApiKey, Merchant)>>;
    async fn touch_api_keys(&mut self, used: &[(String, Timestamp)]) -> Result<()>;

    async fn get_idempotency(&mut self, merchant_id: &str, key: &str) -> Result<Option<IdempotencyRecord>>;
    /// Fails with [`StoreError::Conflict`] when the key is already stored.
    async fn insert_idempotency(&mut self, record: &IdempotencyRecord) -> Result<()>;
    async fn prune_idempotency(&mut self, created_before: Timestamp, limit: u32) -> Result<u64>;

    async fn insert_audit(&mut self, entries: &[AuditEntry]) -> Result<()>;
    /// A group commit's payment attempts, status history rows, events (numbered and queued as
    /// [`EventTx::insert_events`] does) and audit rows: one statement on PostgreSQL.
    async fn insert_records(&mut self, records: &Records<'_>) -> Result<()>;
    async fn list_audit(&mut self, merchant_id: &str, page: &PageRequest) -> Result<Listing<AuditEntry>>;

    async fn insert_account(&mut self, account: &Account) -> Result<()>;
    /// Accounts by key; with `lock`, row-locked in key order until the transaction ends.
    async fn get_accounts(&mut self, keys: &[Key], lock: bool) -> Result<Vec<Account>>;
    async fn list_accounts(&mut self, merchant_id: &str, page: &PageRequest) -> Result<Listing<Account>>;
    async fn get_transfers(&mut self, keys: &[Key]) -> Result<Vec<Transfer>>;
    async fn get_pending_statuses(&mut self, keys: &[Key]) -> Result<Vec<(Key, PendingStatus)>>;
    /// Writes what the ledger decided: new transfers, account totals, pending statuses.
    async fn write_ledger(&mut self, effects: &Effects) -> Result<()>;
    /// Writes every row of `rows` and returns how many rows its compare-and-sets stored (fewer
    /// than [`GroupRows::expected`]: one failed, and the caller must not commit). A failed
    /// statement leaves nothing written, as any error in a transaction the caller then drops.
    async fn write_group(&mut self, rows: &GroupRows<'_>) -> Result<usize>;
    /// An account's transfers, newest first.
    async fn list_entries(
        &mut self,
        merchant_id: &str,
        account_id: &str,
        page: &PageRequest,
    ) -> Result<Listing<Transfer>>;
    async fn due_pending(&mut self, now: Timestamp, limit: u32) -> Result<Vec<DuePending>>;

    /// Every merchant id that owns ledger accounts.
    async fn ledger_merchants(&mut self) -> Result<Vec<String>>;
    /// One merchant's accounts in id order, at most `limit` with ids after `after_id`.
    async fn scan_accounts(&mut self, merchant_id: &str, after_id: &str, limit: u32) -> Result<Vec<Account>>;
    /// One merchant's transfers in id order, at most `limit` with ids after `after_id`.
    async fn scan_transfers(&mut self, merchant_id: &str, after_id: &str, limit: u32) -> Result<Vec<Transfer>>;
    async fn scan_pending(&mut self, merchant_id: &str) -> Result<Vec<(String, PendingStatus)>>;
}
