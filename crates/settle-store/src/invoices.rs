//! The invoices part of the port: invoices, and the inbox of payment events for them
//! (`invoice_payment_events`). `invoices_tx!` stamps the one implementation out for each
//! adapter, like `payments_tx!`; both engines accept every statement here as written.
//!
//! Two writes are compare-and-set, so that several workers (tasks or processes) can race on the
//! same rows and exactly one wins: an invoice is updated only at the version its writer read,
//! and a payment event is concluded (`received → applied | rejected`) only while `received`.
//! Batches of either are written in key order, so two transactions touching the same rows take
//! their row locks in the same order (no deadlock on PostgreSQL).

use async_trait::async_trait;
use settle_domain::{
    invoice::{Invoice, InvoiceFilter, InvoiceStatus, PaymentEvent, PaymentEventStatus, Rejection},
    ledger::Key,
};

use crate::{Listing, PageRequest, Result, StoreError};

#[async_trait]
pub trait InvoiceTx: Send {
    async fn insert_invoice(&mut self, invoice: &Invoice) -> Result<()>;
    async fn get_invoice(&mut self, merchant_id: &str, id: &str) -> Result<Option<Invoice>>;
    /// Invoices by key (any merchant's: for the worker, which runs for all of them).
    async fn get_invoices(&mut self, keys: &[Key]) -> Result<Vec<Invoice>>;
    /// Stores each invoice if its stored row is still at the expected version; returns how many
    /// were stored (fewer than given: another change came first for some).
    async fn update_invoices(&mut self, invoices: &[(Invoice, i64)]) -> Result<usize>;
    async fn list_invoices(
        &mut self,
        merchant_id: &str,
        filter: &InvoiceFilter,
        page: &PageRequest,
    ) -> Result<Listing<Invoice>>;

    /// Puts a payment event in the inbox; `false` when its `(merchant_id, event_id)` is there
    /// already (a duplicate delivery: nothing is written).
    async fn insert_payment_event(&mut self, event: &PaymentEvent) -> Result<bool>;
    async fn get_payment_event(&mut self, merchant_id: &str, event_id: &str) -> Result<Option<PaymentEvent>>;
    /// Up to `limit` `received` events of every merchant, oldest first.
    async fn received_payment_events(&mut self, limit: u32) -> Result<Vec<PaymentEvent>>;
    /// Stores each event's outcome if it is still `received`; returns how many were stored
    /// (fewer than given: another worker concluded some first).
    async fn conclude_payment_events(&mut self, events: &[PaymentEvent]) -> Result<usize>;
    /// The events received for one invoice, newest first.
    async fn list_payment_events(
        &mut self,
        merchant_id: &str,
        invoice_id: &str,
        page: &PageRequest,
    ) -> Result<Listing<PaymentEvent>>;
}

pub const INVOICE_COLS: &str = "merchant_id, id, status, currency, amount_due, amount_paid, customer_email, \
    customer_name, description, metadata, due_date, sent_at, paid_at, voided_at, version, created_at, updated_at";
pub const PAYMENT_EVENT_COLS: &str =
    "merchant_id, id, event_id, invoice_id, amount, currency, status, reason, transfer_id, created_at, updated_at";

pub fn status(s: &str) -> Result<InvoiceStatus> {
    InvoiceStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("invoice status {s}")))
}

pub fn event_status(s: &str) -> Result<PaymentEventStatus> {
    PaymentEventStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("invoice payment status {s}")))
}

pub fn reason(s: Option<String>) -> Result<Option<Rejection>> {
    s.map(|code| Rejection::parse(&code).ok_or_else(|| StoreError::Corrupt(format!("rejection {code}"))))
        .transpose()
}

/// The positions of `rows` in key order (the order their row locks are taken in).
pub fn key_order<T>(rows: &[T], key: impl Fn(&T) -> (&str, &str)) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|a, b| key(&rows[*a]).cmp(&key(&rows[*b])));
    order
}

macro_rules! invoices_tx {
    ($tx:ident, $row:ty) => {
        use $crate::invoices as inv;

        fn invoice_from(row: &$row) -> $crate::Result<settle_domain::invoice::Invoice> {
            Ok(settle_domain::invoice::Invoice {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                status: inv::status(row.try_get("status")?)?,
                currency: sh::currency(row.try_get("currency")?)?,
                amount_due: row.try_get("amount_due")?,
                amount_paid: row.try_get("amount_paid")?,
                customer_email: row.try_get("customer_email")?,
                customer_name: row.try_get("customer_name")?,
                description: row.try_get("description")?,
                metadata: sh::json(row.try_get("metadata")?)?,
                due_date: sh::ts(row.try_get("due_date")?),
                sent_at: sh::ts(row.try_get("sent_at")?),
                paid_at: sh::ts(row.try_get("paid_at")?),
                voided_at: sh::ts(row.try_get("voided_at")?),
                version: row.try_get("version")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                updated_at: settle_domain::Timestamp(row.try_get("updated_at")?),
            })
        }

        fn payment_event_from(row: &$row) -> $crate::Result<settle_domain::invoice::PaymentEvent> {
            Ok(settle_domain::invoice::PaymentEvent {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                invoice_id: row.try_get("invoice_id")?,
                amount: row.try_get("amount")?,
                currency: sh::currency(row.try_get("currency")?)?,
                status: inv::event_status(row.try_get("status")?)?,
                reason: inv::reason(row.try_get("reason")?)?,
                transfer_id: row.try_get("transfer_id")?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                updated_at: settle_domain::Timestamp(row.try_get("updated_at")?),
            })
        }

        #[async_trait::async_trait]
        impl $crate::invoices::InvoiceTx for $tx {
            async fn insert_invoice(&mut self, i: &settle_domain::invoice::Invoice) -> $crate::Result<()> {
                let sql = format!(
                    "INSERT INTO invoices ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                     $14, $15, $16, $17)",
                    inv::INVOICE_COLS
                );
                sqlx::query(&sql)
                    .bind(&i.merchant_id)
                    .bind(&i.id)
                    .bind(i.status.as_str())
                    .bind(i.currency.code())
                    .bind(i.amount_due)
                    .bind(i.amount_paid)
                    .bind(&i.customer_email)
                    .bind(&i.customer_name)
                    .bind(&i.description)
                    .bind(i.metadata.to_string())
                    .bind(i.due_date.map(|t| t.0))
                    .bind(i.sent_at.map(|t| t.0))
                    .bind(i.paid_at.map(|t| t.0))
                    .bind(i.voided_at.map(|t| t.0))
                    .bind(i.version)
                    .bind(i.created_at.0)
                    .bind(i.updated_at.0)
                    .execute(&mut *self.tx)
                    .await?;
                Ok(())
            }

            async fn get_invoice(
                &mut self,
                merchant_id: &str,
                id: &str,
            ) -> $crate::Result<Option<settle_domain::invoice::Invoice>> {
                let sql = format!("SELECT {} FROM invoices WHERE merchant_id = $1 AND id = $2", inv::INVOICE_COLS);
                let row = sqlx::query(&sql).bind(merchant_id).bind(id).fetch_optional(&mut *self.tx).await?;
                row.as_ref().map(invoice_from).transpose()
            }

            async fn get_invoices(
                &mut self,
                keys: &[settle_domain::ledger::Key],
            ) -> $crate::Result<Vec<settle_domain::invoice::Invoice>> {
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let rows = self.fetch_by_keys(inv::INVOICE_COLS, "invoices", "id", keys, false).await?;
                rows.iter().map(invoice_from).collect()
            }

            async fn update_invoices(
                &mut self,
                invoices: &[(settle_domain::invoice::Invoice, i64)],
            ) -> $crate::Result<usize> {
                let mut stored = 0;
                for at in inv::key_order(invoices, |(i, _)| (i.merchant_id.as_str(), i.id.as_str())) {
                    let (i, expected) = &invoices[at];
                    let done = sqlx::query(
                        "UPDATE invoices SET status = $3, amount_paid = $4, description = $5, metadata = $6, \
                         due_date = $7, sent_at = $8, paid_at = $9, voided_at = $10, version = $11, updated_at = $12 \
                         WHERE merchant_id = $1 AND id = $2 AND version = $13",
                    )
                    .bind(&i.merchant_id)
                    .bind(&i.id)
                    .bind(i.status.as_str())
                    .bind(i.amount_paid)
                    .bind(&i.description)
                    .bind(i.metadata.to_string())
                    .bind(i.due_date.map(|t| t.0))
                    .bind(i.sent_at.map(|t| t.0))
                    .bind(i.paid_at.map(|t| t.0))
                    .bind(i.voided_at.map(|t| t.0))
                    .bind(i.version)
                    .bind(i.updated_at.0)
                    .bind(*expected)
                    .execute(&mut *self.tx)
                    .await?;
                    stored += usize::from(done.rows_affected() == 1);
                }
                Ok(stored)
            }

            async fn list_invoices(
                &mut self,
                merchant_id: &str,
                filter: &settle_domain::invoice::InvoiceFilter,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::invoice::Invoice>> {
                let mut sql = String::from("merchant_id = $1");
                let mut binds: Vec<String> = vec![merchant_id.to_owned()];
                let mut add = |clause: &str, value: String| {
                    binds.push(value);
                    sql.push_str(&format!(" AND {}", clause.replace('?', &format!("${}", binds.len()))));
                };
                if let Some(s) = filter.status {
                    add("status = ?", s.as_str().to_owned());
                }
                if let Some(e) = &filter.customer_email {
                    add("customer_email = ?", e.clone());
                }
                let binds: Vec<&str> = binds.iter().map(String::as_str).collect();
                self.page(inv::INVOICE_COLS, "invoices", &sql, &binds, page, invoice_from).await
            }

            async fn insert_payment_event(
                &mut self,
                e: &settle_domain::invoice::PaymentEvent,
            ) -> $crate::Result<bool> {
                let sql = format!(
                    "INSERT INTO invoice_payment_events ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (merchant_id, event_id) DO NOTHING",
                    inv::PAYMENT_EVENT_COLS
                );
                let done = sqlx::query(&sql)
                    .bind(&e.merchant_id)
                    .bind(&e.id)
                    .bind(&e.event_id)
                    .bind(&e.invoice_id)
                    .bind(e.amount)
                    .bind(e.currency.code())
                    .bind(e.status.as_str())
                    .bind(e.reason.map(|r| r.code()))
                    .bind(&e.transfer_id)
                    .bind(e.created_at.0)
                    .bind(e.updated_at.0)
                    .execute(&mut *self.tx)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn get_payment_event(
                &mut self,
                merchant_id: &str,
                event_id: &str,
            ) -> $crate::Result<Option<settle_domain::invoice::PaymentEvent>> {
                let sql = format!(
                    "SELECT {} FROM invoice_payment_events WHERE merchant_id = $1 AND event_id = $2",
                    inv::PAYMENT_EVENT_COLS
                );
                let row = sqlx::query(&sql)
                    .bind(merchant_id)
                    .bind(event_id)
                    .fetch_optional(&mut *self.tx)
                    .await?;
                row.as_ref().map(payment_event_from).transpose()
            }

            async fn received_payment_events(
                &mut self,
                limit: u32,
            ) -> $crate::Result<Vec<settle_domain::invoice::PaymentEvent>> {
                let sql = format!(
                    "SELECT {} FROM invoice_payment_events WHERE status = 'received' ORDER BY seq LIMIT $1",
                    inv::PAYMENT_EVENT_COLS
                );
                let rows = sqlx::query(&sql).bind(i64::from(limit)).fetch_all(&mut *self.tx).await?;
                rows.iter().map(payment_event_from).collect()
            }

            async fn conclude_payment_events(
                &mut self,
                events: &[settle_domain::invoice::PaymentEvent],
            ) -> $crate::Result<usize> {
                let mut stored = 0;
                for at in inv::key_order(events, |e| (e.merchant_id.as_str(), e.id.as_str())) {
                    let e = &events[at];
                    let done = sqlx::query(
                        "UPDATE invoice_payment_events SET status = $3, reason = $4, transfer_id = $5, updated_at = $6 \
                         WHERE merchant_id = $1 AND id = $2 AND status = 'received'",
                    )
                    .bind(&e.merchant_id)
                    .bind(&e.id)
                    .bind(e.status.as_str())
                    .bind(e.reason.map(|r| r.code()))
                    .bind(&e.transfer_id)
                    .bind(e.updated_at.0)
                    .execute(&mut *self.tx)
                    .await?;
                    stored += usize::from(done.rows_affected() == 1);
                }
                Ok(stored)
            }

            async fn list_payment_events(
                &mut self,
                merchant_id: &str,
                invoice_id: &str,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::invoice::PaymentEvent>> {
                self.page(
                    inv::PAYMENT_EVENT_COLS,
                    "invoice_payment_events",
                    "merchant_id = $1 AND invoice_id = $2",
                    &[merchant_id, invoice_id],
                    page,
                    payment_event_from,
                )
                .await
            }
        }
    };
}
