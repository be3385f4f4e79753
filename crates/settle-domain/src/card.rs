//! Card validation for the vault: brand detection, the Luhn check, expiry and CVC rules.
//!
//! The vault must refuse a card before sealing it, and the refusal must say which field is wrong
//! without ever echoing the card number or the CVC (errors end up in logs, audit rows and API
//! responses). Expiry is judged against a `now` passed in by the caller, so the rules stay pure
//! and testable at any date.

use std::fmt;

use crate::Timestamp;

/// A card network, detected from the issuer identification number (the leading digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CardBrand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    DinersClub,
    UnionPay,
    Unknown,
}

impl CardBrand {
    /// Every brand, in declaration order.
    pub const ALL: [CardBrand; 8] = [
        CardBrand::Visa,
        CardBrand::Mastercard,
        CardBrand::Amex,
        CardBrand::Discover,
        CardBrand::Jcb,
        CardBrand::DinersClub,
        CardBrand::UnionPay,
        CardBrand::Unknown,
    ];

    /// The API spelling: lowercase, e.g. `"visa"`, `"diners"`, `"unionpay"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CardBrand::Visa => "visa",
            CardBrand::Mastercard => "mastercard",
            CardBrand::Amex => "amex",
            CardBrand::Discover => "discover",
            CardBrand::Jcb => "jcb",
            CardBrand::DinersClub => "diners",
            CardBrand::UnionPay => "unionpay",
            CardBrand::Unknown => "unknown",
        }
    }

    /// The inverse of [`CardBrand::as_str`] (exact spelling only).
    pub fn parse(s: &str) -> Option<CardBrand> {
        CardBrand::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// Whether a number of `len` digits is a plausible length for this brand.
    fn length_ok(self, len: usize) -> bool {
        match self {
            CardBrand::Visa => matches!(len, 13 | 16 | 19),
            CardBrand::Mastercard => len == 16,
            CardBrand::Amex => len == 15,
            CardBrand::DinersClub => (14..=19).contains(&len),
            CardBrand::Discover | CardBrand::Jcb | CardBrand::UnionPay => (16..=19).contains(&len),
            CardBrand::Unknown => (NUMBER_LEN_MIN..=NUMBER_LEN_MAX).contains(&len),
        }
    }

    /// The only CVC length this brand uses.
    fn cvc_len(self) -> usize {
        if self == CardBrand::Amex {
            4
        } else {
            3
        }
    }
}

impl fmt::Display for CardBrand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shortest card number accepted (digits only).
pub const NUMBER_LEN_MIN: usize = 12;
/// Longest card number accepted (digits only).
pub const NUMBER_LEN_MAX: usize = 19;

/// The first `n` digits of `number` (spaces and dashes skipped) as an integer, if there are
/// that many digits before any other character.
fn prefix(number: &str, n: usize) -> Option<u32> {
    let mut value = 0_u32;
    let mut digits = number.chars().filter(|c| !matches!(c, ' ' | '-'));
    for _ in 0..n {
        let d = digits.next()?.to_digit(10)?;
        value = value * 10 + d;
    }
    Some(value)
}

fn prefix_in(number: &str, n: usize, low: u32, high: u32) -> bool {
    prefix(number, n).is_some_and(|p| (low..=high).contains(&p))
}

/// The brand of a card number by its IIN range. Spaces and dashes are ignored; anything that
/// does not start with a known range (including garbage) is [`CardBrand::Unknown`].
pub fn brand(number: &str) -> CardBrand {
    let is = |n: usize, low: u32, high: u32| prefix_in(number, n, low, high);
    if is(2, 34, 34) || is(2, 37, 37) {
        CardBrand::Amex
    } else if is(3, 300, 305) || is(2, 36, 36) || is(2, 38, 39) {
        CardBrand::DinersClub
    } else if is(4, 3528, 3589) {
        CardBrand::Jcb
    } else if is(2, 51, 55) || is(4, 2221, 2720) {
        CardBrand::Mastercard
    } else if is(4, 6011, 6011) || is(3, 644, 649) || is(2, 65, 65) {
        CardBrand::Discover
    } else if is(2, 62, 62) {
        CardBrand::UnionPay
    } else if is(1, 4, 4) {
        CardBrand::Visa
    } else {
        CardBrand::Unknown
    }
}

/// The Luhn (mod 10) check. `digits` must be non-empty and ASCII digits only; anything else
/// is not valid.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            match (i % 2 == 1, d * 2) {
                (false, _) => d,
                (true, doubled) if doubled > 9 => doubled - 9,
                (true, doubled) => doubled,
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A card as it arrives from a client, before validation.
#[derive(Clone, Copy)]
pub struct CardInput<'a> {
    pub number: &'a str,
    pub exp_month: i64,
    pub exp_year: i64,
    pub cvc: Option<&'a str>,
}

/// Redacts the number and the CVC.
impl fmt::Debug for CardInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardInput")
            .field("number", &"[redacted]")
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .field("cvc", &self.cvc.map(|_| "[redacted]"))
            .finish()
    }
}

/// A card that passed [`validate_card`]. The CVC is deliberately not kept.
#[derive(Clone, PartialEq, Eq)]
pub struct ValidCard {
    /// Digits only.
    pub number: String,
    pub brand: CardBrand,
    pub last4: String,
    pub exp_month: u32,
    /// Four digits.
    pub exp_year: u32,
}

/// Shows only the brand, the last four digits and the expiry.
impl fmt::Debug for ValidCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidCard")
            .field("brand", &self.brand)
            .field("last4", &self.last4)
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .finish_non_exhaustive()
    }
}

/// Why a card was refused. The message never contains the card number or the CVC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardError {
    /// `"number"`, `"exp_month"`, `"exp_year"` or `"cvc"`.
    pub field: &'static str,
    /// `"invalid_number"`, `"incorrect_number"`, `"invalid_expiry_month"`,
    /// `"invalid_expiry_year"`, `"expired_card"` or `"invalid_cvc"`.
    pub code: &'static str,
    pub message: String,
}

impl CardError {
    fn new(field: &'static str, code: &'static str, message: &str) -> CardError {
        CardError {
            field,
            code,
            message: message.to_owned(),
        }
    }
}

impl fmt::Display for CardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.field, self.message)
    }
}

impl std::error::Error for CardError {}

/// Validates a card against the rules above, as of `now`, reporting the first problem found
/// (number, then expiry month, expiry year, expiry date, then CVC).
pub fn validate_card(input: &CardInput, now: Timestamp) -> Result<ValidCard, CardError> {
    let (number, brand) = check_number(input.number)?;
    let exp_month = check_month(input.exp_month)?;
    let exp_year = check_year(input.exp_year)?;
    check_not_expired(exp_year, exp_month, now)?;
    if let Some(cvc) = input.cvc {
        check_cvc(cvc, brand)?;
    }
    let last4 = number
        .get(number.len().saturating_sub(4)..)
        .unwrap_or_default()
        .to_owned();
    Ok(ValidCard {
        number,
        brand,
        last4,
        exp_month,
        exp_year,
    })
}

/// Digits only (spaces and dashes removed), a plausible length for the brand, Luhn valid.
fn check_number(raw: &str) -> Result<(String, CardBrand), CardError> {
    let digits: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CardError::new(
            "number",
            "invalid_number",
            "the card number may contain only digits",
        ));
    }
    let brand = brand(&digits);
    if !(NUMBER_LEN_MIN..=NUMBER_LEN_MAX).contains(&digits.len()) || !brand.length_ok(digits.len()) {
        return Err(CardError::new(
            "number",
            "invalid_number",
            "the card number has the wrong length",
        ));
    }
    if !luhn_valid(&digits) {
        return Err(CardError::new(
            "number",
            "incorrect_number",
            "the card number is incorrect",
        ));
    }
    Ok((digits, brand))
}

fn check_month(month: i64) -> Result<u32, CardError> {
    match u32::try_from(month) {
        Ok(m @ 1..=12) => Ok(m),
        _ => Err(CardError::new(
            "exp_month",
            "invalid_expiry_month",
            "the expiry month must be between 1 and 12",
        )),
    }
}

/// Four digits 2000–2099, or two digits 0–99 meaning 20xx.
fn check_year(year: i64) -> Result<u32, CardError> {
    match u32::try_from(year) {
        Ok(y @ 0..=99) => Ok(2000 + y),
        Ok(y @ 2000..=2099) => Ok(y),
        _ => Err(CardError::new(
            "exp_year",
            "invalid_expiry_year",
            "the expiry year must be between 2000 and 2099 (or two digits)",
        )),
    }
}

/// A card is good through the last instant of its expiry month (UTC), so it is expired exactly
/// when the current (year, month) is after the expiry (year, month).
fn check_not_expired(exp_year: u32, exp_month: u32, now: Timestamp) -> Result<(), CardError> {
    let (year, month) = year_month(now);
    let expiry = (i64::from(exp_year), i64::from(exp_month));
    if expiry >= (year, month) {
        return Ok(());
    }
    let field = if expiry.0 < year { "exp_year" } else { "exp_month" };
    Err(CardError::new(field, "expired_card", "the card has expired"))
}

fn check_cvc(cvc: &str, brand: CardBrand) -> Result<(), CardError> {
    if cvc.len() == brand.cvc_len() && cvc.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    let message = if brand == CardBrand::Amex {
        "the security code must be 4 digits for this card"
    } else {
        "the security code must be 3 digits for this card"
    };
    Err(CardError::new("cvc", "invalid_cvc", message))
}

/// The UTC (year, month 1–12) containing `now`.
fn year_month(now: Timestamp) -> (i64, i64) {
    let days = now.unix_seconds().div_euclid(86_400);
    let (year, month, _) = civil_from_days(days);
    (year, month)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day). Counts from 0000-03-01 so
/// that the leap day is the last day of the counted year, then splits into 400-year eras.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    const DAYS_PER_ERA: i64 = 146_097; // 400 years
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(DAYS_PER_ERA);
    let day_of_era = shifted.rem_euclid(DAYS_PER_ERA);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153; // 0 = March … 11 = February
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T02:18:31Z.
    const NOW: Timestamp = Timestamp(1_795_313_911_000_000);

    fn input(number: &str) -> CardInput<'_> {
        CardInput {
            number,
            exp_month: 12,
            exp_year: 2030,
            cvc: None,
        }
    }

    fn err(input: &CardInput) -> CardError {
        validate_card(input, NOW).expect_err("should be refused")
    }

    #[test]
    fn brands_by_iin_range() {
        let cases = [
            ("4242424242424242", CardBrand::Visa),
            ("5105105105105100", CardBrand::Mastercard),
            ("2221000000000009", CardBrand::Mastercard),
            ("2720999999999996", CardBrand::Mastercard),
            ("2220990000000000", CardBrand::Unknown),
            ("2721000000000000", CardBrand::Unknown),
            ("378282246310005", CardBrand::Amex),
            ("341111111111111", CardBrand::Amex),
            ("6011111111111117", CardBrand::Discover),
            ("6445644564456445", CardBrand::Discover),
            ("6500000000000002", CardBrand::Discover),
            ("3566002020360505", CardBrand::Jcb),
            ("3589000000000000", CardBrand::Jcb),
            ("3527000000000000", CardBrand::Unknown),
            ("30569309025904", CardBrand::DinersClub),
            ("3056930009020004", CardBrand::DinersClub),
            ("36227206271667", CardBrand::DinersClub),
            ("3800000000000000", CardBrand::DinersClub),
            ("3060000000000000", CardBrand::Unknown),
            ("6200000000000005", CardBrand::UnionPay),
            ("6010000000000000", CardBrand::Unknown),
            ("1234567890123", CardBrand::Unknown),
            ("4242 4242-4242 4242", CardBrand::Visa),
            ("", CardBrand::Unknown),
            ("x4", CardBrand::Unknown),
            ("3", CardBrand::Unknown),
        ];
        for (number, expected) in cases {
            assert_eq!(brand(number), expected, "{number}");
        }
    }

    #[test]
    fn brand_names_round_trip() {
        for b in CardBrand::ALL {
            assert_eq!(CardBrand::parse(b.as_str()), Some(b));
            assert_eq!(b.to_string(), b.as_str());
        }
        assert_eq!(CardBrand::DinersClub.as_str(), "diners");
        assert_eq!(CardBrand::parse("Visa"), None);
        assert_eq!(CardBrand::parse("diners_club"), None);
    }

    #[test]
    fn luhn() {
        for good in ["4242424242424242", "378282246310005", "0", "18", "79927398713"] {
            assert!(luhn_valid(good), "{good}");
        }
        for bad in ["4242424242424241", "79927398710", "", "4242 4242", "12a4", "1"] {
            assert!(!luhn_valid(bad), "{bad}");
        }
    }

    #[test]
    fn accepts_a_good_card_and_strips_separators() {
        let card = validate_card(
            &CardInput {
                number: "4242 4242-4242 4242",
                exp_month: 11,
                exp_year: 26,
                cvc: Some("123"),
            },
            NOW,
        )
        .expect("valid");
        assert_eq!(card.number, "4242424242424242");
        assert_eq!(card.brand, CardBrand::Visa);
        assert_eq!(card.last4, "4242");
        assert_eq!((card.exp_month, card.exp_year), (11, 2026));
        assert!(!format!("{card:?}").contains("42424242"));
    }

    #[test]
    fn number_errors() {
        let cases = [
            ("4242x42424242424", "invalid_number"),
            ("４２４２424242424242", "invalid_number"),
            ("", "invalid_number"),
            ("42424242424", "invalid_number"),
            ("42424242424242424242", "invalid_number"),
            ("424242424242424", "invalid_number"), // Visa with 15 digits
            ("37828224631000", "invalid_number"),  // Amex with 14 digits
            ("4242424242424241", "incorrect_number"),
        ];
        for (number, code) in cases {
            let e = err(&input(number));
            assert_eq!((e.field, e.code), ("number", code), "{number}");
        }
    }

    #[test]
    fn expiry_month_and_year_ranges() {
        for month in [0, 13, -1, i64::MAX] {
            let e = err(&CardInput {
                exp_month: month,
                ..input("4242424242424242")
            });
            assert_eq!((e.field, e.code), ("exp_month", "invalid_expiry_month"));
        }
        for year in [100, 1999, 2100, -1, i64::MIN] {
            let e = err(&CardInput {
                exp_year: year,
                ..input("4242424242424242")
            });
            assert_eq!((e.field, e.code), ("exp_year", "invalid_expiry_year"), "{year}");
        }
        for (year, full) in [(99, 2099), (2099, 2099), (30, 2030)] {
            let card = validate_card(
                &CardInput {
                    exp_year: year,
                    ..input("4242424242424242")
                },
                NOW,
            )
            .expect("valid");
            assert_eq!(card.exp_year, full);
        }
    }

    #[test]
    fn expired_after_the_last_instant_of_the_month() {
        let card = |exp_month, exp_year| CardInput {
            exp_month,
            exp_year,
            ..input("4242424242424242")
        };
        // 2026-12-01T00:00:00Z and one microsecond before it.
        let december = Timestamp(1_796_083_200_000_000);
        let last_of_november = Timestamp(december.0 - 1);
        assert!(validate_card(&card(11, 2026), last_of_november).is_ok());
        let e = validate_card(&card(11, 2026), december).expect_err("expired");
        assert_eq!((e.field, e.code), ("exp_month", "expired_card"));
        let e = validate_card(&card(12, 2025), NOW).expect_err("expired");
        assert_eq!((e.field, e.code), ("exp_year", "expired_card"));
        assert!(validate_card(&card(1, 2027), NOW).is_ok());
    }

    #[test]
    fn cvc_lengths_by_brand() {
        let with = |number, cvc| CardInput {
            cvc: Some(cvc),
            ..input(number)
        };
        assert!(validate_card(&with("378282246310005", "1234"), NOW).is_ok());
        assert!(validate_card(&with("4242424242424242", "123"), NOW).is_ok());
        for (number, cvc) in [
            ("378282246310005", "123"),
            ("4242424242424242", "1234"),
            ("4242424242424242", "12"),
            ("4242424242424242", "12a"),
            ("4242424242424242", ""),
        ] {
            let e = err(&with(number, cvc));
            assert_eq!((e.field, e.code), ("cvc", "invalid_cvc"), "{cvc}");
        }
    }

    #[test]
    fn errors_never_contain_the_number_or_the_cvc() {
        let cases = [
            CardInput {
                number: "4242424242424241",
                exp_month: 1,
                exp_year: 2030,
                cvc: Some("987"),
            },
            CardInput {
                number: "4242 4242 4242 4242",
                exp_month: 1,
                exp_year: 2030,
                cvc: Some("98x"),
            },
            CardInput {
                number: "4242424242424242",
                exp_month: 1,
                exp_year: 2020,
                cvc: Some("987"),
            },
        ];
        for case in cases {
            let e = err(&case);
            let shown = format!("{e} {e:?} {case:?}");
            assert!(!shown.contains("4242"), "{shown}");
            assert!(!shown.contains("98"), "{shown}");
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(year_month(NOW), (2026, 11));
        assert_eq!(year_month(Timestamp(-1)), (1969, 12));
    }
}
