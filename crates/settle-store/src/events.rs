//! The events part of the port: domain events and their outbox, webhook endpoints, deliveries
//! and delivery attempts. `events_tx!` stamps the one implementation out for each adapter;
//! the adapters differ in how a batch of events is inserted and in how rows are taken by one
//! of several dispatchers (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's single writer).

use async_trait::async_trait;
use settle_domain::{
    event::{Event, EventFilter, NewEvent},
    ledger::Key,
    webhook::{Delivery, DeliveryAttempt, DeliveryStatus, Endpoint},
    Timestamp,
};

use crate::{Listing, PageRequest, Result, StoreError};

/// Most webhook endpoints one merchant may have.
pub const ENDPOINTS_MAX: u32 = 100;

#[async_trait]
pub trait EventTx: Send {
    /// Stores events, each numbered after its aggregate's last one, and queues them in the
    /// outbox. A concurrent writer of the same aggregate number fails on the unique key.
    async fn insert_events(&mut self, events: &[NewEvent]) -> Result<()>;
    async fn get_event(&mut self, merchant_id: &str, id: &str) -> Result<Option<Event>>;
    async fn list_events(
        &mut self,
        merchant_id: &str,
        filter: &EventFilter,
        page: &PageRequest,
    ) -> Result<Listing<Event>>;
    async fn get_events(&mut self, keys: &[Key]) -> Result<Vec<Event>>;
    /// Removes up to `limit` of the oldest outbox entries and returns their events' keys, in
    /// key order; rows another transaction is taking are skipped. The caller fans them out in
    /// the same transaction, reading only the events of merchants that have endpoints.
    async fn take_outbox(&mut self, limit: u32) -> Result<Vec<Key>>;
    /// Whether the outbox holds an entry: a read, so that a dispatcher with nothing to fan out
    /// does not queue for the writer (SQLite has one).
    async fn outbox_waiting(&mut self) -> Result<bool>;

    async fn insert_endpoint(&mut self, endpoint: &Endpoint) -> Result<()>;
    async fn get_endpoint(&mut self, merchant_id: &str, id: &str) -> Result<Option<Endpoint>>;
    async fn get_endpoints(&mut self, keys: &[Key]) -> Result<Vec<Endpoint>>;
    /// A merchant's endpoints, all of them or only those of one API.
    async fn list_endpoints(
        &mut self,
        merchant_id: &str,
        api: Option<settle_domain::webhook::Api>,
        page: &PageRequest,
    ) -> Result<Listing<Endpoint>>;
    /// A merchant's enabled endpoints (at most [`ENDPOINTS_MAX`]).
    async fn enabled_endpoints(&mut self, merchant_id: &str) -> Result<Vec<Endpoint>>;
    /// How many endpoints the merchant has. Creators of a merchant's endpoints that count
    /// first are serialized until their transactions end (a transaction-scoped advisory lock on
    /// PostgreSQL; SQLite's one writer), so that a limit checked on the count holds.
    async fn count_endpoints(&mut self, merchant_id: &str) -> Result<i64>;
    async fn update_endpoint(&mut self, endpoint: &Endpoint) -> Result<bool>;
    async fn delete_endpoint(&mut self, merchant_id: &str, id: &str) -> Result<bool>;
    /// Stores only an endpoint's health (`failing_since`, and `enabled` / `disabled_reason`
    /// when the dispatcher disables it), and only while it is enabled and its `failing_since`
    /// is still `was` (the health it was judged from): a client's concurrent update of the other
    /// fields is kept, and a judgment on a stale health (a late request's) is not stored. `false`
    /// when it was not stored.
    async fn update_endpoint_health(&mut self, endpoint: &Endpoint, was: Option<Timestamp>) -> Result<bool>;

    async fn insert_deliveries(&mut self, deliveries: &[Delivery]) -> Result<()>;
    /// Leases up to `limit` deliveries due at `now` (pending, not leased) until `until`, oldest
    /// due first; rows another dispatcher is leasing are skipped.
    async fn lease_deliveries(&mut self, now: Timestamp, until: Timestamp, limit: u32) -> Result<Vec<Delivery>>;
    /// Whether [`EventTx::lease_deliveries`] would find a delivery due at `now` (a read, as
    /// [`EventTx::outbox_waiting`]).
    async fn deliveries_due(&mut self, now: Timestamp) -> Result<bool>;
    /// Stores a delivery's state after an attempt, if it is still under the lease it was
    /// taken with (`leased_until`); `false` when the lease expired and another dispatcher took it.
    async fn update_delivery(&mut self, delivery: &Delivery, leased_until: Timestamp) -> Result<bool>;
    async fn insert_delivery_attempts(&mut self, attempts: &[DeliveryAttempt]) -> Result<()>;
    async fn list_delivery_attempts(
        &mut self,
        merchant_id: &str,
        endpoint_id: &str,
        page: &PageRequest,
    ) -> Result<Listing<DeliveryAttempt>>;
    /// How many deliveries are in `status` (all merchants; for benchmarks and tests).
    async fn count_deliveries(&mut self, status: DeliveryStatus) -> Result<i64>;
}

pub const EVENT_COLS: &str = "merchant_id, id, type, aggregate_type, aggregate_id, sequence, data, created_at";
pub const ENDPOINT_COLS: &str = "merchant_id, id, url, description, enabled_events, enabled, secret_sealed, \
    previous_secret_sealed, previous_secret_expires_at, failing_since, disabled_reason, created_at, updated_at, api";
pub const DELIVERY_COLS: &str = "merchant_id, id, endpoint_id, event_id, status, attempts, next_attempt_at, \
    lease_until, last_status_code, last_error, created_at, updated_at";
pub const ATTEMPT_COLS: &str = "merchant_id, id, delivery_id, endpoint_id, event_id, attempt, status_code, \
    latency_ms, response_body, error, created_at";

/// The statement that stores one event numbered after its aggregate's last one plus `$6`.
pub const INSERT_EVENT: &str = "INSERT INTO events (merchant_id, id, type, aggregate_type, aggregate_id, sequence, \
    data, created_at) SELECT $1, $2, $3, $4, $5, COALESCE(MAX(sequence), 0) + $6, $7, $8 FROM events \
    WHERE merchant_id = $1 AND aggregate_id = $5 AND aggregate_type = $4";

pub fn delivery_status(s: &str) -> Result<DeliveryStatus> {
    DeliveryStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("delivery status {s}")))
}

pub fn api(text: &str) -> Result<settle_domain::webhook::Api> {
    settle_domain::webhook::Api::parse(text).ok_or_else(|| StoreError::Corrupt(format!("endpoint api {text}")))
}

pub fn patterns(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("enabled_events: {e}")))
}

macro_rules! events_tx {
    ($tx:ident, $row:ty, $skip_locked:expr, $serialize:expr) => {
        use $crate::events as ev;

        fn event_from(row: &$row) -> $crate::Result<settle_domain::event::Event> {
            Ok(settle_domain::event::Event {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                kind: row.try_get("type")?,
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                sequence: row.try_get("sequence")?,
                data: sh::json(row.try_get("data")?)?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
            })
        }

        fn endpoint_from(row: &$row) -> $crate::Result<settle_domain::webhook::Endpoint> {
            Ok(settle_domain::webhook::Endpoint {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                url: row.try_get("url")?,
                description: row.try_get("description")?,
                enabled_events: ev::patterns(row.try_get("enabled_events")?)?,
                enabled: row.try_get("enabled")?,
                secret_sealed: row.try_get("secret_sealed")?,
                previous_secret_sealed: row.try_get("previous_secret_sealed")?,
                previous_secret_expires_at: sh::ts(row.try_get("previous_secret_expires_at")?),
                failing_since: sh::ts(row.try_get("failing_since")?),
                disabled_reason: row.try_get("disabled_reason")?,
                api: ev::api(row.try_get("api")?)?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                updated_at: settle_domain::Timestamp(row.try_get("updated_at")?),
            })
        }

        fn delivery_from(row: &$row) -> $crate::Result<settle_domain::webhook::Delivery> {
            Ok(settle_domain::webhook::Delivery {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                endpoint_id: row.try_get("endpoint_id")?,
                event_id: row.try_get("event_id")?,
                status: ev::delivery_status(row.try_get("status")?)?,
                attempts: row.try_get("attempts")?,
                next_attempt_at: settle_domain::Timestamp(row.try_get("next_attempt_at")?),
                lease_until: sh::ts(row.try_get("lease_until")?),
                last_status_code: row.try_get("last_status_code")?,
                last_error: row.try_get("last_error")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                updated_at: settle_domain::Timestamp(row.try_get("updated_at")?),
            })
        }

        fn delivery_attempt_from(row: &$row) -> $crate::Result<settle_domain::webhook::DeliveryAttempt> {
            Ok(settle_domain::webhook::DeliveryAttempt {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                delivery_id: row.try_get("delivery_id")?,
                endpoint_id: row.try_get("endpoint_id")?,
                event_id: row.try_get("event_id")?,
                attempt: row.try_get("attempt")?,
                status_code: row.try_get("status_code")?,
                latency_ms: row.try_get("latency_ms")?,
                response_body: row.try_get("response_body")?,
                error: row.try_get("error")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
            })
        }

        #[async_trait::async_trait]
        impl $crate::events::EventTx for $tx {
            async fn insert_events(&mut self, events: &[settle_domain::event::NewEvent]) -> $crate::Result<()> {
                if events.is_empty() {
                    return Ok(());
                }
                self.insert_events_bulk(events).await
            }

            async fn get_event(
                &mut self,
                merchant_id: &str,
                id: &str,
            ) -> $crate::Result<Option<settle_domain::event::Event>> {
                let sql = format!("SELECT {} FROM events WHERE merchant_id = $1 AND id = $2", ev::EVENT_COLS);
                let row = sqlx::query(&sql).bind(merchant_id).bind(id).fetch_optional(&mut *self.tx).await?;
                row.as_ref().map(event_from).transpose()
            }

            async fn list_events(
                &mut self,
                merchant_id: &str,
                filter: &settle_domain::event::EventFilter,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::event::Event>> {
                let mut sql = String::from("merchant_id = $1");
                let mut binds: Vec<String> = vec![merchant_id.to_owned()];
                if !filter.kinds.is_empty() {
                    let mut marks = Vec::with_capacity(filter.kinds.len());
                    for kind in &filter.kinds {
                        binds.push(kind.clone());
                        marks.push(format!("${}", binds.len()));
                    }
                    sql.push_str(&format!(" AND type IN ({})", marks.join(", ")));
                }
                let mut add = |clause: &str, value: String| {
                    binds.push(value);
                    sql.push_str(&format!(" AND {}", clause.replace('?', &format!("${}", binds.len()))));
                };
                if let Some(kind) = &filter.kind {
                    add("type = ?", kind.clone());
                }
                if let Some(id) = &filter.aggregate_id {
                    add("aggregate_id = ?", id.clone());
                }
                if let Some(t) = filter.created_gte {
                    add("created_at >= CAST(? AS BIGINT)", t.0.to_string());
                }
                if let Some(t) = filter.created_lt {
                    add("created_at < CAST(? AS BIGINT)", t.0.to_string());
                }
                let binds: Vec<&str> = binds.iter().map(String::as_str).collect();
                self.page(ev::EVENT_COLS, "events", &sql, &binds, page, event_from).await
            }

            async fn get_events(&mut self, keys: &[settle_domain::ledger::Key]) -> $crate::Result<Vec<settle_domain::event::Event>> {
                let rows = self.fetch_by_keys(ev::EVENT_COLS, "events", "id", keys, false).await?;
                rows.iter().map(event_from).collect()
            }

            async fn take_outbox(&mut self, limit: u32) -> $crate::Result<Vec<settle_domain::ledger::Key>> {
                let sql = format!(
                    "DELETE FROM event_outbox WHERE seq IN \
                     (SELECT seq FROM event_outbox ORDER BY seq LIMIT $1{}) RETURNING merchant_id, event_id",
                    $skip_locked
                );
                let taken: Vec<(String, String)> = sqlx::query_as(&sql)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.tx)
                    .await?;
                let mut keys = taken;
                keys.sort();
                Ok(keys)
            }

            async fn outbox_waiting(&mut self) -> $crate::Result<bool> {
                Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM event_outbox)")
                    .fetch_one(&mut *self.tx)
                    .await?)
            }

            async fn insert_endpoint(&mut self, e: &settle_domain::webhook::Endpoint) -> $crate::Result<()> {
                let sql = format!(
                    "INSERT INTO webhook_endpoints ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                    ev::ENDPOINT_COLS
                );
                sqlx::query(&sql)
                    .bind(&e.merchant_id)
                    .bind(&e.id)
                    .bind(&e.url)
                    .bind(&e.description)
                    .bind(serde_json::Value::from(e.enabled_events.clone()).to_string())
                    .bind(e.enabled)
                    .bind(&e.secret_sealed)
                    .bind(&e.previous_secret_sealed)
                    .bind(e.previous_secret_expires_at.map(|t| t.0))
                    .bind(e.failing_since.map(|t| t.0))
                    .bind(&e.disabled_reason)
                    .bind(e.created_at.0)
                    .bind(e.updated_at.0)
                    .bind(e.api.as_str())
                    .execute(&mut *self.tx)
                    .await?;
                Ok(())
            }

            async fn get_endpoint(
                &mut self,
                merchant_id: &str,
                id: &str,
            ) -> $crate::Result<Option<settle_domain::webhook::Endpoint>> {
                let sql = format!(
                    "SELECT {} FROM webhook_endpoints WHERE merchant_id = $1 AND id = $2",
                    ev::ENDPOINT_COLS
                );
                let row = sqlx::query(&sql).bind(merchant_id).bind(id).fetch_optional(&mut *self.tx).await?;
                row.as_ref().map(endpoint_from).transpose()
            }

            async fn get_endpoints(
                &mut self,
                keys: &[settle_domain::ledger::Key],
            ) -> $crate::Result<Vec<settle_domain::webhook::Endpoint>> {
                let rows = self.fetch_by_keys(ev::ENDPOINT_COLS, "webhook_endpoints", "id", keys, false).await?;
                rows.iter().map(endpoint_from).collect()
            }

            async fn list_endpoints(
                &mut self,
                merchant_id: &str,
                api: Option<settle_domain::webhook::Api>,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::webhook::Endpoint>> {
                let (filter, binds) = match api {
                    None => ("merchant_id = $1", vec![merchant_id]),
                    Some(api) => ("merchant_id = $1 AND api = $2", vec![merchant_id, api.as_str()]),
                };
                self.page(ev::ENDPOINT_COLS, "webhook_endpoints", filter, &binds, page, endpoint_from)
                    .await
            }

            async fn enabled_endpoints(
                &mut self,
                merchant_id: &str,
            ) -> $crate::Result<Vec<settle_domain::webhook::Endpoint>> {
                let sql = format!(
                    "SELECT {} FROM webhook_endpoints WHERE merchant_id = $1 AND enabled ORDER BY seq LIMIT {}",
                    ev::ENDPOINT_COLS,
                    ev::ENDPOINTS_MAX
                );
                let rows = sqlx::query(&sql).bind(merchant_id).fetch_all(&mut *self.tx).await?;
                rows.iter().map(endpoint_from).collect()
            }

            async fn count_endpoints(&mut self, merchant_id: &str) -> $crate::Result<i64> {
                if !$serialize.is_empty() {
                    sqlx::query($serialize)
                        .bind(format!("settle:webhook_endpoints:{merchant_id}"))
                        .execute(&mut *self.tx)
                        .await?;
                }
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints WHERE merchant_id = $1")
                    .bind(merchant_id)
                    .fetch_one(&mut *self.tx)
                    .await?)
            }

            async fn update_endpoint(&mut self, e: &settle_domain::webhook::Endpoint) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE webhook_endpoints SET url = $3, description = $4, enabled_events = $5, enabled = $6, \
                     secret_sealed = $7, previous_secret_sealed = $8, previous_secret_expires_at = $9, \
                     failing_since = $10, disabled_reason = $11, updated_at = $12 \
                     WHERE merchant_id = $1 AND id = $2",
                )
                .bind(&e.merchant_id)
                .bind(&e.id)
                .bind(&e.url)
                .bind(&e.description)
                .bind(serde_json::Value::from(e.enabled_events.clone()).to_string())
                .bind(e.enabled)
                .bind(&e.secret_sealed)
                .bind(&e.previous_secret_sealed)
                .bind(e.previous_secret_expires_at.map(|t| t.0))
                .bind(e.failing_since.map(|t| t.0))
                .bind(&e.disabled_reason)
                .bind(e.updated_at.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_endpoint(&mut self, merchant_id: &str, id: &str) -> $crate::Result<bool> {
                let done = sqlx::query("DELETE FROM webhook_endpoints WHERE merchant_id = $1 AND id = $2")
                    .bind(merchant_id)
                    .bind(id)
                    .execute(&mut *self.tx)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn update_endpoint_health(
                &mut self,
                e: &settle_domain::webhook::Endpoint,
                was: Option<settle_domain::Timestamp>,
            ) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE webhook_endpoints SET failing_since = $3, enabled = $4, disabled_reason = $5, \
                     updated_at = $6 WHERE merchant_id = $1 AND id = $2 AND enabled \
                     AND failing_since IS NOT DISTINCT FROM $7",
                )
                .bind(&e.merchant_id)
                .bind(&e.id)
                .bind(e.failing_since.map(|t| t.0))
                .bind(e.enabled)
                .bind(&e.disabled_reason)
                .bind(e.updated_at.0)
                .bind(was.map(|t| t.0))
                .execute(&mut *self.tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_deliveries(&mut self, deliveries: &[settle_domain::webhook::Delivery]) -> $crate::Result<()> {
                let sql = format!(
                    "INSERT INTO webhook_deliveries ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    ev::DELIVERY_COLS
                );
                for d in deliveries {
                    sqlx::query(&sql)
                        .bind(&d.merchant_id)
                        .bind(&d.id)
                        .bind(&d.endpoint_id)
                        .bind(&d.event_id)
                        .bind(d.status.as_str())
                        .bind(d.attempts)
                        .bind(d.next_attempt_at.0)
                        .bind(d.lease_until.map(|t| t.0))
                        .bind(d.last_status_code)
                        .bind(&d.last_error)
                        .bind(d.created_at.0)
                        .bind(d.updated_at.0)
                        .execute(&mut *self.tx)
                        .await?;
                }
                Ok(())
            }

            async fn lease_deliveries(
                &mut self,
                now: settle_domain::Timestamp,
                until: settle_domain::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<settle_domain::webhook::Delivery>> {
                let sql = format!(
                    "UPDATE webhook_deliveries SET lease_until = $2 WHERE seq IN \
                     (SELECT seq FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 \
                     AND (lease_until IS NULL OR lease_until <= $1) ORDER BY next_attempt_at LIMIT $3{}) \
                     RETURNING {}",
                    $skip_locked,
                    ev::DELIVERY_COLS
                );
                let rows = sqlx::query(&sql)
                    .bind(now.0)
                    .bind(until.0)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.tx)
                    .await?;
                rows.iter().map(delivery_from).collect()
            }

            async fn deliveries_due(&mut self, now: settle_domain::Timestamp) -> $crate::Result<bool> {
                Ok(sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE status = 'pending' \
                     AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until <= $1))",
                )
                .bind(now.0)
                .fetch_one(&mut *self.tx)
                .await?)
            }

            async fn update_delivery(
                &mut self,
                d: &settle_domain::webhook::Delivery,
                leased_until: settle_domain::Timestamp,
            ) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE webhook_deliveries SET status = $3, attempts = $4, next_attempt_at = $5, lease_until = $6, \
                     last_status_code = $7, last_error = $8, updated_at = $9 \
                     WHERE merchant_id = $1 AND id = $2 AND lease_until = $10",
                )
                .bind(&d.merchant_id)
                .bind(&d.id)
                .bind(d.status.as_str())
                .bind(d.attempts)
                .bind(d.next_attempt_at.0)
                .bind(d.lease_until.map(|t| t.0))
                .bind(d.last_status_code)
                .bind(&d.last_error)
                .bind(d.updated_at.0)
                .bind(leased_until.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_delivery_attempts(
                &mut self,
                attempts: &[settle_domain::webhook::DeliveryAttempt],
            ) -> $crate::Result<()> {
                let sql = format!(
                    "INSERT INTO webhook_attempts ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    ev::ATTEMPT_COLS
                );
                for a in attempts {
                    sqlx::query(&sql)
                        .bind(&a.merchant_id)
                        .bind(&a.id)
                        .bind(&a.delivery_id)
                        .bind(&a.endpoint_id)
                        .bind(&a.event_id)
                        .bind(a.attempt)
                        .bind(a.status_code)
                        .bind(a.latency_ms)
                        .bind(&a.response_body)
                        .bind(&a.error)
                        .bind(a.created_at.0)
                        .execute(&mut *self.tx)
                        .await?;
                }
                Ok(())
            }

            async fn list_delivery_attempts(
                &mut self,
                merchant_id: &str,
                endpoint_id: &str,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::webhook::DeliveryAttempt>> {
                self.page(
                    ev::ATTEMPT_COLS,
                    "webhook_attempts",
                    "merchant_id = $1 AND endpoint_id = $2",
                    &[merchant_id, endpoint_id],
                    page,
                    delivery_attempt_from,
                )
                .await
            }

            async fn count_deliveries(&mut self, status: settle_domain::webhook::DeliveryStatus) -> $crate::Result<i64> {
                // A literal status: the plan can use the partial index of that status.
                let sql = format!("SELECT COUNT(*) FROM webhook_deliveries WHERE status = '{}'", status.as_str());
                Ok(sqlx::query_scalar(&sql)
                    .fetch_one(&mut *self.tx)
                    .await?)
            }
        }
    };
}
