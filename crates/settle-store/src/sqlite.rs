//! The SQLite adapter, Settle's embedded default: WAL mode, one writer connection (so writers
//! queue in-process instead of failing with `SQLITE_BUSY`) and a pool of readers. Bulk writes
//! are loops of prepared statements, which is what SQLite is fast at.

use std::{path::Path, str::FromStr, time::Duration};

use async_trait::async_trait;
use settle_domain::ledger::{Effects, Key};
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous},
    SqlitePool,
};

use crate::{migrate, Engine, Mode, Result, Scope, Store, StoreOptions, Tx};

pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
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
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.pool_size_max.clamp(1, 8))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.read_only(true))
            .await?;
        Ok(SqliteStore { writer, readers })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    async fn migrate(&self) -> Result<()> {
        run_migrations(&self.writer, migrate::SQLITE, None).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn begin(&self, _scope: Scope, mode: Mode) -> Result<Box<dyn Tx>> {
        let pool = match mode {
            Mode::Read => &self.readers,
            Mode::Write => &self.writer,
        };
        Ok(Box::new(SqliteTx {
            tx: pool.begin().await?,
        }))
    }

    fn connections_in_use(&self) -> u32 {
        let busy = |p: &SqlitePool| p.size().saturating_sub(u32::try_from(p.num_idle()).unwrap_or(0));
        busy(&self.writer) + busy(&self.readers)
    }

    async fn bypasses_row_security(&self) -> Result<bool> {
        Ok(false)
    }

    async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }
}

pub struct SqliteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
}

impl SqliteTx {
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

    async fn write_effects(&mut self, effects: &Effects) -> Result<()> {
        for a in &effects.accounts {
            sqlx::query(
                "UPDATE ledger_accounts SET debits_pending = $3, debits_posted = $4, credits_pending = $5, \
                 credits_posted = $6 WHERE merchant_id = $1 AND id = $2",
            )
            .bind(&a.merchant_id)
            .bind(&a.id)
            .bind(a.balances.debits_pending)
            .bind(a.balances.debits_posted)
            .bind(a.balances.credits_pending)
            .bind(a.balances.credits_posted)
            .execute(&mut *self.tx)
            .await?;
        }
        let insert = format!(
            "INSERT INTO ledger_transfers ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             $13, $14, $15, $16, $17, $18, $19, $20)",
            crate::shared::TRANSFER_COLS
        );
        for t in &effects.transfers {
            sqlx::query(&insert)
                .bind(&t.merchant_id)
                .bind(&t.id)
                .bind(t.kind.as_str())
                .bind(&t.debit_account_id)
                .bind(&t.credit_account_id)
                .bind(t.amount)
                .bind(t.currency.code())
                .bind(&t.pending_id)
                .bind(t.timeout_seconds.map(i64::from))
                .bind(t.expires_at.map(|e| e.0))
                .bind(t.metadata.to_string())
                .bind(t.created_at.0)
                .bind(t.debit_after.debits_pending)
                .bind(t.debit_after.debits_posted)
                .bind(t.debit_after.credits_pending)
                .bind(t.debit_after.credits_posted)
                .bind(t.credit_after.debits_pending)
                .bind(t.credit_after.debits_posted)
                .bind(t.credit_after.credits_pending)
                .bind(t.credit_after.credits_posted)
                .execute(&mut *self.tx)
                .await?;
        }
        for p in &effects.pending {
            sqlx::query(
                "INSERT INTO ledger_pending (merchant_id, transfer_id, status, expires_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (merchant_id, transfer_id) DO UPDATE SET status = excluded.status",
            )
            .bind(&p.merchant_id)
            .bind(&p.transfer_id)
            .bind(p.status.as_str())
            .bind(p.expires_at.map(|e| e.0))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }
}

shared_tx!(SqliteTx, SqliteRow, SqlitePool);
