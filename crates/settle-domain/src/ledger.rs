//! The ledger's rules, after TigerBeetle: accounts with debit/credit balances split into pending
//! and posted, immutable transfers, pending transfers (holds) that are later posted (fully or
//! partly), voided or expired, balance-limit flags, and atomic (linked) batches.
//!
//! [`Book`] is the slice of a ledger that one database transaction has loaded. The storage layer
//! loads the accounts and transfers a group of requests touches, [`Book::apply`] decides each
//! request in order and changes the book in memory, and [`Book::take_effects`] hands back exactly
//! what must be written. The same code decides on SQLite and on PostgreSQL.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::{money::Currency, time::Timestamp};

/// Most transfers in one request; also the most a group commit gathers from one request.
pub const BATCH_TRANSFERS_MAX: usize = 1_000;

/// `(merchant_id, id)`: every ledger row is owned by one merchant.
pub type Key = (String, String);

fn key(merchant_id: &str, id: &str) -> Key {
    (merchant_id.to_owned(), id.to_owned())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountFlags {
    /// The account may not be debited beyond its posted credits (a wallet that cannot go negative).
    pub debits_must_not_exceed_credits: bool,
    /// The account may not be credited beyond its posted debits.
    pub credits_must_not_exceed_debits: bool,
}

impl AccountFlags {
    const DEBITS_MUST_NOT_EXCEED_CREDITS: i64 = 1;
    const CREDITS_MUST_NOT_EXCEED_DEBITS: i64 = 2;

    pub fn bits(self) -> i64 {
        let mut bits = 0;
        if self.debits_must_not_exceed_credits {
            bits |= Self::DEBITS_MUST_NOT_EXCEED_CREDITS;
        }
        if self.credits_must_not_exceed_debits {
            bits |= Self::CREDITS_MUST_NOT_EXCEED_DEBITS;
        }
        bits
    }

    pub fn from_bits(bits: i64) -> Self {
        AccountFlags {
            debits_must_not_exceed_credits: bits & Self::DEBITS_MUST_NOT_EXCEED_CREDITS != 0,
            credits_must_not_exceed_debits: bits & Self::CREDITS_MUST_NOT_EXCEED_DEBITS != 0,
        }
    }

    /// The side whose excess is the account's balance. An account that may not go into debit
    /// (or has no flag) is credit-normal, like a customer wallet; one that may not go into
    /// credit is debit-normal, like a bank or connector clearing account.
    pub fn normal_side(self) -> Side {
        if self.credits_must_not_exceed_debits {
            Side::Debit
        } else {
            Side::Credit
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Debit,
    Credit,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Debit => "debit",
            Side::Credit => "credit",
        }
    }
}

/// The four running totals of an account. Each is non-negative and at most `i64::MAX`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    pub debits_pending: i64,
    pub debits_posted: i64,
    pub credits_pending: i64,
    pub credits_posted: i64,
}

impl Balances {
    /// Posted balance on the normal side (may be negative for an unflagged account).
    pub fn balance(&self, side: Side) -> i128 {
        let (dp, cp) = (i128::from(self.debits_posted), i128::from(self.credits_posted));
        match side {
            Side::Credit => cp - dp,
            Side::Debit => dp - cp,
        }
    }

    /// Posted balance less what pending transfers hold against it.
    pub fn available(&self, side: Side) -> i128 {
        match side {
            Side::Credit => self.balance(side) - i128::from(self.debits_pending),
            Side::Debit => self.balance(side) - i128::from(self.credits_pending),
        }
    }

    /// Whether the limit flags hold for these totals (pending amounts count, as in TigerBeetle).
    pub fn within_limits(&self, flags: AccountFlags) -> bool {
        let debits = i128::from(self.debits_pending) + i128::from(self.debits_posted);
        let credits = i128::from(self.credits_pending) + i128::from(self.credits_posted);
        (!flags.debits_must_not_exceed_credits || debits <= i128::from(self.credits_posted))
            && (!flags.credits_must_not_exceed_debits || credits <= i128::from(self.debits_posted))
    }

    fn is_non_negative(&self) -> bool {
        self.debits_pending >= 0 && self.debits_posted >= 0 && self.credits_pending >= 0 && self.credits_posted >= 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub merchant_id: String,
    pub id: String,
    pub currency: Currency,
    pub code: Option<i64>,
    pub name: Option<String>,
    pub flags: AccountFlags,
    pub metadata: Value,
    pub balances: Balances,
    pub created_at: Timestamp,
}

/// What creating an account with a given id decides against an existing row, if any.
#[derive(Debug, PartialEq, Eq)]
pub enum AccountCreation {
    Created,
    /// Same id, same fields: the existing account is returned.
    Exists,
    /// Same id, different fields; names the first field that differs.
    Conflict(&'static str),
}

/// Compares a requested account with the stored one of the same id.
pub fn decide_account_creation(existing: Option<&Account>, requested: &Account) -> AccountCreation {
    let Some(existing) = existing else {
        return AccountCreation::Created;
    };
    let field = if existing.currency != requested.currency {
        "currency"
    } else if existing.code != requested.code {
        "code"
    } else if existing.name != requested.name {
        "name"
    } else if existing.flags != requested.flags {
        "flags"
    } else if existing.metadata != requested.metadata {
        "metadata"
    } else {
        return AccountCreation::Exists;
    };
    AccountCreation::Conflict(field)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransferKind {
    Single,
    Pending,
    PostPending,
    VoidPending,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Single => "single",
            TransferKind::Pending => "pending",
            TransferKind::PostPending => "post_pending",
            TransferKind::VoidPending => "void_pending",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "single" => TransferKind::Single,
            "pending" => TransferKind::Pending,
            "post_pending" => TransferKind::PostPending,
            "void_pending" => TransferKind::VoidPending,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PendingStatus {
    Pending,
    Posted,
    Voided,
    Expired,
}

impl PendingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PendingStatus::Pending => "pending",
            PendingStatus::Posted => "posted",
            PendingStatus::Voided => "voided",
            PendingStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => PendingStatus::Pending,
            "posted" => PendingStatus::Posted,
            "voided" => PendingStatus::Voided,
            "expired" => PendingStatus::Expired,
            _ => return None,
        })
    }
}

/// A stored, immutable transfer, with both accounts' totals right after it was applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    pub merchant_id: String,
    pub id: String,
    pub kind: TransferKind,
    pub debit_account_id: String,
    pub credit_account_id: String,
    pub amount: i64,
    pub currency: Currency,
    pub pending_id: Option<String>,
    pub timeout_seconds: Option<u32>,
    pub expires_at: Option<Timestamp>,
    pub metadata: Value,
    pub created_at: Timestamp,
    pub debit_after: Balances,
    pub credit_after: Balances,
}

/// Fields a post or void may repeat from the pending transfer; when given they must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expect {
    pub debit_account_id: Option<String>,
    pub credit_account_id: Option<String>,
    pub currency: Option<Currency>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TransferOp {
    Single {
        debit_account_id: String,
        credit_account_id: String,
        amount: i64,
        currency: Currency,
    },
    Pending {
        debit_account_id: String,
        credit_account_id: String,
        amount: i64,
        currency: Currency,
        timeout_seconds: Option<u32>,
    },
    /// Post a pending transfer; `amount` below the pending amount posts part and releases the rest.
    Post {
        pending_id: String,
        amount: Option<i64>,
        expect: Expect,
    },
    Void {
        pending_id: String,
        amount: Option<i64>,
        expect: Expect,
    },
}

/// One requested transfer, already parsed at the edge (`amount > 0`, known currency, valid ids).
#[derive(Clone, Debug, PartialEq)]
pub struct TransferRequest {
    pub id: String,
    pub op: TransferOp,
    /// `None` when the client sent none; stored as `{}`. A retry that omits it still matches.
    pub metadata: Option<Value>,
}

impl TransferRequest {
    /// Account ids this request names directly (posts and voids name theirs through the pending transfer).
    pub fn account_ids(&self) -> impl Iterator<Item = &str> {
        let (d, c) = match &self.op {
            TransferOp::Single {
                debit_account_id,
                credit_account_id,
                ..
            }
            | TransferOp::Pending {
                debit_account_id,
                credit_account_id,
                ..
            } => (Some(debit_account_id.as_str()), Some(credit_account_id.as_str())),
            TransferOp::Post { .. } | TransferOp::Void { .. } => (None, None),
        };
        d.into_iter().chain(c)
    }

    pub fn pending_id(&self) -> Option<&str> {
        match &self.op {
            TransferOp::Post { pending_id, .. } | TransferOp::Void { pending_id, .. } => Some(pending_id),
            _ => None,
        }
    }
}

/// Why a transfer was not applied. Codes are the API's `code` strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferError {
    ExistsWithDifferentFields { field: &'static str },
    AccountNotFound { field: &'static str },
    AccountsMustDiffer,
    CurrencyMismatch { field: &'static str },
    ExceedsCredits,
    ExceedsDebits,
    OverflowsDebits,
    OverflowsCredits,
    OverflowsTimeout,
    PendingTransferNotFound { field: &'static str },
    PendingTransferNotPending { field: &'static str },
    PendingTransferHasDifferentField { field: &'static str },
    PendingTransferAlreadyPosted { field: &'static str },
    PendingTransferAlreadyVoided { field: &'static str },
    PendingTransferExpired { field: &'static str },
    ExceedsPendingTransferAmount,
    LinkedEventFailed,
}

impl TransferError {
    pub fn code(&self) -> &'static str {
        match self {
            TransferError::ExistsWithDifferentFields { .. } => "exists_with_different_fields",
            TransferError::AccountNotFound { .. } => "account_not_found",
            TransferError::AccountsMustDiffer => "accounts_must_differ",
            TransferError::CurrencyMismatch { .. } => "currency_mismatch",
            TransferError::ExceedsCredits => "exceeds_credits",
            TransferError::ExceedsDebits => "exceeds_debits",
            TransferError::OverflowsDebits => "overflows_debits",
            TransferError::OverflowsCredits => "overflows_credits",
            TransferError::OverflowsTimeout => "overflows_timeout",
            TransferError::PendingTransferNotFound { .. } => "pending_transfer_not_found",
            TransferError::PendingTransferNotPending { .. } => "pending_transfer_not_pending",
            TransferError::PendingTransferHasDifferentField { .. } => "pending_transfer_has_different_field",
            TransferError::PendingTransferAlreadyPosted { .. } => "pending_transfer_already_posted",
            TransferError::PendingTransferAlreadyVoided { .. } => "pending_transfer_already_voided",
            TransferError::PendingTransferExpired { .. } => "pending_transfer_expired",
            TransferError::ExceedsPendingTransferAmount => "exceeds_pending_transfer_amount",
            TransferError::LinkedEventFailed => "linked_event_failed",
        }
    }

    /// The request field the error is about, if one is.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            TransferError::ExistsWithDifferentFields { field }
            | TransferError::AccountNotFound { field }
            | TransferError::CurrencyMismatch { field }
            | TransferError::PendingTransferHasDifferentField { field }
            | TransferError::PendingTransferNotFound { field }
            | TransferError::PendingTransferNotPending { field }
            | TransferError::PendingTransferAlreadyPosted { field }
            | TransferError::PendingTransferAlreadyVoided { field }
            | TransferError::PendingTransferExpired { field } => Some(field),
            TransferError::AccountsMustDiffer => Some("credit_account_id"),
            TransferError::ExceedsCredits
            | TransferError::ExceedsDebits
            | TransferError::OverflowsDebits
            | TransferError::OverflowsCredits
            | TransferError::ExceedsPendingTransferAmount => Some("amount"),
            TransferError::OverflowsTimeout => Some("timeout_seconds"),

            TransferError::LinkedEventFailed => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            TransferError::ExistsWithDifferentFields { field } => {
                format!("a transfer with this id exists with a different `{field}`")
            }
            TransferError::AccountNotFound { field } => format!("no ledger account matches `{field}`"),
            TransferError::AccountsMustDiffer => "debit and credit account must differ".into(),
            TransferError::CurrencyMismatch { field } => {
                format!("the currency differs from the currency of `{field}`")
            }
            TransferError::ExceedsCredits => "the debit account's debits would exceed its credits".into(),
            TransferError::ExceedsDebits => "the credit account's credits would exceed its debits".into(),
            TransferError::OverflowsDebits => "the debit account's debits would overflow".into(),
            TransferError::OverflowsCredits => "the credit account's credits would overflow".into(),
            TransferError::OverflowsTimeout => "the timeout would overflow".into(),
            TransferError::PendingTransferNotFound { .. } => "no pending transfer has this id".into(),
            TransferError::PendingTransferNotPending { .. } => {
                "the referenced transfer is not a pending transfer".into()
            }
            TransferError::PendingTransferHasDifferentField { field } => {
                format!("`{field}` differs from the pending transfer's")
            }
            TransferError::PendingTransferAlreadyPosted { .. } => "the pending transfer was already posted".into(),
            TransferError::PendingTransferAlreadyVoided { .. } => "the pending transfer was already voided".into(),
            TransferError::PendingTransferExpired { .. } => "the pending transfer expired".into(),
            TransferError::ExceedsPendingTransferAmount => "the amount exceeds the pending transfer's amount".into(),
            TransferError::LinkedEventFailed => "another transfer of the atomic batch failed".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum TransferResult {
    Created(Transfer),
    /// Same id and same fields as a stored transfer: no second effect.
    Exists(Transfer),
    Failed(TransferError),
}

/// Why an atomic batch failed: the transfer that failed on its own (its place and error), not
/// one of the others that failed only because they were linked to it.
pub fn refusal(results: &[TransferResult]) -> Option<(usize, &TransferError)> {
    let failed = || {
        results.iter().enumerate().filter_map(|(at, r)| match r {
            TransferResult::Failed(e) => Some((at, e)),
            _ => None,
        })
    };
    failed()
        .find(|(_, e)| **e != TransferError::LinkedEventFailed)
        .or_else(|| failed().next())
}

/// A pending transfer's status row to write (insert or update).
#[derive(Clone, Debug, PartialEq)]
pub struct PendingRow {
    pub merchant_id: String,
    pub transfer_id: String,
    pub status: PendingStatus,
    pub expires_at: Option<Timestamp>,
}

/// Everything a group of applied requests must write, in one database transaction.
#[derive(Debug, Default)]
pub struct Effects {
    pub transfers: Vec<Transfer>,
    pub accounts: Vec<Account>,
    pub pending: Vec<PendingRow>,
}

enum Undo {
    Balances(Key, Balances),
    Pending(Key, Option<PendingStatus>),
    Transfer(Key),
}

/// The part of the ledger one transaction has loaded, and what has been decided on it since.
#[derive(Default)]
pub struct Book {
    accounts: HashMap<Key, Account>,
    transfers: HashMap<Key, Transfer>,
    pending: HashMap<Key, PendingStatus>,
    created: Vec<Transfer>,
    touched_accounts: BTreeSet<Key>,
    touched_pending: BTreeSet<Key>,
    journal: Option<Vec<Undo>>,
}

impl Book {
    pub fn new() -> Self {
        Book::default()
    }

    pub fn load_account(&mut self, account: Account) {
        self.accounts.insert(key(&account.merchant_id, &account.id), account);
    }

    pub fn load_transfer(&mut self, transfer: Transfer) {
        self.transfers
            .insert(key(&transfer.merchant_id, &transfer.id), transfer);
    }

    pub fn load_pending(&mut self, merchant_id: &str, transfer_id: &str, status: PendingStatus) {
        self.pending.insert(key(merchant_id, transfer_id), status);
    }

    pub fn account(&self, merchant_id: &str, id: &str) -> Option<&Account> {
        self.accounts.get(&key(merchant_id, id))
    }

    pub fn transfer(&self, merchant_id: &str, id: &str) -> Option<&Transfer> {
        self.transfers.get(&key(merchant_id, id))
    }

    pub fn pending_status(&self, merchant_id: &str, id: &str) -> Option<PendingStatus> {
        self.pending.get(&key(merchant_id, id)).copied()
    }

    /// Applies one request's transfers in order. With `atomic`, either all of them take effect or
    /// none: the first failure keeps its own code and every other member fails with
    /// `linked_event_failed`. A member that already `exists` does not fail the batch, so a retried
    /// atomic batch answers `exists` for each member.
    pub fn apply(
        &mut self,
        merchant_id: &str,
        batch: &[TransferRequest],
        atomic: bool,
        now: Timestamp,
    ) -> Vec<TransferResult> {
        if !atomic {
            return batch.iter().map(|r| self.apply_one(merchant_id, r, now)).collect();
        }
        self.journal = Some(Vec::new());
        let created_before = self.created.len();
        let mut results = Vec::with_capacity(batch.len());
        for request in batch {
            let result = self.apply_one(merchant_id, request, now);
            let failed = matches!(result, TransferResult::Failed(_));
            results.push(result);
            if failed {
                break;
            }
        }
        let journal = self.journal.take().unwrap_or_default();
        let Some(TransferResult::Failed(error)) = results.last().cloned() else {
            return results;
        };
        self.rollback(journal);
        self.created.truncate(created_before);
        let failed_at = results.len() - 1;
        (0..batch.len())
            .map(|i| {
                TransferResult::Failed(if i == failed_at {
                    error.clone()
                } else {
                    TransferError::LinkedEventFailed
                })
            })
            .collect()
    }

    /// Releases a pending transfer whose timeout has passed. Returns whether it was released.
    pub fn expire(&mut self, merchant_id: &str, transfer_id: &str, now: Timestamp) -> bool {
        let k = key(merchant_id, transfer_id);
        let Some(pending) = self.transfers.get(&k).cloned() else {
            return false;
        };
        let due = pending.expires_at.is_some_and(|at| at <= now);
        if !due || self.pending.get(&k) != Some(&PendingStatus::Pending) {
            return false;
        }
        let released = self.resolve_pending(&pending, 0);
        if released.is_err() {
            return false;
        }
        self.set_pending(k, PendingStatus::Expired);
        true
    }

    /// Drains the writes decided so far.
    pub fn take_effects(&mut self) -> Effects {
        let accounts = std::mem::take(&mut self.touched_accounts)
            .into_iter()
            .filter_map(|k| self.accounts.get(&k).cloned())
            .collect();
        let pending = std::mem::take(&mut self.touched_pending)
            .into_iter()
            .filter_map(|k| {
                let status = *self.pending.get(&k)?;
                let transfer = self.transfers.get(&k)?;
                Some(PendingRow {
                    merchant_id: k.0,
                    transfer_id: k.1,
                    status,
                    expires_at: transfer.expires_at,
                })
            })
            .collect();
        Effects {
            transfers: std::mem::take(&mut self.created),
            accounts,
            pending,
        }
    }

    fn apply_one(&mut self, merchant_id: &str, request: &TransferRequest, now: Timestamp) -> TransferResult {
        if let TransferOp::Single {
            debit_account_id,
            credit_account_id,
            ..
        }
        | TransferOp::Pending {
            debit_account_id,
            credit_account_id,
            ..
        } = &request.op
        {
            if debit_account_id == credit_account_id {
                return TransferResult::Failed(TransferError::AccountsMustDiffer);
            }
        }
        if let Some(existing) = self.transfers.get(&key(merchant_id, &request.id)) {
            return match differing_field(existing, request) {
                None => TransferResult::Exists(existing.clone()),
                Some(field) => TransferResult::Failed(TransferError::ExistsWithDifferentFields { field }),
            };
        }
        let outcome = match &request.op {
            TransferOp::Single { .. } | TransferOp::Pending { .. } => self.create_new(merchant_id, request, now),
            TransferOp::Post { .. } | TransferOp::Void { .. } => self.create_resolution(merchant_id, request, now),
        };
        match outcome {
            Ok(transfer) => TransferResult::Created(transfer),
            Err(error) => TransferResult::Failed(error),
        }
    }

    fn create_new(
        &mut self,
        merchant_id: &str,
        request: &TransferRequest,
        now: Timestamp,
    ) -> Result<Transfer, TransferError> {
        let (debit_id, credit_id, amount, currency, timeout_seconds, kind) = match &request.op {
            TransferOp::Single {
                debit_account_id,
                credit_account_id,
                amount,
                currency,
            } => (
                debit_account_id,
                credit_account_id,
                *amount,
                *currency,
                None,
                TransferKind::Single,
            ),
            TransferOp::Pending {
                debit_account_id,
                credit_account_id,
                amount,
                currency,
                timeout_seconds,
            } => (
                debit_account_id,
                credit_account_id,
                *amount,
                *currency,
                *timeout_seconds,
                TransferKind::Pending,
            ),
            TransferOp::Post { .. } | TransferOp::Void { .. } => {
                unreachable!("resolutions go through create_resolution")
            }
        };
        let (dk, ck) = (key(merchant_id, debit_id), key(merchant_id, credit_id));
        let debit = self.accounts.get(&dk).ok_or(TransferError::AccountNotFound {
            field: "debit_account_id",
        })?;
        let credit = self.accounts.get(&ck).ok_or(TransferError::AccountNotFound {
            field: "credit_account_id",
        })?;
        if debit.currency != currency {
            return Err(TransferError::CurrencyMismatch {
                field: "debit_account_id",
            });
        }
        if credit.currency != currency {
            return Err(TransferError::CurrencyMismatch {
                field: "credit_account_id",
            });
        }
        let pending = kind == TransferKind::Pending;
        let mut d = debit.balances;
        let mut c = credit.balances;
        let (d_total, c_total) = if pending {
            (&mut d.debits_pending, &mut c.credits_pending)
        } else {
            (&mut d.debits_posted, &mut c.credits_posted)
        };
        *d_total = d_total.checked_add(amount).ok_or(TransferError::OverflowsDebits)?;
        *c_total = c_total.checked_add(amount).ok_or(TransferError::OverflowsCredits)?;
        if !d.within_limits(debit.flags) {
            return Err(TransferError::ExceedsCredits);
        }
        if !c.within_limits(credit.flags) {
            return Err(TransferError::ExceedsDebits);
        }
        let expires_at = match timeout_seconds {
            Some(t) => Some(
                now.checked_add_seconds(i64::from(t))
                    .ok_or(TransferError::OverflowsTimeout)?,
            ),
            None => None,
        };
        let transfer = Transfer {
            merchant_id: merchant_id.to_owned(),
            id: request.id.clone(),
            kind,
            debit_account_id: debit_id.clone(),
            credit_account_id: credit_id.clone(),
            amount,
            currency,
            pending_id: None,
            timeout_seconds,
            expires_at,
            metadata: request.metadata.clone().unwrap_or_else(empty_object),
            created_at: now,
            debit_after: d,
            credit_after: c,
        };
        self.set_balances(dk, d);
        self.set_balances(ck, c);
        if pending {
            self.set_pending(key(merchant_id, &request.id), PendingStatus::Pending);
        }
        self.record_created(transfer.clone());
        Ok(transfer)
    }

    fn create_resolution(
        &mut self,
        merchant_id: &str,
        request: &TransferRequest,
        now: Timestamp,
    ) -> Result<Transfer, TransferError> {
        let (pending_id, amount, expect, kind) = match &request.op {
            TransferOp::Post {
                pending_id,
                amount,
                expect,
            } => (pending_id, *amount, expect, TransferKind::PostPending),
            TransferOp::Void {
                pending_id,
                amount,
                expect,
            } => (pending_id, *amount, expect, TransferKind::VoidPending),
            TransferOp::Single { .. } | TransferOp::Pending { .. } => {
                unreachable!("new transfers go through create_new")
            }
        };
        // The field the client named the pending transfer by.
        let field = if kind == TransferKind::PostPending {
            "post_pending_id"
        } else {
            "void_pending_id"
        };
        let pk = key(merchant_id, pending_id);
        let pending = self
            .transfers
            .get(&pk)
            .ok_or(TransferError::PendingTransferNotFound { field })?
            .clone();
        if pending.kind != TransferKind::Pending {
            return Err(TransferError::PendingTransferNotPending { field });
        }
        let mismatch = |field| Err(TransferError::PendingTransferHasDifferentField { field });
        if expect
            .debit_account_id
            .as_ref()
            .is_some_and(|d| *d != pending.debit_account_id)
        {
            return mismatch("debit_account_id");
        }
        if expect
            .credit_account_id
            .as_ref()
            .is_some_and(|c| *c != pending.credit_account_id)
        {
            return mismatch("credit_account_id");
        }
        if expect.currency.is_some_and(|c| c != pending.currency) {
            return mismatch("currency");
        }
        match self.pending.get(&pk) {
            Some(PendingStatus::Pending) => {}
            Some(PendingStatus::Posted) => return Err(TransferError::PendingTransferAlreadyPosted { field }),
            Some(PendingStatus::Voided) => return Err(TransferError::PendingTransferAlreadyVoided { field }),
            Some(PendingStatus::Expired) => return Err(TransferError::PendingTransferExpired { field }),
            None => return Err(TransferError::PendingTransferNotFound { field }),
        }
        if pending.expires_at.is_some_and(|at| at <= now) {
            return Err(TransferError::PendingTransferExpired { field });
        }
        let amount = match (kind, amount) {
            (TransferKind::PostPending, Some(a)) if a > pending.amount => {
                return Err(TransferError::ExceedsPendingTransferAmount)
            }
            (TransferKind::VoidPending, Some(a)) if a != pending.amount => return mismatch("amount"),
            (TransferKind::PostPending, Some(a)) => a,
            _ => pending.amount,
        };
        let posted = if kind == TransferKind::PostPending { amount } else { 0 };
        let (debit_after, credit_after) = self.resolve_pending(&pending, posted)?;
        self.set_pending(
            pk,
            if posted > 0 {
                PendingStatus::Posted
            } else {
                PendingStatus::Voided
            },
        );
        let transfer = Transfer {
            merchant_id: merchant_id.to_owned(),
            id: request.id.clone(),
            kind,
            debit_account_id: pending.debit_account_id.clone(),
            credit_account_id: pending.credit_account_id.clone(),
            amount,
            currency: pending.currency,
            pending_id: Some(pending.id.clone()),
            timeout_seconds: None,
            expires_at: None,
            metadata: request.metadata.clone().unwrap_or_else(empty_object),
            created_at: now,
            debit_after,
            credit_after,
        };
        self.record_created(transfer.clone());
        Ok(transfer)
    }

    /// Moves a pending transfer's amount out of both accounts' pending totals and `posted` of it
    /// into their posted totals. Returns both accounts' totals afterwards.
    fn resolve_pending(&mut self, pending: &Transfer, posted: i64) -> Result<(Balances, Balances), TransferError> {
        let dk = key(&pending.merchant_id, &pending.debit_account_id);
        let ck = key(&pending.merchant_id, &pending.credit_account_id);
        let mut d = self
            .accounts
            .get(&dk)
            .ok_or(TransferError::AccountNotFound {
                field: "debit_account_id",
            })?
            .balances;
        let mut c = self
            .accounts
            .get(&ck)
            .ok_or(TransferError::AccountNotFound {
                field: "credit_account_id",
            })?
            .balances;
        d.debits_pending = d
            .debits_pending
            .checked_sub(pending.amount)
            .ok_or(TransferError::OverflowsDebits)?;
        c.credits_pending = c
            .credits_pending
            .checked_sub(pending.amount)
            .ok_or(TransferError::OverflowsCredits)?;
        d.debits_posted = d
            .debits_posted
            .checked_add(posted)
            .ok_or(TransferError::OverflowsDebits)?;
        c.credits_posted = c
            .credits_posted
            .checked_add(posted)
            .ok_or(TransferError::OverflowsCredits)?;
        debug_assert!(
            d.is_non_negative() && c.is_non_negative(),
            "a pending amount was released twice"
        );
        self.set_balances(dk, d);
        self.set_balances(ck, c);
        Ok((d, c))
    }

    fn set_balances(&mut self, k: Key, balances: Balances) {
        let Some(account) = self.accounts.get_mut(&k) else {
            return;
        };
        if let Some(journal) = self.journal.as_mut() {
            journal.push(Undo::Balances(k.clone(), account.balances));
        }
        account.balances = balances;
        self.touched_accounts.insert(k);
    }

    fn set_pending(&mut self, k: Key, status: PendingStatus) {
        let before = self.pending.insert(k.clone(), status);
        if let Some(journal) = self.journal.as_mut() {
            journal.push(Undo::Pending(k.clone(), before));
        }
        self.touched_pending.insert(k);
    }

    fn record_created(&mut self, transfer: Transfer) {
        let k = key(&transfer.merchant_id, &transfer.id);
        if let Some(journal) = self.journal.as_mut() {
            journal.push(Undo::Transfer(k.clone()));
        }
        self.transfers.insert(k, transfer.clone());
        self.created.push(transfer);
    }

    fn rollback(&mut self, journal: Vec<Undo>) {
        for undo in journal.into_iter().rev() {
            match undo {
                Undo::Balances(k, balances) => {
                    if let Some(account) = self.accounts.get_mut(&k) {
                        account.balances = balances;
                    }
                }
                Undo::Pending(k, Some(status)) => {
                    self.pending.insert(k, status);
                }
                Undo::Pending(k, None) => {
                    self.pending.remove(&k);
                }
                Undo::Transfer(k) => {
                    self.transfers.remove(&k);
                }
            }
        }
    }
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// The first field in which a request differs from the stored transfer of the same id.
fn differing_field(existing: &Transfer, request: &TransferRequest) -> Option<&'static str> {
    if request.metadata.as_ref().is_some_and(|m| *m != existing.metadata) {
        return Some("metadata");
    }
    let same_kind = |kind: TransferKind| existing.kind == kind;
    match &request.op {
        TransferOp::Single {
            debit_account_id,
            credit_account_id,
            amount,
            currency,
        }
        | TransferOp::Pending {
            debit_account_id,
            credit_account_id,
            amount,
            currency,
            ..
        } => {
            let pending = matches!(request.op, TransferOp::Pending { .. });
            let timeout = match &request.op {
                TransferOp::Pending { timeout_seconds, .. } => *timeout_seconds,
                _ => None,
            };
            if !same_kind(if pending {
                TransferKind::Pending
            } else {
                TransferKind::Single
            }) {
                Some(match existing.kind {
                    TransferKind::PostPending => "post_pending_id",
                    TransferKind::VoidPending => "void_pending_id",
                    TransferKind::Single | TransferKind::Pending => "pending",
                })
            } else if *debit_account_id != existing.debit_account_id {
                Some("debit_account_id")
            } else if *credit_account_id != existing.credit_account_id {
                Some("credit_account_id")
            } else if *amount != existing.amount {
                Some("amount")
            } else if *currency != existing.currency {
                Some("currency")
            } else if timeout != existing.timeout_seconds {
                Some("timeout_seconds")
            } else {
                None
            }
        }
        TransferOp::Post {
            pending_id,
            amount,
            expect,
        }
        | TransferOp::Void {
            pending_id,
            amount,
            expect,
        } => {
            let kind = if matches!(request.op, TransferOp::Post { .. }) {
                TransferKind::PostPending
            } else {
                TransferKind::VoidPending
            };
            if !same_kind(kind) || existing.pending_id.as_deref() != Some(pending_id.as_str()) {
                Some(if kind == TransferKind::PostPending {
                    "post_pending_id"
                } else {
                    "void_pending_id"
                })
            } else if amount.is_some_and(|a| a != existing.amount) {
                Some("amount")
            } else if expect
                .debit_account_id
                .as_ref()
                .is_some_and(|d| *d != existing.debit_account_id)
            {
                Some("debit_account_id")
            } else if expect
                .credit_account_id
                .as_ref()
                .is_some_and(|c| *c != existing.credit_account_id)
            {
                Some("credit_account_id")
            } else if expect.currency.is_some_and(|c| c != existing.currency) {
                Some("currency")
            } else {
                None
            }
        }
    }
}
