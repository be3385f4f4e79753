//! Settle's pure core.
//!
//! Everything here is a value or a function of values: money and currencies, ids, timestamps,
//! idempotency keys, and the ledger's rules (which transfer is accepted, what it does to
//! balances). Nothing here performs IO, reads the clock or draws random numbers — callers pass
//! `now` and already-made ids in. That is what lets the ledger be tested against a reference
//! model without a database and lets both storage engines share one set of rules.
//!
//! Architecture invariant: this crate depends on no async runtime, no SQL driver and no HTTP
//! framework.

pub mod breaker;
pub mod card;
pub mod customer;
pub mod event;
pub mod ids;
pub mod inbound;
pub mod invoice;
pub mod ledger;
pub mod money;
pub mod payment;
pub mod postings;
pub mod routing;
pub mod secret;
pub mod split;
pub mod tenancy;
pub mod time;
pub mod validate;
pub mod webhook;

pub use money::{Currency, CurrencyInfo};
pub use secret::Secret;
pub use time::Timestamp;
