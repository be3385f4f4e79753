//! Merchants (tenants), their API keys, stored idempotent responses and audit entries.

use serde_json::Value;

use crate::{money::Currency, time::Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MerchantStatus {
    Active,
    Deactivated,
}

impl MerchantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MerchantStatus::Active => "active",
            MerchantStatus::Deactivated => "deactivated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(MerchantStatus::Active),
            "deactivated" => Some(MerchantStatus::Deactivated),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Merchant {
    pub id: String,
    pub name: String,
    /// Lower-cased; unique across merchants.
    pub email: String,
    pub default_currency: Currency,
    /// `{"USD": {"min": 1, "max": 10000000}}`: per-currency overrides of the payment amount limits.
    pub amount_limits: Value,
    pub metadata: Value,
    pub status: MerchantStatus,
    pub created_at: Timestamp,
    pub deactivated_at: Option<Timestamp>,
}

/// What an API key may do. `write` implies nothing about `read`: both are listed explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Scopes {
    pub read: bool,
    pub write: bool,
}

impl Scopes {
    pub const ALL: Scopes = Scopes {
        read: true,
        write: true,
    };

    /// Parses a list such as `["read", "write"]`; `None` names an unknown scope.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Scopes, String> {
        let mut scopes = Scopes::default();
        for name in names {
            match name {
                "read" => scopes.read = true,
                "write" => scopes.write = true,
                other => return Err(other.to_owned()),
            }
        }
        Ok(scopes)
    }

    pub fn names(self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.read {
            names.push("read");
        }
        if self.write {
            names.push("write");
        }
        names
    }

    /// Stored form: `read,write`.
    pub fn to_csv(self) -> String {
        self.names().join(",")
    }

    pub fn from_csv(s: &str) -> Scopes {
        Scopes::parse(s.split(',').filter(|p| !p.is_empty())).unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub merchant_id: String,
    pub name: Option<String>,
    /// The first characters of the secret, shown in lists and used to find the key.
    pub prefix: String,
    /// Hex SHA-256 of the whole secret. The secret itself is never stored.
    pub secret_hash: String,
    pub scopes: Scopes,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

/// A completed request's response, replayed for the same idempotency key.
#[derive(Clone, Debug, PartialEq)]
pub struct IdempotencyRecord {
    /// The merchant id, or [`ADMIN_SCOPE`] for the operator API.
    pub merchant_id: String,
    pub key: String,
    /// Hex SHA-256 of method, path and canonical body.
    pub fingerprint: String,
    pub method: String,
    pub path: String,
    pub status_code: u16,
    pub response_body: String,
    pub created_at: Timestamp,
}

/// The idempotency scope of operator requests (no merchant id has this form).
pub const ADMIN_SCOPE: &str = "admin";

#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub id: String,
    pub merchant_id: String,
    /// The API key's prefix, or `admin`.
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: Timestamp,
}
