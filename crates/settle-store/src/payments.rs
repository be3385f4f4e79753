//! The payments part of the port: vaulted cards, connector accounts, routing rules, payments
//! with their attempts and status history, refunds. `payments_tx!` stamps the one
//! implementation out for each adapter, like `shared_tx!`.

use async_trait::async_trait;
use serde_json::{json, Value};
use settle_domain::{
    payment::{
        Attempt, CaptureMethod, ConnectorAccount, Payment, PaymentError, PaymentFilter, PaymentMethod, PaymentStatus,
        Plan, Refund, RefundStatus, Split, StatusChange,
    },
    Timestamp,
};

use crate::{Listing, PageRequest, Result, StoreError};

/// Most rows the unpaginated per-payment lists return (attempts, status history, refunds).
pub const PER_PAYMENT_ROWS_MAX: u32 = 1_000;
/// Most connector accounts one merchant may list for routing.
pub const CONNECTOR_ACCOUNTS_MAX: u32 = 100;

#[async_trait]
pub trait PaymentTx: Send {
    async fn insert_payment_method(&mut self, method: &PaymentMethod) -> Result<()>;
    /// Several in one statement where the engine gains by it.
    async fn insert_payment_methods(&mut self, methods: &[PaymentMethod]) -> Result<()>;
    async fn get_payment_method(&mut self, merchant_id: &str, id: &str) -> Result<Option<PaymentMethod>>;

    async fn insert_connector_account(&mut self, account: &ConnectorAccount) -> Result<()>;
    async fn get_connector_account(&mut self, merchant_id: &str, id: &str) -> Result<Option<ConnectorAccount>>;
    /// A merchant's connector accounts in creation order (at most [`CONNECTOR_ACCOUNTS_MAX`]).
    async fn list_connector_accounts(&mut self, merchant_id: &str) -> Result<Vec<ConnectorAccount>>;
    async fn set_connector_account_enabled(&mut self, merchant_id: &str, id: &str, enabled: bool) -> Result<bool>;
    async fn get_routing(&mut self, merchant_id: &str) -> Result<Option<Value>>;
    async fn put_routing(&mut self, merchant_id: &str, rules: &Value, at: Timestamp) -> Result<()>;

    async fn insert_payment(&mut self, payment: &Payment) -> Result<()>;
    /// Several in one statement where the engine gains by it.
    async fn insert_payments(&mut self, payments: &[Payment]) -> Result<()>;
    async fn get_payment(&mut self, merchant_id: &str, id: &str) -> Result<Option<Payment>>;
    /// The payment a request with this `Idempotency-Key` created.
    async fn payment_by_idempotency_key(&mut self, merchant_id: &str, key: &str) -> Result<Option<Payment>>;
    /// Forgets the idempotency keys of payments and of refunds created before `created_before`
    /// (at most `limit` of each), as idempotency records are pruned; returns how many.
    async fn forget_request_keys(&mut self, created_before: Timestamp, limit: u32) -> Result<u64>;
    /// Payments of every merchant whose claim has expired (its process died mid-call); oldest first.
    async fn expired_claims(&mut self, now: Timestamp, limit: u32) -> Result<Vec<Payment>>;
    /// Stores `payment` if the stored row is still at `expected_version`; `false` when another
    /// change came first (the compare-and-set that serializes commands on one payment).
    async fn update_payment(&mut self, payment: &Payment, expected_version: i64) -> Result<bool>;
    /// [`PaymentTx::update_payment`] for many payments in one statement where the engine can;
    /// returns how many were stored (fewer than given: another change came first for some).
    async fn update_payments(&mut self, payments: &[(Payment, i64)]) -> Result<usize>;
    async fn list_payments(
        &mut self,
        merchant_id: &str,
        filter: &PaymentFilter,
        page: &PageRequest,
    ) -> Result<Listing<Payment>>;
    /// Payments of every merchant in `status` whose clock started before `before`, unchanged
    /// since `quiet_since`, unclaimed at `now`, the least recently changed first: awaiting
    /// capture timed from their authorization ([`due_clock`]), otherwise from their last change.
    /// For the jobs, which then claim each one; `quiet_since` spaces out the tries of a payment a
    /// job could not conclude, and the order puts it behind the others.
    async fn due_payments(
        &mut self,
        status: PaymentStatus,
        before: Timestamp,
        quiet_since: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Payment>>;

    async fn insert_attempts(&mut self, attempts: &[Attempt]) -> Result<()>;
    async fn list_attempts(&mut self, merchant_id: &str, payment_id: &str) -> Result<Vec<Attempt>>;
    /// `authorize` attempts of every merchant whose outcome stayed unknown (error code
    /// [`UNKNOWN_OUTCOME_CODES`]), made from `after` to before `before`, that have no
    /// [`late_check_id`] attempt yet; oldest first.
    async fn unknown_authorizations(&mut self, after: Timestamp, before: Timestamp, limit: u32)
        -> Result<Vec<Attempt>>;
    async fn insert_status_changes(&mut self, changes: &[StatusChange]) -> Result<()>;
    async fn list_status_changes(&mut self, merchant_id: &str, payment_id: &str) -> Result<Vec<StatusChange>>;

    /// Adds `delta` (negative to release) to the payment's refunded total in one statement, if
    /// the payment has succeeded and the total stays within 0..=amount_captured; `false`
    /// otherwise. On PostgreSQL the row stays locked until the transaction ends, so concurrent
    /// refunds of one payment run one after the other; the table's CHECK is the last word.
    async fn add_refunded(&mut self, merchant_id: &str, payment_id: &str, delta: i64, now: Timestamp) -> Result<bool>;
    /// Stores a new refund; another refund of the same `Idempotency-Key` refuses it (unique key).
    async fn insert_refund(&mut self, refund: &Refund) -> Result<()>;
    /// The refund a request with this `Idempotency-Key` created.
    async fn refund_by_idempotency_key(&mut self, merchant_id: &str, key: &str) -> Result<Option<Refund>>;
    /// Stores a refund's outcome (and its idempotency key, which a refund the ledger refused
    /// gives up) if it is still `pending`; `false` when another process concluded it first.
    async fn update_refund(&mut self, refund: &Refund) -> Result<bool>;
    /// `pending` refunds of every merchant last changed before `updated_before`; oldest first.
    async fn pending_refunds(&mut self, updated_before: Timestamp, limit: u32) -> Result<Vec<Refund>>;
    async fn get_refund(&mut self, merchant_id: &str, id: &str) -> Result<Option<Refund>>;
    /// A payment's refunds, oldest first (at most [`PER_PAYMENT_ROWS_MAX`]).
    async fn refunds_of(&mut self, merchant_id: &str, payment_id: &str) -> Result<Vec<Refund>>;
    async fn list_refunds(
        &mut self,
        merchant_id: &str,
        payment_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Listing<Refund>>;
}

/// The column [`PaymentTx::due_payments`] times a payment in `status` by (each has its partial
/// index): an authorization expires by its age, a stuck payment is synced by its last change.
pub fn due_clock(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::RequiresCapture => "authorized_at",
        _ => "updated_at",
    }
}

/// The error codes of a connector call whose outcome is unknown: it may have been carried out.
pub const UNKNOWN_OUTCOME_CODES: [&str; 2] = ["connector_timeout", "connector_unavailable"];

/// What [`late_check_id`] appends.
pub(crate) const LATE_CHECK_SUFFIX: &str = ":late";

/// The id of the attempt that looked an unknown authorization (attempt `id`) up once more.
pub fn late_check_id(id: &str) -> String {
    format!("{id}{LATE_CHECK_SUFFIX}")
}

pub const PAYMENT_COLS: &str = "merchant_id, id, amount, currency, capture_method, status, amount_capturable, \
    amount_captured, amount_refunded, payment_method_id, customer_email, customer_name, customer_phone, description, \
    metadata, splits, application_fee_amount, connector, connector_account_id, connector_name, provider_ref, \
    last_payment_error, cancellation_reason, authorized_at, claimed_until, version, created_at, updated_at, \
    claim_plan, idempotency_key, customer_id, receipt_email";
pub const PAYMENT_METHOD_COLS: &str =
    "merchant_id, id, brand, last4, exp_month, exp_year, fingerprint, number_sealed, created_at, customer_id";
pub const CONNECTOR_ACCOUNT_COLS: &str = "merchant_id, id, connector, label, credentials_sealed, enabled, created_at";
pub const ATTEMPT_COLS: &str = "merchant_id, id, payment_id, operation, connector_account_id, connector, outcome, \
    error_code, provider_ref, request_id, latency_ms, created_at";
pub const STATUS_CHANGE_COLS: &str =
    "merchant_id, id, payment_id, from_status, to_status, reason, connector, error_code, request_id, created_at";
pub const REFUND_COLS: &str = "merchant_id, id, payment_id, amount, currency, status, reason, metadata, parts, \
    connector_account_id, provider_ref, failure_code, created_at, updated_at, idempotency_key";

pub const INSERT_STATUS_CHANGE: &str = "INSERT INTO payment_events (merchant_id, id, payment_id, from_status, \
    to_status, reason, connector, error_code, request_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

pub fn status(s: &str) -> Result<PaymentStatus> {
    PaymentStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("payment status {s}")))
}

pub fn capture_method(s: &str) -> Result<CaptureMethod> {
    CaptureMethod::parse(s).ok_or_else(|| StoreError::Corrupt(format!("capture method {s}")))
}

pub fn refund_status(s: &str) -> Result<RefundStatus> {
    RefundStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("refund status {s}")))
}

pub fn splits_text(splits: &[Split]) -> String {
    Value::Array(
        splits
            .iter()
            .map(|s| json!({ "payee_account_id": s.payee_account_id, "amount": s.amount }))
            .collect(),
    )
    .to_string()
}

pub fn splits(text: &str) -> Result<Vec<Split>> {
    let corrupt = || StoreError::Corrupt(format!("splits {text}"));
    let value: Value = serde_json::from_str(text).map_err(|_| corrupt())?;
    value
        .as_array()
        .ok_or_else(corrupt)?
        .iter()
        .map(|s| {
            Ok(Split {
                payee_account_id: s["payee_account_id"].as_str().ok_or_else(corrupt)?.to_owned(),
                amount: s["amount"].as_i64().ok_or_else(corrupt)?,
            })
        })
        .collect()
}

pub fn error_text(error: &Option<PaymentError>) -> Option<String> {
    error
        .as_ref()
        .map(|e| json!({ "code": e.code, "message": e.message, "connector": e.connector }).to_string())
}

pub fn error(text: Option<String>) -> Result<Option<PaymentError>> {
    let Some(text) = text else { return Ok(None) };
    let corrupt = || StoreError::Corrupt(format!("payment error {text}"));
    let value: Value = serde_json::from_str(&text).map_err(|_| corrupt())?;
    Ok(Some(PaymentError {
        code: value["code"].as_str().ok_or_else(corrupt)?.to_owned(),
        message: value["message"].as_str().ok_or_else(corrupt)?.to_owned(),
        connector: value["connector"].as_str().map(str::to_owned),
    }))
}

pub fn parts(text: &str) -> Result<Vec<i64>> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt(format!("refund parts {text}")))
}

pub fn plan(text: Option<String>) -> Result<Option<Plan>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("claim plan: {e}"))))
        .transpose()
}

pub fn plan_text(plan: &Option<Plan>) -> Result<Option<String>> {
    plan.as_ref()
        .map(|p| serde_json::to_string(p).map_err(|e| StoreError::Corrupt(format!("claim plan: {e}"))))
        .transpose()
}

pub fn month(m: i64) -> Result<u32> {
    u32::try_from(m).map_err(|_| StoreError::Corrupt(format!("month {m}")))
}

macro_rules! payments_tx {
    ($tx:ident, $row:ty) => {
        use $crate::payments as pay;

        fn payment_from(row: &$row) -> $crate::Result<settle_domain::payment::Payment> {
            let email: Option<String> = row.try_get("customer_email")?;
            Ok(settle_domain::payment::Payment {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                amount: row.try_get("amount")?,
                currency: sh::currency(row.try_get("currency")?)?,
                capture_method: pay::capture_method(row.try_get("capture_method")?)?,
                status: pay::status(row.try_get("status")?)?,
                amount_capturable: row.try_get("amount_capturable")?,
                amount_captured: row.try_get("amount_captured")?,
                amount_refunded: row.try_get("amount_refunded")?,
                payment_method_id: row.try_get("payment_method_id")?,
                customer_id: row.try_get("customer_id")?,
                receipt_email: row.try_get("receipt_email")?,
                customer: match email {
                    None => None,
                    Some(email) => Some(settle_domain::payment::Customer {
                        email,
                        name: row.try_get("customer_name")?,
                        phone: row.try_get("customer_phone")?,
                    }),
                },
                description: row.try_get("description")?,
                metadata: sh::json(row.try_get("metadata")?)?,
                splits: pay::splits(row.try_get("splits")?)?,
                application_fee_amount: row.try_get("application_fee_amount")?,
                connector: row.try_get("connector")?,
                connector_account_id: row.try_get("connector_account_id")?,
                connector_name: row.try_get("connector_name")?,
                provider_ref: row.try_get("provider_ref")?,
                last_payment_error: pay::error(row.try_get("last_payment_error")?)?,
                cancellation_reason: row.try_get("cancellation_reason")?,
                authorized_at: sh::ts(row.try_get("authorized_at")?),
                claimed_until: sh::ts(row.try_get("claimed_until")?),
                plan: pay::plan(row.try_get("claim_plan")?)?,
                idempotency_key: row.try_get("idempotency_key")?,
                version: row.try_get("version")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                updated_at: settle_domain::Timestamp(row.try_get("updated_at")?),
            })
        }

        fn payment_method_from(row: &$row) -> $crate::Result<settle_domain::payment::PaymentMethod> {
            Ok(settle_domain::payment::PaymentMethod {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                brand: row.try_get("brand")?,
                last4: row.try_get("last4")?,
                exp_month: pay::month(row.try_get("exp_month")?)?,
                exp_year: pay::month(row.try_get("exp_year")?)?,
                fingerprint: row.try_get("fingerprint")?,
                number_sealed: row.try_get("number_sealed")?,
                customer_id: row.try_get("customer_id")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
            })
        }

        fn connector_account_from(row: &$row) -> $crate::Result<settle_domain::payment::ConnectorAccount> {
            Ok(settle_domain::payment::ConnectorAccount {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                connector: row.try_get("connector")?,
                label: row.try_get("label")?,
                credentials_sealed: row.try_get("credentials_sealed")?,
                enabled: row.try_get("enabled")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
            })
        }

        fn attempt_from(row: &$row) -> $crate::Result<settle_domain::payment::Attempt> {
            Ok(settle_domain::payment::Attempt {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                payment_id: row.try_get("payment_id")?,
                operation: row.try_get("operation")?,
                connector_account_id: row.try_get("connector_account_id")?,
                connector: row.try_get("connector")?,
                outcome: row.try_get("outcome")?,
                error_code: row.try_get("error_code")?,
                provider_ref: row.try_get("provider_ref")?,
                request_id: row.try_get("request_id")?,
                latency_ms: row.try_get("latency_ms")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
            })
        }

        fn status_change_from(row: &$row) -> $crate::Result<settle_domain::payment::StatusChange> {
            let from: Option<String> = row.try_get("from_status")?;
            Ok(settle_domain::payment::StatusChange {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                payment_id: row.try_get("payment_id")?,
                from_status: from.as_deref().map(pay::status).transpose()?,
                to_status: pay::status(row.try_get("to_status")?)?,
                reason: row.try_get("reason")?,
                connector: row.try_get("connector")?,
                error_code: row.try_get("error_code")?,
                request_id: row.try_get("request_id")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
            })
        }

        fn refund_from(row: &$row) -> $crate::Result<settle_domain::payment::Refund> {
            Ok(settle_domain::payment::Refund {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                payment_id: row.try_get("payment_id")?,
                amount: row.try_get("amount")?,
                currency: sh::currency(row.try_get("currency")?)?,
                status: pay::refund_status(row.try_get("status")?)?,
                reason: row.try_get("reason")?,
                metadata: sh::json(row.try_get("metadata")?)?,
                parts: pay::parts(row.try_get("parts")?)?,
                connector_account_id: row.try_get("connector_account_id")?,
                provider_ref: row.try_get("provider_ref")?,
                failure_code: row.try_get("failure_code")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                updated_at: settle_domain::Timestamp(row.try_get("updated_at")?),
                idempotency_key: row.try_get("idempotency_key")?,
            })
        }

        impl $tx {
            /// One attempt row.
            async fn insert_attempt(&mut self, a: &settle_domain::payment::Attempt) -> $crate::Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO payment_attempts ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    pay::ATTEMPT_COLS
                ))
                .bind(&a.merchant_id)
                .bind(&a.id)
                .bind(&a.payment_id)
                .bind(&a.operation)
                .bind(&a.connector_account_id)
                .bind(&a.connector)
                .bind(&a.outcome)
                .bind(&a.error_code)
                .bind(&a.provider_ref)
                .bind(&a.request_id)
                .bind(a.latency_ms)
                .bind(a.created_at.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            /// One status history row.
            async fn insert_status_change(&mut self, c: &settle_domain::payment::StatusChange) -> $crate::Result<()> {
                sqlx::query(pay::INSERT_STATUS_CHANGE)
                    .bind(&c.merchant_id)
                    .bind(&c.id)
                    .bind(&c.payment_id)
                    .bind(c.from_status.map(|s| s.as_str()))
                    .bind(c.to_status.as_str())
                    .bind(&c.reason)
                    .bind(&c.connector)
                    .bind(&c.error_code)
                    .bind(&c.request_id)
                    .bind(c.created_at.0)
                    .execute(&mut *self.tx)
                    .await?;
                Ok(())
            }

            /// One payment's rows of `table`, oldest first (at most `PER_PAYMENT_ROWS_MAX`).
            async fn of_payment<T>(
                &mut self,
                cols: &str,
                table: &str,
                merchant_id: &str,
                payment_id: &str,
                map: fn(&$row) -> $crate::Result<T>,
            ) -> $crate::Result<Vec<T>> {
                let sql = format!(
                    "SELECT {cols} FROM {table} WHERE merchant_id = $1 AND payment_id = $2 ORDER BY seq LIMIT {}",
                    pay::PER_PAYMENT_ROWS_MAX
                );
                let rows = sqlx::query(&sql).bind(merchant_id).bind(payment_id).fetch_all(&mut *self.tx).await?;
                rows.iter().map(map).collect()
            }
        }

        #[async_trait::async_trait]
        impl $crate::payments::PaymentTx for $tx {
            async fn insert_payment_method(&mut self, m: &settle_domain::payment::PaymentMethod) -> $crate::Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO payment_methods ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    pay::PAYMENT_METHOD_COLS
                ))
                .bind(&m.merchant_id)
                .bind(&m.id)
                .bind(&m.brand)
                .bind(&m.last4)
                .bind(i64::from(m.exp_month))
                .bind(i64::from(m.exp_year))
                .bind(&m.fingerprint)
                .bind(&m.number_sealed)
                .bind(m.created_at.0)
                .bind(&m.customer_id)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            async fn insert_payment_methods(
                &mut self,
                methods: &[settle_domain::payment::PaymentMethod],
            ) -> $crate::Result<()> {
                match methods {
                    [] => Ok(()),
                    [one] => self.insert_payment_method(one).await,
                    many => self.insert_payment_methods_bulk(many).await,
                }
            }

            async fn get_payment_method(
                &mut self,
                merchant_id: &str,
                id: &str,
            ) -> $crate::Result<Option<settle_domain::payment::PaymentMethod>> {
                let sql = format!(
                    "SELECT {} FROM payment_methods WHERE merchant_id = $1 AND id = $2",
                    pay::PAYMENT_METHOD_COLS
                );
                let row = sqlx::query(&sql).bind(merchant_id).bind(id).fetch_optional(&mut *self.tx).await?;
                row.as_ref().map(payment_method_from).transpose()
            }

            async fn insert_connector_account(
                &mut self,
                a: &settle_domain::payment::ConnectorAccount,
            ) -> $crate::Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO connector_accounts ({}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    pay::CONNECTOR_ACCOUNT_COLS
                ))
                .bind(&a.merchant_id)
                .bind(&a.id)
                .bind(&a.connector)
                .bind(&a.label)
                .bind(&a.credentials_sealed)
                .bind(a.enabled)
                .bind(a.created_at.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            async fn get_connector_account(
                &mut self,
                merchant_id: &str,
                id: &str,
            ) -> $crate::Result<Option<settle_domain::payment::ConnectorAccount>> {
                let sql = format!(
                    "SELECT {} FROM connector_accounts WHERE merchant_id = $1 AND id = $2",
                    pay::CONNECTOR_ACCOUNT_COLS
                );
                let row = sqlx::query(&sql).bind(merchant_id).bind(id).fetch_optional(&mut *self.tx).await?;
                row.as_ref().map(connector_account_from).transpose()
            }

            async fn list_connector_accounts(
                &mut self,
                merchant_id: &str,
            ) -> $crate::Result<Vec<settle_domain::payment::ConnectorAccount>> {
                let sql = format!(
                    "SELECT {} FROM connector_accounts WHERE merchant_id = $1 ORDER BY seq LIMIT {}",
                    pay::CONNECTOR_ACCOUNT_COLS,
                    pay::CONNECTOR_ACCOUNTS_MAX
                );
                let rows = sqlx::query(&sql).bind(merchant_id).fetch_all(&mut *self.tx).await?;
                rows.iter().map(connector_account_from).collect()
            }

            async fn set_connector_account_enabled(
                &mut self,
                merchant_id: &str,
                id: &str,
                enabled: bool,
            ) -> $crate::Result<bool> {
                let done = sqlx::query("UPDATE connector_accounts SET enabled = $3 WHERE merchant_id = $1 AND id = $2")
                    .bind(merchant_id)
                    .bind(id)
                    .bind(enabled)
                    .execute(&mut *self.tx)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn get_routing(&mut self, merchant_id: &str) -> $crate::Result<Option<serde_json::Value>> {
                let text: Option<String> = sqlx::query_scalar("SELECT rules FROM routing_rules WHERE merchant_id = $1")
                    .bind(merchant_id)
                    .fetch_optional(&mut *self.tx)
                    .await?;
                text.as_deref().map(sh::json).transpose()
            }

            async fn put_routing(
                &mut self,
                merchant_id: &str,
                rules: &serde_json::Value,
                at: settle_domain::Timestamp,
            ) -> $crate::Result<()> {
                sqlx::query(
                    "INSERT INTO routing_rules (merchant_id, rules, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (merchant_id) DO UPDATE SET rules = excluded.rules, updated_at = excluded.updated_at",
                )
                .bind(merchant_id)
                .bind(rules.to_string())
                .bind(at.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            async fn insert_payment(&mut self, p: &settle_domain::payment::Payment) -> $crate::Result<()> {
                let sql = format!(
                    "INSERT INTO payments ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                     $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32)",
                    pay::PAYMENT_COLS
                );
                let customer = p.customer.as_ref();
                sqlx::query(&sql)
                    .bind(&p.merchant_id)
                    .bind(&p.id)
                    .bind(p.amount)
                    .bind(p.currency.code())
                    .bind(p.capture_method.as_str())
                    .bind(p.status.as_str())
                    .bind(p.amount_capturable)
                    .bind(p.amount_captured)
                    .bind(p.amount_refunded)
                    .bind(&p.payment_method_id)
                    .bind(customer.map(|c| c.email.clone()))
                    .bind(customer.and_then(|c| c.name.clone()))
                    .bind(customer.and_then(|c| c.phone.clone()))
                    .bind(&p.description)
                    .bind(p.metadata.to_string())
                    .bind(pay::splits_text(&p.splits))
                    .bind(p.application_fee_amount)
                    .bind(&p.connector)
                    .bind(&p.connector_account_id)
                    .bind(&p.connector_name)
                    .bind(&p.provider_ref)
                    .bind(pay::error_text(&p.last_payment_error))
                    .bind(&p.cancellation_reason)
                    .bind(p.authorized_at.map(|t| t.0))
                    .bind(p.claimed_until.map(|t| t.0))
                    .bind(p.version)
                    .bind(p.created_at.0)
                    .bind(p.updated_at.0)
                    .bind(pay::plan_text(&p.plan)?)
                    .bind(&p.idempotency_key)
                    .bind(&p.customer_id)
                    .bind(&p.receipt_email)
                    .execute(&mut *self.tx)
                    .await?;
                Ok(())
            }

            async fn insert_payments(&mut self, payments: &[settle_domain::payment::Payment]) -> $crate::Result<()> {
                match payments {
                    [] => Ok(()),
                    [one] => self.insert_payment(one).await,
                    many => self.insert_payments_bulk(many).await,
                }
            }

            async fn payment_by_idempotency_key(
                &mut self,
                merchant_id: &str,
                key: &str,
            ) -> $crate::Result<Option<settle_domain::payment::Payment>> {
                let sql = format!(
                    "SELECT {} FROM payments WHERE merchant_id = $1 AND idempotency_key = $2",
                    pay::PAYMENT_COLS
                );
                let row = sqlx::query(&sql).bind(merchant_id).bind(key).fetch_optional(&mut *self.tx).await?;
                row.as_ref().map(payment_from).transpose()
            }

            async fn forget_request_keys(
                &mut self,
                created_before: settle_domain::Timestamp,
                limit: u32,
            ) -> $crate::Result<u64> {
                let mut forgotten = 0;
                for table in ["payments", "refunds"] {
                    let done = sqlx::query(&format!(
                        "UPDATE {table} SET idempotency_key = NULL WHERE (merchant_id, id) IN \
                         (SELECT merchant_id, id FROM {table} WHERE idempotency_key IS NOT NULL AND created_at < $1 LIMIT $2)"
                    ))
                    .bind(created_before.0)
                    .bind(i64::from(limit))
                    .execute(&mut *self.tx)
                    .await?;
                    forgotten += done.rows_affected();
                }
                Ok(forgotten)
            }

            async fn expired_claims(
                &mut self,
                now: settle_domain::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<settle_domain::payment::Payment>> {
                let sql = format!(
                    "SELECT {} FROM payments WHERE claimed_until IS NOT NULL AND claimed_until <= $1 \
                     ORDER BY claimed_until LIMIT $2",
                    pay::PAYMENT_COLS
                );
                let rows = sqlx::query(&sql)
                    .bind(now.0)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.tx)
                    .await?;
                rows.iter().map(payment_from).collect()
            }

            async fn get_payment(
                &mut self,
                merchant_id: &str,
                id: &str,
            ) -> $crate::Result<Option<settle_domain::payment::Payment>> {
                let sql = format!("SELECT {} FROM payments WHERE merchant_id = $1 AND id = $2", pay::PAYMENT_COLS);
                let row = sqlx::query(&sql).bind(merchant_id).bind(id).fetch_optional(&mut *self.tx).await?;
                row.as_ref().map(payment_from).transpose()
            }

            async fn update_payment(
                &mut self,
                p: &settle_domain::payment::Payment,
                expected_version: i64,
            ) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE payments SET status = $3, amount_capturable = $4, amount_captured = $5, \
                     amount_refunded = $6, payment_method_id = $7, connector_account_id = $8, connector_name = $9, \
                     provider_ref = $10, last_payment_error = $11, cancellation_reason = $12, authorized_at = $13, \
                     claimed_until = $14, version = $15, updated_at = $16, amount = $17, description = $18, \
                     metadata = $19, claim_plan = $21 \
                     WHERE merchant_id = $1 AND id = $2 AND version = $20",
                )
                .bind(&p.merchant_id)
                .bind(&p.id)
                .bind(p.status.as_str())
                .bind(p.amount_capturable)
                .bind(p.amount_captured)
                .bind(p.amount_refunded)
                .bind(&p.payment_method_id)
                .bind(&p.connector_account_id)
                .bind(&p.connector_name)
                .bind(&p.provider_ref)
                .bind(pay::error_text(&p.last_payment_error))
                .bind(&p.cancellation_reason)
                .bind(p.authorized_at.map(|t| t.0))
                .bind(p.claimed_until.map(|t| t.0))
                .bind(p.version)
                .bind(p.updated_at.0)
                .bind(p.amount)
                .bind(&p.description)
                .bind(p.metadata.to_string())
                .bind(expected_version)
                .bind(pay::plan_text(&p.plan)?)
                .execute(&mut *self.tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn update_payments(
                &mut self,
                payments: &[(settle_domain::payment::Payment, i64)],
            ) -> $crate::Result<usize> {
                match payments {
                    [] => Ok(0),
                    [(p, expected)] => Ok(usize::from(self.update_payment(p, *expected).await?)),
                    many => self.update_payments_bulk(many).await,
                }
            }

            async fn list_payments(
                &mut self,
                merchant_id: &str,
                filter: &settle_domain::payment::PaymentFilter,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::payment::Payment>> {
                let mut sql = String::from("merchant_id = $1");
                let mut binds: Vec<String> = vec![merchant_id.to_owned()];
                let mut add = |clause: &str, value: String| {
                    binds.push(value);
                    sql.push_str(&format!(" AND {clause}", clause = clause.replace('?', &format!("${}", binds.len()))));
                };
                if let Some(s) = filter.status {
                    add("status = ?", s.as_str().to_owned());
                }
                if let Some(e) = &filter.customer_email {
                    add("customer_email = ?", e.clone());
                }
                if let Some(c) = &filter.customer_id {
                    add("customer_id = ?", c.clone());
                }
                if let Some(t) = filter.created_gte {
                    add("created_at >= CAST(? AS BIGINT)", t.0.to_string());
                }
                if let Some(t) = filter.created_lt {
                    add("created_at < CAST(? AS BIGINT)", t.0.to_string());
                }
                if filter.charged {
                    // `PaymentStatus::has_charge`, in SQL.
                    let statuses = settle_domain::payment::PaymentStatus::CHARGED.map(|s| format!("'{}'", s.as_str()));
                    sql.push_str(&format!(" AND (status IN ({}) OR amount_captured > 0)", statuses.join(", ")));
                }
                let binds: Vec<&str> = binds.iter().map(String::as_str).collect();
                self.page(pay::PAYMENT_COLS, "payments", &sql, &binds, page, payment_from)
                    .await
            }

            async fn due_payments(
                &mut self,
                status: settle_domain::payment::PaymentStatus,
                before: settle_domain::Timestamp,
                quiet_since: settle_domain::Timestamp,
                now: settle_domain::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<settle_domain::payment::Payment>> {
                // The status is written as a literal so that a plan made once (PostgreSQL plans
                // generically) can still use the partial index of the status.
                let clock = pay::due_clock(status);
                let sql = format!(
                    "SELECT {} FROM payments WHERE status = '{}' AND {clock} < $1 AND updated_at < $4 \
                     AND (claimed_until IS NULL OR claimed_until <= $2) ORDER BY updated_at LIMIT $3",
                    pay::PAYMENT_COLS,
                    status.as_str()
                );
                let rows = sqlx::query(&sql)
                    .bind(before.0)
                    .bind(now.0)
                    .bind(i64::from(limit))
                    .bind(quiet_since.0)
                    .fetch_all(&mut *self.tx)
                    .await?;
                rows.iter().map(payment_from).collect()
            }

            async fn insert_attempts(&mut self, attempts: &[settle_domain::payment::Attempt]) -> $crate::Result<()> {
                match attempts {
                    [] => Ok(()),
                    [one] => self.insert_attempt(one).await,
                    many => self.insert_attempts_bulk(many).await,
                }
            }

            async fn list_attempts(
                &mut self,
                merchant_id: &str,
                payment_id: &str,
            ) -> $crate::Result<Vec<settle_domain::payment::Attempt>> {
                self.of_payment(pay::ATTEMPT_COLS, "payment_attempts", merchant_id, payment_id, attempt_from).await
            }

            async fn unknown_authorizations(
                &mut self,
                after: settle_domain::Timestamp,
                before: settle_domain::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<settle_domain::payment::Attempt>> {
                // The codes as literals, as in the partial index that serves this.
                let codes = pay::UNKNOWN_OUTCOME_CODES.map(|c| format!("'{c}'")).join(", ");
                let sql = format!(
                    "SELECT {} FROM payment_attempts a WHERE operation = 'authorize' AND error_code IN ({codes}) \
                     AND created_at >= $1 AND created_at < $2 AND NOT EXISTS (SELECT 1 FROM payment_attempts l \
                     WHERE l.merchant_id = a.merchant_id AND l.id = a.id || '{}') ORDER BY created_at LIMIT $3",
                    pay::ATTEMPT_COLS,
                    pay::LATE_CHECK_SUFFIX
                );
                let rows = sqlx::query(&sql)
                    .bind(after.0)
                    .bind(before.0)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.tx)
                    .await?;
                rows.iter().map(attempt_from).collect()
            }

            async fn insert_status_changes(
                &mut self,
                changes: &[settle_domain::payment::StatusChange],
            ) -> $crate::Result<()> {
                match changes {
                    [] => Ok(()),
                    [one] => self.insert_status_change(one).await,
                    many => self.insert_status_changes_bulk(many).await,
                }
            }

            async fn list_status_changes(
                &mut self,
                merchant_id: &str,
                payment_id: &str,
            ) -> $crate::Result<Vec<settle_domain::payment::StatusChange>> {
                self.of_payment(pay::STATUS_CHANGE_COLS, "payment_events", merchant_id, payment_id, status_change_from).await
            }

            async fn add_refunded(
                &mut self,
                merchant_id: &str,
                payment_id: &str,
                delta: i64,
                now: settle_domain::Timestamp,
            ) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE payments SET amount_refunded = amount_refunded + $3, version = version + 1, \
                     updated_at = $4 WHERE merchant_id = $1 AND id = $2 AND status = 'succeeded' \
                     AND amount_refunded + $3 BETWEEN 0 AND amount_captured",
                )
                .bind(merchant_id)
                .bind(payment_id)
                .bind(delta)
                .bind(now.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_refund(&mut self, r: &settle_domain::payment::Refund) -> $crate::Result<()> {
                let sql = format!(
                    "INSERT INTO refunds ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                    pay::REFUND_COLS
                );
                sqlx::query(&sql)
                    .bind(&r.merchant_id)
                    .bind(&r.id)
                    .bind(&r.payment_id)
                    .bind(r.amount)
                    .bind(r.currency.code())
                    .bind(r.status.as_str())
                    .bind(&r.reason)
                    .bind(r.metadata.to_string())
                    .bind(serde_json::Value::from(r.parts.clone()).to_string())
                    .bind(&r.connector_account_id)
                    .bind(&r.provider_ref)
                    .bind(&r.failure_code)
                    .bind(r.created_at.0)
                    .bind(r.updated_at.0)
                    .bind(&r.idempotency_key)
                    .execute(&mut *self.tx)
                    .await?;
                Ok(())
            }

            async fn refund_by_idempotency_key(
                &mut self,
                merchant_id: &str,
                key: &str,
            ) -> $crate::Result<Option<settle_domain::payment::Refund>> {
                let sql = format!(
                    "SELECT {} FROM refunds WHERE merchant_id = $1 AND idempotency_key = $2",
                    pay::REFUND_COLS
                );
                let row = sqlx::query(&sql).bind(merchant_id).bind(key).fetch_optional(&mut *self.tx).await?;
                row.as_ref().map(refund_from).transpose()
            }

            async fn update_refund(&mut self, r: &settle_domain::payment::Refund) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE refunds SET status = $3, provider_ref = $4, failure_code = $5, updated_at = $6, \
                     idempotency_key = $7 WHERE merchant_id = $1 AND id = $2 AND status = 'pending'",
                )
                .bind(&r.merchant_id)
                .bind(&r.id)
                .bind(r.status.as_str())
                .bind(&r.provider_ref)
                .bind(&r.failure_code)
                .bind(r.updated_at.0)
                .bind(&r.idempotency_key)
                .execute(&mut *self.tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn pending_refunds(
                &mut self,
                updated_before: settle_domain::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<settle_domain::payment::Refund>> {
                let sql = format!(
                    "SELECT {} FROM refunds WHERE status = 'pending' AND updated_at < $1 ORDER BY updated_at LIMIT $2",
                    pay::REFUND_COLS
                );
                let rows = sqlx::query(&sql)
                    .bind(updated_before.0)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.tx)
                    .await?;
                rows.iter().map(refund_from).collect()
            }

            async fn get_refund(
                &mut self,
                merchant_id: &str,
                id: &str,
            ) -> $crate::Result<Option<settle_domain::payment::Refund>> {
                let sql = format!("SELECT {} FROM refunds WHERE merchant_id = $1 AND id = $2", pay::REFUND_COLS);
                let row = sqlx::query(&sql).bind(merchant_id).bind(id).fetch_optional(&mut *self.tx).await?;
                row.as_ref().map(refund_from).transpose()
            }

            async fn refunds_of(
                &mut self,
                merchant_id: &str,
                payment_id: &str,
            ) -> $crate::Result<Vec<settle_domain::payment::Refund>> {
                self.of_payment(pay::REFUND_COLS, "refunds", merchant_id, payment_id, refund_from).await
            }

            async fn list_refunds(
                &mut self,
                merchant_id: &str,
                payment_id: Option<&str>,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::payment::Refund>> {
                match payment_id {
                    Some(p) => {
                        self.page(
                            pay::REFUND_COLS,
                            "refunds",
                            "merchant_id = $1 AND payment_id = $2",
                            &[merchant_id, p],
                            page,
                            refund_from,
                        )
                        .await
                    }
                    None => {
                        self.page(pay::REFUND_COLS, "refunds", "merchant_id = $1", &[merchant_id], page, refund_from)
                            .await
                    }
                }
            }
        }
    };
}
