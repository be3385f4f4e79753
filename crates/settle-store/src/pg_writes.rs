//! PostgreSQL's bulk writes as one statement: each kind of row a caller has is one
//! data-modifying CTE (`INSERT … SELECT FROM UNNEST(…)`, or an `UPDATE … FROM UNNEST(…)`), and
//! every kind present goes into the same statement, so a group commit's rows (its ledger
//! effects, payments, history, events, audit and idempotency records) cost one round trip.
//!
//! Only the kinds that have rows are part of the statement; each combination is its own
//! prepared statement, and a process uses few of them. The CTEs of one statement see one
//! snapshot and must not change a row twice; what needs an earlier write's effect (a refund's
//! reservation given back to a payment this statement also updates) is written by the caller in
//! a statement of its own. Foreign keys are checked at the end of the statement, so a history
//! row may reference a payment inserted beside it.

use settle_domain::{
    event::NewEvent,
    ledger::{Account, Balances, Effects, PendingRow, Transfer},
    payment::{Attempt, Payment, PaymentMethod, StatusChange},
    tenancy::{AuditEntry, IdempotencyRecord},
};
use sqlx::{postgres::PgArguments, Arguments, PgConnection, Postgres};

use crate::{GroupRows, Records, Result, StoreError};

/// `rows` (`UNNEST(…) AS u(m, id, …)`) with each row's `tid`: the `ctid` of `table`'s row of
/// that merchant and id, found by one index lookup per row. A bulk `UPDATE` joins on `ctid`
/// (a TID scan per row) because joined on its key the prepared statement's generic plan
/// hash-joins against a scan of the whole table, which grows with it. A row another
/// transaction changes meanwhile has a new `ctid` and is not updated, like a lost
/// compare-and-set.
pub fn by_key(table: &str, rows: &str) -> String {
    by_key_where(table, rows, "")
}

/// [`by_key`], finding only a row that also meets `condition` (on the row's columns and
/// `u`'s): a compare-and-set. The row as of the statement's snapshot is checked, and a row
/// changed since then has a new `ctid`, so it is not updated either.
fn by_key_where(table: &str, rows: &str, condition: &str) -> String {
    format!(
        "(SELECT u.*, k.tid FROM {rows} CROSS JOIN LATERAL (SELECT ctid AS tid FROM {table} \
         WHERE merchant_id = u.m AND id = u.id{condition} LIMIT 1) AS k) AS u"
    )
}

/// One statement being assembled: its CTEs and their parameters.
#[derive(Default)]
pub struct Writes {
    ctes: Vec<String>,
    args: PgArguments,
    params: usize,
    /// The CTEs that are compare-and-sets (`RETURNING 1` for each row stored): the statement
    /// returns how many rows they stored in all.
    counted: Vec<&'static str>,
    /// How many rows the compare-and-sets are given.
    expected: i64,
}

impl Writes {
    /// Every kind of row in `rows`.
    pub fn group(rows: &GroupRows<'_>) -> Result<Writes> {
        let mut w = Writes::default();
        if let Some(effects) = rows.effects {
            w.accounts(&effects.accounts, rows.balances_before)?;
            w.transfers(&effects.transfers)?;
            if rows.balances_before.is_empty() {
                w.pending(&effects.pending)?;
            } else {
                w.pending_checked(effects)?;
            }
        }
        w.methods(rows.new_methods)?;
        w.new_payments(rows.new_payments)?;
        w.stored_payments(rows.payments)?;
        w.records(&rows.records)?;
        w.idempotency(rows.idempotency)?;
        Ok(w)
    }

    /// Runs the statement; returns how many rows the compare-and-sets stored (0 without any).
    pub async fn run(self, conn: &mut PgConnection) -> Result<usize> {
        if self.ctes.is_empty() {
            return Ok(0);
        }
        let sql = format!("WITH {} SELECT {}", self.ctes.join(", "), self.stored());
        let stored: i64 = sqlx::query_scalar_with(&sql, self.args).fetch_one(conn).await?;
        Ok(usize::try_from(stored).unwrap_or(0))
    }

    /// Runs the statement as a transaction of its own (outside any transaction block): every
    /// payment must be stored, or `settle_require_stored` fails the statement and nothing of it
    /// is written.
    pub async fn run_alone(mut self, conn: &mut PgConnection) -> Result<()> {
        if self.ctes.is_empty() {
            return Ok(());
        }
        let expected = self.param(self.expected, "bigint")?;
        let sql = format!(
            "WITH {} SELECT settle_require_stored({}, {expected})",
            self.ctes.join(", "),
            self.stored()
        );
        sqlx::query_with(&sql, self.args).execute(conn).await?;
        Ok(())
    }

    /// How many rows the statement's compare-and-sets stored, as SQL.
    fn stored(&self) -> String {
        if self.counted.is_empty() {
            return "0::bigint".into();
        }
        self.counted
            .iter()
            .map(|cte| format!("(SELECT count(*) FROM {cte})"))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// Binds `value` and returns its placeholder, cast to `ty`.
    fn param<'q, T>(&mut self, value: T, ty: &str) -> Result<String>
    where
        T: sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + 'q,
    {
        Arguments::<'q>::add(&mut self.args, value).map_err(|e| StoreError::Database(sqlx::Error::Encode(e)))?;
        self.params += 1;
        Ok(format!("${}::{ty}", self.params))
    }

    /// The CTE `name`: every row of `u` (one array parameter per column of `cols`) inserted
    /// into `table`.
    fn insert_all(&mut self, name: &str, table: &str, cols: &str, u: &[String]) {
        self.cte(
            name,
            format!("INSERT INTO {table} ({cols}) SELECT * FROM UNNEST({})", u.join(", ")),
        );
    }

    fn cte(&mut self, name: &str, body: String) {
        self.ctes.push(format!("{name} AS ({body})"));
    }

    pub fn effects(&mut self, effects: &Effects) -> Result<()> {
        self.accounts(&effects.accounts, &[])?;
        self.transfers(&effects.transfers)?;
        self.pending(&effects.pending)
    }

    /// Each account's new balances; with `before` (one per account), only where the stored
    /// balances are still those, counted with the payments' compare-and-set.
    fn accounts(&mut self, a: &[Account], before: &[Balances]) -> Result<()> {
        if a.is_empty() {
            return Ok(());
        }
        let mut u = vec![
            self.param(a.iter().map(|x| x.merchant_id.as_str()).collect::<Vec<_>>(), "text[]")?,
            self.param(a.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), "text[]")?,
            self.param(
                a.iter().map(|x| x.balances.debits_pending).collect::<Vec<_>>(),
                "bigint[]",
            )?,
            self.param(
                a.iter().map(|x| x.balances.debits_posted).collect::<Vec<_>>(),
                "bigint[]",
            )?,
            self.param(
                a.iter().map(|x| x.balances.credits_pending).collect::<Vec<_>>(),
                "bigint[]",
            )?,
            self.param(
                a.iter().map(|x| x.balances.credits_posted).collect::<Vec<_>>(),
                "bigint[]",
            )?,
        ];
        let mut names = "m, id, dp, dpo, cp, cpo";
        let mut check = "";
        if !before.is_empty() {
            u.extend([
                self.param(before.iter().map(|b| b.debits_pending).collect::<Vec<_>>(), "bigint[]")?,
                self.param(before.iter().map(|b| b.debits_posted).collect::<Vec<_>>(), "bigint[]")?,
                self.param(before.iter().map(|b| b.credits_pending).collect::<Vec<_>>(), "bigint[]")?,
                self.param(before.iter().map(|b| b.credits_posted).collect::<Vec<_>>(), "bigint[]")?,
            ]);
            names = "m, id, dp, dpo, cp, cpo, odp, odpo, ocp, ocpo";
            check = " AND debits_pending = u.odp AND debits_posted = u.odpo \
                     AND credits_pending = u.ocp AND credits_posted = u.ocpo";
            self.counted.push("accounts");
            self.expected += i64::try_from(before.len()).unwrap_or(i64::MAX);
        }
        let rows = by_key_where(
            "ledger_accounts",
            &format!("UNNEST({}) AS u({names})", u.join(", ")),
            check,
        );
        // The stored balances are checked twice: in the lookup, against the statement's
        // snapshot, and on the row updated, which PostgreSQL checks again against the newest
        // version when the update waited for another transaction's lock (a check in the lookup
        // alone would pass a row changed meanwhile wherever the TID scan is not rechecked).
        // `IS NOT DISTINCT FROM` (the columns are never null) keeps the planner from hashing on
        // them instead of visiting each row by its `ctid`.
        let returning = if before.is_empty() {
            ""
        } else {
            " AND a.debits_pending IS NOT DISTINCT FROM u.odp AND a.debits_posted IS NOT DISTINCT FROM u.odpo \
             AND a.credits_pending IS NOT DISTINCT FROM u.ocp AND a.credits_posted IS NOT DISTINCT FROM u.ocpo \
             RETURNING 1"
        };
        self.cte(
            "accounts",
            format!(
                "UPDATE ledger_accounts AS a SET debits_pending = u.dp, debits_posted = u.dpo, \
                 credits_pending = u.cp, credits_posted = u.cpo FROM {rows} WHERE a.ctid = u.tid{returning}"
            ),
        );
        Ok(())
    }

    fn transfers(&mut self, t: &[Transfer]) -> Result<()> {
        if t.is_empty() {
            return Ok(());
        }
        let text = |f: fn(&Transfer) -> &str| t.iter().map(f).collect::<Vec<_>>();
        let int = |f: fn(&Transfer) -> i64| t.iter().map(f).collect::<Vec<_>>();
        let u = [
            self.param(text(|x| &x.merchant_id), "text[]")?,
            self.param(text(|x| &x.id), "text[]")?,
            self.param(text(|x| x.kind.as_str()), "text[]")?,
            self.param(text(|x| &x.debit_account_id), "text[]")?,
            self.param(text(|x| &x.credit_account_id), "text[]")?,
            self.param(int(|x| x.amount), "bigint[]")?,
            self.param(text(|x| x.currency.code()), "text[]")?,
            self.param(t.iter().map(|x| x.pending_id.as_deref()).collect::<Vec<_>>(), "text[]")?,
            self.param(
                t.iter().map(|x| x.timeout_seconds.map(i64::from)).collect::<Vec<_>>(),
                "bigint[]",
            )?,
            self.param(
                t.iter().map(|x| x.expires_at.map(|e| e.0)).collect::<Vec<_>>(),
                "bigint[]",
            )?,
            self.param(t.iter().map(|x| x.metadata.to_string()).collect::<Vec<_>>(), "text[]")?,
            self.param(int(|x| x.created_at.0), "bigint[]")?,
            self.param(int(|x| x.debit_after.debits_pending), "bigint[]")?,
            self.param(int(|x| x.debit_after.debits_posted), "bigint[]")?,
            self.param(int(|x| x.debit_after.credits_pending), "bigint[]")?,
            self.param(int(|x| x.debit_after.credits_posted), "bigint[]")?,
            self.param(int(|x| x.credit_after.debits_pending), "bigint[]")?,
            self.param(int(|x| x.credit_after.debits_posted), "bigint[]")?,
            self.param(int(|x| x.credit_after.credits_pending), "bigint[]")?,
            self.param(int(|x| x.credit_after.credits_posted), "bigint[]")?,
        ];
        self.insert_all("transfers", "ledger_transfers", crate::shared::TRANSFER_COLS, &u);
        Ok(())
    }

    /// New pending rows, and resolutions (an upsert by key).
    fn pending(&mut self, p: &[PendingRow]) -> Result<()> {
        if p.is_empty() {
            return Ok(());
        }
        let u = self.pending_rows(p)?;
        self.cte(
            "pending",
            format!(
                "INSERT INTO ledger_pending (merchant_id, transfer_id, status, expires_at) SELECT * FROM UNNEST({u}) \
                 ON CONFLICT (merchant_id, transfer_id) DO UPDATE SET status = excluded.status"
            ),
        );
        Ok(())
    }

    /// As [`Writes::pending`], checked: the rows of transfers created beside them are inserted
    /// (a stored one fails the statement), every other row is a resolution stored only over a
    /// row still `pending`; both counted with the compare-and-sets.
    fn pending_checked(&mut self, effects: &Effects) -> Result<()> {
        let (new, resolved) = crate::split_pending(effects);
        if !new.is_empty() {
            let u = self.pending_rows(&new)?;
            self.cte(
                "pending_new",
                format!(
                    "INSERT INTO ledger_pending (merchant_id, transfer_id, status, expires_at) \
                     SELECT * FROM UNNEST({u}) RETURNING 1"
                ),
            );
            self.counted.push("pending_new");
        }
        if !resolved.is_empty() {
            let u = self.pending_rows(&resolved)?;
            self.cte(
                "pending_resolved",
                format!(
                    "UPDATE ledger_pending AS p SET status = u.status FROM (SELECT u.*, k.tid \
                     FROM UNNEST({u}) AS u(m, id, status, expires_at) CROSS JOIN LATERAL (SELECT ctid AS tid \
                     FROM ledger_pending WHERE merchant_id = u.m AND transfer_id = u.id AND status = 'pending' \
                     LIMIT 1) AS k) AS u WHERE p.ctid = u.tid AND p.status = 'pending' RETURNING 1"
                ),
            );
            self.counted.push("pending_resolved");
        }
        self.expected += i64::try_from(effects.pending.len()).unwrap_or(i64::MAX);
        Ok(())
    }

    fn pending_rows(&mut self, p: &[PendingRow]) -> Result<String> {
        Ok([
            self.param(p.iter().map(|x| x.merchant_id.as_str()).collect::<Vec<_>>(), "text[]")?,
            self.param(p.iter().map(|x| x.transfer_id.as_str()).collect::<Vec<_>>(), "text[]")?,
            self.param(p.iter().map(|x| x.status.as_str()).collect::<Vec<_>>(), "text[]")?,
            self.param(
                p.iter().map(|x| x.expires_at.map(|e| e.0)).collect::<Vec<_>>(),
                "bigint[]",
            )?,
        ]
        .join(", "))
    }

    pub fn methods(&mut self, methods: &[PaymentMethod]) -> Result<()> {
        if methods.is_empty() {
            return Ok(());
        }
        let text = |f: fn(&PaymentMethod) -> &str| methods.iter().map(f).collect::<Vec<_>>();
        let u = [
            self.param(text(|m| &m.merchant_id), "text[]")?,
            self.param(text(|m| &m.id), "text[]")?,
            self.param(text(|m| &m.brand), "text[]")?,
            self.param(text(|m| &m.last4), "text[]")?,
            self.param(
                methods.iter().map(|m| i64::from(m.exp_month)).collect::<Vec<_>>(),
                "bigint[]",
            )?,
            self.param(
                methods.iter().map(|m| i64::from(m.exp_year)).collect::<Vec<_>>(),
                "bigint[]",
            )?,
            self.param(text(|m| &m.fingerprint), "text[]")?,
            self.param(
                methods.iter().map(|m| m.number_sealed.clone()).collect::<Vec<_>>(),
                "bytea[]",
            )?,
            self.param(methods.iter().map(|m| m.created_at.0).collect::<Vec<_>>(), "bigint[]")?,
            self.param(
                methods.iter().map(|m| m.customer_id.as_deref()).collect::<Vec<_>>(),
                "text[]",
            )?,
        ];
        self.insert_all("methods", "payment_methods", crate::payments::PAYMENT_METHOD_COLS, &u);
        Ok(())
    }

    pub fn new_payments(&mut self, payments: &[Payment]) -> Result<()> {
        if payments.is_empty() {
            return Ok(());
        }
        let text = |f: &dyn Fn(&Payment) -> String| payments.iter().map(f).collect::<Vec<_>>();
        let optional = |f: &dyn Fn(&Payment) -> Option<String>| payments.iter().map(f).collect::<Vec<_>>();
        let number = |f: &dyn Fn(&Payment) -> i64| payments.iter().map(f).collect::<Vec<_>>();
        let optional_number = |f: &dyn Fn(&Payment) -> Option<i64>| payments.iter().map(f).collect::<Vec<_>>();
        let plans = payments
            .iter()
            .map(|p| crate::payments::plan_text(&p.plan))
            .collect::<Result<Vec<_>>>()?;
        let u = [
            self.param(text(&|p| p.merchant_id.clone()), "text[]")?,
            self.param(text(&|p| p.id.clone()), "text[]")?,
            self.param(number(&|p| p.amount), "bigint[]")?,
            self.param(text(&|p| p.currency.code().to_owned()), "text[]")?,
            self.param(text(&|p| p.capture_method.as_str().to_owned()), "text[]")?,
            self.param(text(&|p| p.status.as_str().to_owned()), "text[]")?,
            self.param(number(&|p| p.amount_capturable), "bigint[]")?,
            self.param(number(&|p| p.amount_captured), "bigint[]")?,
            self.param(number(&|p| p.amount_refunded), "bigint[]")?,
            self.param(optional(&|p| p.payment_method_id.clone()), "text[]")?,
            self.param(optional(&|p| p.customer.as_ref().map(|c| c.email.clone())), "text[]")?,
            self.param(
                optional(&|p| p.customer.as_ref().and_then(|c| c.name.clone())),
                "text[]",
            )?,
            self.param(
                optional(&|p| p.customer.as_ref().and_then(|c| c.phone.clone())),
                "text[]",
            )?,
            self.param(optional(&|p| p.description.clone()), "text[]")?,
            self.param(text(&|p| p.metadata.to_string()), "text[]")?,
            self.param(text(&|p| crate::payments::splits_text(&p.splits)), "text[]")?,
            self.param(optional_number(&|p| p.application_fee_amount), "bigint[]")?,
            self.param(optional(&|p| p.connector.clone()), "text[]")?,
            self.param(optional(&|p| p.connector_account_id.clone()), "text[]")?,
            self.param(optional(&|p| p.connector_name.clone()), "text[]")?,
            self.param(optional(&|p| p.provider_ref.clone()), "text[]")?,
            self.param(
                optional(&|p| crate::payments::error_text(&p.last_payment_error)),
                "text[]",
            )?,
            self.param(optional(&|p| p.cancellation_reason.clone()), "text[]")?,
            self.param(optional_number(&|p| p.authorized_at.map(|t| t.0)), "bigint[]")?,
            self.param(optional_number(&|p| p.claimed_until.map(|t| t.0)), "bigint[]")?,
            self.param(number(&|p| p.version), "bigint[]")?,
            self.param(number(&|p| p.created_at.0), "bigint[]")?,
            self.param(number(&|p| p.updated_at.0), "bigint[]")?,
            self.param(plans, "text[]")?,
            self.param(optional(&|p| p.idempotency_key.clone()), "text[]")?,
            self.param(optional(&|p| p.customer_id.clone()), "text[]")?,
            self.param(optional(&|p| p.receipt_email.clone()), "text[]")?,
        ];
        self.insert_all("new_payments", "payments", crate::payments::PAYMENT_COLS, &u);
        Ok(())
    }

    /// Each payment at its expected version, updated (and locked) in key order so that
    /// concurrent group commits cannot deadlock; [`Writes::run`] returns how many were stored.
    pub fn stored_payments(&mut self, payments: &[(Payment, i64)]) -> Result<()> {
        if payments.is_empty() {
            return Ok(());
        }
        let mut payments: Vec<&(Payment, i64)> = payments.iter().collect();
        payments.sort_by(|(a, _), (b, _)| (&a.merchant_id, &a.id).cmp(&(&b.merchant_id, &b.id)));
        let texts = |f: &dyn Fn(&Payment) -> String| -> Vec<String> { payments.iter().map(|(p, _)| f(p)).collect() };
        let optional = |f: &dyn Fn(&Payment) -> Option<String>| -> Vec<Option<String>> {
            payments.iter().map(|(p, _)| f(p)).collect()
        };
        let numbers = |f: &dyn Fn(&Payment) -> i64| -> Vec<i64> { payments.iter().map(|(p, _)| f(p)).collect() };
        let optional_numbers =
            |f: &dyn Fn(&Payment) -> Option<i64>| -> Vec<Option<i64>> { payments.iter().map(|(p, _)| f(p)).collect() };
        let plans = payments
            .iter()
            .map(|(p, _)| crate::payments::plan_text(&p.plan))
            .collect::<Result<Vec<_>>>()?;
        let u = [
            self.param(texts(&|p| p.merchant_id.clone()), "text[]")?,
            self.param(texts(&|p| p.id.clone()), "text[]")?,
            self.param(
                payments.iter().map(|(_, expected)| *expected).collect::<Vec<i64>>(),
                "bigint[]",
            )?,
            self.param(texts(&|p| p.status.as_str().to_owned()), "text[]")?,
            self.param(numbers(&|p| p.amount_capturable), "bigint[]")?,
            self.param(numbers(&|p| p.amount_captured), "bigint[]")?,
            self.param(numbers(&|p| p.amount_refunded), "bigint[]")?,
            self.param(optional(&|p| p.payment_method_id.clone()), "text[]")?,
            self.param(optional(&|p| p.connector_account_id.clone()), "text[]")?,
            self.param(optional(&|p| p.connector_name.clone()), "text[]")?,
            self.param(optional(&|p| p.provider_ref.clone()), "text[]")?,
            self.param(
                optional(&|p| crate::payments::error_text(&p.last_payment_error)),
                "text[]",
            )?,
            self.param(optional(&|p| p.cancellation_reason.clone()), "text[]")?,
            self.param(optional_numbers(&|p| p.authorized_at.map(|t| t.0)), "bigint[]")?,
            self.param(optional_numbers(&|p| p.claimed_until.map(|t| t.0)), "bigint[]")?,
            self.param(numbers(&|p| p.version), "bigint[]")?,
            self.param(numbers(&|p| p.updated_at.0), "bigint[]")?,
            self.param(numbers(&|p| p.amount), "bigint[]")?,
            self.param(optional(&|p| p.description.clone()), "text[]")?,
            self.param(texts(&|p| p.metadata.to_string()), "text[]")?,
            self.param(plans, "text[]")?,
        ]
        .join(", ");
        let rows = by_key(
            "payments",
            &format!(
                "UNNEST({u}) AS u(m, id, expected, status, capturable, captured, refunded, method, account, \
                 connector_name, provider_ref, error, reason, authorized_at, claimed_until, version, updated_at, \
                 amount, description, metadata, plan)"
            ),
        );
        self.cte(
            "stored",
            format!(
                "UPDATE payments AS p SET status = u.status, amount_capturable = u.capturable, \
                 amount_captured = u.captured, amount_refunded = u.refunded, payment_method_id = u.method, \
                 connector_account_id = u.account, connector_name = u.connector_name, \
                 provider_ref = u.provider_ref, last_payment_error = u.error, cancellation_reason = u.reason, \
                 authorized_at = u.authorized_at, claimed_until = u.claimed_until, version = u.version, \
                 updated_at = u.updated_at, amount = u.amount, description = u.description, \
                 metadata = u.metadata, claim_plan = u.plan \
                 FROM {rows} WHERE p.ctid = u.tid AND p.version = u.expected RETURNING 1"
            ),
        );
        self.counted.push("stored");
        self.expected += i64::try_from(payments.len()).unwrap_or(i64::MAX);
        Ok(())
    }

    /// Attempts, history rows, audit rows, and events with their outbox entries.
    pub fn records(&mut self, records: &Records<'_>) -> Result<()> {
        self.attempts(records.attempts)?;
        self.history(records.changes)?;
        self.audit(records.audit)?;
        self.events(records.events)
    }

    fn attempts(&mut self, attempts: &[Attempt]) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        let text = |f: fn(&Attempt) -> &str| attempts.iter().map(f).collect::<Vec<_>>();
        let optional = |f: fn(&Attempt) -> Option<&str>| attempts.iter().map(f).collect::<Vec<_>>();
        let u = [
            self.param(text(|a| &a.merchant_id), "text[]")?,
            self.param(text(|a| &a.id), "text[]")?,
            self.param(text(|a| &a.payment_id), "text[]")?,
            self.param(text(|a| &a.operation), "text[]")?,
            self.param(text(|a| &a.connector_account_id), "text[]")?,
            self.param(text(|a| &a.connector), "text[]")?,
            self.param(text(|a| &a.outcome), "text[]")?,
            self.param(optional(|a| a.error_code.as_deref()), "text[]")?,
            self.param(optional(|a| a.provider_ref.as_deref()), "text[]")?,
            self.param(optional(|a| a.request_id.as_deref()), "text[]")?,
            self.param(attempts.iter().map(|a| a.latency_ms).collect::<Vec<_>>(), "bigint[]")?,
            self.param(attempts.iter().map(|a| a.created_at.0).collect::<Vec<_>>(), "bigint[]")?,
        ];
        self.insert_all("attempts", "payment_attempts", crate::payments::ATTEMPT_COLS, &u);
        Ok(())
    }

    fn history(&mut self, changes: &[StatusChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let text = |f: fn(&StatusChange) -> &str| changes.iter().map(f).collect::<Vec<_>>();
        let optional = |f: fn(&StatusChange) -> Option<&str>| changes.iter().map(f).collect::<Vec<_>>();
        let u = [
            self.param(text(|c| &c.merchant_id), "text[]")?,
            self.param(text(|c| &c.id), "text[]")?,
            self.param(text(|c| &c.payment_id), "text[]")?,
            self.param(optional(|c| c.from_status.map(|s| s.as_str())), "text[]")?,
            self.param(text(|c| c.to_status.as_str()), "text[]")?,
            self.param(optional(|c| c.reason.as_deref()), "text[]")?,
            self.param(optional(|c| c.connector.as_deref()), "text[]")?,
            self.param(optional(|c| c.error_code.as_deref()), "text[]")?,
            self.param(optional(|c| c.request_id.as_deref()), "text[]")?,
            self.param(changes.iter().map(|c| c.created_at.0).collect::<Vec<_>>(), "bigint[]")?,
        ];
        self.insert_all("history", "payment_events", crate::payments::STATUS_CHANGE_COLS, &u);
        Ok(())
    }

    pub fn audit(&mut self, audit: &[AuditEntry]) -> Result<()> {
        if audit.is_empty() {
            return Ok(());
        }
        let text = |f: fn(&AuditEntry) -> &str| audit.iter().map(f).collect::<Vec<_>>();
        let optional = |f: fn(&AuditEntry) -> Option<&str>| audit.iter().map(f).collect::<Vec<_>>();
        let u = [
            self.param(text(|e| &e.id), "text[]")?,
            self.param(text(|e| &e.merchant_id), "text[]")?,
            self.param(text(|e| &e.actor), "text[]")?,
            self.param(text(|e| &e.action), "text[]")?,
            self.param(text(|e| &e.resource_type), "text[]")?,
            self.param(text(|e| &e.resource_id), "text[]")?,
            self.param(optional(|e| e.request_id.as_deref()), "text[]")?,
            self.param(optional(|e| e.ip.as_deref()), "text[]")?,
            self.param(optional(|e| e.user_agent.as_deref()), "text[]")?,
            self.param(audit.iter().map(|e| e.created_at.0).collect::<Vec<_>>(), "bigint[]")?,
        ];
        self.insert_all("audit", "audit_logs", crate::shared::AUDIT_COLS, &u);
        Ok(())
    }

    /// Every event numbered after its aggregate's last stored one plus its place among these
    /// events of that aggregate, and queued in the outbox.
    pub fn events(&mut self, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let text = |f: fn(&NewEvent) -> &str| events.iter().map(f).collect::<Vec<_>>();
        let u = [
            self.param(text(|e| &e.merchant_id), "text[]")?,
            self.param(text(|e| &e.id), "text[]")?,
            self.param(text(|e| &e.kind), "text[]")?,
            self.param(text(|e| e.aggregate_type), "text[]")?,
            self.param(text(|e| &e.aggregate_id), "text[]")?,
            self.param(settle_domain::event::offsets(events), "bigint[]")?,
            self.param(text(|e| &e.data), "text[]")?,
            self.param(events.iter().map(|e| e.created_at.0).collect::<Vec<_>>(), "bigint[]")?,
        ]
        .join(", ");
        self.cte(
            "new_events",
            format!(
                "INSERT INTO events (merchant_id, id, type, aggregate_type, aggregate_id, sequence, data, \
                 created_at) SELECT u.m, u.id, u.kind, u.atype, u.aid, COALESCE((SELECT MAX(e.sequence) \
                 FROM events e WHERE e.merchant_id = u.m AND e.aggregate_id = u.aid \
                 AND e.aggregate_type = u.atype), 0) + u.k, u.data, u.created \
                 FROM UNNEST({u}) AS u(m, id, kind, atype, aid, k, data, created) RETURNING merchant_id, id"
            ),
        );
        self.cte(
            "outbox",
            "INSERT INTO event_outbox (merchant_id, event_id) SELECT merchant_id, id FROM new_events".into(),
        );
        Ok(())
    }

    fn idempotency(&mut self, records: &[IdempotencyRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let text = |f: fn(&IdempotencyRecord) -> &str| records.iter().map(f).collect::<Vec<_>>();
        let u = [
            self.param(text(|r| &r.merchant_id), "text[]")?,
            self.param(text(|r| &r.key), "text[]")?,
            self.param(text(|r| &r.fingerprint), "text[]")?,
            self.param(text(|r| &r.method), "text[]")?,
            self.param(text(|r| &r.path), "text[]")?,
            self.param(
                records.iter().map(|r| i64::from(r.status_code)).collect::<Vec<_>>(),
                "bigint[]",
            )?,
            self.param(text(|r| &r.response_body), "text[]")?,
            self.param(records.iter().map(|r| r.created_at.0).collect::<Vec<_>>(), "bigint[]")?,
        ];
        self.insert_all(
            "idempotency",
            "idempotency_keys",
            "merchant_id, key, fingerprint, method, path, status_code, response_body, created_at",
            &u,
        );
        Ok(())
    }
}
