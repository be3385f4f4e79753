//! What both adapters do identically, written once.
//!
//! `shared_tx!` stamps out, inside an adapter's module, the row mappers and the `Tx`
//! implementation. Statements that both dialects accept are here; the few that differ (key-set
//! lookups, row locks, bulk ledger writes) are inherent methods of each adapter's transaction
//! type, which the generated methods call.

use serde_json::Value;
use settle_domain::{
    ledger::{AccountFlags, Balances, PendingStatus, TransferKind},
    tenancy::{MerchantStatus, Scopes},
    Currency, Timestamp,
};

use crate::{PageRequest, StoreError};

pub const MERCHANT_COLS: &str =
    "id, name, email, default_currency, amount_limits, metadata, status, created_at, deactivated_at";
pub const API_KEY_COLS: &str =
    "id, merchant_id, name, prefix, secret_hash, scopes, created_at, revoked_at, last_used_at";
pub const AUDIT_COLS: &str =
    "id, merchant_id, actor, action, resource_type, resource_id, request_id, ip, user_agent, created_at";
pub const ACCOUNT_COLS: &str = "merchant_id, id, currency, code, name, flags, metadata, \
    debits_pending, debits_posted, credits_pending, credits_posted, created_at";
pub const TRANSFER_COLS: &str = "merchant_id, id, kind, debit_account_id, credit_account_id, amount, currency, \
    pending_id, timeout_seconds, expires_at, metadata, created_at, \
    debit_debits_pending, debit_debits_posted, debit_credits_pending, debit_credits_posted, \
    credit_debits_pending, credit_debits_posted, credit_credits_pending, credit_credits_posted";

/// The SQL of one page: rows of `table` matching `filter` (whose binds are `$1..$n`), newest
/// first. The cursor's seq, when there is one, is bound as `$n+1`.
pub fn page_sql(cols: &str, table: &str, filter: &str, binds: usize, page: &PageRequest) -> (String, bool) {
    let limit = page.limit.clamp(1, 100) + 1;
    let cursor = binds + 1;
    if page.ending_before.is_some() {
        (
            format!(
                "SELECT seq, {cols} FROM {table} WHERE {filter} AND seq > ${cursor} ORDER BY seq ASC LIMIT {limit}"
            ),
            true,
        )
    } else if page.starting_after.is_some() {
        (
            format!(
                "SELECT seq, {cols} FROM {table} WHERE {filter} AND seq < ${cursor} ORDER BY seq DESC LIMIT {limit}"
            ),
            false,
        )
    } else {
        (
            format!("SELECT seq, {cols} FROM {table} WHERE {filter} ORDER BY seq DESC LIMIT {limit}"),
            false,
        )
    }
}

/// Trims the extra row that tells `has_more`, and restores newest-first order for `ending_before`.
pub fn finish_page<T>(mut items: Vec<T>, page: &PageRequest, ascending: bool) -> crate::Listing<T> {
    let limit = usize::try_from(page.limit.clamp(1, 100)).unwrap_or(100);
    let has_more = items.len() > limit;
    items.truncate(limit);
    if ascending {
        items.reverse();
    }
    crate::Listing { items, has_more }
}

/// Wall-clock time for bookkeeping rows (`applied_at`); domain time is always passed in.
pub fn wall_clock_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn currency(code: &str) -> Result<Currency, StoreError> {
    Currency::parse(code).ok_or_else(|| StoreError::Corrupt(format!("currency {code}")))
}

pub fn json(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("json: {e}")))
}

pub fn merchant_status(s: &str) -> Result<MerchantStatus, StoreError> {
    MerchantStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("merchant status {s}")))
}

pub fn kind(s: &str) -> Result<TransferKind, StoreError> {
    TransferKind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("transfer kind {s}")))
}

pub fn pending_status(s: &str) -> Result<PendingStatus, StoreError> {
    PendingStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("pending status {s}")))
}

pub fn timeout(t: Option<i64>) -> Result<Option<u32>, StoreError> {
    t.map(|t| u32::try_from(t).map_err(|_| StoreError::Corrupt(format!("timeout {t}"))))
        .transpose()
}

pub fn ts(t: Option<i64>) -> Option<Timestamp> {
    t.map(Timestamp)
}

pub fn scopes(s: &str) -> Scopes {
    Scopes::from_csv(s)
}

pub fn flags(bits: i64) -> AccountFlags {
    AccountFlags::from_bits(bits)
}

pub fn balances(dp: i64, dpo: i64, cp: i64, cpo: i64) -> Balances {
    Balances {
        debits_pending: dp,
        debits_posted: dpo,
        credits_pending: cp,
        credits_posted: cpo,
    }
}

macro_rules! shared_tx {
    ($tx:ident, $row:ty, $migrator:ty) => {
        use sqlx::Row as _;
        use $crate::shared as sh;

        /// Applies the migrations not yet recorded in `settle_migrations`, all in one transaction
        /// that first runs `lock` (if any) so that concurrent starts apply them once.
        async fn run_migrations(
            pool: $migrator,
            list: &[$crate::migrate::Migration],
            lock: Option<&str>,
        ) -> $crate::Result<()> {
            let mut tx = pool.begin().await?;
            if let Some(lock) = lock {
                sqlx::Executor::execute(&mut *tx, lock).await?;
            }
            sqlx::Executor::execute(&mut *tx, $crate::migrate::CREATE_TABLE).await?;
            let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM settle_migrations")
                .fetch_all(&mut *tx)
                .await?;
            for m in list.iter().filter(|m| !applied.contains(&m.version)) {
                sqlx::Executor::execute(&mut *tx, m.sql).await?;
                sqlx::query("INSERT INTO settle_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                    .bind(m.version)
                    .bind(m.name)
                    .bind(sh::wall_clock_micros())
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(version = m.version, name = m.name, "migration applied");
            }
            tx.commit().await?;
            Ok(())
        }

        fn merchant_from(row: &$row) -> $crate::Result<settle_domain::tenancy::Merchant> {
            Ok(settle_domain::tenancy::Merchant {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                email: row.try_get("email")?,
                default_currency: sh::currency(row.try_get("default_currency")?)?,
                amount_limits: sh::json(row.try_get("amount_limits")?)?,
                metadata: sh::json(row.try_get("metadata")?)?,
                status: sh::merchant_status(row.try_get("status")?)?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                deactivated_at: sh::ts(row.try_get("deactivated_at")?),
            })
        }

        fn api_key_from(row: &$row) -> $crate::Result<settle_domain::tenancy::ApiKey> {
            Ok(settle_domain::tenancy::ApiKey {
                id: row.try_get("id")?,
                merchant_id: row.try_get("merchant_id")?,
                name: row.try_get("name")?,
                prefix: row.try_get("prefix")?,
                secret_hash: row.try_get("secret_hash")?,
                scopes: sh::scopes(row.try_get("scopes")?),
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                revoked_at: sh::ts(row.try_get("revoked_at")?),
                last_used_at: sh::ts(row.try_get("last_used_at")?),
            })
        }

        fn audit_from(row: &$row) -> $crate::Result<settle_domain::tenancy::AuditEntry> {
            Ok(settle_domain::tenancy::AuditEntry {
                id: row.try_get("id")?,
                merchant_id: row.try_get("merchant_id")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                resource_type: row.try_get("resource_type")?,
                resource_id: row.try_get("resource_id")?,
                request_id: row.try_get("request_id")?,
                ip: row.try_get("ip")?,
                user_agent: row.try_get("user_agent")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
            })
        }

        fn account_from(row: &$row) -> $crate::Result<settle_domain::ledger::Account> {
            Ok(settle_domain::ledger::Account {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                currency: sh::currency(row.try_get("currency")?)?,
                code: row.try_get("code")?,
                name: row.try_get("name")?,
                flags: sh::flags(row.try_get("flags")?),
                metadata: sh::json(row.try_get("metadata")?)?,
                balances: sh::balances(
                    row.try_get("debits_pending")?,
                    row.try_get("debits_posted")?,
                    row.try_get("credits_pending")?,
                    row.try_get("credits_posted")?,
                ),
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
            })
        }

        fn transfer_from(row: &$row) -> $crate::Result<settle_domain::ledger::Transfer> {
            Ok(settle_domain::ledger::Transfer {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                kind: sh::kind(row.try_get("kind")?)?,
                debit_account_id: row.try_get("debit_account_id")?,
                credit_account_id: row.try_get("credit_account_id")?,
                amount: row.try_get("amount")?,
                currency: sh::currency(row.try_get("currency")?)?,
                pending_id: row.try_get("pending_id")?,
                timeout_seconds: sh::timeout(row.try_get("timeout_seconds")?)?,
                expires_at: sh::ts(row.try_get("expires_at")?),
                metadata: sh::json(row.try_get("metadata")?)?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                debit_after: sh::balances(
                    row.try_get("debit_debits_pending")?,
                    row.try_get("debit_debits_posted")?,
                    row.try_get("debit_credits_pending")?,
                    row.try_get("debit_credits_posted")?,
                ),
                credit_after: sh::balances(
                    row.try_get("credit_debits_pending")?,
                    row.try_get("credit_debits_posted")?,
                    row.try_get("credit_credits_pending")?,
                    row.try_get("credit_credits_posted")?,
                ),
            })
        }

        impl $tx {
            /// One merchant's rows of `table` in id order, at most `limit` after `after_id`.
            async fn scan<T>(
                &mut self,
                cols: &str,
                table: &str,
                merchant_id: &str,
                after_id: &str,
                limit: u32,
                map: fn(&$row) -> $crate::Result<T>,
            ) -> $crate::Result<Vec<T>> {
                let sql = format!("SELECT {cols} FROM {table} WHERE merchant_id = $1 AND id > $2 ORDER BY id LIMIT $3");
                let rows = sqlx::query(&sql)
                    .bind(merchant_id)
                    .bind(after_id)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.tx)
                    .await?;
                rows.iter().map(map).collect()
            }

            /// One page of `table` rows matching `filter` (string binds only).
            async fn page<T>(
                &mut self,
                cols: &str,
                table: &str,
                filter: &str,
                binds: &[&str],
                page: &$crate::PageRequest,
                map: fn(&$row) -> $crate::Result<T>,
            ) -> $crate::Result<$crate::Listing<T>> {
                let cursor = match page.ending_before.as_deref().or(page.starting_after.as_deref()) {
                    None => None,
                    Some(id) => {
                        // Any of the merchant's rows is a cursor, also one that no longer matches
                        // the filter (a payment captured since it was listed as requires_capture):
                        // the page goes on from its place.
                        // The filter's first condition scopes the list (`merchant_id = $1`, or
                        // none for the operator's lists); the others narrow it.
                        let scope = filter.split(" AND ").next().unwrap_or(filter);
                        let scope_binds = &binds[..scope.matches('$').count().min(binds.len())];
                        let sql = format!("SELECT seq FROM {table} WHERE {scope} AND id = ${}", scope_binds.len() + 1);
                        let mut q = sqlx::query_scalar::<_, i64>(&sql);
                        for b in scope_binds {
                            q = q.bind(*b);
                        }
                        Some(
                            q.bind(id)
                                .fetch_optional(&mut *self.tx)
                                .await?
                                .ok_or($crate::StoreError::CursorNotFound)?,
                        )
                    }
                };
                let (sql, ascending) = sh::page_sql(cols, table, filter, binds.len(), page);
                let mut q = sqlx::query(&sql);
                for b in binds {
                    q = q.bind(*b);
                }
                if let Some(seq) = cursor {
                    q = q.bind(seq);
                }
                let rows = q.fetch_all(&mut *self.tx).await?;
                let items = rows.iter().map(map).collect::<$crate::Result<Vec<T>>>()?;
                Ok(sh::finish_page(items, page, ascending))
            }
        }

        #[async_trait::async_trait]
        impl $crate::Tx for $tx {
            async fn commit(self: Box<Self>) -> $crate::Result<()> {
                self.tx.commit().await?;
                Ok(())
            }

            async fn get_setting(&mut self, name: &str) -> $crate::Result<Option<String>> {
                Ok(sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *self.tx)
                    .await?)
            }

            async fn put_setting(&mut self, name: &str, value: &str) -> $crate::Result<()> {
                sqlx::query(
                    "INSERT INTO settings (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .bind(name)
                .bind(value)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            async fn insert_setting_if_absent(&mut self, name: &str, value: &str) -> $crate::Result<bool> {
                let done =
                    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                        .bind(name)
                        .bind(value)
                        .execute(&mut *self.tx)
                        .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn sealed_sample(&mut self) -> $crate::Result<Option<$crate::SealedSample>> {
                use $crate::SealedKind;
                for (kind, sql) in [
                    (
                        SealedKind::CardNumber,
                        "SELECT merchant_id, id, number_sealed FROM payment_methods ORDER BY seq LIMIT 1",
                    ),
                    (
                        SealedKind::ConnectorCredentials,
                        "SELECT merchant_id, id, credentials_sealed FROM connector_accounts ORDER BY seq LIMIT 1",
                    ),
                    (
                        SealedKind::WebhookSecret,
                        "SELECT merchant_id, id, secret_sealed FROM webhook_endpoints ORDER BY seq LIMIT 1",
                    ),
                ] {
                    let row: Option<(String, String, Vec<u8>)> =
                        sqlx::query_as(sql).fetch_optional(&mut *self.tx).await?;
                    if let Some((merchant_id, id, sealed)) = row {
                        return Ok(Some($crate::SealedSample {
                            kind,
                            merchant_id,
                            id,
                            sealed,
                        }));
                    }
                }
                Ok(None)
            }

            async fn insert_merchant(&mut self, m: &settle_domain::tenancy::Merchant) -> $crate::Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO merchants ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    sh::MERCHANT_COLS
                ))
                .bind(&m.id)
                .bind(&m.name)
                .bind(&m.email)
                .bind(m.default_currency.code())
                .bind(m.amount_limits.to_string())
                .bind(m.metadata.to_string())
                .bind(m.status.as_str())
                .bind(m.created_at.0)
                .bind(m.deactivated_at.map(|t| t.0))
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            async fn get_merchant(&mut self, id: &str) -> $crate::Result<Option<settle_domain::tenancy::Merchant>> {
                let sql = format!("SELECT {} FROM merchants WHERE id = $1", sh::MERCHANT_COLS);
                let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *self.tx).await?;
                row.as_ref().map(merchant_from).transpose()
            }

            async fn list_merchants(
                &mut self,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::tenancy::Merchant>> {
                self.page(sh::MERCHANT_COLS, "merchants", "TRUE", &[], page, merchant_from)
                    .await
            }

            async fn deactivate_merchant(&mut self, id: &str, at: settle_domain::Timestamp) -> $crate::Result<()> {
                sqlx::query(
                    "UPDATE merchants SET status = 'deactivated', deactivated_at = COALESCE(deactivated_at, $2) \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(at.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            async fn insert_api_key(&mut self, k: &settle_domain::tenancy::ApiKey) -> $crate::Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO api_keys ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    sh::API_KEY_COLS
                ))
                .bind(&k.id)
                .bind(&k.merchant_id)
                .bind(&k.name)
                .bind(&k.prefix)
                .bind(&k.secret_hash)
                .bind(k.scopes.to_csv())
                .bind(k.created_at.0)
                .bind(k.revoked_at.map(|t| t.0))
                .bind(k.last_used_at.map(|t| t.0))
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            async fn get_api_key(
                &mut self,
                merchant_id: &str,
                id: &str,
            ) -> $crate::Result<Option<settle_domain::tenancy::ApiKey>> {
                let sql = format!(
                    "SELECT {} FROM api_keys WHERE merchant_id = $1 AND id = $2",
                    sh::API_KEY_COLS
                );
                let row = sqlx::query(&sql)
                    .bind(merchant_id)
                    .bind(id)
                    .fetch_optional(&mut *self.tx)
                    .await?;
                row.as_ref().map(api_key_from).transpose()
            }

            async fn list_api_keys(
                &mut self,
                merchant_id: &str,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::tenancy::ApiKey>> {
                self.page(
                    sh::API_KEY_COLS,
                    "api_keys",
                    "merchant_id = $1",
                    &[merchant_id],
                    page,
                    api_key_from,
                )
                .await
            }

            async fn revoke_api_key(
                &mut self,
                merchant_id: &str,
                id: &str,
                at: settle_domain::Timestamp,
            ) -> $crate::Result<()> {
                sqlx::query(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) WHERE merchant_id = $1 AND id = $2",
                )
                .bind(merchant_id)
                .bind(id)
                .bind(at.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            async fn find_api_keys(
                &mut self,
                prefix: &str,
            ) -> $crate::Result<Vec<(settle_domain::tenancy::ApiKey, settle_domain::tenancy::Merchant)>> {
                let sql = format!(
                    "SELECT k.id, k.merchant_id, k.name, k.prefix, k.secret_hash, k.scopes, k.created_at, \
                     k.revoked_at, k.last_used_at, m.id AS m_id, m.name AS m_name, m.email, m.default_currency, \
                     m.amount_limits, m.metadata, m.status, m.created_at AS m_created_at, m.deactivated_at \
                     FROM api_keys k JOIN merchants m ON m.id = k.merchant_id WHERE k.prefix = $1"
                );
                let rows = sqlx::query(&sql).bind(prefix).fetch_all(&mut *self.tx).await?;
                rows.iter()
                    .map(|row| {
                        let merchant = settle_domain::tenancy::Merchant {
                            id: row.try_get("m_id")?,
                            name: row.try_get("m_name")?,
                            email: row.try_get("email")?,
                            default_currency: sh::currency(row.try_get("default_currency")?)?,
                            amount_limits: sh::json(row.try_get("amount_limits")?)?,
                            metadata: sh::json(row.try_get("metadata")?)?,
                            status: sh::merchant_status(row.try_get("status")?)?,
                            created_at: settle_domain::Timestamp(row.try_get("m_created_at")?),
                            deactivated_at: sh::ts(row.try_get("deactivated_at")?),
                        };
                        Ok((api_key_from(row)?, merchant))
                    })
                    .collect()
            }

            async fn touch_api_keys(&mut self, used: &[(String, settle_domain::Timestamp)]) -> $crate::Result<()> {
                for (id, at) in used {
                    sqlx::query(
                        "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 \
                         AND (last_used_at IS NULL OR last_used_at < $2)",
                    )
                    .bind(id)
                    .bind(at.0)
                    .execute(&mut *self.tx)
                    .await?;
                }
                Ok(())
            }

            async fn get_idempotency(
                &mut self,
                merchant_id: &str,
                key: &str,
            ) -> $crate::Result<Option<settle_domain::tenancy::IdempotencyRecord>> {
                let row = sqlx::query(
                    "SELECT merchant_id, key, fingerprint, method, path, status_code, response_body, created_at \
                     FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
                )
                .bind(merchant_id)
                .bind(key)
                .fetch_optional(&mut *self.tx)
                .await?;
                row.map(|row| {
                    let status: i64 = row.try_get("status_code")?;
                    Ok(settle_domain::tenancy::IdempotencyRecord {
                        merchant_id: row.try_get("merchant_id")?,
                        key: row.try_get("key")?,
                        fingerprint: row.try_get("fingerprint")?,
                        method: row.try_get("method")?,
                        path: row.try_get("path")?,
                        status_code: u16::try_from(status)
                            .map_err(|_| $crate::StoreError::Corrupt(format!("status {status}")))?,
                        response_body: row.try_get("response_body")?,
                        created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                    })
                })
                .transpose()
            }

            async fn insert_idempotency(
                &mut self,
                r: &settle_domain::tenancy::IdempotencyRecord,
            ) -> $crate::Result<()> {
                sqlx::query(
                    "INSERT INTO idempotency_keys \
                     (merchant_id, key, fingerprint, method, path, status_code, response_body, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&r.merchant_id)
                .bind(&r.key)
                .bind(&r.fingerprint)
                .bind(&r.method)
                .bind(&r.path)
                .bind(i64::from(r.status_code))
                .bind(&r.response_body)
                .bind(r.created_at.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            async fn prune_idempotency(
                &mut self,
                created_before: settle_domain::Timestamp,
                limit: u32,
            ) -> $crate::Result<u64> {
                let done = sqlx::query(
                    "DELETE FROM idempotency_keys WHERE (merchant_id, key) IN \
                     (SELECT merchant_id, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
                )
                .bind(created_before.0)
                .bind(i64::from(limit))
                .execute(&mut *self.tx)
                .await?;
                Ok(done.rows_affected())
            }

            async fn insert_audit(&mut self, entries: &[settle_domain::tenancy::AuditEntry]) -> $crate::Result<()> {
                if entries.is_empty() {
                    return Ok(());
                }
                self.write_audit(entries).await
            }

            async fn insert_records(&mut self, records: &$crate::Records<'_>) -> $crate::Result<()> {
                if records.is_empty() {
                    return Ok(());
                }
                self.write_records(records).await
            }

            async fn list_audit(
                &mut self,
                merchant_id: &str,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::tenancy::AuditEntry>> {
                self.page(
                    sh::AUDIT_COLS,
                    "audit_logs",
                    "merchant_id = $1",
                    &[merchant_id],
                    page,
                    audit_from,
                )
                .await
            }

            async fn insert_account(&mut self, a: &settle_domain::ledger::Account) -> $crate::Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO ledger_accounts ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    sh::ACCOUNT_COLS
                ))
                .bind(&a.merchant_id)
                .bind(&a.id)
                .bind(a.currency.code())
                .bind(a.code)
                .bind(&a.name)
                .bind(a.flags.bits())
                .bind(a.metadata.to_string())
                .bind(a.balances.debits_pending)
                .bind(a.balances.debits_posted)
                .bind(a.balances.credits_pending)
                .bind(a.balances.credits_posted)
                .bind(a.created_at.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }

            async fn get_accounts(
                &mut self,
                keys: &[settle_domain::ledger::Key],
                lock: bool,
            ) -> $crate::Result<Vec<settle_domain::ledger::Account>> {
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let rows = self
                    .fetch_by_keys(sh::ACCOUNT_COLS, "ledger_accounts", "id", keys, lock)
                    .await?;
                rows.iter().map(account_from).collect()
            }

            async fn list_accounts(
                &mut self,
                merchant_id: &str,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::ledger::Account>> {
                self.page(
                    sh::ACCOUNT_COLS,
                    "ledger_accounts",
                    "merchant_id = $1",
                    &[merchant_id],
                    page,
                    account_from,
                )
                .await
            }

            async fn get_transfers(
                &mut self,
                keys: &[settle_domain::ledger::Key],
            ) -> $crate::Result<Vec<settle_domain::ledger::Transfer>> {
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let rows = self
                    .fetch_by_keys(sh::TRANSFER_COLS, "ledger_transfers", "id", keys, false)
                    .await?;
                rows.iter().map(transfer_from).collect()
            }

            async fn get_pending_statuses(
                &mut self,
                keys: &[settle_domain::ledger::Key],
            ) -> $crate::Result<Vec<(settle_domain::ledger::Key, settle_domain::ledger::PendingStatus)>> {
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let rows = self
                    .fetch_by_keys(
                        "merchant_id, transfer_id, status",
                        "ledger_pending",
                        "transfer_id",
                        keys,
                        false,
                    )
                    .await?;
                rows.iter()
                    .map(|row| {
                        let key = (row.try_get("merchant_id")?, row.try_get("transfer_id")?);
                        Ok((key, sh::pending_status(row.try_get("status")?)?))
                    })
                    .collect()
            }

            async fn write_ledger(&mut self, effects: &settle_domain::ledger::Effects) -> $crate::Result<()> {
                self.write_effects(effects).await
            }

            async fn write_group(&mut self, rows: &$crate::GroupRows<'_>) -> $crate::Result<usize> {
                self.write_group_rows(rows).await
            }

            async fn list_entries(
                &mut self,
                merchant_id: &str,
                account_id: &str,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::ledger::Transfer>> {
                self.page(
                    sh::TRANSFER_COLS,
                    "ledger_transfers",
                    "merchant_id = $1 AND (debit_account_id = $2 OR credit_account_id = $2)",
                    &[merchant_id, account_id],
                    page,
                    transfer_from,
                )
                .await
            }

            async fn due_pending(
                &mut self,
                now: settle_domain::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::DuePending>> {
                let rows = sqlx::query(
                    "SELECT merchant_id, transfer_id FROM ledger_pending \
                     WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= $1 \
                     ORDER BY expires_at LIMIT $2",
                )
                .bind(now.0)
                .bind(i64::from(limit))
                .fetch_all(&mut *self.tx)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::DuePending {
                            merchant_id: row.try_get("merchant_id")?,
                            transfer_id: row.try_get("transfer_id")?,
                        })
                    })
                    .collect()
            }

            async fn ledger_merchants(&mut self) -> $crate::Result<Vec<String>> {
                Ok(
                    sqlx::query_scalar("SELECT DISTINCT merchant_id FROM ledger_accounts ORDER BY merchant_id")
                        .fetch_all(&mut *self.tx)
                        .await?,
                )
            }

            async fn scan_accounts(
                &mut self,
                merchant_id: &str,
                after_id: &str,
                limit: u32,
            ) -> $crate::Result<Vec<settle_domain::ledger::Account>> {
                self.scan(
                    sh::ACCOUNT_COLS,
                    "ledger_accounts",
                    merchant_id,
                    after_id,
                    limit,
                    account_from,
                )
                .await
            }

            async fn scan_transfers(
                &mut self,
                merchant_id: &str,
                after_id: &str,
                limit: u32,
            ) -> $crate::Result<Vec<settle_domain::ledger::Transfer>> {
                self.scan(
                    sh::TRANSFER_COLS,
                    "ledger_transfers",
                    merchant_id,
                    after_id,
                    limit,
                    transfer_from,
                )
                .await
            }

            async fn scan_pending(
                &mut self,
                merchant_id: &str,
            ) -> $crate::Result<Vec<(String, settle_domain::ledger::PendingStatus)>> {
                let rows = sqlx::query("SELECT transfer_id, status FROM ledger_pending WHERE merchant_id = $1")
                    .bind(merchant_id)
                    .fetch_all(&mut *self.tx)
                    .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get("transfer_id")?, sh::pending_status(row.try_get("status")?)?)))
                    .collect()
            }
        }
    };
}
