//! Settle's integration tests: one binary, the same conformance suite against SQLite and
//! PostgreSQL (see `harness::conformance!`).

mod harness;

mod admin;
mod bad_input;
mod concurrency;
mod customers;
mod events;
mod idempotency;
mod inbound;
mod invoices;
mod ledger;
mod ops;
mod payments;
mod payments_stripe;
mod startup;
mod stripe_compat;
mod tenancy;
mod webhooks;
