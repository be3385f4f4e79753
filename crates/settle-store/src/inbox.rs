//! The inbound-webhook part of the port: the inbox of provider events, and the lookups a
//! webhook needs (its connector account by id across merchants, a payment by the provider's
//! id or by Settle's attempt reference). `inbox_tx!` stamps the one implementation out for
//! each adapter; the adapters differ in how a batch of entries is inserted (one `UNNEST`
//! statement on PostgreSQL, a loop of prepared statements on SQLite) and in how a worker takes
//! rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's single writer).

use async_trait::async_trait;
use settle_domain::{
    inbound::{InboxEntry, InboxStatus},
    payment::{ConnectorAccount, Payment},
    Timestamp,
};

use crate::{Listing, PageRequest, Result, StoreError};

#[async_trait]
pub trait InboxTx: Send {
    /// Inserts the entries whose (merchant, connector, provider event id) is not stored yet.
    /// Returns one flag per entry, in order: `true` when it was inserted, `false` for a
    /// duplicate (of a stored entry, or of an earlier entry of the same call).
    async fn insert_inbox(&mut self, entries: &[InboxEntry]) -> Result<Vec<bool>>;
    /// Leases up to `limit` entries due at `now` (status `received`, `next_attempt_at <= now`)
    /// by setting their `next_attempt_at` to `until`; in the order they were stored. Rows another worker is
    /// taking are skipped.
    async fn take_inbox(&mut self, now: Timestamp, until: Timestamp, limit: u32) -> Result<Vec<InboxEntry>>;
    /// Whether [`InboxTx::take_inbox`] would find an entry due at `now`: a read, so that a
    /// worker with nothing to do does not queue for the writer (SQLite has one).
    async fn inbox_due(&mut self, now: Timestamp) -> Result<bool>;
    /// Stores an entry's state after an attempt, if it is still under the lease it was taken
    /// with (`leased_until`); `false` when the lease expired and another worker took it.
    async fn update_inbox(&mut self, entry: &InboxEntry, leased_until: Timestamp) -> Result<bool>;
    /// [`InboxTx::update_inbox`] for many entries, in one statement where the engine can;
    /// returns how many were stored (fewer: some leases were lost).
    async fn update_inbox_entries(&mut self, entries: &[(InboxEntry, Timestamp)]) -> Result<usize>;
    /// Entries of every merchant (the operator's view), newest first.
    async fn list_inbox(
        &mut self,
        status: Option<InboxStatus>,
        merchant_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Listing<InboxEntry>>;
    /// How many entries are in `status` (all merchants; for benchmarks and tests).
    async fn count_inbox(&mut self, status: InboxStatus) -> Result<i64>;
    /// A connector account by its id alone, whichever merchant owns it (a webhook's path names
    /// no merchant). Needs the system scope on PostgreSQL.
    async fn find_connector_account(&mut self, id: &str) -> Result<Option<ConnectorAccount>>;
    /// The merchant's payment that holds `provider_ref` at its provider.
    async fn payment_by_provider_ref(&mut self, merchant_id: &str, provider_ref: &str) -> Result<Option<Payment>>;
    /// [`InboxTx::payment_by_provider_ref`] for many references in one statement: the
    /// merchant's payments holding any of them, oldest first (for a reference held twice, the
    /// last one is the one `payment_by_provider_ref` answers).
    async fn payments_by_provider_refs(&mut self, merchant_id: &str, provider_refs: &[String]) -> Result<Vec<Payment>>;
    /// The merchant's payment one of whose attempts has the id `attempt_id` (an authorization's
    /// attempt id is the reference its provider saw).
    async fn payment_by_attempt(&mut self, merchant_id: &str, attempt_id: &str) -> Result<Option<Payment>>;
}

pub const INBOX_COLS: &str = "merchant_id, id, connector, connector_account_id, provider_event_id, type, payload, \
    status, attempts, next_attempt_at, reason, payment_id, created_at, updated_at";

pub fn inbox_status(s: &str) -> Result<InboxStatus> {
    InboxStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("inbox status {s}")))
}

/// The statement that inserts one entry unless its event is stored (SQLite's loop).
pub const INSERT_ONE: &str = "INSERT INTO webhook_inbox (merchant_id, id, connector, connector_account_id, \
    provider_event_id, type, payload, status, attempts, next_attempt_at, reason, payment_id, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
    ON CONFLICT (merchant_id, connector, provider_event_id) DO NOTHING";

macro_rules! inbox_tx {
    ($tx:ident, $row:ty, $skip_locked:expr) => {
        fn inbox_from(row: &$row) -> $crate::Result<settle_domain::inbound::InboxEntry> {
            Ok(settle_domain::inbound::InboxEntry {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                connector: row.try_get("connector")?,
                connector_account_id: row.try_get("connector_account_id")?,
                provider_event_id: row.try_get("provider_event_id")?,
                kind: row.try_get("type")?,
                payload: row.try_get("payload")?,
                status: $crate::inbox::inbox_status(row.try_get("status")?)?,
                attempts: row.try_get("attempts")?,
                next_attempt_at: settle_domain::Timestamp(row.try_get("next_attempt_at")?),
                reason: row.try_get("reason")?,
                payment_id: row.try_get("payment_id")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                updated_at: settle_domain::Timestamp(row.try_get("updated_at")?),
            })
        }

        #[async_trait::async_trait]
        impl $crate::inbox::InboxTx for $tx {
            async fn insert_inbox(
                &mut self,
                entries: &[settle_domain::inbound::InboxEntry],
            ) -> $crate::Result<Vec<bool>> {
                if entries.is_empty() {
                    return Ok(Vec::new());
                }
                self.insert_inbox_bulk(entries).await
            }

            async fn take_inbox(
                &mut self,
                now: settle_domain::Timestamp,
                until: settle_domain::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<settle_domain::inbound::InboxEntry>> {
                let sql = format!(
                    "UPDATE webhook_inbox SET next_attempt_at = $2 WHERE seq IN \
                     (SELECT seq FROM webhook_inbox WHERE status = 'received' AND next_attempt_at <= $1 \
                     ORDER BY next_attempt_at, seq LIMIT $3{}) RETURNING seq, {}",
                    $skip_locked,
                    $crate::inbox::INBOX_COLS
                );
                let rows = sqlx::query(&sql)
                    .bind(now.0)
                    .bind(until.0)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.tx)
                    .await?;
                // In the order they were stored (ids made in one millisecond do not sort so).
                let mut entries = rows
                    .iter()
                    .map(|row| Ok((row.try_get::<i64, _>("seq")?, inbox_from(row)?)))
                    .collect::<$crate::Result<Vec<_>>>()?;
                entries.sort_by_key(|(seq, _)| *seq);
                Ok(entries.into_iter().map(|(_, e)| e).collect())
            }

            async fn inbox_due(&mut self, now: settle_domain::Timestamp) -> $crate::Result<bool> {
                Ok(sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM webhook_inbox WHERE status = 'received' AND next_attempt_at <= $1)",
                )
                .bind(now.0)
                .fetch_one(&mut *self.tx)
                .await?)
            }

            async fn update_inbox(
                &mut self,
                e: &settle_domain::inbound::InboxEntry,
                leased_until: settle_domain::Timestamp,
            ) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE webhook_inbox SET status = $3, attempts = $4, next_attempt_at = $5, reason = $6, \
                     payment_id = $7, updated_at = $8 \
                     WHERE merchant_id = $1 AND id = $2 AND status = 'received' AND next_attempt_at = $9",
                )
                .bind(&e.merchant_id)
                .bind(&e.id)
                .bind(e.status.as_str())
                .bind(e.attempts)
                .bind(e.next_attempt_at.0)
                .bind(&e.reason)
                .bind(&e.payment_id)
                .bind(e.updated_at.0)
                .bind(leased_until.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn update_inbox_entries(
                &mut self,
                entries: &[(settle_domain::inbound::InboxEntry, settle_domain::Timestamp)],
            ) -> $crate::Result<usize> {
                match entries {
                    [] => Ok(0),
                    [(e, leased)] => Ok(usize::from($crate::inbox::InboxTx::update_inbox(self, e, *leased).await?)),
                    many => self.update_inbox_bulk(many).await,
                }
            }

            async fn list_inbox(
                &mut self,
                status: Option<settle_domain::inbound::InboxStatus>,
                merchant_id: Option<&str>,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::inbound::InboxEntry>> {
                let mut filter = String::from("seq > 0");
                let mut binds: Vec<&str> = Vec::new();
                if let Some(s) = status {
                    binds.push(s.as_str());
                    filter.push_str(&format!(" AND status = ${}", binds.len()));
                }
                if let Some(m) = merchant_id {
                    binds.push(m);
                    filter.push_str(&format!(" AND merchant_id = ${}", binds.len()));
                }
                self.page($crate::inbox::INBOX_COLS, "webhook_inbox", &filter, &binds, page, inbox_from)
                    .await
            }

            async fn count_inbox(&mut self, status: settle_domain::inbound::InboxStatus) -> $crate::Result<i64> {
                // A literal status: the plan can use the partial index of that status.
                let sql = format!("SELECT COUNT(*) FROM webhook_inbox WHERE status = '{}'", status.as_str());
                Ok(sqlx::query_scalar(&sql)
                    .fetch_one(&mut *self.tx)
                    .await?)
            }

            async fn find_connector_account(
                &mut self,
                id: &str,
            ) -> $crate::Result<Option<settle_domain::payment::ConnectorAccount>> {
                let sql = format!(
                    "SELECT {} FROM connector_accounts WHERE id = $1 ORDER BY seq LIMIT 2",
                    $crate::payments::CONNECTOR_ACCOUNT_COLS
                );
                let rows = sqlx::query(&sql).bind(id).fetch_all(&mut *self.tx).await?;
                // Ids are random; two merchants holding the same one would make it ambiguous.
                match rows.as_slice() {
                    [one] => connector_account_from(one).map(Some),
                    _ => Ok(None),
                }
            }

            async fn payment_by_provider_ref(
                &mut self,
                merchant_id: &str,
                provider_ref: &str,
            ) -> $crate::Result<Option<settle_domain::payment::Payment>> {
                let sql = format!(
                    "SELECT {} FROM payments WHERE merchant_id = $1 AND provider_ref = $2 ORDER BY seq DESC LIMIT 1",
                    $crate::payments::PAYMENT_COLS
                );
                let row = sqlx::query(&sql)
                    .bind(merchant_id)
                    .bind(provider_ref)
                    .fetch_optional(&mut *self.tx)
                    .await?;
                row.as_ref().map(payment_from).transpose()
            }

            async fn payments_by_provider_refs(
                &mut self,
                merchant_id: &str,
                provider_refs: &[String],
            ) -> $crate::Result<Vec<settle_domain::payment::Payment>> {
                if provider_refs.is_empty() {
                    return Ok(Vec::new());
                }
                let marks: Vec<String> = (2..provider_refs.len() + 2).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT {} FROM payments WHERE merchant_id = $1 AND provider_ref IN ({}) ORDER BY seq",
                    $crate::payments::PAYMENT_COLS,
                    marks.join(", ")
                );
                let mut query = sqlx::query(&sql).bind(merchant_id);
                for r in provider_refs {
                    query = query.bind(r);
                }
                let rows = query.fetch_all(&mut *self.tx).await?;
                rows.iter().map(payment_from).collect()
            }

            async fn payment_by_attempt(
                &mut self,
                merchant_id: &str,
                attempt_id: &str,
            ) -> $crate::Result<Option<settle_domain::payment::Payment>> {
                let payment_id: Option<String> =
                    sqlx::query_scalar("SELECT payment_id FROM payment_attempts WHERE merchant_id = $1 AND id = $2")
                        .bind(merchant_id)
                        .bind(attempt_id)
                        .fetch_optional(&mut *self.tx)
                        .await?;
                match payment_id {
                    Some(id) => $crate::payments::PaymentTx::get_payment(self, merchant_id, &id).await,
                    None => Ok(None),
                }
            }
        }
    };
}
