//! The customers part of the port: customers, and which customer a saved payment method
//! belongs to. `customers_tx!` stamps the one implementation out for each adapter; both
//! engines accept every statement here as written.

use async_trait::async_trait;
use settle_domain::{
    customer::{Customer, CustomerFilter},
    payment::PaymentMethod,
};

use crate::{Listing, PageRequest, Result};

#[async_trait]
pub trait CustomerTx: Send {
    async fn insert_customer(&mut self, customer: &Customer) -> Result<()>;
    async fn get_customer(&mut self, merchant_id: &str, id: &str) -> Result<Option<Customer>>;
    /// Whether the customer exists; if so it cannot be deleted before this transaction ends
    /// (a key-share lock on PostgreSQL; SQLite's one writer serializes anyway).
    async fn hold_customer(&mut self, merchant_id: &str, id: &str) -> Result<bool>;
    /// Stores the customer's details; `false` when there is no such customer.
    async fn update_customer(&mut self, customer: &Customer) -> Result<bool>;
    /// Deletes the customer and detaches its payment methods; `false` when there is none.
    /// Payments keep the id and the contact details they were made with.
    async fn delete_customer(&mut self, merchant_id: &str, id: &str) -> Result<bool>;
    async fn list_customers(
        &mut self,
        merchant_id: &str,
        filter: &CustomerFilter,
        page: &PageRequest,
    ) -> Result<Listing<Customer>>;
    /// Attaches a payment method to a customer (`Some`) or detaches it (`None`), only while it
    /// is attached to `was` (compare-and-set); `false` when it is not (or there is no such
    /// payment method).
    async fn set_payment_method_customer(
        &mut self,
        merchant_id: &str,
        id: &str,
        was: Option<&str>,
        customer_id: Option<&str>,
    ) -> Result<bool>;
    /// The payment methods attached to a customer, newest first.
    async fn list_customer_payment_methods(
        &mut self,
        merchant_id: &str,
        customer_id: &str,
        page: &PageRequest,
    ) -> Result<Listing<PaymentMethod>>;
}

pub const CUSTOMER_COLS: &str = "merchant_id, id, email, name, phone, description, metadata, created_at, updated_at";

macro_rules! customers_tx {
    ($tx:ident, $row:ty, $share_lock:expr) => {
        fn customer_from(row: &$row) -> $crate::Result<settle_domain::customer::Customer> {
            Ok(settle_domain::customer::Customer {
                merchant_id: row.try_get("merchant_id")?,
                id: row.try_get("id")?,
                email: row.try_get("email")?,
                name: row.try_get("name")?,
                phone: row.try_get("phone")?,
                description: row.try_get("description")?,
                metadata: sh::json(row.try_get("metadata")?)?,
                created_at: settle_domain::Timestamp(row.try_get("created_at")?),
                updated_at: settle_domain::Timestamp(row.try_get("updated_at")?),
            })
        }

        #[async_trait::async_trait]
        impl $crate::customers::CustomerTx for $tx {
            async fn insert_customer(&mut self, c: &settle_domain::customer::Customer) -> $crate::Result<()> {
                let sql = format!(
                    "INSERT INTO customers ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    $crate::customers::CUSTOMER_COLS
                );
                sqlx::query(&sql)
                    .bind(&c.merchant_id)
                    .bind(&c.id)
                    .bind(&c.email)
                    .bind(&c.name)
                    .bind(&c.phone)
                    .bind(&c.description)
                    .bind(c.metadata.to_string())
                    .bind(c.created_at.0)
                    .bind(c.updated_at.0)
                    .execute(&mut *self.tx)
                    .await?;
                Ok(())
            }

            async fn get_customer(
                &mut self,
                merchant_id: &str,
                id: &str,
            ) -> $crate::Result<Option<settle_domain::customer::Customer>> {
                let sql = format!(
                    "SELECT {} FROM customers WHERE merchant_id = $1 AND id = $2",
                    $crate::customers::CUSTOMER_COLS
                );
                let row = sqlx::query(&sql)
                    .bind(merchant_id)
                    .bind(id)
                    .fetch_optional(&mut *self.tx)
                    .await?;
                row.as_ref().map(customer_from).transpose()
            }

            async fn update_customer(&mut self, c: &settle_domain::customer::Customer) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE customers SET email = $3, name = $4, phone = $5, description = $6, metadata = $7, \
                     updated_at = $8 WHERE merchant_id = $1 AND id = $2",
                )
                .bind(&c.merchant_id)
                .bind(&c.id)
                .bind(&c.email)
                .bind(&c.name)
                .bind(&c.phone)
                .bind(&c.description)
                .bind(c.metadata.to_string())
                .bind(c.updated_at.0)
                .execute(&mut *self.tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn hold_customer(&mut self, merchant_id: &str, id: &str) -> $crate::Result<bool> {
                let sql = format!(
                    "SELECT 1 FROM customers WHERE merchant_id = $1 AND id = $2{}",
                    $share_lock
                );
                let found: Option<i32> = sqlx::query_scalar(&sql)
                    .bind(merchant_id)
                    .bind(id)
                    .fetch_optional(&mut *self.tx)
                    .await?;
                Ok(found.is_some())
            }

            async fn delete_customer(&mut self, merchant_id: &str, id: &str) -> $crate::Result<bool> {
                // The row first: this waits for any attach that holds the customer, and the
                // detach below (a statement of its own) then sees what that attach stored.
                let done = sqlx::query("DELETE FROM customers WHERE merchant_id = $1 AND id = $2")
                    .bind(merchant_id)
                    .bind(id)
                    .execute(&mut *self.tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                sqlx::query(
                    "UPDATE payment_methods SET customer_id = NULL WHERE merchant_id = $1 AND customer_id = $2",
                )
                .bind(merchant_id)
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
                Ok(true)
            }

            async fn list_customers(
                &mut self,
                merchant_id: &str,
                filter: &settle_domain::customer::CustomerFilter,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::customer::Customer>> {
                match &filter.email {
                    None => {
                        self.page(
                            $crate::customers::CUSTOMER_COLS,
                            "customers",
                            "merchant_id = $1",
                            &[merchant_id],
                            page,
                            customer_from,
                        )
                        .await
                    }
                    Some(email) => {
                        self.page(
                            $crate::customers::CUSTOMER_COLS,
                            "customers",
                            "merchant_id = $1 AND email = $2",
                            &[merchant_id, email],
                            page,
                            customer_from,
                        )
                        .await
                    }
                }
            }

            async fn set_payment_method_customer(
                &mut self,
                merchant_id: &str,
                id: &str,
                was: Option<&str>,
                customer_id: Option<&str>,
            ) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE payment_methods SET customer_id = $4 \
                     WHERE merchant_id = $1 AND id = $2 AND customer_id IS NOT DISTINCT FROM $3",
                )
                .bind(merchant_id)
                .bind(id)
                .bind(was)
                .bind(customer_id)
                .execute(&mut *self.tx)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn list_customer_payment_methods(
                &mut self,
                merchant_id: &str,
                customer_id: &str,
                page: &$crate::PageRequest,
            ) -> $crate::Result<$crate::Listing<settle_domain::payment::PaymentMethod>> {
                self.page(
                    $crate::payments::PAYMENT_METHOD_COLS,
                    "payment_methods",
                    "merchant_id = $1 AND customer_id = $2",
                    &[merchant_id, customer_id],
                    page,
                    payment_method_from,
                )
                .await
            }
        }
    };
}
