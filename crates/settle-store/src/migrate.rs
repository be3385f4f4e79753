//! Schema migrations, embedded in the binary: one ordered list per engine.

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../migrations/postgres/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "payments",
        sql: include_str!("../migrations/postgres/0002_payments.sql"),
    },
    Migration {
        version: 3,
        name: "payment_claims",
        sql: include_str!("../migrations/postgres/0003_payment_claims.sql"),
    },
    Migration {
        version: 4,
        name: "events",
        sql: include_str!("../migrations/postgres/0004_events.sql"),
    },
    Migration {
        version: 5,
        name: "invoices",
        sql: include_str!("../migrations/postgres/0005_invoices.sql"),
    },
    Migration {
        version: 6,
        name: "webhook_inbox",
        sql: include_str!("../migrations/postgres/0006_webhook_inbox.sql"),
    },
    Migration {
        version: 7,
        name: "customers",
        sql: include_str!("../migrations/postgres/0007_customers.sql"),
    },
    Migration {
        version: 8,
        name: "single_statement_writes",
        sql: include_str!("../migrations/postgres/0008_single_statement_writes.sql"),
    },
    Migration {
        version: 9,
        name: "fewer_indexes",
        sql: include_str!("../migrations/postgres/0009_fewer_indexes.sql"),
    },
    Migration {
        version: 10,
        name: "refund_keys",
        sql: include_str!("../migrations/postgres/0010_refund_keys.sql"),
    },
    Migration {
        version: 11,
        name: "expiry_by_authorization",
        sql: include_str!("../migrations/postgres/0011_expiry_by_authorization.sql"),
    },
    Migration {
        version: 12,
        name: "late_authorizations",
        sql: include_str!("../migrations/postgres/0012_late_authorizations.sql"),
    },
];

pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../migrations/sqlite/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "payments",
        sql: include_str!("../migrations/sqlite/0002_payments.sql"),
    },
    Migration {
        version: 3,
        name: "payment_claims",
        sql: include_str!("../migrations/sqlite/0003_payment_claims.sql"),
    },
    Migration {
        version: 4,
        name: "events",
        sql: include_str!("../migrations/sqlite/0004_events.sql"),
    },
    Migration {
        version: 5,
        name: "invoices",
        sql: include_str!("../migrations/sqlite/0005_invoices.sql"),
    },
    Migration {
        version: 6,
        name: "webhook_inbox",
        sql: include_str!("../migrations/sqlite/0006_webhook_inbox.sql"),
    },
    Migration {
        version: 7,
        name: "customers",
        sql: include_str!("../migrations/sqlite/0007_customers.sql"),
    },
    Migration {
        version: 8,
        name: "refund_keys",
        sql: include_str!("../migrations/sqlite/0008_refund_keys.sql"),
    },
    Migration {
        version: 9,
        name: "expiry_by_authorization",
        sql: include_str!("../migrations/sqlite/0009_expiry_by_authorization.sql"),
    },
    Migration {
        version: 10,
        name: "late_authorizations",
        sql: include_str!("../migrations/sqlite/0010_late_authorizations.sql"),
    },
];

pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS settle_migrations (
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";
