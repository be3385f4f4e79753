//! The PostgreSQL adapter: one pool; row locks (`FOR UPDATE`, in key order); bulk writes with
//! `UNNEST`; row-level security scoped by `settle.merchant_id`.

use async_trait::async_trait;
use settle_domain::{
    ledger::{Effects, Key},
    tenancy::AuditEntry,
};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions, PgRow},
    PgPool, Postgres,
};

use crate::{migrate, Engine, Mode, Result, Scope, Store, StoreError, StoreOptions, Tx};

/// Serializes `settle migrate` across processes that start at once.
const MIGRATION_LOCK: i64 = 0x5e77_1e00;

pub struct PostgresStore {
    pool: PgPool,
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
        let connect = connect.application_name("settle").options([
            ("statement_timeout", statement_timeout.as_str()),
            ("plan_cache_mode", "force_generic_plan"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size_max)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        Ok(PostgresStore { pool })
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

    fn connections_in_use(&self) -> u32 {
        self.pool
            .size()
            .saturating_sub(u32::try_from(self.pool.num_idle()).unwrap_or(0))
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
        self.pool.close().await;
    }
}

pub struct PgTx {
    tx: sqlx::Transaction<'static, Postgres>,
}

/// `rows` (`UNNEST(…) AS u(m, id, …)`) with each row's `tid`: the `ctid` of `table`'s row of
/// that merchant and id, found by one index lookup per row. A bulk `UPDATE` joins on `ctid`
/// (a TID scan per row) because joined on its key the prepared statement's generic plan
/// hash-joins against a scan of the whole table, which grows with it. A row another
/// transaction changes meanwhile has a new `ctid` and is not updated, like a lost
/// compare-and-set.
fn by_key(table: &str, rows: &str) -> String {
    format!(
        "(SELECT u.*, k.tid FROM {rows} CROSS JOIN LATERAL (SELECT ctid AS tid FROM {table} \
         WHERE merchant_id = u.m AND id = u.id LIMIT 1) AS k) AS u"
    )
}

fn split_keys(keys: &[Key]) -> (Vec<&str>, Vec<&str>) {
    keys.iter().map(|(m, id)| (m.as_str(), id.as_str())).unzip()
}

impl PgTx {
    /// One `UPDATE … FROM UNNEST(…)` for every payment, each at its expected version.
    /// Rows are updated (and locked) in key order, so concurrent group commits cannot deadlock.
    async fn update_payments_bulk(&mut self, payments: &[(settle_domain::payment::Payment, i64)]) -> Result<usize> {
        let mut payments: Vec<&(settle_domain::payment::Payment, i64)> = payments.iter().collect();
        payments.sort_by(|(a, _), (b, _)| (&a.merchant_id, &a.id).cmp(&(&b.merchant_id, &b.id)));
        let texts = |f: &dyn Fn(&settle_domain::payment::Payment) -> String| -> Vec<String> {
            payments.iter().map(|(p, _)| f(p)).collect()
        };
        let optional = |f: &dyn Fn(&settle_domain::payment::Payment) -> Option<String>| -> Vec<Option<String>> {
            payments.iter().map(|(p, _)| f(p)).collect()
        };
        let numbers = |f: &dyn Fn(&settle_domain::payment::Payment) -> i64| -> Vec<i64> {
            payments.iter().map(|(p, _)| f(p)).collect()
        };
        let optional_numbers = |f: &dyn Fn(&settle_domain::payment::Payment) -> Option<i64>| -> Vec<Option<i64>> {
            payments.iter().map(|(p, _)| f(p)).collect()
        };
        let plans = payments
            .iter()
            .map(|(p, _)| crate::payments::plan_text(&p.plan))
            .collect::<Result<Vec<_>>>()?;
        let done = sqlx::query(&format!(
            "UPDATE payments AS p SET status = u.status, amount_capturable = u.capturable, \
             amount_captured = u.captured, amount_refunded = u.refunded, payment_method_id = u.method, \
             connector_account_id = u.account, connector_name = u.connector_name, provider_ref = u.provider_ref, \
             last_payment_error = u.error, cancellation_reason = u.reason, authorized_at = u.authorized_at, \
             claimed_until = u.claimed_until, version = u.version, updated_at = u.updated_at, amount = u.amount, \
             description = u.description, metadata = u.metadata, claim_plan = u.plan \
             FROM {} WHERE p.ctid = u.tid AND p.version = u.expected",
            by_key(
                "payments",
                "UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], \
                 $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bigint[], \
                 $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[], $19::text[], $20::text[], $21::text[]) \
                 AS u(m, id, expected, status, capturable, captured, refunded, method, account, connector_name, \
                 provider_ref, error, reason, authorized_at, claimed_until, version, updated_at, amount, \
                 description, metadata, plan)"
            )
        ))
        .bind(texts(&|p| p.merchant_id.clone()))
        .bind(texts(&|p| p.id.clone()))
        .bind(payments.iter().map(|(_, expected)| *expected).collect::<Vec<i64>>())
        .bind(texts(&|p| p.status.as_str().to_owned()))
        .bind(numbers(&|p| p.amount_capturable))
        .bind(numbers(&|p| p.amount_captured))
        .bind(numbers(&|p| p.amount_refunded))
        .bind(optional(&|p| p.payment_method_id.clone()))
        .bind(optional(&|p| p.connector_account_id.clone()))
        .bind(optional(&|p| p.connector_name.clone()))
        .bind(optional(&|p| p.provider_ref.clone()))
        .bind(optional(&|p| crate::payments::error_text(&p.last_payment_error)))
        .bind(optional(&|p| p.cancellation_reason.clone()))
        .bind(optional_numbers(&|p| p.authorized_at.map(|t| t.0)))
        .bind(optional_numbers(&|p| p.claimed_until.map(|t| t.0)))
        .bind(numbers(&|p| p.version))
        .bind(numbers(&|p| p.updated_at.0))
        .bind(numbers(&|p| p.amount))
        .bind(optional(&|p| p.description.clone()))
        .bind(texts(&|p| p.metadata.to_string()))
        .bind(plans)
        .execute(&mut *self.tx)
        .await?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
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
        type P = settle_domain::payment::Payment;
        let text = |f: &dyn Fn(&P) -> String| payments.iter().map(f).collect::<Vec<_>>();
        let optional = |f: &dyn Fn(&P) -> Option<String>| payments.iter().map(f).collect::<Vec<_>>();
        let number = |f: &dyn Fn(&P) -> i64| payments.iter().map(f).collect::<Vec<_>>();
        let optional_number = |f: &dyn Fn(&P) -> Option<i64>| payments.iter().map(f).collect::<Vec<_>>();
        let plans = payments
            .iter()
            .map(|p| crate::payments::plan_text(&p.plan))
            .collect::<Result<Vec<_>>>()?;
        sqlx::query(&format!(
            "INSERT INTO payments ({}) SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], \
             $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::text[], \
             $13::text[], $14::text[], $15::text[], $16::text[], $17::bigint[], $18::text[], $19::text[], $20::text[], \
             $21::text[], $22::text[], $23::text[], $24::bigint[], $25::bigint[], $26::bigint[], $27::bigint[], \
             $28::bigint[], $29::text[], $30::text[], $31::text[], $32::text[])",
            crate::payments::PAYMENT_COLS
        ))
        .bind(text(&|p| p.merchant_id.clone()))
        .bind(text(&|p| p.id.clone()))
        .bind(number(&|p| p.amount))
        .bind(text(&|p| p.currency.code().to_owned()))
        .bind(text(&|p| p.capture_method.as_str().to_owned()))
        .bind(text(&|p| p.status.as_str().to_owned()))
        .bind(number(&|p| p.amount_capturable))
        .bind(number(&|p| p.amount_captured))
        .bind(number(&|p| p.amount_refunded))
        .bind(optional(&|p| p.payment_method_id.clone()))
        .bind(optional(&|p| p.customer.as_ref().map(|c| c.email.clone())))
        .bind(optional(&|p| p.customer.as_ref().and_then(|c| c.name.clone())))
        .bind(optional(&|p| p.customer.as_ref().and_then(|c| c.phone.clone())))
        .bind(optional(&|p| p.description.clone()))
        .bind(text(&|p| p.metadata.to_string()))
        .bind(text(&|p| crate::payments::splits_text(&p.splits)))
        .bind(optional_number(&|p| p.application_fee_amount))
        .bind(optional(&|p| p.connector.clone()))
        .bind(optional(&|p| p.connector_account_id.clone()))
        .bind(optional(&|p| p.connector_name.clone()))
        .bind(optional(&|p| p.provider_ref.clone()))
        .bind(optional(&|p| crate::payments::error_text(&p.last_payment_error)))
        .bind(optional(&|p| p.cancellation_reason.clone()))
        .bind(optional_number(&|p| p.authorized_at.map(|t| t.0)))
        .bind(optional_number(&|p| p.claimed_until.map(|t| t.0)))
        .bind(number(&|p| p.version))
        .bind(number(&|p| p.created_at.0))
        .bind(number(&|p| p.updated_at.0))
        .bind(plans)
        .bind(optional(&|p| p.idempotency_key.clone()))
        .bind(optional(&|p| p.customer_id.clone()))
        .bind(optional(&|p| p.receipt_email.clone()))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Every payment method in one `INSERT … SELECT FROM UNNEST`.
    async fn insert_payment_methods_bulk(&mut self, methods: &[settle_domain::payment::PaymentMethod]) -> Result<()> {
        type M = settle_domain::payment::PaymentMethod;
        let text = |f: fn(&M) -> &str| methods.iter().map(f).collect::<Vec<_>>();
        sqlx::query(&format!(
            "INSERT INTO payment_methods ({}) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::bigint[], $6::bigint[], $7::text[], $8::bytea[], $9::bigint[], $10::text[])",
            crate::payments::PAYMENT_METHOD_COLS
        ))
        .bind(text(|m| &m.merchant_id))
        .bind(text(|m| &m.id))
        .bind(text(|m| &m.brand))
        .bind(text(|m| &m.last4))
        .bind(methods.iter().map(|m| i64::from(m.exp_month)).collect::<Vec<_>>())
        .bind(methods.iter().map(|m| i64::from(m.exp_year)).collect::<Vec<_>>())
        .bind(text(|m| &m.fingerprint))
        .bind(methods.iter().map(|m| m.number_sealed.clone()).collect::<Vec<_>>())
        .bind(methods.iter().map(|m| m.created_at.0).collect::<Vec<_>>())
        .bind(methods.iter().map(|m| m.customer_id.as_deref()).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
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
            "SELECT {outer} FROM (SELECT m, i FROM UNNEST($1::text[], $2::text[]) AS u(m, i) ORDER BY m, i) AS k \
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

    /// Attempts, history rows, audit rows and events with their outbox entries in one statement
    /// of data-modifying CTEs (empty arrays insert nothing): one round trip for a group's records.
    async fn write_records(&mut self, records: &crate::Records<'_>) -> Result<()> {
        type A = settle_domain::payment::Attempt;
        type C = settle_domain::payment::StatusChange;
        let (attempts, changes, audit, events) = (records.attempts, records.changes, records.audit, records.events);
        let attempt = |f: fn(&A) -> &str| attempts.iter().map(f).collect::<Vec<_>>();
        let attempt_opt = |f: fn(&A) -> Option<&str>| attempts.iter().map(f).collect::<Vec<_>>();
        let change = |f: fn(&C) -> &str| changes.iter().map(f).collect::<Vec<_>>();
        let change_opt = |f: fn(&C) -> Option<&str>| changes.iter().map(f).collect::<Vec<_>>();
        let entry = |f: fn(&AuditEntry) -> &str| audit.iter().map(f).collect::<Vec<_>>();
        let entry_opt = |f: fn(&AuditEntry) -> Option<&str>| audit.iter().map(f).collect::<Vec<_>>();
        let event = |f: fn(&settle_domain::event::NewEvent) -> &str| events.iter().map(f).collect::<Vec<_>>();
        sqlx::query(&format!(
            "WITH attempts AS (INSERT INTO payment_attempts ({attempt_cols}) SELECT * FROM UNNEST($1::text[], \
             $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
             $10::text[], $11::bigint[], $12::bigint[])), \
             history AS (INSERT INTO payment_events ({change_cols}) SELECT * FROM UNNEST($13::text[], $14::text[], \
             $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], \
             $22::bigint[])), \
             audit AS (INSERT INTO audit_logs ({audit_cols}) SELECT * FROM UNNEST($23::text[], $24::text[], \
             $25::text[], $26::text[], $27::text[], $28::text[], $29::text[], $30::text[], $31::text[], \
             $32::bigint[])), \
             u AS (SELECT * FROM UNNEST($33::text[], $34::text[], $35::text[], $36::text[], $37::text[], \
             $38::bigint[], $39::text[], $40::bigint[]) AS u(m, id, kind, atype, aid, k, data, created)), \
             ins AS (INSERT INTO events (merchant_id, id, type, aggregate_type, aggregate_id, sequence, data, \
             created_at) SELECT u.m, u.id, u.kind, u.atype, u.aid, COALESCE((SELECT MAX(e.sequence) FROM events e \
             WHERE e.merchant_id = u.m AND e.aggregate_id = u.aid AND e.aggregate_type = u.atype), 0) + u.k, \
             u.data, u.created FROM u RETURNING merchant_id, id) \
             INSERT INTO event_outbox (merchant_id, event_id) SELECT merchant_id, id FROM ins",
            attempt_cols = crate::payments::ATTEMPT_COLS,
            change_cols = crate::payments::STATUS_CHANGE_COLS,
            audit_cols = crate::shared::AUDIT_COLS,
        ))
        .bind(attempt(|a| &a.merchant_id))
        .bind(attempt(|a| &a.id))
        .bind(attempt(|a| &a.payment_id))
        .bind(attempt(|a| &a.operation))
        .bind(attempt(|a| &a.connector_account_id))
        .bind(attempt(|a| &a.connector))
        .bind(attempt(|a| &a.outcome))
        .bind(attempt_opt(|a| a.error_code.as_deref()))
        .bind(attempt_opt(|a| a.provider_ref.as_deref()))
        .bind(attempt_opt(|a| a.request_id.as_deref()))
        .bind(attempts.iter().map(|a| a.latency_ms).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.created_at.0).collect::<Vec<_>>())
        .bind(change(|c| &c.merchant_id))
        .bind(change(|c| &c.id))
        .bind(change(|c| &c.payment_id))
        .bind(change_opt(|c| c.from_status.map(|s| s.as_str())))
        .bind(change(|c| c.to_status.as_str()))
        .bind(change_opt(|c| c.reason.as_deref()))
        .bind(change_opt(|c| c.connector.as_deref()))
        .bind(change_opt(|c| c.error_code.as_deref()))
        .bind(change_opt(|c| c.request_id.as_deref()))
        .bind(changes.iter().map(|c| c.created_at.0).collect::<Vec<_>>())
        .bind(entry(|e| &e.id))
        .bind(entry(|e| &e.merchant_id))
        .bind(entry(|e| &e.actor))
        .bind(entry(|e| &e.action))
        .bind(entry(|e| &e.resource_type))
        .bind(entry(|e| &e.resource_id))
        .bind(entry_opt(|e| e.request_id.as_deref()))
        .bind(entry_opt(|e| e.ip.as_deref()))
        .bind(entry_opt(|e| e.user_agent.as_deref()))
        .bind(audit.iter().map(|e| e.created_at.0).collect::<Vec<_>>())
        .bind(event(|e| &e.merchant_id))
        .bind(event(|e| &e.id))
        .bind(event(|e| &e.kind))
        .bind(event(|e| e.aggregate_type))
        .bind(event(|e| &e.aggregate_id))
        .bind(settle_domain::event::offsets(events))
        .bind(event(|e| &e.data))
        .bind(events.iter().map(|e| e.created_at.0).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn write_audit(&mut self, audit: &[AuditEntry]) -> Result<()> {
        self.write_records(&crate::Records {
            audit,
            ..crate::Records::default()
        })
        .await
    }

    async fn write_effects(&mut self, effects: &Effects) -> Result<()> {
        if !effects.accounts.is_empty() {
            let a = &effects.accounts;
            sqlx::query(&format!(
                "UPDATE ledger_accounts AS a SET debits_pending = u.dp, debits_posted = u.dpo, \
                 credits_pending = u.cp, credits_posted = u.cpo FROM {} WHERE a.ctid = u.tid",
                by_key(
                    "ledger_accounts",
                    "UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[]) \
                     AS u(m, id, dp, dpo, cp, cpo)"
                )
            ))
            .bind(a.iter().map(|x| x.merchant_id.as_str()).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.id.as_str()).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.balances.debits_pending).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.balances.debits_posted).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.balances.credits_pending).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.balances.credits_posted).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?;
        }
        if !effects.transfers.is_empty() {
            let t = &effects.transfers;
            let text = |f: fn(&settle_domain::ledger::Transfer) -> &str| t.iter().map(f).collect::<Vec<_>>();
            let int = |f: fn(&settle_domain::ledger::Transfer) -> i64| t.iter().map(f).collect::<Vec<_>>();
            sqlx::query(&format!(
                "INSERT INTO ledger_transfers ({}) SELECT * FROM UNNEST(\
                 $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], \
                 $8::text[], $9::bigint[], $10::bigint[], $11::text[], $12::bigint[], \
                 $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], \
                 $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[])",
                crate::shared::TRANSFER_COLS
            ))
            .bind(text(|x| &x.merchant_id))
            .bind(text(|x| &x.id))
            .bind(text(|x| x.kind.as_str()))
            .bind(text(|x| &x.debit_account_id))
            .bind(text(|x| &x.credit_account_id))
            .bind(int(|x| x.amount))
            .bind(text(|x| x.currency.code()))
            .bind(t.iter().map(|x| x.pending_id.as_deref()).collect::<Vec<_>>())
            .bind(t.iter().map(|x| x.timeout_seconds.map(i64::from)).collect::<Vec<_>>())
            .bind(t.iter().map(|x| x.expires_at.map(|e| e.0)).collect::<Vec<_>>())
            .bind(t.iter().map(|x| x.metadata.to_string()).collect::<Vec<_>>())
            .bind(int(|x| x.created_at.0))
            .bind(int(|x| x.debit_after.debits_pending))
            .bind(int(|x| x.debit_after.debits_posted))
            .bind(int(|x| x.debit_after.credits_pending))
            .bind(int(|x| x.debit_after.credits_posted))
            .bind(int(|x| x.credit_after.debits_pending))
            .bind(int(|x| x.credit_after.debits_posted))
            .bind(int(|x| x.credit_after.credits_pending))
            .bind(int(|x| x.credit_after.credits_posted))
            .execute(&mut *self.tx)
            .await?;
        }
        if !effects.pending.is_empty() {
            let p = &effects.pending;
            sqlx::query(
                "INSERT INTO ledger_pending (merchant_id, transfer_id, status, expires_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) \
                 ON CONFLICT (merchant_id, transfer_id) DO UPDATE SET status = excluded.status",
            )
            .bind(p.iter().map(|x| x.merchant_id.as_str()).collect::<Vec<_>>())
            .bind(p.iter().map(|x| x.transfer_id.as_str()).collect::<Vec<_>>())
            .bind(p.iter().map(|x| x.status.as_str()).collect::<Vec<_>>())
            .bind(p.iter().map(|x| x.expires_at.map(|e| e.0)).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }
}

shared_tx!(PgTx, PgRow, &PgPool);
payments_tx!(PgTx, PgRow);
events_tx!(PgTx, PgRow, " FOR UPDATE SKIP LOCKED");
invoices_tx!(PgTx, PgRow);
customers_tx!(PgTx, PgRow);
inbox_tx!(PgTx, PgRow, " FOR UPDATE SKIP LOCKED");
