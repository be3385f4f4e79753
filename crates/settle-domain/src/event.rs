//! Domain events: what changed, written in the transaction that changed it.
//!
//! Every state change of an aggregate (a payment, a refund, a batch of ledger transfers, an
//! invoice, a webhook endpoint, a merchant's settings) records one event carrying the object as
//! it stands after the change. Events of one aggregate are numbered 1, 2, 3… with no gap: the
//! store assigns the next number when it inserts the event, in the same transaction as the
//! change, and a unique key on (aggregate, sequence) refuses a second writer racing for the same
//! number. A reader (or a webhook receiver) that has seen sequence n of an aggregate knows that
//! anything numbered below n is older, whatever order deliveries arrive in.

use serde_json::Value;

use crate::{
    payment::{PaymentStatus, RefundStatus},
    Timestamp,
};

/// An event before the store has numbered it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub merchant_id: String,
    pub id: String,
    pub kind: String,
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    /// The object after the change, as JSON text: serialized once, where the event is made
    /// (a ledger batch's event lists up to 1,000 transfers).
    pub data: String,
    pub created_at: Timestamp,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub merchant_id: String,
    pub id: String,
    pub kind: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// 1, 2, 3… per aggregate, without gaps.
    pub sequence: i64,
    pub data: Value,
    pub created_at: Timestamp,
}

/// Filters of the event list.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub kind: Option<String>,
    /// Any of these types (none: every type).
    pub kinds: Vec<String>,
    pub aggregate_id: Option<String>,
    pub created_gte: Option<Timestamp>,
    pub created_lt: Option<Timestamp>,
}

/// Every event type Settle records.
pub const TYPES: &[&str] = &[
    "payment.created",
    "payment.updated",
    "payment.method_attached",
    "payment.processing",
    "payment.authorized",
    "payment.captured",
    "payment.failed",
    "payment.canceled",
    "payment.refunded",
    "refund.created",
    "refund.succeeded",
    "refund.failed",
    "transfer_batch.created",
    "invoice.created",
    "invoice.sent",
    "invoice.payment_applied",
    "invoice.payment_rejected",
    "invoice.paid",
    "invoice.voided",
    "connector_account.created",
    "connector_account.updated",
    "routing_rules.updated",
    "webhook_endpoint.created",
    "webhook_endpoint.updated",
    "webhook_endpoint.deleted",
    "webhook_endpoint.disabled",
];

/// Settle's event types and the Stripe event types they go out as in the Stripe-compatible
/// API (events without a Stripe counterpart are not shown there).
pub const STRIPE_TYPES: &[(&str, &str)] = &[
    ("payment.created", "payment_intent.created"),
    ("payment.processing", "payment_intent.processing"),
    ("payment.authorized", "payment_intent.amount_capturable_updated"),
    ("payment.captured", "payment_intent.succeeded"),
    ("payment.failed", "payment_intent.payment_failed"),
    ("payment.canceled", "payment_intent.canceled"),
    ("payment.refunded", "charge.refunded"),
    ("refund.created", "refund.created"),
    ("refund.succeeded", "refund.updated"),
    ("refund.failed", "refund.failed"),
];

/// The Stripe type of a Settle event type, if it has one.
pub fn stripe_type(kind: &str) -> Option<&'static str> {
    STRIPE_TYPES.iter().find(|(k, _)| *k == kind).map(|(_, s)| *s)
}

/// The Settle event type of a Stripe type.
pub fn settle_type(stripe: &str) -> Option<&'static str> {
    STRIPE_TYPES.iter().find(|(_, s)| *s == stripe).map(|(k, _)| *k)
}

/// Whether `pattern` is a valid Stripe `enabled_events` entry: `*`, a type Settle sends, or
/// `<object>.*` for an object that has such types.
pub fn is_valid_stripe_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix(".*") {
        return STRIPE_TYPES
            .iter()
            .any(|(_, t)| t.rsplit_once('.').is_some_and(|(a, _)| a == prefix));
    }
    STRIPE_TYPES.iter().any(|(_, t)| *t == pattern)
}

/// The event type of a payment's status change (`from` is `None` when it was created).
pub fn payment_event(from: Option<PaymentStatus>, to: PaymentStatus) -> &'static str {
    use PaymentStatus::*;
    match (from, to) {
        (None, _) => "payment.created",
        (Some(_), RequiresConfirmation) => "payment.method_attached",
        (Some(_), Processing) => "payment.processing",
        (Some(_), RequiresCapture) => "payment.authorized",
        (Some(_), Succeeded) => "payment.captured",
        (Some(_), Canceled) => "payment.canceled",
        (Some(_), RequiresPaymentMethod) => "payment.failed",
    }
}

/// The event type of a refund in `status` (a new refund is `pending`).
pub fn refund_event(status: RefundStatus) -> &'static str {
    match status {
        RefundStatus::Pending => "refund.created",
        RefundStatus::Succeeded => "refund.succeeded",
        RefundStatus::Failed => "refund.failed",
    }
}

/// Whether an `enabled_events` entry selects `kind`: `*` selects everything, `payment.*` every
/// type that starts with `payment.`, anything else only itself.
pub fn selects(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => prefix.ends_with('.') && kind.starts_with(prefix),
        None => pattern == kind,
    }
}

/// Whether `pattern` is a valid `enabled_events` entry: `*`, a known type, or `<aggregate>.*`
/// for an aggregate that has events.
pub fn is_valid_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix(".*") {
        return TYPES
            .iter()
            .any(|t| t.split_once('.').is_some_and(|(a, _)| a == prefix));
    }
    TYPES.contains(&pattern)
}

/// Where each event of a batch falls among the batch's events of the same aggregate (1 for
/// the first): the store numbers the k-th event of an aggregate in one insert as the
/// aggregate's stored last sequence plus k.
pub fn offsets(events: &[NewEvent]) -> Vec<i64> {
    let mut seen: Vec<(&str, &str, i64)> = Vec::new();
    events
        .iter()
        .map(|e| {
            let key = (e.aggregate_type, e.aggregate_id.as_str());
            match seen.iter_mut().find(|(t, id, _)| (*t, *id) == key) {
                Some(entry) => {
                    entry.2 += 1;
                    entry.2
                }
                None => {
                    seen.push((key.0, key.1, 1));
                    1
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_select_types() {
        assert!(selects("*", "payment.created"));
        assert!(selects("payment.*", "payment.captured"));
        assert!(!selects("payment.*", "refund.created"));
        assert!(!selects("pay*", "payment.created"));
        assert!(selects("refund.failed", "refund.failed"));
        assert!(!selects("refund.failed", "refund.failed.x"));
    }

    #[test]
    fn patterns_are_validated() {
        for ok in ["*", "payment.*", "invoice.paid", "webhook_endpoint.*"] {
            assert!(is_valid_pattern(ok), "{ok}");
        }
        for bad in ["", "payment", "payment.", "nope.*", "payment.nope", "*.*", "pay*"] {
            assert!(!is_valid_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn every_payment_transition_has_a_known_type() {
        for to in PaymentStatus::ALL {
            assert!(TYPES.contains(&payment_event(None, to)));
            for from in PaymentStatus::ALL {
                assert!(TYPES.contains(&payment_event(Some(from), to)));
            }
        }
    }

    #[test]
    fn stripe_types_map_known_types_both_ways() {
        for (kind, stripe) in STRIPE_TYPES {
            assert!(TYPES.contains(kind), "{kind}");
            assert_eq!(stripe_type(kind), Some(*stripe));
            assert_eq!(settle_type(stripe), Some(*kind));
            assert!(is_valid_stripe_pattern(stripe));
        }
        assert!(is_valid_stripe_pattern("payment_intent.*"));
        assert!(is_valid_stripe_pattern("*"));
        for bad in ["charge.nope", "payment.*", "payment.captured", "nope.*", ""] {
            assert!(!is_valid_stripe_pattern(bad), "{bad}");
        }
        assert_eq!(stripe_type("invoice.paid"), None);
    }

    #[test]
    fn offsets_count_within_each_aggregate() {
        let event = |id: &str| NewEvent {
            merchant_id: "m".into(),
            id: format!("evt_{id}"),
            kind: "payment.created".into(),
            aggregate_type: "payment",
            aggregate_id: id.into(),
            data: "null".into(),
            created_at: Timestamp(0),
        };
        let batch = [event("a"), event("b"), event("a"), event("a")];
        assert_eq!(offsets(&batch), vec![1, 1, 2, 3]);
    }
}
