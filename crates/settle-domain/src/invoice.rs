//! Invoices paid by payment events (seed 003): the state machine, and the rule that applies one
//! payment.
//!
//! ```text
//!  draft ──(send)──▶ sent ──(payment < due)──▶ partially_paid ──(payments ≥ due)──▶ paid
//!    │                │  └────────────(payments ≥ due)─────────────────────────────▲
//!    └──(void)──▶ void ◀──(void)──┘                       (later payments: overpaid) ┘
//! ```
//!
//! Commands (`send`, `void`) come from the merchant; payments come from outside as events
//! (`POST /v1/invoice_payments`), are kept in an inbox, and are applied one by one by a worker.
//!
//! Invariants:
//! - `amount_paid` is the sum of the distinct payments applied, nothing else. Status follows
//!   from it once the invoice is open: `sent` while nothing is paid, `partially_paid` while
//!   0 < paid < due, `paid` once paid ≥ due; `amount_overpaid` = paid − due when positive. Since
//!   the sum is commutative and every payment to an open invoice is applied (also after it is
//!   `paid`: the excess is overpaid), the final invoice does not depend on the order in which
//!   payments arrive, nor on how often each is delivered (the inbox keeps one row per event id).
//! - Money never reaches a `draft` or `void` invoice: such payments are rejected and recorded
//!   with their reason, and no money moves.
//! - A `void` invoice has received nothing: only `draft` and `sent` invoices can be voided.
//!   Voiding a partly paid invoice would strand money it already received (that needs a refund
//!   flow, which invoices do not have); a `paid` one is final.
//!
//! Everything here is pure: callers load the invoice, ask what a command or a payment does, and
//! store the result at the version they loaded (compare-and-set).

use serde_json::{json, Value};

use crate::{
    ledger::{AccountFlags, TransferOp, TransferRequest},
    postings::{merchant_pending_account, SYSTEM_PREFIX},
    Currency, Timestamp,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvoiceStatus {
    Draft,
    Sent,
    PartiallyPaid,
    Paid,
    Void,
}

impl InvoiceStatus {
    pub const ALL: [InvoiceStatus; 5] = [
        InvoiceStatus::Draft,
        InvoiceStatus::Sent,
        InvoiceStatus::PartiallyPaid,
        InvoiceStatus::Paid,
        InvoiceStatus::Void,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Sent => "sent",
            InvoiceStatus::PartiallyPaid => "partially_paid",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        InvoiceStatus::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Whether payments are applied to an invoice in this status.
    pub fn accepts_payments(self) -> bool {
        matches!(
            self,
            InvoiceStatus::Sent | InvoiceStatus::PartiallyPaid | InvoiceStatus::Paid
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Invoice {
    pub merchant_id: String,
    pub id: String,
    pub status: InvoiceStatus,
    pub currency: Currency,
    /// Positive, in the currency's minor units.
    pub amount_due: i64,
    /// Sum of the payments applied.
    pub amount_paid: i64,
    /// Lower-cased.
    pub customer_email: String,
    pub customer_name: Option<String>,
    pub description: Option<String>,
    pub metadata: Value,
    pub due_date: Option<Timestamp>,
    pub sent_at: Option<Timestamp>,
    pub paid_at: Option<Timestamp>,
    pub voided_at: Option<Timestamp>,
    /// Bumped by every write; the store updates an invoice only at the version it read.
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Invoice {
    /// What is still to be paid (0 once paid).
    pub fn amount_remaining(&self) -> i64 {
        self.amount_due.saturating_sub(self.amount_paid).max(0)
    }

    /// What was paid beyond the amount due.
    pub fn amount_overpaid(&self) -> i64 {
        self.amount_paid.saturating_sub(self.amount_due).max(0)
    }
}

/// The status an open invoice has with `amount_paid` paid of `amount_due`.
pub fn open_status(amount_due: i64, amount_paid: i64) -> InvoiceStatus {
    if amount_paid >= amount_due {
        InvoiceStatus::Paid
    } else if amount_paid > 0 {
        InvoiceStatus::PartiallyPaid
    } else {
        InvoiceStatus::Sent
    }
}

/// A command the merchant gives an invoice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Send,
    Void,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Send => "send",
            Command::Void => "void",
        }
    }

    /// The domain event a successful command records.
    pub fn event(self) -> &'static str {
        match self {
            Command::Send => "invoice.sent",
            Command::Void => "invoice.voided",
        }
    }
}

/// 409: the command makes no sense in the invoice's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IllegalTransition {
    pub command: Command,
    pub status: InvoiceStatus,
}

impl IllegalTransition {
    pub fn message(&self) -> String {
        let why = match (self.command, self.status) {
            (Command::Void, InvoiceStatus::PartiallyPaid) => {
                " (it has received payments; only draft and sent invoices can be voided)"
            }
            (Command::Void, InvoiceStatus::Paid) => " (a paid invoice is final)",
            _ => "",
        };
        format!(
            "cannot {} an invoice whose status is `{}`{why}",
            self.command.name(),
            self.status.as_str()
        )
    }
}

/// The invoice after `command`, or why it is refused: `send` from `draft`; `void` from `draft`
/// or `sent`.
pub fn decide(invoice: &Invoice, command: Command, now: Timestamp) -> Result<Invoice, IllegalTransition> {
    let mut next = touched(invoice, now);
    match (command, invoice.status) {
        (Command::Send, InvoiceStatus::Draft) => {
            next.status = InvoiceStatus::Sent;
            next.sent_at = Some(now);
        }
        (Command::Void, InvoiceStatus::Draft | InvoiceStatus::Sent) => {
            next.status = InvoiceStatus::Void;
            next.voided_at = Some(now);
        }
        (command, status) => return Err(IllegalTransition { command, status }),
    }
    Ok(next)
}

/// Why a payment was not applied (stored with the payment event as its `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The invoice has not been sent.
    InvoiceDraft,
    /// The invoice was voided.
    InvoiceVoid,
    /// The paid total would not fit in 64 bits.
    AmountOverflow,
    /// The invoice named by the event does not exist (it cannot: the event was checked when it
    /// was received; kept so that a damaged row is concluded instead of retried forever).
    InvoiceNotFound,
    /// The ledger refused the payment's transfer (the receipts account's totals would no longer
    /// fit in 64 bits): concluded, so that it is not retried forever.
    LedgerRefused,
}

impl Rejection {
    pub const ALL: [Rejection; 5] = [
        Rejection::InvoiceDraft,
        Rejection::InvoiceVoid,
        Rejection::AmountOverflow,
        Rejection::InvoiceNotFound,
        Rejection::LedgerRefused,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Rejection::InvoiceDraft => "invoice_draft",
            Rejection::InvoiceVoid => "invoice_void",
            Rejection::AmountOverflow => "amount_overflow",
            Rejection::InvoiceNotFound => "invoice_not_found",
            Rejection::LedgerRefused => "ledger_refused",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        Rejection::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn message(self) -> &'static str {
        match self {
            Rejection::InvoiceDraft => "the invoice is a draft: it has not been sent",
            Rejection::InvoiceVoid => "the invoice was voided",
            Rejection::AmountOverflow => "the paid total would overflow",
            Rejection::InvoiceNotFound => "the invoice does not exist",
            Rejection::LedgerRefused => "the ledger refused the payment: the receipts account's totals would overflow",
        }
    }
}

/// A payment that was applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub invoice: Invoice,
    /// Whether this payment made the invoice `paid` (it records `invoice.paid` too).
    pub became_paid: bool,
}

/// Applies a payment of `amount` (positive, the invoice's minor units) to the invoice.
pub fn apply_payment(invoice: &Invoice, amount: i64, now: Timestamp) -> Result<Applied, Rejection> {
    match invoice.status {
        InvoiceStatus::Draft => return Err(Rejection::InvoiceDraft),
        InvoiceStatus::Void => return Err(Rejection::InvoiceVoid),
        InvoiceStatus::Sent | InvoiceStatus::PartiallyPaid | InvoiceStatus::Paid => {}
    }
    let paid = invoice
        .amount_paid
        .checked_add(amount)
        .ok_or(Rejection::AmountOverflow)?;
    let mut next = touched(invoice, now);
    next.amount_paid = paid;
    next.status = open_status(invoice.amount_due, paid);
    let became_paid = next.status == InvoiceStatus::Paid && invoice.status != InvoiceStatus::Paid;
    if became_paid {
        next.paid_at = Some(now);
    }
    Ok(Applied {
        invoice: next,
        became_paid,
    })
}

fn touched(invoice: &Invoice, now: Timestamp) -> Invoice {
    let mut next = invoice.clone();
    next.version = invoice.version.saturating_add(1);
    next.updated_at = now;
    next
}

/// What one worker pass over an invoice's received payment events decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The invoice after every applied payment, its version bumped at least once (a pass that
    /// only rejects still claims the invoice, so that writers of its events are serialized).
    pub invoice: Invoice,
    /// Every event, `applied` or `rejected`.
    pub concluded: Vec<PaymentEvent>,
    /// One transfer per applied event.
    pub transfers: Vec<TransferRequest>,
    /// The domain events to record, in order: each type with the invoice as it stood then.
    pub records: Vec<(&'static str, Invoice)>,
}

/// Applies `events` (all for this invoice, in the order received) one after the other.
pub fn apply_events(invoice: &Invoice, events: &[PaymentEvent], now: Timestamp) -> Outcome {
    let mut current = invoice.clone();
    let mut outcome = Outcome {
        invoice: invoice.clone(),
        concluded: Vec::with_capacity(events.len()),
        transfers: Vec::new(),
        records: Vec::new(),
    };
    for event in events {
        match apply_payment(&current, event.amount, now) {
            Ok(applied) => {
                current = applied.invoice;
                outcome.transfers.push(payment_transfer(event));
                outcome.concluded.push(event.applied(now));
                outcome.records.push(("invoice.payment_applied", current.clone()));
                if applied.became_paid {
                    outcome.records.push(("invoice.paid", current.clone()));
                }
            }
            Err(reason) => {
                outcome.concluded.push(event.rejected(reason, now));
                outcome.records.push(("invoice.payment_rejected", current.clone()));
            }
        }
    }
    if current.version == invoice.version {
        current.version = invoice.version.saturating_add(1);
    }
    outcome.invoice = current;
    outcome
}

/// The events of one invoice when the ledger refused the transfer of `refused` (one of them):
/// the events before it decided as [`apply_events`] decides them, `refused` rejected with
/// [`Rejection::LedgerRefused`], and the events after it left `received` for the next round.
pub fn apply_events_refusing(invoice: &Invoice, events: &[PaymentEvent], refused: usize, now: Timestamp) -> Outcome {
    let Some(event) = events.get(refused) else {
        return apply_events(invoice, events, now);
    };
    let mut outcome = apply_events(invoice, &events[..refused], now);
    outcome.concluded.push(event.rejected(Rejection::LedgerRefused, now));
    outcome
        .records
        .push(("invoice.payment_rejected", outcome.invoice.clone()));
    outcome
}

/// Where a received payment event stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentEventStatus {
    /// In the inbox, not yet looked at by the worker.
    Received,
    Applied,
    Rejected,
}

impl PaymentEventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentEventStatus::Received => "received",
            PaymentEventStatus::Applied => "applied",
            PaymentEventStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "received" => Some(PaymentEventStatus::Received),
            "applied" => Some(PaymentEventStatus::Applied),
            "rejected" => Some(PaymentEventStatus::Rejected),
            _ => None,
        }
    }
}

/// One payment event for an invoice, as received (`invoice_payment_events`, the inbox).
#[derive(Clone, Debug, PartialEq)]
pub struct PaymentEvent {
    pub merchant_id: String,
    /// `ipe_…`, Settle's id of the row.
    pub id: String,
    /// The sender's event id (a UUID, lower-case): unique per merchant.
    pub event_id: String,
    pub invoice_id: String,
    /// Positive, in the invoice currency's minor units.
    pub amount: i64,
    pub currency: Currency,
    pub status: PaymentEventStatus,
    /// Why it was rejected.
    pub reason: Option<Rejection>,
    /// The ledger transfer of an applied payment.
    pub transfer_id: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl PaymentEvent {
    /// The event after the worker applied it.
    pub fn applied(&self, now: Timestamp) -> PaymentEvent {
        let mut next = self.clone();
        next.status = PaymentEventStatus::Applied;
        next.transfer_id = Some(transfer_id(&self.event_id));
        next.updated_at = now;
        next
    }

    /// The event after the worker rejected it.
    pub fn rejected(&self, reason: Rejection, now: Timestamp) -> PaymentEvent {
        let mut next = self.clone();
        next.status = PaymentEventStatus::Rejected;
        next.reason = Some(reason);
        next.updated_at = now;
        next
    }
}

/// Filters of the invoice list.
#[derive(Clone, Debug, Default)]
pub struct InvoiceFilter {
    pub status: Option<InvoiceStatus>,
    pub customer_email: Option<String>,
}

/// Parses a UUID in its 8-4-4-4-12 hexadecimal form (any case, any version) and returns it in
/// lower case, so that the same id in another case is the same event.
pub fn parse_uuid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let dashes_ok = b
        .iter()
        .enumerate()
        .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (*c == b'-'));
    let hex_ok = b
        .iter()
        .enumerate()
        .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) || c.is_ascii_hexdigit());
    (dashes_ok && hex_ok).then(|| s.to_ascii_lowercase())
}

/// The ledger account of money received for invoices (debit-normal: it shows what came in from
/// outside; its debits never fall below its credits).
pub fn receipts_account(currency: Currency) -> String {
    format!("{SYSTEM_PREFIX}invoice_receipts:{}", currency.code())
}

/// The system accounts invoice payments in `currency` need, with their flags.
pub fn chart(currency: Currency) -> Vec<(String, AccountFlags)> {
    let debit_normal = AccountFlags {
        debits_must_not_exceed_credits: false,
        credits_must_not_exceed_debits: true,
    };
    vec![
        (receipts_account(currency), debit_normal),
        (merchant_pending_account(currency), AccountFlags::default()),
    ]
}

/// The id of the transfer of an applied payment event: derived from the event id, so applying
/// the same event twice is an `exists` in the ledger, never a second movement.
pub fn transfer_id(event_id: &str) -> String {
    format!("{SYSTEM_PREFIX}invoice_payment:{event_id}")
}

/// The transfer of an applied payment: invoice_receipts → merchant_pending.
pub fn payment_transfer(event: &PaymentEvent) -> TransferRequest {
    TransferRequest {
        id: transfer_id(&event.event_id),
        op: TransferOp::Single {
            debit_account_id: receipts_account(event.currency),
            credit_account_id: merchant_pending_account(event.currency),
            amount: event.amount,
            currency: event.currency,
        },
        metadata: Some(json!({ "invoice_id": event.invoice_id, "event_id": event.event_id })),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").expect("usd")
    }

    fn invoice(status: InvoiceStatus, due: i64) -> Invoice {
        Invoice {
            merchant_id: "mer_1".into(),
            id: "inv_1".into(),
            status,
            currency: usd(),
            amount_due: due,
            amount_paid: 0,
            customer_email: "ann@example.test".into(),
            customer_name: None,
            description: None,
            metadata: json!({}),
            due_date: None,
            sent_at: None,
            paid_at: None,
            voided_at: None,
            version: 1,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    #[test]
    fn send_then_void_and_nothing_else() {
        let now = Timestamp(5);
        let draft = invoice(InvoiceStatus::Draft, 100);
        let sent = decide(&draft, Command::Send, now).expect("send");
        assert_eq!(
            (sent.status, sent.sent_at, sent.version),
            (InvoiceStatus::Sent, Some(now), 2)
        );
        let void = decide(&sent, Command::Void, now).expect("void");
        assert_eq!((void.status, void.voided_at), (InvoiceStatus::Void, Some(now)));
        assert_eq!(
            decide(&draft, Command::Void, now).map(|i| i.status),
            Ok(InvoiceStatus::Void)
        );
        for (status, command) in [
            (InvoiceStatus::Sent, Command::Send),
            (InvoiceStatus::PartiallyPaid, Command::Send),
            (InvoiceStatus::Paid, Command::Send),
            (InvoiceStatus::Void, Command::Send),
            (InvoiceStatus::PartiallyPaid, Command::Void),
            (InvoiceStatus::Paid, Command::Void),
            (InvoiceStatus::Void, Command::Void),
        ] {
            let refused = decide(&invoice(status, 100), command, now);
            assert_eq!(
                refused,
                Err(IllegalTransition { command, status }),
                "{status:?} {command:?}"
            );
        }
    }

    #[test]
    fn partial_then_full_then_overpaid() {
        let now = Timestamp(9);
        let sent = invoice(InvoiceStatus::Sent, 10_000);
        let first = apply_payment(&sent, 3_000, now).expect("applied");
        assert_eq!(first.invoice.status, InvoiceStatus::PartiallyPaid);
        assert!(!first.became_paid);
        assert_eq!(first.invoice.amount_remaining(), 7_000);
        let second = apply_payment(&first.invoice, 7_000, now).expect("applied");
        assert_eq!(second.invoice.status, InvoiceStatus::Paid);
        assert!(second.became_paid);
        assert_eq!(second.invoice.paid_at, Some(now));
        assert_eq!(
            (second.invoice.amount_remaining(), second.invoice.amount_overpaid()),
            (0, 0)
        );
        let third = apply_payment(&second.invoice, 500, now).expect("applied");
        assert!(!third.became_paid, "paid once");
        assert_eq!(third.invoice.amount_overpaid(), 500);
        assert_eq!(third.invoice.version, 4);
    }

    #[test]
    fn one_payment_beyond_the_amount_due_pays_and_overpays() {
        let applied = apply_payment(&invoice(InvoiceStatus::Sent, 1_000), 1_250, Timestamp(1)).expect("applied");
        assert_eq!(applied.invoice.status, InvoiceStatus::Paid);
        assert!(applied.became_paid);
        assert_eq!(applied.invoice.amount_overpaid(), 250);
    }

    #[test]
    fn payments_to_drafts_and_void_invoices_are_rejected() {
        let now = Timestamp(1);
        assert_eq!(
            apply_payment(&invoice(InvoiceStatus::Draft, 10), 5, now),
            Err(Rejection::InvoiceDraft)
        );
        assert_eq!(
            apply_payment(&invoice(InvoiceStatus::Void, 10), 5, now),
            Err(Rejection::InvoiceVoid)
        );
        let mut full = invoice(InvoiceStatus::Paid, 10);
        full.amount_paid = i64::MAX;
        assert_eq!(apply_payment(&full, 1, now), Err(Rejection::AmountOverflow));
        for r in Rejection::ALL {
            assert_eq!(Rejection::parse(r.code()), Some(r));
        }
    }

    #[test]
    fn uuids_are_parsed_and_lower_cased() {
        assert_eq!(
            parse_uuid("6B1B36C0-2c4a-4b3f-bc54-6b5b3f3d86c4").as_deref(),
            Some("6b1b36c0-2c4a-4b3f-bc54-6b5b3f3d86c4")
        );
        for bad in [
            "",
            "6b1b36c0-2c4a-4b3f-bc54-6b5b3f3d86c",
            "6b1b36c0-2c4a-4b3f-bc54-6b5b3f3d86c4a",
            "6b1b36c02c4a-4b3f-bc54-6b5b3f3d86c4-",
            "6b1b36c0-2c4a-4b3f-bc54-6b5b3f3d86cg",
            "{6b1b36c0-2c4a-4b3f-bc54-6b5b3f3d86c}",
            "6b1b36c0 2c4a 4b3f bc54 6b5b3f3d86c4",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
        let id = transfer_id("6b1b36c0-2c4a-4b3f-bc54-6b5b3f3d86c4");
        assert!(crate::validate::is_client_id(&id), "{id}");
    }

    #[test]
    fn statuses_round_trip() {
        for s in InvoiceStatus::ALL {
            assert_eq!(InvoiceStatus::parse(s.as_str()), Some(s));
        }
        for s in [
            PaymentEventStatus::Received,
            PaymentEventStatus::Applied,
            PaymentEventStatus::Rejected,
        ] {
            assert_eq!(PaymentEventStatus::parse(s.as_str()), Some(s));
        }
    }

    fn payment(event_id: &str, amount: i64) -> PaymentEvent {
        PaymentEvent {
            merchant_id: "mer_1".into(),
            id: format!("ipe_{event_id}"),
            event_id: event_id.into(),
            invoice_id: "inv_1".into(),
            amount,
            currency: usd(),
            status: PaymentEventStatus::Received,
            reason: None,
            transfer_id: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    #[test]
    fn a_pass_applies_in_order_and_records_each_step() {
        let now = Timestamp(7);
        let sent = invoice(InvoiceStatus::Sent, 1_000);
        let out = apply_events(&sent, &[payment("a", 400), payment("b", 600), payment("c", 50)], now);
        assert_eq!(out.invoice.amount_paid, 1_050);
        assert_eq!(out.invoice.status, InvoiceStatus::Paid);
        assert_eq!(out.invoice.version, 4);
        let kinds: Vec<&str> = out.records.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                "invoice.payment_applied",
                "invoice.payment_applied",
                "invoice.paid",
                "invoice.payment_applied"
            ]
        );
        assert_eq!(out.records[0].1.status, InvoiceStatus::PartiallyPaid);
        let known = |k: &str| crate::event::TYPES.contains(&k);
        assert!(kinds.iter().all(|k| known(k)));
        assert!(known("invoice.payment_rejected") && known("invoice.created"));
        assert!(known(Command::Send.event()) && known(Command::Void.event()));
        assert_eq!(out.transfers.len(), 3);
        assert_eq!(out.transfers[1].id, "settle:invoice_payment:b");
        assert!(out
            .concluded
            .iter()
            .all(|e| e.status == PaymentEventStatus::Applied && e.transfer_id.is_some()));
    }

    #[test]
    fn a_pass_that_only_rejects_still_claims_the_invoice() {
        let draft = invoice(InvoiceStatus::Draft, 1_000);
        let out = apply_events(&draft, &[payment("a", 400)], Timestamp(3));
        assert_eq!(out.invoice.version, draft.version + 1);
        assert_eq!(
            out.invoice.updated_at, draft.updated_at,
            "nothing changed but the version"
        );
        assert_eq!(out.invoice.amount_paid, 0);
        assert!(out.transfers.is_empty());
        assert_eq!(out.concluded[0].status, PaymentEventStatus::Rejected);
        assert_eq!(out.concluded[0].reason, Some(Rejection::InvoiceDraft));
        assert_eq!(out.records[0].0, "invoice.payment_rejected");
    }

    #[test]
    fn a_refused_transfer_rejects_its_event_and_leaves_the_later_ones() {
        let sent = invoice(InvoiceStatus::Sent, 1_000);
        let events = [payment("a", 400), payment("b", 300), payment("c", 50)];
        let out = apply_events_refusing(&sent, &events, 1, Timestamp(4));
        assert_eq!(out.invoice.amount_paid, 400, "only the event before the refused one");
        assert_eq!(out.transfers.len(), 1);
        let decided: Vec<(&str, PaymentEventStatus, Option<Rejection>)> = out
            .concluded
            .iter()
            .map(|e| (e.event_id.as_str(), e.status, e.reason))
            .collect();
        assert_eq!(
            decided,
            [
                ("a", PaymentEventStatus::Applied, None),
                ("b", PaymentEventStatus::Rejected, Some(Rejection::LedgerRefused)),
            ],
            "`c` stays received"
        );
        let kinds: Vec<&str> = out.records.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, ["invoice.payment_applied", "invoice.payment_rejected"]);
        let first = apply_events_refusing(&sent, &events, 0, Timestamp(4));
        assert_eq!(
            first.invoice.version,
            sent.version + 1,
            "the rejection still claims the invoice"
        );
        assert_eq!(first.concluded.len(), 1);
        assert_eq!(Rejection::parse("ledger_refused"), Some(Rejection::LedgerRefused));
    }

    /// What the inbox and the worker do to a stream of deliveries: the first delivery of each
    /// event id is kept, later ones are duplicates; kept events are applied in arrival order.
    fn replay(due: i64, deliveries: &[(u8, i64)]) -> (Invoice, usize) {
        let mut kept: BTreeMap<u8, i64> = BTreeMap::new();
        let mut order = Vec::new();
        for (id, amount) in deliveries {
            if !kept.contains_key(id) {
                kept.insert(*id, *amount);
                order.push(*amount);
            }
        }
        let mut inv = invoice(InvoiceStatus::Sent, due);
        let mut paid_events = 0;
        for amount in order {
            let applied = apply_payment(&inv, amount, Timestamp(1)).expect("applied");
            paid_events += usize::from(applied.became_paid);
            inv = applied.invoice;
        }
        (inv, paid_events)
    }

    proptest! {
        /// Any order and any number of deliveries of the same events give the same invoice:
        /// paid = the sum of the distinct events, status and overpaid derived, `paid` reached once.
        #[test]
        fn final_invoice_does_not_depend_on_order_or_duplicates(
            due in 1i64..10_000,
            amounts in prop::collection::vec(1i64..5_000, 1..20),
            copies in prop::collection::vec(1usize..4, 20),
            seed in any::<u64>(),
        ) {
            let mut deliveries: Vec<(u8, i64)> = Vec::new();
            for (i, amount) in amounts.iter().enumerate() {
                for _ in 0..copies[i] {
                    deliveries.push((u8::try_from(i).unwrap_or(0), *amount));
                }
            }
            // A deterministic shuffle from the seed (Fisher–Yates over a xorshift stream).
            let mut x = seed | 1;
            for i in (1..deliveries.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let j = usize::try_from(x % (u64::try_from(i).unwrap_or(1) + 1)).unwrap_or(0);
                deliveries.swap(i, j);
            }
            let in_order: Vec<(u8, i64)> = amounts
                .iter()
                .enumerate()
                .map(|(i, a)| (u8::try_from(i).unwrap_or(0), *a))
                .collect();
            let (expected, _) = replay(due, &in_order);
            let (shuffled, paid_events) = replay(due, &deliveries);
            let total: i64 = amounts.iter().sum();
            prop_assert_eq!(shuffled.amount_paid, total);
            prop_assert_eq!(shuffled.status, expected.status);
            prop_assert_eq!(shuffled.status, open_status(due, total));
            prop_assert_eq!(shuffled.amount_overpaid(), (total - due).max(0));
            prop_assert_eq!(paid_events, usize::from(total >= due));
        }
    }
}
