//! How a payment's money moves in the merchant's ledger: the chart of accounts and the
//! transfers of each step.
//!
//! Chart of accounts, per merchant and currency, created on demand (ids start with the
//! reserved prefix `settle:`, which clients cannot use for their own accounts):
//!
//! | account | normal side | holds |
//! |---|---|---|
//! | `settle:clearing:<connector>:<CUR>` | debit (`credits_must_not_exceed_debits`) | what the connector owes the merchant: captured, not yet paid out |
//! | `settle:merchant_pending:<CUR>` | credit | the merchant's share of captured funds, not yet paid out |
//! | `settle:platform_fees:<CUR>` | credit | application fees taken from captures |
//! | payee accounts (the merchant's own, named in `splits`) | credit | each payee's share |
//!
//! Steps (transfer ids derive from the payment or refund id, so a retried step is an `exists`):
//! - authorization: a pending transfer `<pay>:auth` clearing → merchant_pending (the hold);
//! - capture: one atomic batch — post `<pay>:auth` with the captured amount as `<pay>:capture`
//!   (the rest is released), then `<pay>:split:<i>` merchant_pending → payee and `<pay>:fee`
//!   merchant_pending → platform_fees;
//! - cancel or expiry: void `<pay>:auth` as `<pay>:void`;
//! - refund: one pending transfer per share `<re>:<i>` share account → clearing, allocated
//!   proportionally to what each share still holds; posted (`<re>:<i>:post`) when the connector
//!   confirms, voided (`<re>:<i>:void`) when it fails.
//!
//! A partial capture scales the splits and the fee down with the largest-remainder method, so
//! the parts always sum to the captured amount exactly.

use crate::{
    ids,
    ledger::{AccountFlags, Expect, TransferOp, TransferRequest},
    payment::Payment,
    split::allocate,
    Currency,
};

/// Ledger account ids with this prefix belong to Settle.
pub const SYSTEM_PREFIX: &str = "settle:";

/// Whether a ledger id (account or transfer) is Settle's own: its accounts (`settle:…`), and the
/// transfers its payments and refunds post, named after them (`pay_<26 base32>:capture`,
/// `re_<26 base32>:0:post`). A client's `pay_out:1` is the client's.
/// A client that took one could move a system account, or hold the id a payment step needs.
pub fn is_system_id(id: &str) -> bool {
    id.starts_with(SYSTEM_PREFIX)
        || id
            .split_once(':')
            .is_some_and(|(head, _)| ids::is_generated(head, "pay") || ids::is_generated(head, "re"))
}

pub fn clearing_account(connector: &str, currency: Currency) -> String {
    format!("{SYSTEM_PREFIX}clearing:{connector}:{}", currency.code())
}

pub fn merchant_pending_account(currency: Currency) -> String {
    format!("{SYSTEM_PREFIX}merchant_pending:{}", currency.code())
}

pub fn platform_fees_account(currency: Currency) -> String {
    format!("{SYSTEM_PREFIX}platform_fees:{}", currency.code())
}

/// The system accounts a payment through `connector` in `currency` needs, with their flags.
pub fn chart(connector: &str, currency: Currency) -> Vec<(String, AccountFlags)> {
    let debit_normal = AccountFlags {
        debits_must_not_exceed_credits: false,
        credits_must_not_exceed_debits: true,
    };
    vec![
        (clearing_account(connector, currency), debit_normal),
        (merchant_pending_account(currency), AccountFlags::default()),
        (platform_fees_account(currency), AccountFlags::default()),
    ]
}

fn hold_id(payment: &Payment) -> String {
    format!("{}:auth", payment.id)
}

/// The authorization hold.
pub fn authorization(payment: &Payment, connector: &str) -> TransferRequest {
    TransferRequest {
        id: hold_id(payment),
        op: TransferOp::Pending {
            debit_account_id: clearing_account(connector, payment.currency),
            credit_account_id: merchant_pending_account(payment.currency),
            amount: payment.amount,
            currency: payment.currency,
            timeout_seconds: None,
        },
        metadata: None,
    }
}

/// Where the captured money goes: `(account id, weight)` for the merchant's share, each split
/// and the fee, in that order. The weights are the amounts of a full capture.
pub fn shares(payment: &Payment) -> Vec<(String, i64)> {
    let mut shares = vec![(
        merchant_pending_account(payment.currency),
        payment.amount - payment.shares_total(),
    )];
    shares.extend(payment.splits.iter().map(|s| (s.payee_account_id.clone(), s.amount)));
    shares.push((
        platform_fees_account(payment.currency),
        payment.application_fee_amount.unwrap_or(0),
    ));
    shares
}

/// The captured amount divided among the shares (sums to `amount` exactly).
pub fn capture_parts(payment: &Payment, amount: i64) -> Option<Vec<i64>> {
    let weights: Vec<i64> = shares(payment).into_iter().map(|(_, w)| w).collect();
    allocate(amount, &weights)
}

/// The capture batch: post the hold with `amount`, then move each share out of merchant_pending.
pub fn capture(payment: &Payment, amount: i64) -> Option<Vec<TransferRequest>> {
    let parts = capture_parts(payment, amount)?;
    let mut batch = vec![TransferRequest {
        id: format!("{}:capture", payment.id),
        op: TransferOp::Post {
            pending_id: hold_id(payment),
            amount: Some(amount),
            expect: Expect::default(),
        },
        metadata: None,
    }];
    let pending = merchant_pending_account(payment.currency);
    let shares = shares(payment);
    let last = shares.len() - 1;
    for (i, ((account, _), part)) in shares.into_iter().zip(parts).enumerate().skip(1) {
        if part == 0 {
            continue;
        }
        let id = if i == last {
            format!("{}:fee", payment.id)
        } else {
            format!("{}:split:{}", payment.id, i - 1)
        };
        batch.push(single(id, &pending, &account, part, payment.currency));
    }
    Some(batch)
}

/// Releases the hold.
pub fn void(payment: &Payment) -> TransferRequest {
    TransferRequest {
        id: format!("{}:void", payment.id),
        op: TransferOp::Void {
            pending_id: hold_id(payment),
            amount: None,
            expect: Expect::default(),
        },
        metadata: None,
    }
}

fn single(id: String, debit: &str, credit: &str, amount: i64, currency: Currency) -> TransferRequest {
    TransferRequest {
        id,
        op: TransferOp::Single {
            debit_account_id: debit.to_owned(),
            credit_account_id: credit.to_owned(),
            amount,
            currency,
        },
        metadata: None,
    }
}

/// One share's part of a refund.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundLeg {
    pub transfer_id: String,
    pub account_id: String,
    pub amount: i64,
}

/// Divides a refund of `amount` among the shares in proportion to what each still holds of
/// the capture (`refunded[i]`: what earlier non-failed refunds took from share `i`), so that no
/// share gives back more than it received. Returns the per-share parts (to store with the
/// refund and add to `refunded`).
pub fn refund_parts(payment: &Payment, amount: i64, refunded: &[i64]) -> Option<Vec<i64>> {
    let captured = capture_parts(payment, payment.amount_captured)?;
    if refunded.len() != captured.len() {
        return None;
    }
    let remaining: Vec<i64> = captured.iter().zip(refunded).map(|(c, r)| c - r).collect();
    allocate(amount, &remaining)
}

/// A refund's legs: one per share with a part > 0.
pub fn refund_legs(payment: &Payment, refund_id: &str, parts: &[i64]) -> Vec<RefundLeg> {
    shares(payment)
        .into_iter()
        .zip(parts)
        .enumerate()
        .filter(|(_, (_, part))| **part > 0)
        .map(|(i, ((account_id, _), part))| RefundLeg {
            transfer_id: format!("{refund_id}:{i}"),
            account_id,
            amount: *part,
        })
        .collect()
}

/// The refund's holds: each leg's share account → the connector's clearing account.
pub fn refund_holds(legs: &[RefundLeg], connector: &str, currency: Currency) -> Vec<TransferRequest> {
    let clearing = clearing_account(connector, currency);
    legs.iter()
        .map(|leg| TransferRequest {
            id: leg.transfer_id.clone(),
            op: TransferOp::Pending {
                debit_account_id: leg.account_id.clone(),
                credit_account_id: clearing.clone(),
                amount: leg.amount,
                currency,
                timeout_seconds: None,
            },
            metadata: None,
        })
        .collect()
}

/// Posts (the connector refunded) or voids (it failed) a refund's holds.
pub fn refund_settle(legs: &[RefundLeg], post: bool) -> Vec<TransferRequest> {
    legs.iter()
        .map(|leg| {
            let pending_id = leg.transfer_id.clone();
            let expect = Expect::default();
            TransferRequest {
                id: format!("{}:{}", leg.transfer_id, if post { "post" } else { "void" }),
                op: if post {
                    TransferOp::Post {
                        pending_id,
                        amount: None,
                        expect,
                    }
                } else {
                    TransferOp::Void {
                        pending_id,
                        amount: None,
                        expect,
                    }
                },
                metadata: None,
            }
        })
        .collect()
}
