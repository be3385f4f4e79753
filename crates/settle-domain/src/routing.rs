//! Payment routing: an ordered list of rules picks the connector accounts a payment tries.
//!
//! A merchant lists rules such as "EUR payments up to 1,000.00 go to account A; Amex goes to
//! account B; everything else to C". Each rule whose conditions all hold contributes its
//! connector account, in rule order, so earlier rules are tried first and later matches are the
//! failover candidates. Pure matching on values; storing and parsing rules happen elsewhere.

use crate::{card::CardBrand, Currency};

/// Most rules one merchant may configure.
pub const RULES_MAX: usize = 50;

/// What a payment must look like for a rule to apply. Every condition left `None` matches
/// anything, so the default matches every payment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// The payment's currency is one of these.
    pub currencies: Option<Vec<Currency>>,
    /// The amount (minor units) is at least this (inclusive).
    pub amount_min: Option<i64>,
    /// The amount (minor units) is at most this (inclusive).
    pub amount_max: Option<i64>,
    /// The card's brand is one of these; a payment without a known card never matches.
    pub card_brands: Option<Vec<CardBrand>>,
}

impl Conditions {
    /// Whether every condition holds for `input`.
    pub fn matches(&self, input: &RouteInput) -> bool {
        let currency_ok = self.currencies.as_ref().is_none_or(|cs| cs.contains(&input.currency));
        let min_ok = self.amount_min.is_none_or(|min| input.amount >= min);
        let max_ok = self.amount_max.is_none_or(|max| input.amount <= max);
        let brand_ok = self
            .card_brands
            .as_ref()
            .is_none_or(|bs| input.brand.is_some_and(|b| bs.contains(&b)));
        currency_ok && min_ok && max_ok && brand_ok
    }
}

/// Send payments matching `conditions` to `connector_account_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub connector_account_id: String,
    pub conditions: Conditions,
}

/// What routing looks at in a payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteInput {
    pub currency: Currency,
    /// Minor units.
    pub amount: i64,
    /// `None` when the payment method is not a card (or not known yet).
    pub brand: Option<CardBrand>,
}

/// The connector account ids of the rules that match `input`, in rule order, each id once
/// (where it first matches).
pub fn route(rules: &[Rule], input: &RouteInput) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for rule in rules.iter().filter(|r| r.conditions.matches(input)) {
        if !ids.contains(&rule.connector_account_id) {
            ids.push(rule.connector_account_id.clone());
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(code: &str) -> Currency {
        Currency::parse(code).expect("known currency")
    }

    fn rule(id: &str, conditions: Conditions) -> Rule {
        Rule {
            connector_account_id: id.to_owned(),
            conditions,
        }
    }

    fn input(code: &str, amount: i64, brand: Option<CardBrand>) -> RouteInput {
        RouteInput {
            currency: cur(code),
            amount,
            brand,
        }
    }

    #[test]
    fn empty_conditions_match_everything() {
        let rules = [rule("a", Conditions::default())];
        assert_eq!(route(&rules, &input("JPY", 0, None)), ["a"]);
        assert_eq!(route(&rules, &input("USD", i64::MAX, Some(CardBrand::Amex))), ["a"]);
        assert!(route(&[], &input("USD", 1, None)).is_empty());
    }

    #[test]
    fn currency_condition() {
        let rules = [rule(
            "eu",
            Conditions {
                currencies: Some(vec![cur("EUR"), cur("GBP")]),
                ..Conditions::default()
            },
        )];
        assert_eq!(route(&rules, &input("GBP", 100, None)), ["eu"]);
        assert!(route(&rules, &input("USD", 100, None)).is_empty());
    }

    #[test]
    fn amount_bounds_are_inclusive() {
        let rules = [rule(
            "mid",
            Conditions {
                amount_min: Some(100),
                amount_max: Some(200),
                ..Conditions::default()
            },
        )];
        for (amount, matches) in [(99, false), (100, true), (150, true), (200, true), (201, false)] {
            assert_eq!(
                !route(&rules, &input("USD", amount, None)).is_empty(),
                matches,
                "{amount}"
            );
        }
    }

    #[test]
    fn brand_condition_needs_a_known_brand() {
        let rules = [rule(
            "amex",
            Conditions {
                card_brands: Some(vec![CardBrand::Amex]),
                ..Conditions::default()
            },
        )];
        assert_eq!(route(&rules, &input("USD", 1, Some(CardBrand::Amex))), ["amex"]);
        assert!(route(&rules, &input("USD", 1, Some(CardBrand::Visa))).is_empty());
        assert!(route(&rules, &input("USD", 1, None)).is_empty());
    }

    #[test]
    fn all_conditions_must_hold() {
        let rules = [rule(
            "x",
            Conditions {
                currencies: Some(vec![cur("USD")]),
                amount_max: Some(1_000),
                card_brands: Some(vec![CardBrand::Visa]),
                ..Conditions::default()
            },
        )];
        assert_eq!(route(&rules, &input("USD", 1_000, Some(CardBrand::Visa))), ["x"]);
        assert!(route(&rules, &input("EUR", 1_000, Some(CardBrand::Visa))).is_empty());
        assert!(route(&rules, &input("USD", 1_001, Some(CardBrand::Visa))).is_empty());
        assert!(route(&rules, &input("USD", 1_000, Some(CardBrand::Jcb))).is_empty());
    }

    #[test]
    fn rule_order_is_kept_and_ids_appear_once() {
        let big = Conditions {
            amount_min: Some(10_000),
            ..Conditions::default()
        };
        let rules = [
            rule("b", big.clone()),
            rule("a", Conditions::default()),
            rule("b", Conditions::default()),
            rule("c", big),
            rule("a", Conditions::default()),
        ];
        assert_eq!(route(&rules, &input("USD", 50_000, None)), ["b", "a", "c"]);
        assert_eq!(route(&rules, &input("USD", 5, None)), ["a", "b"]);
    }

    #[test]
    fn rules_max() {
        assert_eq!(RULES_MAX, 50);
    }
}
