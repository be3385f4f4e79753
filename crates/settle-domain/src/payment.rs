//! Payment intents: Stripe's state machine, and the rules that decide each command.
//!
//! ```text
//!  requires_payment_method ──(method)──▶ requires_confirmation ──(confirm)──▶ processing
//!           ▲                                                                    │
//!           └──────────────────────(declined: last_payment_error)────────────────┤
//!                                                                                ▼
//!                           succeeded ◀──(capture)── requires_capture ◀──(authorized)
//!  canceled ◀── cancel from requires_payment_method | requires_confirmation | requires_capture,
//!               or expiry of an uncaptured authorization
//! ```
//!
//! `processing` is the only state in which a connector call is in flight; entering it is how
//! one request claims the payment (the store's compare-and-set on `version` makes the claim
//! exclusive), so concurrent confirm/capture/cancel calls are serialized and exactly one wins.
//! Automatic capture walks `processing → requires_capture → succeeded` inside one request.
//!
//! Every function here is pure: the caller loads the payment, asks [`decide`] what a command
//! does, calls the connector if the decision says so, and stores the result.

use serde_json::Value;

use crate::{Currency, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    Processing,
    RequiresCapture,
    Succeeded,
    Canceled,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 6] = [
        PaymentStatus::RequiresPaymentMethod,
        PaymentStatus::RequiresConfirmation,
        PaymentStatus::Processing,
        PaymentStatus::RequiresCapture,
        PaymentStatus::Succeeded,
        PaymentStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::RequiresPaymentMethod => "requires_payment_method",
            PaymentStatus::RequiresConfirmation => "requires_confirmation",
            PaymentStatus::Processing => "processing",
            PaymentStatus::RequiresCapture => "requires_capture",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        PaymentStatus::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// The statuses in which a payment has a charge (Stripe's word) whatever it captured:
    /// authorized, awaiting capture or succeeded.
    pub const CHARGED: [PaymentStatus; 2] = [PaymentStatus::RequiresCapture, PaymentStatus::Succeeded];

    /// Whether a payment in this status with `amount_captured` has a charge: in a
    /// [`PaymentStatus::CHARGED`] status, or once anything was captured.
    pub fn has_charge(self, amount_captured: i64) -> bool {
        PaymentStatus::CHARGED.contains(&self) || amount_captured > 0
    }

    /// Whether nothing can change the status any more (refunds change amounts, not status).
    pub fn is_terminal(self) -> bool {
        matches!(self, PaymentStatus::Succeeded | PaymentStatus::Canceled)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMethod {
    Automatic,
    Manual,
}

impl CaptureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Automatic => "automatic",
            CaptureMethod::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "automatic" => Some(CaptureMethod::Automatic),
            "manual" => Some(CaptureMethod::Manual),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Customer {
    pub email: String,
    pub name: Option<String>,
    pub phone: Option<String>,
}

/// A share of the captured amount that goes to a payee's ledger account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub payee_account_id: String,
    pub amount: i64,
}

/// Why the last attempt failed (Stripe's `last_payment_error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentError {
    pub code: String,
    pub message: String,
    pub connector: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Payment {
    pub merchant_id: String,
    pub id: String,
    pub amount: i64,
    pub currency: Currency,
    pub capture_method: CaptureMethod,
    pub status: PaymentStatus,
    /// Authorized and not yet captured or released.
    pub amount_capturable: i64,
    pub amount_captured: i64,
    /// Sum of refunds that have not failed (pending ones included).
    pub amount_refunded: i64,
    pub payment_method_id: Option<String>,
    /// The customer object (`cus_…`) the payment is for, if any.
    pub customer_id: Option<String>,
    /// The contact details the payment was made with.
    pub customer: Option<Customer>,
    /// Where the receipt goes (Stripe's `receipt_email`).
    pub receipt_email: Option<String>,
    pub description: Option<String>,
    pub metadata: Value,
    pub splits: Vec<Split>,
    pub application_fee_amount: Option<i64>,
    /// The connector the client asked for, if any.
    pub connector: Option<String>,
    /// The connector account holding the one successful authorization, and its connector.
    pub connector_account_id: Option<String>,
    pub connector_name: Option<String>,
    pub provider_ref: Option<String>,
    pub last_payment_error: Option<PaymentError>,
    pub cancellation_reason: Option<String>,
    pub authorized_at: Option<Timestamp>,
    /// While in the future, one request or job owns the payment (a connector call is in flight)
    /// and every other command is refused with 409.
    pub claimed_until: Option<Timestamp>,
    /// What the claim set out to do, stored with it: if its process dies mid-call, the recovery
    /// job asks the connector how far it got and finishes or releases the claim.
    pub plan: Option<Plan>,
    /// The `Idempotency-Key` of the request that created the payment: a retry after a crash
    /// (which stored no idempotency record) finds the payment instead of creating another.
    pub idempotency_key: Option<String>,
    /// Bumped by every change; the store updates a payment only at the version it read.
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Payment {
    /// `none`, `partial` or `full`: how much of the captured amount has been refunded.
    pub fn refund_status(&self) -> &'static str {
        if self.amount_refunded == 0 {
            "none"
        } else if self.amount_refunded < self.amount_captured {
            "partial"
        } else {
            "full"
        }
    }

    /// What the merchant keeps of a capture of `amount_captured`: the rest of the splits and fee.
    pub fn shares_total(&self) -> i64 {
        self.splits.iter().map(|s| s.amount).sum::<i64>() + self.application_fee_amount.unwrap_or(0)
    }
}

/// A command a client or a job gives a payment.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Attach a (new) payment method.
    AttachMethod,
    Confirm,
    Capture {
        amount: Option<i64>,
    },
    Cancel,
    /// An uncaptured authorization is too old.
    Expire,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::AttachMethod => "attach a payment method to",
            Command::Confirm => "confirm",
            Command::Capture { .. } => "capture",
            Command::Cancel => "cancel",
            Command::Expire => "expire",
        }
    }
}

/// What a command does, when it is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `requires_payment_method → requires_confirmation` (or stays there with the new method).
    MethodAttached,
    /// Claim the payment (`→ processing`) and authorize with the routed connectors.
    Authorize,
    /// Capture this amount at the connector and post it in the ledger; the rest is released.
    Capture { amount: i64 },
    /// Cancel; `void` says whether an authorization must be voided at the connector and in the ledger.
    Cancel { void: bool },
}

/// A claim's intended connector calls.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Plan {
    /// Authorize, trying these connector accounts in order, each with its attempt reference
    /// (the idempotency key the provider sees, by which a lost answer is found again).
    Authorize {
        tries: Vec<PlannedTry>,
    },
    Capture {
        amount: i64,
    },
    Cancel {
        reason: Option<String>,
        void: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedTry {
    pub connector_account_id: String,
    pub reference: String,
}

/// Why a command is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 409: the command makes no sense in the current status.
    IllegalTransition {
        command: &'static str,
        status: PaymentStatus,
    },
    /// 409: another request or job is working on the payment right now.
    InProgress(PaymentStatus),
    /// 400: confirming needs a payment method.
    MissingPaymentMethod,
    /// 400: capture amount outside 1..=amount_capturable.
    CaptureAmount { capturable: i64 },
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::IllegalTransition { command, status } => {
                format!("cannot {command} a payment whose status is `{}`", status.as_str())
            }
            Refusal::InProgress(status) => format!(
                "another request is working on this payment (status `{}`); retry shortly",
                status.as_str()
            ),
            Refusal::MissingPaymentMethod => "confirming a payment needs a `payment_method`".into(),
            Refusal::CaptureAmount { capturable } => {
                format!("`amount` must be between 1 and the capturable amount {capturable}")
            }
        }
    }
}

/// Decides a command against the payment's current state. `has_method` says whether the
/// request supplies a payment method (for `Confirm`, in addition to any already attached).
/// The largest amount of one payment, in minor units, whatever a merchant's limits say: 10^13,
/// so that a ledger account's totals (64-bit) can only overflow after about a million payments
/// of that amount through it. A payment step the ledger refused after the connector acted
/// could not be undone in the ledger alone.
pub const AMOUNT_MAX: i64 = 10_000_000_000_000;

pub fn decide(payment: &Payment, command: &Command, has_method: bool, now: Timestamp) -> Result<Decision, Refusal> {
    use PaymentStatus::*;
    if payment.claimed_until.is_some_and(|until| until > now) {
        return Err(Refusal::InProgress(payment.status));
    }
    let illegal = || Refusal::IllegalTransition {
        command: command.name(),
        status: payment.status,
    };
    match (command, payment.status) {
        (Command::AttachMethod, RequiresPaymentMethod | RequiresConfirmation) => Ok(Decision::MethodAttached),
        (Command::Confirm, RequiresPaymentMethod | RequiresConfirmation) => {
            if has_method || payment.payment_method_id.is_some() {
                Ok(Decision::Authorize)
            } else {
                Err(Refusal::MissingPaymentMethod)
            }
        }
        (Command::Capture { amount }, RequiresCapture) => {
            let amount = amount.unwrap_or(payment.amount_capturable);
            if amount < 1 || amount > payment.amount_capturable {
                return Err(Refusal::CaptureAmount {
                    capturable: payment.amount_capturable,
                });
            }
            Ok(Decision::Capture { amount })
        }
        (Command::Cancel, RequiresPaymentMethod | RequiresConfirmation) => Ok(Decision::Cancel { void: false }),
        (Command::Cancel | Command::Expire, RequiresCapture) => Ok(Decision::Cancel { void: true }),
        _ => Err(illegal()),
    }
}

/// How an authorization attempt ended, as the payment service reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorizationOutcome {
    Authorized {
        connector_account_id: String,
        connector_name: String,
        provider_ref: String,
    },
    /// The provider has not decided; the sync job asks again.
    Pending {
        connector_account_id: String,
        connector_name: String,
        provider_ref: Option<String>,
    },
    Declined(PaymentError),
}

/// The payment after its authorization ended (it was `processing`).
pub fn authorization_ended(payment: &Payment, outcome: &AuthorizationOutcome, now: Timestamp) -> Payment {
    let mut next = touched(payment, now);
    match outcome {
        AuthorizationOutcome::Authorized {
            connector_account_id,
            connector_name,
            provider_ref,
        } => {
            next.status = PaymentStatus::RequiresCapture;
            next.amount_capturable = payment.amount;
            next.connector_account_id = Some(connector_account_id.clone());
            next.connector_name = Some(connector_name.clone());
            next.provider_ref = Some(provider_ref.clone());
            next.last_payment_error = None;
            next.authorized_at = Some(now);
        }
        AuthorizationOutcome::Pending {
            connector_account_id,
            connector_name,
            provider_ref,
        } => {
            next.status = PaymentStatus::Processing;
            next.connector_account_id = Some(connector_account_id.clone());
            next.connector_name = Some(connector_name.clone());
            next.provider_ref = provider_ref.clone();
        }
        AuthorizationOutcome::Declined(error) => {
            next.status = PaymentStatus::RequiresPaymentMethod;
            next.payment_method_id = None;
            next.connector_account_id = None;
            next.connector_name = None;
            next.provider_ref = None;
            next.last_payment_error = Some(error.clone());
        }
    }
    next
}

/// The payment after `amount` was captured (it was `requires_capture`).
pub fn captured(payment: &Payment, amount: i64, now: Timestamp) -> Payment {
    let mut next = touched(payment, now);
    next.status = PaymentStatus::Succeeded;
    next.amount_captured = amount;
    next.amount_capturable = 0;
    next
}

/// The payment after it was canceled.
pub fn canceled(payment: &Payment, reason: Option<String>, now: Timestamp) -> Payment {
    let mut next = touched(payment, now);
    next.status = PaymentStatus::Canceled;
    next.amount_capturable = 0;
    next.cancellation_reason = reason;
    next
}

/// The payment with a claim on it until `until`; confirming also enters `processing`.
pub fn claimed(payment: &Payment, plan: Option<Plan>, now: Timestamp, until: Timestamp) -> Payment {
    let mut next = touched(payment, now);
    next.claimed_until = Some(until);
    if matches!(plan, Some(Plan::Authorize { .. })) {
        next.status = PaymentStatus::Processing;
        next.last_payment_error = None;
    }
    next.plan = plan;
    next
}

/// The plan of a claim that decided `decision`; `tries` are the authorization's candidates.
pub fn plan(decision: &Decision, reason: Option<&str>, tries: Vec<PlannedTry>) -> Option<Plan> {
    match decision {
        Decision::MethodAttached => None,
        Decision::Authorize => Some(Plan::Authorize { tries }),
        Decision::Capture { amount } => Some(Plan::Capture { amount: *amount }),
        Decision::Cancel { void } => Some(Plan::Cancel {
            reason: reason.map(str::to_owned),
            void: *void,
        }),
    }
}

/// Every change after a claim ends it.
fn touched(payment: &Payment, now: Timestamp) -> Payment {
    let mut next = payment.clone();
    next.claimed_until = None;
    next.plan = None;
    next.version = payment.version + 1;
    next.updated_at = now;
    next
}

/// Why a refund is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundRefusal {
    /// 409: only captured payments can be refunded.
    NotCaptured(PaymentStatus),
    /// 422: the refund would take the refunded total above the captured amount.
    ExceedsCaptured { refundable: i64 },
}

/// The amount a refund takes (the whole remaining amount when `amount` is `None`).
pub fn decide_refund(payment: &Payment, amount: Option<i64>) -> Result<i64, RefundRefusal> {
    if payment.status != PaymentStatus::Succeeded {
        return Err(RefundRefusal::NotCaptured(payment.status));
    }
    let refundable = payment.amount_captured - payment.amount_refunded;
    let amount = amount.unwrap_or(refundable);
    if amount < 1 || amount > refundable {
        return Err(RefundRefusal::ExceedsCaptured { refundable });
    }
    Ok(amount)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(RefundStatus::Pending),
            "succeeded" => Some(RefundStatus::Succeeded),
            "failed" => Some(RefundStatus::Failed),
            _ => None,
        }
    }
}

/// One call to a connector on behalf of a payment (`payment_attempts`).
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub merchant_id: String,
    pub id: String,
    pub payment_id: String,
    /// `authorize`, `sync`, `void`, `capture` or `refund`.
    pub operation: String,
    pub connector_account_id: String,
    pub connector: String,
    /// `succeeded`, `declined`, `processing`, `not_found`, `timeout`, `error` or `skipped` (circuit open).
    pub outcome: String,
    pub error_code: Option<String>,
    pub provider_ref: Option<String>,
    pub request_id: Option<String>,
    pub latency_ms: i64,
    pub created_at: Timestamp,
}

/// A row of a payment's status history (`payment_events`).
#[derive(Clone, Debug, PartialEq)]
pub struct StatusChange {
    pub merchant_id: String,
    pub id: String,
    pub payment_id: String,
    pub from_status: Option<PaymentStatus>,
    pub to_status: PaymentStatus,
    pub reason: Option<String>,
    pub connector: Option<String>,
    pub error_code: Option<String>,
    pub request_id: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Refund {
    pub merchant_id: String,
    pub id: String,
    pub payment_id: String,
    pub amount: i64,
    pub currency: Currency,
    pub status: RefundStatus,
    pub reason: Option<String>,
    pub metadata: Value,
    /// What the refund takes from each of the payment's shares (see `postings::shares`).
    pub parts: Vec<i64>,
    pub connector_account_id: Option<String>,
    pub provider_ref: Option<String>,
    pub failure_code: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The creating request's `Idempotency-Key`: a retry whose first try stored the refund but
    /// not its idempotency record finds the refund instead of refunding again.
    pub idempotency_key: Option<String>,
}

/// A vaulted card: the number only sealed (encrypted), the CVC never.
#[derive(Clone, Debug, PartialEq)]
pub struct PaymentMethod {
    pub merchant_id: String,
    pub id: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: u32,
    /// Keyed hash of the number: the same card has the same fingerprint within one merchant.
    pub fingerprint: String,
    /// Nonce and ciphertext of the card number (AES-256-GCM).
    pub number_sealed: Vec<u8>,
    /// The customer the method is saved for (attached), if any.
    pub customer_id: Option<String>,
    pub created_at: Timestamp,
}

/// A merchant's account with a connector; its credentials are sealed like card numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorAccount {
    pub merchant_id: String,
    pub id: String,
    pub connector: String,
    pub label: Option<String>,
    pub credentials_sealed: Vec<u8>,
    pub enabled: bool,
    pub created_at: Timestamp,
}

/// Filters of the payment list.
#[derive(Clone, Debug, Default)]
pub struct PaymentFilter {
    pub customer_id: Option<String>,
    pub status: Option<PaymentStatus>,
    pub customer_email: Option<String>,
    pub created_gte: Option<Timestamp>,
    pub created_lt: Option<Timestamp>,
    /// Only payments that have a charge ([`PaymentStatus::has_charge`]).
    pub charged: bool,
}
