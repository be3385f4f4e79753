//! Property tests for the pure payment helpers: money allocation, the circuit breaker against a
//! reference model, card validation and routing.

use proptest::prelude::*;
use settle_domain::{
    breaker::{Breaker, BreakerPolicy},
    card::{brand, luhn_valid, validate_card, CardBrand, CardInput},
    routing::{route, Conditions, RouteInput, Rule},
    split::allocate,
    Currency, Timestamp,
};

// ---------------------------------------------------------------------------------------------
// split::allocate

fn weights() -> impl Strategy<Value = Vec<i64>> {
    let weight = prop_oneof![4 => 0_i64..1_000, 2 => 0_i64..5, 1 => Just(i64::MAX), 1 => 0_i64..=i64::MAX];
    proptest::collection::vec(weight, 1..12).prop_filter("some weight is positive", |w| w.iter().any(|&x| x > 0))
}

fn total() -> impl Strategy<Value = i64> {
    prop_oneof![4 => 0_i64..10_000, 1 => 0_i64..=i64::MAX, 1 => Just(i64::MAX)]
}

fn sum(w: &[i64]) -> i128 {
    w.iter().map(|&x| i128::from(x)).sum()
}

proptest! {
    #[test]
    fn parts_sum_to_the_total(total in total(), w in weights()) {
        let parts = allocate(total, &w).expect("allocates");
        prop_assert_eq!(parts.len(), w.len());
        prop_assert_eq!(sum(&parts), i128::from(total));
    }

    #[test]
    fn each_part_is_the_floor_or_ceiling_of_its_exact_share(total in total(), w in weights()) {
        let parts = allocate(total, &w).expect("allocates");
        let s = sum(&w);
        for (&p, &x) in parts.iter().zip(&w) {
            let exact = i128::from(total) * i128::from(x);
            let floor = exact / s;
            let ceil = floor + i128::from(exact % s != 0);
            prop_assert!(i128::from(p) == floor || i128::from(p) == ceil, "part {} of weight {}", p, x);
        }
    }

    #[test]
    fn parts_fit_in_their_weights_when_the_total_does(w in weights(), per_mille in 0_i64..=1_000) {
        let s = sum(&w).min(i128::from(i64::MAX));
        let total = i64::try_from(s * i128::from(per_mille) / 1_000).expect("at most the sum, capped");
        let parts = allocate(total, &w).expect("allocates");
        for (&p, &x) in parts.iter().zip(&w) {
            prop_assert!(p <= x, "part {} > weight {} (total {})", p, x, total);
        }
    }

    #[test]
    fn zero_weights_get_zero(total in total(), w in weights()) {
        let parts = allocate(total, &w).expect("allocates");
        for (&p, &x) in parts.iter().zip(&w) {
            if x == 0 {
                prop_assert_eq!(p, 0);
            }
        }
    }

    #[test]
    fn allocating_the_sum_of_the_weights_gives_the_weights(w in weights()) {
        if let Ok(s) = i64::try_from(sum(&w)) {
            prop_assert_eq!(allocate(s, &w), Some(w));
        }
    }

    #[test]
    fn is_deterministic_and_ignores_nothing(total in total(), w in weights()) {
        prop_assert_eq!(allocate(total, &w), allocate(total, &w));
        let mut with_negative = w.clone();
        with_negative.push(-1);
        prop_assert_eq!(allocate(total, &with_negative), None);
    }
}

#[test]
fn allocate_refuses_degenerate_input() {
    assert_eq!(allocate(5, &[]), None);
    assert_eq!(allocate(-5, &[1, 2]), None);
    assert_eq!(allocate(5, &[0, 0, 0]), None);
    assert_eq!(allocate(0, &[0, 0, 0]), Some(vec![0, 0, 0]));
}

// ---------------------------------------------------------------------------------------------
// breaker::Breaker against a reference model

/// The model: a failure counter, an optional time the breaker opened at, and whether the trial
/// has been handed out. Different representation from `Breaker`, same rules.
#[derive(Clone, Debug, Default)]
struct Model {
    failures: u32,
    opened_at: Option<i64>,
    trial_given: bool,
}

impl Model {
    fn name(&self) -> &'static str {
        match (self.opened_at, self.trial_given) {
            (None, _) => "closed",
            (Some(_), false) => "open",
            (Some(_), true) => "half_open",
        }
    }

    fn allow(&mut self, p: &BreakerPolicy, now: i64) -> bool {
        match self.opened_at {
            None => true,
            Some(_) if self.trial_given => false,
            Some(at) if now - at >= p.cool_down_micros => {
                self.trial_given = true;
                true
            }
            Some(_) => false,
        }
    }

    fn success(&mut self) {
        *self = Model::default();
    }

    fn failure(&mut self, p: &BreakerPolicy, now: i64) {
        if self.opened_at.is_none() {
            self.failures += 1;
            if self.failures >= p.failures_to_open {
                self.opened_at = Some(now);
            }
        } else if self.trial_given {
            *self = Model {
                opened_at: Some(now),
                ..Model::default()
            };
        }
        // Open without the trial handed out: nothing changes.
    }
}

#[derive(Clone, Debug)]
enum Op {
    Allow,
    Success,
    Failure,
    Wait(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Allow),
        1 => Just(Op::Success),
        4 => Just(Op::Failure),
        3 => (0_i64..40).prop_map(Op::Wait),
    ]
}

proptest! {
    #[test]
    fn breaker_matches_the_model(
        threshold in 1_u32..5,
        cool_down in 0_i64..60,
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let policy = BreakerPolicy { failures_to_open: threshold, cool_down_micros: cool_down };
        let mut real = Breaker::default();
        let mut model = Model::default();
        let mut now = 1_000_i64;
        for op in ops {
            match op {
                Op::Allow => prop_assert_eq!(real.allow(&policy, Timestamp(now)), model.allow(&policy, now)),
                Op::Success => {
                    real.record_success();
                    model.success();
                }
                Op::Failure => {
                    real.record_failure(&policy, Timestamp(now));
                    model.failure(&policy, now);
                }
                Op::Wait(d) => now += d,
            }
            prop_assert_eq!(real.state_name(), model.name());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// card

/// 2026-11-22T02:18:31Z.
const NOW: Timestamp = Timestamp(1_795_313_911_000_000);

/// Appends the Luhn check digit to `body`.
fn with_check_digit(body: &str) -> String {
    (0..10)
        .map(|d| format!("{body}{d}"))
        .find(|n| luhn_valid(n))
        .expect("one check digit fits")
}

proptest! {
    #[test]
    fn exactly_one_check_digit_is_luhn_valid(body in "[0-9]{11,18}") {
        let valid = (0..10).filter(|d| luhn_valid(&format!("{body}{d}"))).count();
        prop_assert_eq!(valid, 1);
    }

    #[test]
    fn generated_visa_numbers_validate(body in "4[0-9]{14}", month in 1_i64..=12, year in 2027_i64..2099) {
        let number = with_check_digit(&body);
        let card = validate_card(&CardInput { number: &number, exp_month: month, exp_year: year, cvc: Some("123") }, NOW)
            .expect("valid");
        prop_assert_eq!(card.brand, CardBrand::Visa);
        prop_assert_eq!(&card.last4, &number[12..]);
        prop_assert_eq!(card.number, number);
    }

    #[test]
    fn errors_never_echo_the_number_or_the_cvc(
        number in "[0-9 -]{0,24}",
        cvc in "[0-9]{0,5}x?",
        month in -2_i64..15,
        // Valid years only: the year message quotes "2000" and "2099", which a number could contain.
        year in 2015_i64..2035,
    ) {
        let input = CardInput { number: &number, exp_month: month, exp_year: year, cvc: Some(&cvc) };
        if let Err(e) = validate_card(&input, NOW) {
            let digits: String = number.chars().filter(char::is_ascii_digit).collect();
            if digits.len() >= 4 {
                prop_assert!(!e.message.contains(&digits), "{}", e.message);
                prop_assert!(!e.message.contains(&digits[digits.len() - 4..]), "{}", e.message);
            }
            if cvc.len() >= 3 {
                prop_assert!(!e.message.contains(&cvc), "{}", e.message);
            }
            prop_assert!(["number", "exp_month", "exp_year", "cvc"].contains(&e.field));
        }
    }

    #[test]
    fn brand_never_panics(s in ".{0,24}") {
        prop_assert!(CardBrand::ALL.contains(&brand(&s)));
    }
}

#[test]
fn known_test_cards_validate_with_their_brand() {
    let cards = [
        ("4242424242424242", "123", CardBrand::Visa),
        ("5555 5555 5555 4444", "123", CardBrand::Mastercard),
        ("2223003122003222", "123", CardBrand::Mastercard),
        ("3782-822463-10005", "1234", CardBrand::Amex),
        ("6011111111111117", "123", CardBrand::Discover),
        ("3566002020360505", "123", CardBrand::Jcb),
        ("36227206271667", "123", CardBrand::DinersClub),
        ("6200000000000005", "123", CardBrand::UnionPay),
    ];
    for (number, cvc, expected) in cards {
        let input = CardInput {
            number,
            exp_month: 12,
            exp_year: 2034,
            cvc: Some(cvc),
        };
        let card = validate_card(&input, NOW).expect(number);
        assert_eq!(card.brand, expected, "{number}");
    }
}

// ---------------------------------------------------------------------------------------------
// routing

fn currency() -> impl Strategy<Value = Currency> {
    prop::sample::select(vec!["USD", "EUR", "JPY"]).prop_map(|c| Currency::parse(c).expect("known currency"))
}

fn card_brand() -> impl Strategy<Value = CardBrand> {
    prop::sample::select(CardBrand::ALL.to_vec())
}

fn conditions() -> impl Strategy<Value = Conditions> {
    (
        proptest::option::of(proptest::collection::vec(currency(), 0..3)),
        proptest::option::of(0_i64..1_000),
        proptest::option::of(0_i64..1_000),
        proptest::option::of(proptest::collection::vec(card_brand(), 0..3)),
    )
        .prop_map(|(currencies, amount_min, amount_max, card_brands)| Conditions {
            currencies,
            amount_min,
            amount_max,
            card_brands,
        })
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    let rule = ("[abcd]", conditions()).prop_map(|(connector_account_id, conditions)| Rule {
        connector_account_id,
        conditions,
    });
    proptest::collection::vec(rule, 0..8)
}

/// The routing conditions written out independently of `Conditions::matches`.
fn holds(c: &Conditions, input: &RouteInput) -> bool {
    if let Some(currencies) = &c.currencies {
        if !currencies.iter().any(|x| x.code() == input.currency.code()) {
            return false;
        }
    }
    if c.amount_min.is_some_and(|min| input.amount < min) || c.amount_max.is_some_and(|max| input.amount > max) {
        return false;
    }
    match (&c.card_brands, input.brand) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(brands), Some(b)) => brands.iter().any(|x| x.as_str() == b.as_str()),
    }
}

proptest! {
    #[test]
    fn route_is_the_deduplicated_matching_rules_in_order(
        rules in rules(),
        currency in currency(),
        amount in 0_i64..1_000,
        brand in proptest::option::of(card_brand()),
    ) {
        let input = RouteInput { currency, amount, brand };
        let ids = route(&rules, &input);
        let mut expected: Vec<String> = Vec::new();
        for r in &rules {
            if holds(&r.conditions, &input) && !expected.contains(&r.connector_account_id) {
                expected.push(r.connector_account_id.clone());
            }
        }
        prop_assert_eq!(&ids, &expected);
        for id in &ids {
            prop_assert_eq!(ids.iter().filter(|x| *x == id).count(), 1);
        }
        prop_assert!(route(&[], &input).is_empty());
    }
}
