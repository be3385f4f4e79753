//! `settle verify`: proves on a live database that no money was created or lost.
//!
//! For every merchant and currency: Σ debits_posted = Σ credits_posted and Σ debits_pending =
//! Σ credits_pending; each account's four totals equal the sums of its transfers; no account with
//! a limit flag is beyond its limit. Sums are computed in `i128`, so they cannot overflow.

use std::collections::{BTreeMap, HashMap};

use settle_domain::ledger::{PendingStatus, TransferKind};
use settle_store::{Mode, Scope, Store, StoreError};

const SCAN_ROWS: u32 = 5_000;

#[derive(Debug, Default)]
pub struct Report {
    pub merchants: usize,
    pub accounts: usize,
    pub transfers: usize,
    pub violations: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
struct Totals {
    debits_pending: i128,
    debits_posted: i128,
    credits_pending: i128,
    credits_posted: i128,
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "debits {} pending + {} posted, credits {} pending + {} posted",
            self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted
        )
    }
}

pub async fn verify(store: &dyn Store) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let merchants = {
        let mut tx = store.begin(Scope::System, Mode::Read).await?;
        tx.ledger_merchants().await?
    };
    for merchant in merchants {
        report.merchants += 1;
        verify_merchant(store, &merchant, &mut report).await?;
    }
    Ok(report)
}

async fn verify_merchant(store: &dyn Store, merchant: &str, report: &mut Report) -> Result<(), StoreError> {
    // One snapshot for the whole merchant, so that writes committed during the scan cannot make
    // accounts and transfers disagree.
    let mut tx = store.begin(Scope::System, Mode::Snapshot).await?;
    let statuses: HashMap<String, PendingStatus> = tx.scan_pending(merchant).await?.into_iter().collect();
    let mut computed: HashMap<String, Totals> = HashMap::new();
    let mut after = String::new();
    loop {
        let rows = tx.scan_transfers(merchant, &after, SCAN_ROWS).await?;
        let Some(last) = rows.last() else { break };
        after = last.id.clone();
        for t in rows {
            report.transfers += 1;
            let amount = i128::from(t.amount);
            let (pending, posted) = match t.kind {
                TransferKind::Single | TransferKind::PostPending => (0, amount),
                TransferKind::Pending if statuses.get(&t.id) == Some(&PendingStatus::Pending) => (amount, 0),
                TransferKind::Pending | TransferKind::VoidPending => (0, 0),
            };
            let d = computed.entry(t.debit_account_id).or_default();
            d.debits_pending += pending;
            d.debits_posted += posted;
            let c = computed.entry(t.credit_account_id).or_default();
            c.credits_pending += pending;
            c.credits_posted += posted;
        }
    }
    let mut per_currency: BTreeMap<&'static str, Totals> = BTreeMap::new();
    let mut after = String::new();
    loop {
        let rows = tx.scan_accounts(merchant, &after, SCAN_ROWS).await?;
        let Some(last) = rows.last() else { break };
        after = last.id.clone();
        for a in rows {
            report.accounts += 1;
            let b = a.balances;
            let stored = Totals {
                debits_pending: b.debits_pending.into(),
                debits_posted: b.debits_posted.into(),
                credits_pending: b.credits_pending.into(),
                credits_posted: b.credits_posted.into(),
            };
            let from_transfers = computed.remove(&a.id).unwrap_or_default();
            if stored != from_transfers {
                report.violations.push(format!(
                    "{merchant}/{}: stored totals ({stored}) differ from the sum of its transfers ({from_transfers})",
                    a.id
                ));
            }
            if !b.within_limits(a.flags) {
                report
                    .violations
                    .push(format!("{merchant}/{}: beyond its balance limit ({stored})", a.id));
            }
            let sum = per_currency.entry(a.currency.code()).or_default();
            sum.debits_pending += stored.debits_pending;
            sum.debits_posted += stored.debits_posted;
            sum.credits_pending += stored.credits_pending;
            sum.credits_posted += stored.credits_posted;
        }
    }
    for id in computed.keys() {
        report.violations.push(format!(
            "{merchant}/{id}: transfers name an account that does not exist"
        ));
    }
    for (currency, s) in per_currency {
        if s.debits_posted != s.credits_posted {
            report.violations.push(format!(
                "{merchant} {currency}: posted debits {} != posted credits {}",
                s.debits_posted, s.credits_posted
            ));
        }
        if s.debits_pending != s.credits_pending {
            report.violations.push(format!(
                "{merchant} {currency}: pending debits {} != pending credits {}",
                s.debits_pending, s.credits_pending
            ));
        }
    }
    Ok(())
}
