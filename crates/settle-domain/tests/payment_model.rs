//! The payment state machine under random command sequences: it never reaches an illegal
//! state, and the ledger postings of every step are accepted and always balance with the
//! payment's own amounts.

use proptest::prelude::*;
use serde_json::json;
use settle_domain::{
    ledger::{Account, AccountFlags, Balances, Book, TransferResult},
    payment::{
        self, AuthorizationOutcome, CaptureMethod, Command, Decision, Payment, PaymentError, PaymentStatus, Plan, Split,
    },
    postings, Currency, Timestamp,
};

const M: &str = "m1";

#[derive(Clone, Debug)]
enum Step {
    Confirm(u8),
    Capture(Option<i64>),
    Cancel,
    Expire,
    Refund(i64, bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3).prop_map(Step::Confirm),
        proptest::option::of(1i64..1200).prop_map(Step::Capture),
        Just(Step::Cancel),
        Just(Step::Expire),
        (1i64..700, any::<bool>()).prop_map(|(a, ok)| Step::Refund(a, ok)),
    ]
}

fn usd() -> Currency {
    Currency::parse("USD").expect("USD")
}

fn new_payment(amount: i64, split: i64, fee: i64) -> Payment {
    Payment {
        merchant_id: M.into(),
        id: "pay_1".into(),
        amount,
        currency: usd(),
        capture_method: CaptureMethod::Manual,
        status: PaymentStatus::RequiresConfirmation,
        amount_capturable: 0,
        amount_captured: 0,
        amount_refunded: 0,
        payment_method_id: Some("pm_1".into()),
        customer_id: None,
        customer: None,
        receipt_email: None,
        description: None,
        metadata: json!({}),
        splits: vec![Split {
            payee_account_id: "payee".into(),
            amount: split,
        }],
        application_fee_amount: Some(fee).filter(|f| *f > 0),
        connector: None,
        connector_account_id: None,
        connector_name: None,
        provider_ref: None,
        last_payment_error: None,
        cancellation_reason: None,
        authorized_at: None,
        claimed_until: None,
        plan: None,
        idempotency_key: None,
        version: 1,
        created_at: Timestamp(0),
        updated_at: Timestamp(0),
    }
}

fn book() -> Book {
    let mut book = Book::new();
    let mut accounts = postings::chart("sandbox", usd());
    accounts.push(("payee".into(), AccountFlags::default()));
    for (id, flags) in accounts {
        book.load_account(Account {
            merchant_id: M.into(),
            id,
            currency: usd(),
            code: None,
            name: None,
            flags,
            metadata: json!({}),
            balances: Balances::default(),
            created_at: Timestamp(0),
        });
    }
    book
}

fn apply(book: &mut Book, requests: Vec<settle_domain::ledger::TransferRequest>) {
    let results = book.apply(M, &requests, true, Timestamp(1));
    for r in results {
        assert!(!matches!(r, TransferResult::Failed(_)), "posting refused: {r:?}");
    }
}

fn balance(book: &Book, id: &str) -> i128 {
    let a = book.account(M, id).expect("account");
    a.balances.balance(a.flags.normal_side())
}

/// Legal moves of the state machine (status before → status after).
fn legal(from: PaymentStatus, to: PaymentStatus) -> bool {
    use PaymentStatus::*;
    from == to
        || matches!(
            (from, to),
            (RequiresPaymentMethod | RequiresConfirmation, Processing | Canceled)
                | (Processing, RequiresCapture | RequiresPaymentMethod)
                | (RequiresCapture, Succeeded | Canceled)
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_commands_keep_the_payment_and_the_ledger_consistent(
        amount in 1i64..1000,
        split_share in 0i64..100,
        fee_share in 0i64..100,
        steps in proptest::collection::vec(step(), 1..25),
    ) {
        let split = amount * split_share / 200;
        let fee = amount * fee_share / 200;
        let mut p = new_payment(amount, split, fee);
        let mut ledger = book();
        let mut refunded_parts = vec![0i64; postings::shares(&p).len()];
        let mut refunds_succeeded = 0i64;
        let now = Timestamp(10);
        for (n, s) in steps.into_iter().enumerate() {
            let mut before = p.status;
            match s {
                Step::Confirm(outcome) => {
                    let Ok(Decision::Authorize) = payment::decide(&p, &Command::Confirm, true, now) else { continue };
                    let claimed = payment::claimed(&p, Some(Plan::Authorize { tries: Vec::new() }), now, Timestamp(now.0 + 1));
                    prop_assert!(legal(before, PaymentStatus::Processing));
                    prop_assert_eq!(claimed.status, PaymentStatus::Processing);
                    prop_assert!(claimed.plan.is_some());
                    before = PaymentStatus::Processing;
                    let outcome = match outcome {
                        0 => AuthorizationOutcome::Declined(PaymentError { code: "card_declined".into(), message: String::new(), connector: None }),
                        _ => AuthorizationOutcome::Authorized { connector_account_id: "sandbox".into(), connector_name: "sandbox".into(), provider_ref: "x".into() },
                    };
                    p = payment::authorization_ended(&claimed, &outcome, now);
                    prop_assert!(p.plan.is_none() && p.claimed_until.is_none(), "every change after a claim ends it");
                    if p.status == PaymentStatus::RequiresCapture {
                        apply(&mut ledger, vec![postings::authorization(&p, "sandbox")]);
                    } else {
                        p.payment_method_id = Some(format!("pm_{n}"));
                    }
                }
                Step::Capture(amount) => {
                    let Ok(Decision::Capture { amount }) = payment::decide(&p, &Command::Capture { amount }, false, now) else { continue };
                    apply(&mut ledger, postings::capture(&p, amount).expect("allocates"));
                    p = payment::captured(&p, amount, now);
                }
                Step::Cancel | Step::Expire => {
                    let command = if matches!(s, Step::Cancel) { Command::Cancel } else { Command::Expire };
                    let Ok(Decision::Cancel { void }) = payment::decide(&p, &command, false, now) else { continue };
                    if void {
                        apply(&mut ledger, vec![postings::void(&p)]);
                    }
                    p = payment::canceled(&p, None, now);
                }
                Step::Refund(amount, ok) => {
                    let Ok(amount) = payment::decide_refund(&p, Some(amount)) else { continue };
                    let parts = postings::refund_parts(&p, amount, &refunded_parts).expect("allocates");
                    prop_assert_eq!(parts.iter().sum::<i64>(), amount);
                    let id = format!("re_{n}");
                    let legs = postings::refund_legs(&p, &id, &parts);
                    apply(&mut ledger, postings::refund_holds(&legs, "sandbox", usd()));
                    apply(&mut ledger, postings::refund_settle(&legs, ok));
                    if ok {
                        p.amount_refunded += amount;
                        refunds_succeeded += amount;
                        for (r, part) in refunded_parts.iter_mut().zip(&parts) {
                            *r += part;
                        }
                    }
                }
            }
            prop_assert!(legal(before, p.status), "{:?} → {:?}", before, p.status);
            prop_assert!(p.amount_captured <= p.amount && p.amount_refunded <= p.amount_captured);
            prop_assert!(p.amount_capturable == 0 || p.status == PaymentStatus::RequiresCapture);
            prop_assert_eq!(refunds_succeeded, p.amount_refunded);
            // The ledger says what the payment says.
            let clearing = ledger.account(M, &postings::clearing_account("sandbox", usd())).expect("clearing");
            prop_assert_eq!(i128::from(p.amount_capturable), i128::from(clearing.balances.debits_pending));
            let held = i128::from(p.amount_captured - p.amount_refunded);
            prop_assert_eq!(balance(&ledger, &postings::clearing_account("sandbox", usd())), held);
            let shares: i128 = postings::shares(&p).iter().map(|(id, _)| balance(&ledger, id)).sum();
            prop_assert_eq!(shares, held);
            for ((id, _), (got, refunded)) in postings::shares(&p).iter().zip(
                postings::capture_parts(&p, p.amount_captured).expect("parts").iter().zip(&refunded_parts)
            ) {
                if p.status == PaymentStatus::Succeeded {
                    prop_assert_eq!(balance(&ledger, id), i128::from(got - refunded), "share {}", id);
                }
            }
        }
    }
}
