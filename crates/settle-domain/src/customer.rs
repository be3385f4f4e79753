//! Customers: who pays, kept so that payments and saved payment methods can name them
//! (`cus_…`). The payment keeps its own copy of the contact details it was made with
//! (`payment::Customer`), so that changing or deleting a customer never rewrites history.

use serde_json::Value;

use crate::Timestamp;

#[derive(Clone, Debug, PartialEq)]
pub struct Customer {
    pub merchant_id: String,
    pub id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub description: Option<String>,
    pub metadata: Value,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Customer {
    /// The contact details a payment made for this customer keeps (none without an email).
    pub fn contact(&self) -> Option<crate::payment::Customer> {
        Some(crate::payment::Customer {
            email: self.email.clone()?,
            name: self.name.clone(),
            phone: self.phone.clone(),
        })
    }
}

/// Filters of the customer list.
#[derive(Clone, Debug, Default)]
pub struct CustomerFilter {
    pub email: Option<String>,
}
