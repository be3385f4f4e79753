//! The PostgreSQL adapter: one pool; row locks (`FOR UPDATE`, in key order); bulk writes with
//! `UNNEST`; row-level security scoped by `settle.merchant_id`.

use async_trait::async_trait;
use settle_domain::{
    ledger::{Effects, Key},
    tenancy::AuditEntry,
};
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions, PgRow},
    Connection, PgConnection, PgPool, Postgres,
};
use tokio::sync::Semaphore;

use crate::{
    migrate,
    pg_writes::{by_key, Writes},
    Engine, Mode, Result, Scope, Store, StoreError, StoreOptions, Tx,
};

/// The SQLSTATE `settle_require_stored` raises: a single-statement write's compare-and-set failed.
const STALE: &str = "SL001";

/// Whether `e` says the connection is gone: an I/O error, or the server ending the session
/// (SQLSTATE class 08, connection exception; 57P01–57P03, shutdown or crash; 57P05, the
/// server's `idle_session_timeout`).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "57P05")),
        _ => false,
    }
}

/// A connection of [`Dedicated`] idle longer than this is closed rather than used: a firewall
/// or NAT may have dropped it silently, and a statement on it would wait for TCP to give up.
const IDLE_MAX: Duration = Duration::from_secs(5 * 60);
/// A connection of [`Dedicated`] is replaced after this long (as a pool's are), so that none
/// stays tied for good to a server that has since, say, become a read-only standby.
const LIFETIME_MAX: Duration = Duration::from_secs(30 * 60);

/// An open connection of [`Dedicated`], with when it was opened and last used.
struct Kept {
    conn: PgConnection,
    opened: Instant,
    used: Instant,
}

/// Serializes `settle migrate` across processes that start at once.
const MIGRATION_LOCK: i64 = 0x5e77_1e00;

pub struct PostgresStore {
    pool: PgPool,
    /// Connections whose session sees every merchant (`settle.merchant_id` is `*` from the
    /// start), for [`Store::write_alone`]: its one statement runs without a transaction block,
    /// so there is none to scope. Never lent to anything else.
    system: Dedicated,
}

/// A few connections kept for one statement at a time, opened as they are first needed.
///
/// Not a sqlx pool: a pool sends a round trip to every connection it takes back, to learn
/// whether it is still fit to lend, and on the hot path that is a round trip per write. Here a
/// connection goes back once its statement has been answered, success or a refusal; one whose
/// connection failed, or whose statement was abandoned midway (its future dropped), is closed.
struct Dedicated {
    connect: PgConnectOptions,
    idle: Mutex<Vec<Kept>>,
    turns: Semaphore,
    max: u32,
    acquire_timeout: Duration,
}

impl Dedicated {
    /// Runs `write` on an idle connection, or a new one; keeps the connection unless it broke.
    async fn with<T>(&self, write: impl AsyncFnOnce(&mut PgConnection) -> Result<T>) -> Result<T> {
        let _turn = tokio::time::timeout(self.acquire_timeout, self.turns.acquire())
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))?
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        let mut kept = match self.idle_connection().await {
            Some(kept) => kept,
            None => {
                let conn = tokio::time::timeout(self.acquire_timeout, PgConnection::connect_with(&self.connect))
                    .await
                    .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))??;
                let now = Instant::now();
                Kept {
                    conn,
                    opened: now,
                    used: now,
                }
            }
        };
        let result = write(&mut kept.conn).await;
        kept.used = Instant::now();
        // The server refusing a statement (a stale compare-and-set, a unique key) leaves the
        // connection fit for the next, which first reads what is left of this exchange; a
        // failure of the connection itself does not, nor does a server that no longer takes
        // writes (25006: it became a standby).
        let broken = match &result {
            Err(StoreError::Database(e)) => {
                !matches!(e, sqlx::Error::Database(_))
                    || connection_lost(e)
                    || matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"))
            }
            Ok(_) | Err(_) => false,
        };
        let unused = if broken {
            Some(kept)
        } else {
            // After `close`, a connection that was in use is closed as it comes back.
            let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.turns.is_closed() {
                Some(kept)
            } else {
                idle.push(kept);
                None
            }
        };
        if let Some(kept) = unused {
            let _ = kept.conn.close().await;
        }
        result
    }

    /// The most recently used idle connection still young enough; older ones are closed.
    async fn idle_connection(&self) -> Option<Kept> {
        loop {
            let kept = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop()?;
            if kept.used.elapsed() < IDLE_MAX && kept.opened.elapsed() < LIFETIME_MAX {
                return Some(kept);
            }
            let _ = kept.conn.close().await;
        }
    }

    fn in_use(&self) -> u32 {
        self.max
            .saturating_sub(u32::try_from(self.turns.available_permits()).unwrap_or(self.max))
    }

    async fn close(&self) {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.turns.close();
            std::mem::take(&mut *idle)
        };
        for kept in idle {
            let _ = kept.conn.close().await;
        }
    }
}

impl PostgresStore {
    /// `ANALYZE` of `tables` (qualified and quoted names), in one statement.
    async fn analyze(&self, tables: &[String]) -> Result<()> {
        if !tables.is_empty() {
            sqlx::query(&format!("ANALYZE {}", tables.join(", ")))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let connect: PgConnectOptions = url.parse()?;
        Self::connect_with(connect, options).await
    }

    pub async fn connect_with(connect: PgConnectOptions, options: &StoreOptions) -> Result<Self> {
        let statement_timeout = format!("{}ms", options.statement_timeout.as_millis());
        // Each statement is planned once per connection, not at every execution: planning the
        // writers' multi-table statements cost more than running them (ARCHITECTURE.md).
        // The URL's `application_name` is kept; otherwise connections are named `settle`.
        let name = connect.get_application_name().unwrap_or("settle").to_owned();
        let connect = connect.application_name(&name).options([
            ("statement_timeout", statement_timeout.as_str()),
            ("plan_cache_mode", "force_generic_plan"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size_max)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await?;
        // Not tested when handed out (a round trip per write): `write_alone` sends its
        // statement again on another connection when the one it got was cut.
        let max = options.write_alone_max.max(1);
        let system = Dedicated {
            // Its statements find every row by key. A generic plan made while a table was
            // nearly empty would scan it instead, and keep doing so as it grows until the next
            // ANALYZE: here a scan is never the plan.
            connect: connect.options([("settle.merchant_id", "*"), ("enable_seqscan", "off")]),
            idle: Mutex::new(Vec::new()),
            turns: Semaphore::new(max as usize),
            max,
            acquire_timeout: options.acquire_timeout,
        };
        Ok(PostgresStore { pool, system })
    }
}

/// `value` as an SQL string literal (`standard_conforming_strings` is on: only quotes double).
/// PostgreSQL text cannot hold NUL, so a value with one is refused, as a bound parameter would be.
fn quote_literal(value: &str) -> Result<String> {
    if value.contains('\0') {
        return Err(StoreError::Database(sqlx::Error::Protocol(
            "a NUL in a text value".into(),
        )));
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

#[async_trait]
impl Store for PostgresStore {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    async fn migrate(&self) -> Result<()> {
        let lock = format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})");
        run_migrations(&self.pool, migrate::POSTGRES, Some(&lock)).await
    }

    async fn has_schema(&self) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT to_regclass('settle_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn begin(&self, scope: Scope, mode: Mode) -> Result<Box<dyn Tx>> {
        let merchant = match &scope {
            Scope::Merchant(id) => id.as_str(),
            Scope::System => "*",
        };
        // One round trip: the transaction starts and its merchant scope is set together.
        let isolation = match mode {
            Mode::Snapshot => " ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            Mode::Read | Mode::Write => "",
        };
        let begin = format!(
            "BEGIN{isolation}; SELECT set_config('settle.merchant_id', {}, true)",
            quote_literal(merchant)?
        );
        let tx = self.pool.begin_with(begin).await?;
        Ok(Box::new(PgTx { tx }))
    }

    async fn write_alone(&self, rows: &crate::GroupRows<'_>) -> Result<bool> {
        // After a server restart every idle connection of the pool is cut: one more try than
        // the pool has connections reaches a new one.
        let mut tries = self.system.max + 1;
        loop {
            tries -= 1;
            match self
                .system
                .with(async |conn| Writes::group(rows)?.run_alone(conn).await)
                .await
            {
                Err(StoreError::Database(sqlx::Error::Database(e))) if e.code().as_deref() == Some(STALE) => {
                    return Ok(false)
                }
                // A connection cut since it was last used (a server restart): the statement is
                // sent again on another. Should an earlier try have committed after all, a later
                // one cannot apply twice: every row it writes is keyed or compared-and-set.
                Err(StoreError::Database(e)) if tries > 0 && connection_lost(&e) => {}
                other => return other.map(|()| true),
            }
        }
    }

    fn connections_in_use(&self) -> u32 {
        let pool = &self.pool;
        pool.size().saturating_sub(u32::try_from(pool.num_idle()).unwrap_or(0)) + self.system.in_use()
    }

    async fn bypasses_row_security(&self) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn upkeep(&self) -> Result<()> {
        // Tables this role may analyze (else ANALYZE only warns, and they would stay listed).
        let fresh: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', s.schemaname, s.relname) FROM pg_stat_user_tables s \
             JOIN pg_class c ON c.oid = s.relid \
             WHERE s.schemaname = current_schema() AND s.last_analyze IS NULL AND s.last_autoanalyze IS NULL \
             AND s.n_mod_since_analyze >= $1 AND pg_has_role(current_user, c.relowner, 'MEMBER') \
             ORDER BY s.relname",
        )
        .bind(crate::FIRST_ANALYZE_ROWS)
        .fetch_all(&self.pool)
        .await?;
        self.analyze(&fresh).await
    }

    async fn refresh_statistics(&self) -> Result<()> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = current_schema() \
             ORDER BY tablename",
        )
        .fetch_all(&self.pool)
        .await?;
        self.analyze(&tables).await
    }

    async fn close(&self) {
        self.system.close().await;
        self.pool.close().await;
    }
}

pub struct PgTx {
    tx: sqlx::Transaction<'static, Postgres>,
}

fn split_keys(keys: &[Key]) -> (Vec<&str>, Vec<&str>) {
    keys.iter().map(|(m, id)| (m.as_str(), id.as_str())).unzip()
}

impl PgTx {
    /// One `UPDATE … FROM UNNEST(…)` for every payment, each at its expected version.
    async fn update_payments_bulk(&mut self, payments: &[(settle_domain::payment::Payment, i64)]) -> Result<usize> {
        let mut w = Writes::default();
        w.stored_payments(payments)?;
        w.run(&mut self.tx).await
    }

    /// Every event in one statement, each numbered after its aggregate's last stored one plus
    /// its place among the batch's events of that aggregate, and queued in the outbox.
    async fn insert_events_bulk(&mut self, events: &[settle_domain::event::NewEvent]) -> Result<()> {
        self.write_records(&crate::Records {
            events,
            ..crate::Records::default()
        })
        .await
    }

    /// Every entry in one statement; a stored event (or an earlier entry of the batch for the
    /// same event) makes an entry a duplicate. The ids returned are those inserted.
    async fn insert_inbox_bulk(&mut self, entries: &[settle_domain::inbound::InboxEntry]) -> Result<Vec<bool>> {
        type E = settle_domain::inbound::InboxEntry;
        let text = |f: fn(&E) -> &str| entries.iter().map(f).collect::<Vec<_>>();
        let inserted: Vec<String> = sqlx::query_scalar(&format!(
            "INSERT INTO webhook_inbox ({}) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], \
             $13::bigint[], $14::bigint[]) \
             ON CONFLICT (merchant_id, connector, provider_event_id) DO NOTHING RETURNING id",
            crate::inbox::INBOX_COLS
        ))
        .bind(text(|e| &e.merchant_id))
        .bind(text(|e| &e.id))
        .bind(text(|e| &e.connector))
        .bind(text(|e| &e.connector_account_id))
        .bind(text(|e| &e.provider_event_id))
        .bind(text(|e| &e.kind))
        .bind(text(|e| &e.payload))
        .bind(text(|e| e.status.as_str()))
        .bind(entries.iter().map(|e| e.attempts).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.next_attempt_at.0).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.reason.as_deref()).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.payment_id.as_deref()).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.created_at.0).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.updated_at.0).collect::<Vec<_>>())
        .fetch_all(&mut *self.tx)
        .await?;
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        Ok(entries.iter().map(|e| inserted.contains(&e.id)).collect())
    }

    /// Every payment in one `INSERT … SELECT FROM UNNEST`.
    async fn insert_payments_bulk(&mut self, payments: &[settle_domain::payment::Payment]) -> Result<()> {
        let mut w = Writes::default();
        w.new_payments(payments)?;
        w.run(&mut self.tx).await.map(drop)
    }

    /// Every payment method in one `INSERT … SELECT FROM UNNEST`.
    async fn insert_payment_methods_bulk(&mut self, methods: &[settle_domain::payment::PaymentMethod]) -> Result<()> {
        let mut w = Writes::default();
        w.methods(methods)?;
        w.run(&mut self.tx).await.map(drop)
    }

    /// Every attempt in one statement.
    async fn insert_attempts_bulk(&mut self, attempts: &[settle_domain::payment::Attempt]) -> Result<()> {
        self.write_records(&crate::Records {
            attempts,
            ..crate::Records::default()
        })
        .await
    }

    /// Every status history row in one statement.
    async fn insert_status_changes_bulk(&mut self, changes: &[settle_domain::payment::StatusChange]) -> Result<()> {
        self.write_records(&crate::Records {
            changes,
            ..crate::Records::default()
        })
        .await
    }

    /// One `UPDATE … FROM UNNEST(…)` for every entry, each under its lease.
    async fn update_inbox_bulk(
        &mut self,
        entries: &[(settle_domain::inbound::InboxEntry, settle_domain::Timestamp)],
    ) -> Result<usize> {
        type Entry = settle_domain::inbound::InboxEntry;
        let text = |f: fn(&Entry) -> &str| entries.iter().map(|(e, _)| f(e)).collect::<Vec<_>>();
        let optional = |f: fn(&Entry) -> Option<&str>| entries.iter().map(|(e, _)| f(e)).collect::<Vec<_>>();
        let number = |f: fn(&Entry) -> i64| entries.iter().map(|(e, _)| f(e)).collect::<Vec<_>>();
        let done = sqlx::query(&format!(
            "UPDATE webhook_inbox AS w SET status = u.status, attempts = u.attempts, \
             next_attempt_at = u.next_attempt_at, reason = u.reason, payment_id = u.payment_id, \
             updated_at = u.updated_at \
             FROM {} WHERE w.ctid = u.tid AND w.status = 'received' AND w.next_attempt_at = u.leased",
            by_key(
                "webhook_inbox",
                "UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], \
                 $8::bigint[], $9::bigint[]) \
                 AS u(m, id, status, attempts, next_attempt_at, reason, payment_id, updated_at, leased)"
            )
        ))
        .bind(text(|e| &e.merchant_id))
        .bind(text(|e| &e.id))
        .bind(text(|e| e.status.as_str()))
        .bind(number(|e| e.attempts))
        .bind(number(|e| e.next_attempt_at.0))
        .bind(optional(|e| e.reason.as_deref()))
        .bind(optional(|e| e.payment_id.as_deref()))
        .bind(number(|e| e.updated_at.0))
        .bind(entries.iter().map(|(_, leased)| leased.0).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn fetch_by_keys(
        &mut self,
        cols: &str,
        table: &str,
        id_col: &str,
        keys: &[Key],
        lock: bool,
    ) -> Result<Vec<PgRow>> {
        // Each key is one index lookup: the lateral subquery (its LIMIT keeps the planner from
        // flattening it) forces a nested loop, where as a join the prepared statement's generic
        // plan hash-joins against a scan of the whole table. Keys are visited (and rows locked)
        // in key order, so concurrent writers cannot deadlock.
        let lock = if lock { " FOR UPDATE" } else { "" };
        let outer = cols
            .split(", ")
            .map(|c| format!("t.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {outer} FROM (SELECT m, i FROM UNNEST($1::text[], $2::text[]) AS u(m, i) ORDER BY m COLLATE \"C\", i COLLATE \"C\") AS k \
             CROSS JOIN LATERAL (SELECT {cols} FROM {table} \
             WHERE merchant_id = k.m AND {id_col} = k.i LIMIT 1{lock}) AS t"
        );
        let (merchants, ids) = split_keys(keys);
        Ok(sqlx::query(&sql)
            .bind(merchants)
            .bind(ids)
            .fetch_all(&mut *self.tx)
            .await?)
    }

    /// Attempts, history rows, audit rows and events with their outbox entries in one statement.
    async fn write_records(&mut self, records: &crate::Records<'_>) -> Result<()> {
        let mut w = Writes::default();
        w.records(records)?;
        w.run(&mut self.tx).await.map(drop)
    }

    /// A group commit's effects and rows in one statement.
    async fn write_group_rows(&mut self, rows: &crate::GroupRows<'_>) -> Result<usize> {
        Writes::group(rows)?.run(&mut self.tx).await
    }

    async fn write_audit(&mut self, audit: &[AuditEntry]) -> Result<()> {
        self.write_records(&crate::Records {
            audit,
            ..crate::Records::default()
        })
        .await
    }

    async fn write_effects(&mut self, effects: &Effects) -> Result<()> {
        let mut w = Writes::default();
        w.effects(effects)?;
        w.run(&mut self.tx).await.map(drop)
    }
}

shared_tx!(PgTx, PgRow, &PgPool);
payments_tx!(PgTx, PgRow);
events_tx!(
    PgTx,
    PgRow,
    " FOR UPDATE SKIP LOCKED",
    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
);
invoices_tx!(PgTx, PgRow);
customers_tx!(PgTx, PgRow, " FOR KEY SHARE");
inbox_tx!(PgTx, PgRow, " FOR UPDATE SKIP LOCKED");
