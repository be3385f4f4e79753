//! Inbound provider webhooks: the inbox row, what a provider event says about a payment, and
//! the rule that decides whether it applies.
//!
//! A provider (Stripe, or Settle's own sandbox speaking Stripe's shapes) tells Settle about a
//! payment by posting an event. The HTTP edge verifies the signature and stores the event in the
//! inbox; a worker later reads it ([`outcome`]), finds the payment, and asks [`decide`] what to
//! do. The rule is monotone: a payment only ever moves forward along
//! `processing → requires_capture → succeeded` (or ends `canceled`, or returns from `processing`
//! to `requires_payment_method` when the provider failed it), so events that arrive late or out
//! of order are recorded as `ignored` with a reason and never move a payment backwards.
//!
//! Retries: an event that cannot be applied yet (its payment is unknown, or another command is
//! working on it) is tried again after [`retry_delay_seconds`]; after [`ATTEMPTS_MAX`] attempts
//! it is `parked` for the operator. Everything here is pure: the caller passes `now`.

use serde_json::Value;

use crate::{
    payment::{Payment, PaymentStatus},
    Timestamp,
};

/// Attempts to apply one event before it is parked (about 75 minutes of retries).
pub const ATTEMPTS_MAX: i64 = 10;
/// The wait after the first failed attempt; it doubles with each further one…
pub const RETRY_BASE_SECONDS: i64 = 30;
/// …up to this.
pub const RETRY_CAP_SECONDS: i64 = 900;
/// Longest provider event id and event type accepted.
pub const EVENT_FIELD_LEN_MAX: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxStatus {
    /// Stored, not yet applied (or waiting for its next attempt).
    Received,
    /// Applied to its payment.
    Applied,
    /// Read and deliberately not applied (out of order, already applied, unsupported); `reason` says why.
    Ignored,
    /// Given up after [`ATTEMPTS_MAX`] attempts; `reason` says why. The operator looks at these.
    Parked,
}

impl InboxStatus {
    pub const ALL: [InboxStatus; 4] = [
        InboxStatus::Received,
        InboxStatus::Applied,
        InboxStatus::Ignored,
        InboxStatus::Parked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InboxStatus::Received => "received",
            InboxStatus::Applied => "applied",
            InboxStatus::Ignored => "ignored",
            InboxStatus::Parked => "parked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        InboxStatus::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// One provider event in the inbox. Unique per (merchant, connector, provider event id).
#[derive(Clone, Debug, PartialEq)]
pub struct InboxEntry {
    pub merchant_id: String,
    /// Settle's id (`whin_…`).
    pub id: String,
    pub connector: String,
    pub connector_account_id: String,
    /// The provider's event id (`evt_…`).
    pub provider_event_id: String,
    /// The provider's event type (`payment_intent.succeeded`).
    pub kind: String,
    /// The body as the provider sent it (verified JSON text).
    pub payload: String,
    pub status: InboxStatus,
    /// Attempts to apply it so far.
    pub attempts: i64,
    /// When a worker may take it next; while a worker holds it, the end of that worker's lease.
    pub next_attempt_at: Timestamp,
    pub reason: Option<String>,
    /// The payment it was applied to or ignored for, once known.
    pub payment_id: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a provider event says happened to a payment at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still deciding (`payment_intent.processing`).
    Processing,
    /// Funds held, capture next (`payment_intent.amount_capturable_updated`).
    Authorized,
    /// Captured at the provider (`payment_intent.succeeded`), with the amount received if given.
    Captured { amount: Option<i64> },
    /// Refused (`payment_intent.payment_failed`).
    Failed { code: String, message: String },
    /// Canceled at the provider (`payment_intent.canceled`).
    Canceled,
}

/// The payment an event is about, as the event names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The provider's id of the payment (`pi_…`; the sandbox's `sbx_…`).
    pub provider_ref: Option<String>,
    /// Settle's attempt reference, which Settle sends as `metadata[settle_reference]`.
    pub reference: Option<String>,
}

/// Event types Settle applies.
pub const SUPPORTED_TYPES: &[&str] = &[
    "payment_intent.processing",
    "payment_intent.amount_capturable_updated",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
];

fn text(value: &Value) -> Option<String> {
    value.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Reads a Stripe-shaped event (`{"type", "data": {"object": {…}}}`): what it says, and about
/// which payment. `None` for event types Settle does not apply.
pub fn outcome(kind: &str, event: &Value) -> Option<(Outcome, Subject)> {
    let object = &event["data"]["object"];
    let outcome = match kind {
        "payment_intent.processing" => Outcome::Processing,
        "payment_intent.amount_capturable_updated" => Outcome::Authorized,
        "payment_intent.succeeded" => Outcome::Captured {
            // Absent (or null): the whole amount. Present but not an integer ("400", 400.0): 0,
            // which no capture matches, so the event is ignored as `amount_mismatch` instead of
            // capturing everything.
            amount: match &object["amount_received"] {
                Value::Null => None,
                received => Some(received.as_i64().unwrap_or(0)),
            },
        },
        "payment_intent.payment_failed" => {
            let error = &object["last_payment_error"];
            // As the Stripe connector reads declines: the specific decline code wins over the
            // generic `card_declined`.
            let code = match (text(&error["code"]), text(&error["decline_code"])) {
                (Some(code), Some(decline)) if code == "card_declined" => decline,
                (Some(code), _) => code,
                (None, Some(decline)) => decline,
                (None, None) => "payment_failed".to_owned(),
            };
            let message = text(&error["message"]).unwrap_or_else(|| "the provider failed the payment".to_owned());
            Outcome::Failed {
                code: bounded(without_nul(code)),
                message: bounded(without_nul(message)),
            }
        }
        "payment_intent.canceled" => Outcome::Canceled,
        _ => return None,
    };
    let subject = Subject {
        provider_ref: text(&object["id"]).map(bounded),
        reference: text(&object["metadata"]["settle_reference"]).map(bounded),
    };
    Some((outcome, subject))
}

/// Provider text kept to a sane length (stored in history rows and errors).
/// Provider text as a text column can hold it (PostgreSQL refuses a NUL character).
fn without_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s
    }
}

fn bounded(s: String) -> String {
    if s.chars().count() <= EVENT_FIELD_LEN_MAX {
        s
    } else {
        s.chars().take(EVENT_FIELD_LEN_MAX).collect()
    }
}

/// What applying an event does to its payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `processing → requires_capture` (and on with automatic capture): the authorization's hold.
    Authorize,
    /// `processing → requires_capture → succeeded` without calling the provider, which captured.
    AuthorizeCaptured { amount: i64 },
    /// `requires_capture → succeeded`: the provider captured `amount`.
    Capture { amount: i64 },
    /// `processing → requires_payment_method` with this error.
    Fail { code: String, message: String },
    /// `requires_capture → canceled`: the provider released the hold.
    Void,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Apply(Step),
    /// Recorded, not applied: the reason.
    Ignore(&'static str),
    /// Another request or job is working on the payment: try again later.
    Wait,
}

/// Decides what an event about `payment` does at `now`, given that it came through
/// `connector_account_id` and names the payment as `subject`. Never moves a payment backwards.
pub fn decide(
    payment: &Payment,
    outcome: &Outcome,
    subject: &Subject,
    connector_account_id: &str,
    now: Timestamp,
) -> Verdict {
    use PaymentStatus::*;
    if payment
        .connector_account_id
        .as_deref()
        .is_some_and(|a| a != connector_account_id)
    {
        return Verdict::Ignore("other_connector_account");
    }
    if let (Some(ours), Some(theirs)) = (&payment.provider_ref, &subject.provider_ref) {
        if ours != theirs {
            // An earlier attempt of this payment (it failed here and was confirmed again).
            return Verdict::Ignore("other_attempt");
        }
    }
    if payment.claimed_until.is_some_and(|until| until > now) && !payment.status.is_terminal() {
        return Verdict::Wait;
    }
    match (payment.status, outcome) {
        (Processing, Outcome::Processing) => Verdict::Ignore("already_processing"),
        (Processing, Outcome::Authorized) => match subject.provider_ref {
            Some(_) => Verdict::Apply(Step::Authorize),
            None => Verdict::Ignore("no_provider_reference"),
        },
        (Processing, Outcome::Captured { amount }) => match (&subject.provider_ref, amount) {
            (None, _) => Verdict::Ignore("no_provider_reference"),
            (Some(_), None) => Verdict::Apply(Step::AuthorizeCaptured { amount: payment.amount }),
            (Some(_), Some(a)) if (1..=payment.amount).contains(a) => {
                Verdict::Apply(Step::AuthorizeCaptured { amount: *a })
            }
            (Some(_), Some(_)) => Verdict::Ignore("amount_mismatch"),
        },
        (Processing, Outcome::Failed { code, message }) => Verdict::Apply(Step::Fail {
            code: code.clone(),
            message: message.clone(),
        }),
        (Processing, Outcome::Canceled) => Verdict::Apply(Step::Fail {
            code: "canceled_at_provider".into(),
            message: "the provider canceled the payment before it was authorized".into(),
        }),
        (RequiresCapture, Outcome::Captured { amount }) => {
            let capturable = payment.amount_capturable;
            match amount {
                None => Verdict::Apply(Step::Capture { amount: capturable }),
                Some(a) if (1..=capturable).contains(a) => Verdict::Apply(Step::Capture { amount: *a }),
                Some(_) => Verdict::Ignore("amount_mismatch"),
            }
        }
        (RequiresCapture, Outcome::Canceled) => Verdict::Apply(Step::Void),
        (RequiresCapture, Outcome::Authorized) => Verdict::Ignore("already_authorized"),
        (RequiresCapture, Outcome::Processing | Outcome::Failed { .. }) => Verdict::Ignore("out_of_order"),
        (Succeeded, Outcome::Captured { .. }) => Verdict::Ignore("already_succeeded"),
        (Succeeded, _) => Verdict::Ignore("out_of_order"),
        (Canceled, Outcome::Canceled) => Verdict::Ignore("already_canceled"),
        (Canceled, _) => Verdict::Ignore("payment_canceled"),
        // Not waiting for a provider: failed here already (the sync job gave up), or never confirmed.
        (RequiresPaymentMethod | RequiresConfirmation, _) => Verdict::Ignore("payment_not_processing"),
    }
}

/// Where a status stands on the way forward; a step never lowers it (canceled and failed are
/// ends of their own, reached only from the states listed in [`decide`]).
pub fn rank(status: PaymentStatus) -> u8 {
    match status {
        PaymentStatus::RequiresPaymentMethod | PaymentStatus::RequiresConfirmation => 0,
        PaymentStatus::Processing => 1,
        PaymentStatus::RequiresCapture => 2,
        PaymentStatus::Succeeded | PaymentStatus::Canceled => 3,
    }
}

/// The status a step leaves its payment in.
pub fn target(step: &Step) -> PaymentStatus {
    match step {
        Step::Authorize => PaymentStatus::RequiresCapture,
        Step::AuthorizeCaptured { .. } | Step::Capture { .. } => PaymentStatus::Succeeded,
        Step::Fail { .. } => PaymentStatus::RequiresPaymentMethod,
        Step::Void => PaymentStatus::Canceled,
    }
}

/// The wait after `attempts` failed attempts (1 for the first): 30 s doubling to at most 15 min.
pub fn retry_delay_seconds(attempts: i64) -> i64 {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    RETRY_BASE_SECONDS
        .saturating_mul(1_i64 << doublings)
        .min(RETRY_CAP_SECONDS)
}

/// The entry after an attempt at `now` that could not apply it for `reason`: due again after
/// the backoff, or parked once it has had [`ATTEMPTS_MAX`] attempts.
pub fn retry_later(entry: &InboxEntry, reason: &str, now: Timestamp) -> InboxEntry {
    let mut next = entry.clone();
    next.attempts = entry.attempts.saturating_add(1);
    next.reason = Some(reason.to_owned());
    next.updated_at = now;
    if next.attempts >= ATTEMPTS_MAX {
        next.status = InboxStatus::Parked;
        next.next_attempt_at = now;
    } else {
        next.status = InboxStatus::Received;
        next.next_attempt_at = now
            .checked_add_seconds(retry_delay_seconds(next.attempts))
            .unwrap_or(now);
    }
    next
}

/// The entry after an attempt at `now` concluded it (`Applied` or `Ignored`).
pub fn concluded(entry: &InboxEntry, status: InboxStatus, reason: Option<&str>, now: Timestamp) -> InboxEntry {
    let mut next = entry.clone();
    next.attempts = entry.attempts.saturating_add(1);
    next.status = status;
    next.reason = reason.map(str::to_owned);
    next.next_attempt_at = now;
    next.updated_at = now;
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{payment::CaptureMethod, Currency};
    use serde_json::json;

    fn payment(status: PaymentStatus) -> Payment {
        Payment {
            merchant_id: "m".into(),
            id: "pay_1".into(),
            amount: 1000,
            currency: Currency::parse("USD").expect("USD"),
            capture_method: CaptureMethod::Manual,
            status,
            amount_capturable: if status == PaymentStatus::RequiresCapture {
                1000
            } else {
                0
            },
            amount_captured: 0,
            amount_refunded: 0,
            payment_method_id: None,
            customer_id: None,
            customer: None,
            receipt_email: None,
            description: None,
            metadata: json!({}),
            splits: Vec::new(),
            application_fee_amount: None,
            connector: None,
            connector_account_id: Some("mca_1".into()),
            connector_name: Some("sandbox".into()),
            provider_ref: Some("pi_1".into()),
            last_payment_error: None,
            cancellation_reason: None,
            authorized_at: None,
            claimed_until: None,
            plan: None,
            idempotency_key: None,
            version: 3,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    fn subject() -> Subject {
        Subject {
            provider_ref: Some("pi_1".into()),
            reference: None,
        }
    }

    fn outcomes() -> Vec<Outcome> {
        vec![
            Outcome::Processing,
            Outcome::Authorized,
            Outcome::Captured { amount: None },
            Outcome::Captured { amount: Some(400) },
            Outcome::Captured { amount: Some(5000) },
            Outcome::Failed {
                code: "card_declined".into(),
                message: "no".into(),
            },
            Outcome::Canceled,
        ]
    }

    #[test]
    fn provider_text_is_kept_without_nul_characters() {
        let event = serde_json::json!({ "data": { "object": { "id": "pi_1",
            "last_payment_error": { "code": "card\u{0}_declined", "message": "no\u{0}pe" } } } });
        let Some((Outcome::Failed { code, message }, _)) = outcome("payment_intent.payment_failed", &event) else {
            panic!("a failure");
        };
        assert_eq!((code.as_str(), message.as_str()), ("card_declined", "nope"));
    }

    #[test]
    fn no_event_moves_a_payment_backwards() {
        for status in PaymentStatus::ALL {
            for outcome in outcomes() {
                if let Verdict::Apply(step) = decide(&payment(status), &outcome, &subject(), "mca_1", Timestamp(0)) {
                    let to = target(&step);
                    let failed_from_processing =
                        status == PaymentStatus::Processing && to == PaymentStatus::RequiresPaymentMethod;
                    assert!(
                        failed_from_processing || rank(to) > rank(status),
                        "{status:?} + {outcome:?} → {to:?}"
                    );
                    assert!(!status.is_terminal(), "{status:?} is an end");
                }
            }
        }
    }

    #[test]
    fn late_events_are_ignored_with_a_reason() {
        let verdict = |status, outcome| decide(&payment(status), &outcome, &subject(), "mca_1", Timestamp(0));
        assert_eq!(
            verdict(PaymentStatus::Succeeded, Outcome::Processing),
            Verdict::Ignore("out_of_order")
        );
        assert_eq!(
            verdict(PaymentStatus::Succeeded, Outcome::Captured { amount: None }),
            Verdict::Ignore("already_succeeded")
        );
        assert_eq!(
            verdict(PaymentStatus::RequiresCapture, Outcome::Authorized),
            Verdict::Ignore("already_authorized")
        );
        assert_eq!(
            verdict(
                PaymentStatus::RequiresCapture,
                Outcome::Failed {
                    code: "x".into(),
                    message: "y".into()
                }
            ),
            Verdict::Ignore("out_of_order")
        );
        assert_eq!(
            verdict(PaymentStatus::Processing, Outcome::Authorized),
            Verdict::Apply(Step::Authorize)
        );
        assert_eq!(
            verdict(PaymentStatus::RequiresCapture, Outcome::Captured { amount: Some(400) }),
            Verdict::Apply(Step::Capture { amount: 400 })
        );
        assert_eq!(
            verdict(PaymentStatus::RequiresCapture, Outcome::Captured { amount: Some(5000) }),
            Verdict::Ignore("amount_mismatch")
        );
        // A malformed amount (read as 0) captures nothing, whatever the state.
        for status in [PaymentStatus::RequiresCapture, PaymentStatus::Processing] {
            assert_eq!(
                verdict(status, Outcome::Captured { amount: Some(0) }),
                Verdict::Ignore("amount_mismatch"),
                "{status:?}"
            );
        }
    }

    #[test]
    fn events_of_other_attempts_or_accounts_are_ignored_and_claims_wait() {
        let p = payment(PaymentStatus::Processing);
        let other = Subject {
            provider_ref: Some("pi_old".into()),
            reference: None,
        };
        assert_eq!(
            decide(&p, &Outcome::Authorized, &other, "mca_1", Timestamp(0)),
            Verdict::Ignore("other_attempt")
        );
        assert_eq!(
            decide(&p, &Outcome::Authorized, &subject(), "mca_2", Timestamp(0)),
            Verdict::Ignore("other_connector_account")
        );
        let mut claimed = p.clone();
        claimed.claimed_until = Some(Timestamp(10));
        assert_eq!(
            decide(&claimed, &Outcome::Authorized, &subject(), "mca_1", Timestamp(5)),
            Verdict::Wait
        );
        assert_eq!(
            decide(&claimed, &Outcome::Authorized, &subject(), "mca_1", Timestamp(10)),
            Verdict::Apply(Step::Authorize)
        );
    }

    #[test]
    fn stripe_shapes_are_read() {
        let event = json!({ "data": { "object": { "id": "pi_9", "amount_received": 700,
            "metadata": { "settle_reference": "att_1" },
            "last_payment_error": { "code": "card_declined", "decline_code": "insufficient_funds", "message": "Nope" } } } });
        let (o, s) = outcome("payment_intent.succeeded", &event).expect("supported");
        assert_eq!(o, Outcome::Captured { amount: Some(700) });
        assert_eq!(s.provider_ref.as_deref(), Some("pi_9"));
        assert_eq!(s.reference.as_deref(), Some("att_1"));
        let (o, _) = outcome("payment_intent.payment_failed", &event).expect("supported");
        assert_eq!(
            o,
            Outcome::Failed {
                code: "insufficient_funds".into(),
                message: "Nope".into()
            }
        );
        assert_eq!(outcome("charge.refunded", &event), None);
        for malformed in [json!("400"), json!(400.0), json!(true), json!({})] {
            let event = json!({ "data": { "object": { "id": "pi_9", "amount_received": malformed } } });
            let (o, _) = outcome("payment_intent.succeeded", &event).expect("supported");
            assert_eq!(o, Outcome::Captured { amount: Some(0) }, "{malformed}");
        }
        let (_, s) = outcome("payment_intent.processing", &json!({})).expect("supported");
        assert_eq!(s.provider_ref, None);
    }

    #[test]
    fn retries_back_off_then_park() {
        assert_eq!(retry_delay_seconds(1), 30);
        assert_eq!(retry_delay_seconds(2), 60);
        assert_eq!(retry_delay_seconds(6), 900);
        assert_eq!(retry_delay_seconds(i64::MAX), 900);
        let mut entry = InboxEntry {
            merchant_id: "m".into(),
            id: "whin_1".into(),
            connector: "stripe".into(),
            connector_account_id: "mca_1".into(),
            provider_event_id: "evt_1".into(),
            kind: "payment_intent.succeeded".into(),
            payload: "{}".into(),
            status: InboxStatus::Received,
            attempts: 0,
            next_attempt_at: Timestamp(0),
            reason: None,
            payment_id: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        };
        let mut now = Timestamp(0);
        while entry.status == InboxStatus::Received {
            now = entry.next_attempt_at;
            entry = retry_later(&entry, "payment_not_found", now);
        }
        assert_eq!(entry.status, InboxStatus::Parked);
        assert_eq!(entry.attempts, ATTEMPTS_MAX);
        let waited = now.unix_seconds();
        assert!((3_000..=5_400).contains(&waited), "{waited} s");
        assert_eq!(entry.reason.as_deref(), Some("payment_not_found"));
    }
}
