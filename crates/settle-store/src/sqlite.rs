//! The SQLite adapter, Settle's embedded default: WAL mode, one writer connection (so writers
//! queue in-process instead of failing with `SQLITE_BUSY`) and a pool of readers. Bulk writes
//! are loops of prepared statements, which is what SQLite is fast at.

use std::{
    ops::{Deref, DerefMut},
    path::Path,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use settle_domain::{
    ledger::{Effects, Key},
    tenancy::AuditEntry,
};
use sqlx::{
    pool::PoolConnection,
    sqlite::{
        SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
        SqliteTransactionManager,
    },
    ConnectOptions, Connection, QueryBuilder, Sqlite, SqlitePool, TransactionManager,
};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::{migrate, Engine, Mode, Result, Scope, Store, StoreOptions, Tx};

/// Rows per multi-row statement (20 columns × 400 rows stays under SQLite's 32,766 variables).
const ROWS_PER_STATEMENT: usize = 400;

pub struct SqliteStore {
    /// The one connection that writes, held outside any pool. A pooled connection goes back to
    /// its pool through a task spawned when it is dropped; with a pool of one, every writer's
    /// `begin` waited for that task to be scheduled, which on a busy runtime took up to 15 ms
    /// (measured with `settle bench ledger --batch 100`), while the database sat idle. `None`
    /// once closed.
    writer: Arc<Mutex<Option<SqliteConnection>>>,
    readers: SqlitePool,
    /// How long `begin` waits for the writer before it fails, as a pool's acquire would.
    acquire_timeout: Duration,
    /// Runs passive checkpoints beside the writer.
    checkpointer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`.
    pub async fn open(path: &Path, options: &StoreOptions) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-65536")
            // Checkpoints run from `checkpoint` (a background job), not inside the writer's
            // commits; this bound only matters if the job does not run.
            .pragma("wal_autocheckpoint", "100000")
            .pragma("journal_size_limit", "67108864");
        let writer = Arc::new(Mutex::new(Some(connect.connect().await?)));
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await?;
        // A file has no far end to hang up: no ping (a round trip to the connection's worker
        // thread) before each read.
        let readers = SqlitePoolOptions::new()
            .max_connections(options.pool_size_max.clamp(1, 8))
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .connect_with(connect.read_only(true))
            .await?;
        Ok(SqliteStore {
            writer,
            readers,
            acquire_timeout: options.acquire_timeout,
            checkpointer,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    async fn migrate(&self) -> Result<()> {
        let mut writer = self.writer.lock().await;
        let conn = writer
            .as_mut()
            .ok_or(crate::StoreError::Database(sqlx::Error::PoolClosed))?;
        run_migrations(conn, migrate::SQLITE, None).await
    }

    async fn has_schema(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'settle_migrations')",
        )
        .fetch_one(&self.readers)
        .await?)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn begin(&self, _scope: Scope, mode: Mode) -> Result<Box<dyn Tx>> {
        let conn = match mode {
            Mode::Read | Mode::Snapshot => Held::Reader(self.readers.acquire().await?),
            Mode::Write => {
                let writer = tokio::time::timeout(self.acquire_timeout, self.writer.clone().lock_owned())
                    .await
                    .map_err(|_| crate::StoreError::Database(sqlx::Error::PoolTimedOut))?;
                let open = OwnedMutexGuard::try_map(writer, Option::as_mut)
                    .map_err(|_| crate::StoreError::Database(sqlx::Error::PoolClosed))?;
                Held::Writer(open)
            }
        };
        Ok(Box::new(SqliteTx {
            tx: Transaction::begin(conn).await?,
        }))
    }

    async fn write_alone(&self, rows: &crate::GroupRows<'_>) -> Result<bool> {
        let mut tx = self.begin(Scope::System, Mode::Write).await?;
        if tx.write_group(rows).await? != rows.expected() {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    fn connections_in_use(&self) -> u32 {
        let readers = self
            .readers
            .size()
            .saturating_sub(u32::try_from(self.readers.num_idle()).unwrap_or(0));
        readers + u32::from(self.writer.try_lock().is_err())
    }

    async fn bypasses_row_security(&self) -> Result<bool> {
        Ok(false)
    }

    async fn upkeep(&self) -> Result<()> {
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.checkpointer)
            .await?;
        Ok(())
    }

    async fn refresh_statistics(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) {
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.close().await;
        }
        self.readers.close().await;
        let _ = self.upkeep().await;
        self.checkpointer.close().await;
    }
}

/// A connection a transaction runs on: the writer (locked for the transaction) or a reader.
enum Held {
    Writer(OwnedMappedMutexGuard<Option<SqliteConnection>, SqliteConnection>),
    Reader(PoolConnection<Sqlite>),
}

/// An open transaction on a [`Held`] connection, rolled back when dropped uncommitted (as
/// `sqlx::Transaction` does, which cannot own a connection that is not pooled).
pub struct Transaction {
    conn: Held,
    open: bool,
}

impl Transaction {
    async fn begin(conn: Held) -> std::result::Result<Self, sqlx::Error> {
        let mut tx = Transaction { conn, open: false };
        SqliteTransactionManager::begin(&mut tx, None).await?;
        tx.open = true;
        Ok(tx)
    }

    async fn commit(mut self) -> std::result::Result<(), sqlx::Error> {
        SqliteTransactionManager::commit(&mut self).await?;
        self.open = false;
        Ok(())
    }
}

impl Deref for Transaction {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match &self.conn {
            Held::Writer(w) => w,
            Held::Reader(r) => r,
        }
    }
}

impl DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match &mut self.conn {
            Held::Writer(w) => w,
            Held::Reader(r) => r,
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.open {
            SqliteTransactionManager::start_rollback(self);
        }
    }
}

pub struct SqliteTx {
    tx: Transaction,
}

impl SqliteTx {
    /// SQLite runs in process: one statement per payment costs no network round trip.
    async fn update_payments_bulk(&mut self, payments: &[(settle_domain::payment::Payment, i64)]) -> Result<usize> {
        let mut stored = 0;
        for (p, expected) in payments {
            stored += usize::from(crate::payments::PaymentTx::update_payment(self, p, *expected).await?);
        }
        Ok(stored)
    }

    /// One statement per event (each sees the ones before it, so each is its aggregate's last
    /// plus one), each queued in the outbox.
    async fn insert_events_bulk(&mut self, events: &[settle_domain::event::NewEvent]) -> Result<()> {
        for e in events {
            sqlx::query(crate::events::INSERT_EVENT)
                .bind(&e.merchant_id)
                .bind(&e.id)
                .bind(&e.kind)
                .bind(e.aggregate_type)
                .bind(&e.aggregate_id)
                .bind(1_i64)
                .bind(&e.data)
                .bind(e.created_at.0)
                .execute(&mut *self.tx)
                .await?;
            sqlx::query("INSERT INTO event_outbox (merchant_id, event_id) VALUES ($1, $2)")
                .bind(&e.merchant_id)
                .bind(&e.id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// One statement per entry (each sees the ones before it, so a repeated event in the batch
    /// is a duplicate like a stored one).
    async fn insert_inbox_bulk(&mut self, entries: &[settle_domain::inbound::InboxEntry]) -> Result<Vec<bool>> {
        let mut inserted = Vec::with_capacity(entries.len());
        for e in entries {
            let done = sqlx::query(crate::inbox::INSERT_ONE)
                .bind(&e.merchant_id)
                .bind(&e.id)
                .bind(&e.connector)
                .bind(&e.connector_account_id)
                .bind(&e.provider_event_id)
                .bind(&e.kind)
                .bind(&e.payload)
                .bind(e.status.as_str())
                .bind(e.attempts)
                .bind(e.next_attempt_at.0)
                .bind(&e.reason)
                .bind(&e.payment_id)
                .bind(e.created_at.0)
                .bind(e.updated_at.0)
                .execute(&mut *self.tx)
                .await?;
            inserted.push(done.rows_affected() == 1);
        }
        Ok(inserted)
    }

    /// SQLite runs in process: one statement per row costs no round trip.
    async fn insert_payments_bulk(&mut self, payments: &[settle_domain::payment::Payment]) -> Result<()> {
        for p in payments {
            crate::payments::PaymentTx::insert_payment(self, p).await?;
        }
        Ok(())
    }

    async fn insert_payment_methods_bulk(&mut self, methods: &[settle_domain::payment::PaymentMethod]) -> Result<()> {
        for m in methods {
            crate::payments::PaymentTx::insert_payment_method(self, m).await?;
        }
        Ok(())
    }

    async fn insert_attempts_bulk(&mut self, attempts: &[settle_domain::payment::Attempt]) -> Result<()> {
        for a in attempts {
            self.insert_attempt(a).await?;
        }
        Ok(())
    }

    async fn insert_status_changes_bulk(&mut self, changes: &[settle_domain::payment::StatusChange]) -> Result<()> {
        for c in changes {
            self.insert_status_change(c).await?;
        }
        Ok(())
    }

    async fn update_inbox_bulk(
        &mut self,
        entries: &[(settle_domain::inbound::InboxEntry, settle_domain::Timestamp)],
    ) -> Result<usize> {
        let mut stored = 0;
        for (e, leased) in entries {
            stored += usize::from(crate::inbox::InboxTx::update_inbox(self, e, *leased).await?);
        }
        Ok(stored)
    }

    async fn fetch_by_keys(
        &mut self,
        cols: &str,
        table: &str,
        id_col: &str,
        keys: &[Key],
        _lock: bool,
    ) -> Result<Vec<SqliteRow>> {
        // The single writer connection already serializes writers: no row locks needed.
        let sql = format!(
            "SELECT {cols} FROM {table} WHERE (merchant_id, {id_col}) IN \
             (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each($1))"
        );
        let keys = serde_json::to_string(keys).map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
        Ok(sqlx::query(&sql).bind(keys).fetch_all(&mut *self.tx).await?)
    }

    /// Runs `INSERT … VALUES (…), (…)` (or any statement around a VALUES list) in chunks: one
    /// statement per chunk, because every statement is a round trip to SQLite's worker thread.
    async fn values<'r, T>(
        &mut self,
        head: &str,
        tail: &str,
        rows: &'r [T],
        bind: impl Fn(&mut sqlx::query_builder::Separated<'_, 'r, Sqlite, &'static str>, &'r T),
    ) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(head);
            q.push_values(chunk, |mut row, item| bind(&mut row, item));
            q.push(tail);
            q.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// SQLite runs in process: each kind in its own statements costs no round trip.
    async fn write_records(&mut self, records: &crate::Records<'_>) -> Result<()> {
        use crate::{events::EventTx, payments::PaymentTx, Tx};
        self.insert_attempts(records.attempts).await?;
        self.insert_status_changes(records.changes).await?;
        self.insert_events(records.events).await?;
        self.insert_audit(records.audit).await
    }

    /// SQLite runs in process: each kind in its own statements costs no round trip.
    async fn write_group_rows(&mut self, rows: &crate::GroupRows<'_>) -> Result<usize> {
        use crate::{payments::PaymentTx, Tx};
        let mut accounts = 0;
        if let Some(effects) = rows.effects {
            if !rows.balances_before.is_empty() {
                let keys: Vec<_> = effects
                    .accounts
                    .iter()
                    .map(|a| (a.merchant_id.clone(), a.id.clone()))
                    .collect();
                let stored: std::collections::HashMap<_, _> = self
                    .get_accounts(&keys, false)
                    .await?
                    .into_iter()
                    .map(|s| ((s.merchant_id, s.id), s.balances))
                    .collect();
                let unchanged = keys
                    .iter()
                    .zip(rows.balances_before)
                    .all(|(key, before)| stored.get(key) == Some(before));
                let resolved: Vec<_> = crate::split_pending(effects)
                    .1
                    .into_iter()
                    .map(|p| (p.merchant_id, p.transfer_id))
                    .collect();
                let still_pending = self
                    .get_pending_statuses(&resolved)
                    .await?
                    .iter()
                    .filter(|(_, status)| *status == settle_domain::ledger::PendingStatus::Pending)
                    .count();
                if !unchanged || still_pending != resolved.len() {
                    return Ok(0);
                }
                accounts = rows.balances_before.len() + effects.pending.len();
            }
            self.write_effects(effects).await?;
        }
        self.insert_payment_methods(rows.new_methods).await?;
        self.insert_payments(rows.new_payments).await?;
        let stored = accounts + self.update_payments(rows.payments).await?;
        if stored != rows.expected() {
            return Ok(stored);
        }
        self.insert_records(&rows.records).await?;
        for record in rows.idempotency {
            self.insert_idempotency(record).await?;
        }
        Ok(stored)
    }

    async fn write_audit(&mut self, entries: &[AuditEntry]) -> Result<()> {
        let head = format!("INSERT INTO audit_logs ({}) ", crate::shared::AUDIT_COLS);
        self.values(&head, "", entries, |row, e| {
            row.push_bind(&e.id)
                .push_bind(&e.merchant_id)
                .push_bind(&e.actor)
                .push_bind(&e.action)
                .push_bind(&e.resource_type)
                .push_bind(&e.resource_id)
                .push_bind(&e.request_id)
                .push_bind(&e.ip)
                .push_bind(&e.user_agent)
                .push_bind(e.created_at.0);
        })
        .await
    }

    async fn write_effects(&mut self, effects: &Effects) -> Result<()> {
        self.values(
            "UPDATE ledger_accounts SET debits_pending = u.column3, debits_posted = u.column4, \
             credits_pending = u.column5, credits_posted = u.column6 FROM (",
            ") AS u WHERE ledger_accounts.merchant_id = u.column1 AND ledger_accounts.id = u.column2",
            &effects.accounts,
            |row, a| {
                row.push_bind(&a.merchant_id)
                    .push_bind(&a.id)
                    .push_bind(a.balances.debits_pending)
                    .push_bind(a.balances.debits_posted)
                    .push_bind(a.balances.credits_pending)
                    .push_bind(a.balances.credits_posted);
            },
        )
        .await?;
        let head = format!("INSERT INTO ledger_transfers ({}) ", crate::shared::TRANSFER_COLS);
        self.values(&head, "", &effects.transfers, |row, t| {
            row.push_bind(&t.merchant_id)
                .push_bind(&t.id)
                .push_bind(t.kind.as_str())
                .push_bind(&t.debit_account_id)
                .push_bind(&t.credit_account_id)
                .push_bind(t.amount)
                .push_bind(t.currency.code())
                .push_bind(&t.pending_id)
                .push_bind(t.timeout_seconds.map(i64::from))
                .push_bind(t.expires_at.map(|e| e.0))
                .push_bind(t.metadata.to_string())
                .push_bind(t.created_at.0)
                .push_bind(t.debit_after.debits_pending)
                .push_bind(t.debit_after.debits_posted)
                .push_bind(t.debit_after.credits_pending)
                .push_bind(t.debit_after.credits_posted)
                .push_bind(t.credit_after.debits_pending)
                .push_bind(t.credit_after.debits_posted)
                .push_bind(t.credit_after.credits_pending)
                .push_bind(t.credit_after.credits_posted);
        })
        .await?;
        self.values(
            "INSERT INTO ledger_pending (merchant_id, transfer_id, status, expires_at) ",
            " ON CONFLICT (merchant_id, transfer_id) DO UPDATE SET status = excluded.status",
            &effects.pending,
            |row, p| {
                row.push_bind(&p.merchant_id)
                    .push_bind(&p.transfer_id)
                    .push_bind(p.status.as_str())
                    .push_bind(p.expires_at.map(|e| e.0));
            },
        )
        .await
    }
}

shared_tx!(SqliteTx, SqliteRow, &mut SqliteConnection);
payments_tx!(SqliteTx, SqliteRow);
events_tx!(SqliteTx, SqliteRow, "", "");
invoices_tx!(SqliteTx, SqliteRow);
customers_tx!(SqliteTx, SqliteRow, "");
inbox_tx!(SqliteTx, SqliteRow, "");
