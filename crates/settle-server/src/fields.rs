//! Checks for fields that several resources share (ids, names, metadata, currencies).

use serde_json::Value;
use settle_domain::{validate, Currency};

use crate::error::ApiError;

pub const METADATA_KEYS_MAX: usize = 50;
pub const METADATA_KEY_LEN_MAX: usize = 40;
pub const METADATA_VALUE_LEN_MAX: usize = 500;
pub const NAME_LEN_MAX: usize = 200;
/// Longest email address (RFC 5321's path limit).
pub const EMAIL_LEN_MAX: usize = 254;

/// Stripe's metadata rules: an object of at most 50 string values, keys ≤ 40 and values ≤ 500
/// characters; and, as in every free text, no card number ([`no_card_number`]).
pub fn metadata(value: Option<Value>, param: &str) -> Result<Option<Value>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let Value::Object(map) = &value else {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must be an object of string values"),
        ));
    };
    if map.len() > METADATA_KEYS_MAX {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` may have at most {METADATA_KEYS_MAX} keys"),
        ));
    }
    for (k, v) in map {
        let field = format!("{param}.{k}");
        if k.is_empty() || k.chars().count() > METADATA_KEY_LEN_MAX {
            return Err(ApiError::invalid(
                field,
                format!("metadata keys are 1-{METADATA_KEY_LEN_MAX} characters"),
            ));
        }
        match v {
            Value::String(s) if s.chars().count() <= METADATA_VALUE_LEN_MAX => {
                no_card_number(k, &field)?;
                no_card_number(s, &field)?;
            }
            Value::String(_) => {
                return Err(ApiError::invalid(
                    field,
                    format!("metadata values are at most {METADATA_VALUE_LEN_MAX} characters"),
                ))
            }
            _ => return Err(ApiError::invalid(field, "metadata values must be strings")),
        }
    }
    Ok(Some(value))
}

/// Merges metadata `changes` into `current` (Stripe's rule: a key whose new value is the empty
/// string is removed) and checks the result.
pub fn merge_metadata(current: &Value, changes: Value, param: &str) -> Result<Value, ApiError> {
    let Value::Object(changes) = changes else {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must be an object of string values"),
        ));
    };
    let mut merged = current.as_object().cloned().unwrap_or_default();
    for (k, v) in changes {
        if v.as_str() == Some("") {
            merged.remove(&k);
        } else {
            merged.insert(k, v);
        }
    }
    Ok(metadata(Some(Value::Object(merged)), param)?.unwrap_or_default())
}

/// Most digits in a phone number (E.164).
pub const PHONE_DIGITS_MAX: usize = 15;

/// A phone number: digits, `+ - ( ) .` and spaces, at most 32 characters and
/// [`PHONE_DIGITS_MAX`] digits (so not the 16 to 19 digits of most card numbers; a Luhn check
/// would refuse one long phone number in ten, so there is none).
pub fn phone(value: Option<String>, param: &str) -> Result<Option<String>, ApiError> {
    let Some(p) = value else { return Ok(None) };
    let digits = p.chars().filter(char::is_ascii_digit).count();
    if p.len() > 32
        || !(1..=PHONE_DIGITS_MAX).contains(&digits)
        || !p.chars().all(|ch| ch.is_ascii_digit() || "+-() .".contains(ch))
    {
        return Err(ApiError::invalid(
            param,
            format!(
                "`{param}` must be a phone number: 1-{PHONE_DIGITS_MAX} digits, with + - ( ) . and spaces, at most 32 characters"
            ),
        ));
    }
    Ok(Some(p))
}

/// Refuses free text holding a card number (13-19 digits of a known card brand's range passing
/// the Luhn check; other long numbers, a millisecond timestamp say, pass): card numbers are kept
/// in the vault only, never in a plain column. The message does not repeat the value.
pub fn no_card_number(value: &str, param: &str) -> Result<(), ApiError> {
    if crate::error::has_card_number(value) {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must not contain a card number: card numbers go in a payment method"),
        ));
    }
    Ok(())
}

pub fn client_id(value: &str, param: &str) -> Result<String, ApiError> {
    if validate::is_client_id(value) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid(
            param,
            format!(
                "`{param}` must be 1-{} characters of A-Z a-z 0-9 _ : . -",
                validate::CLIENT_ID_LEN_MAX
            ),
        ))
    }
}

/// A ledger id a client chose: [`client_id`], and not one of Settle's own.
pub fn ledger_id(value: &str, param: &str) -> Result<String, ApiError> {
    let id = client_id(value, param)?;
    if settle_domain::postings::is_system_id(&id) {
        return Err(ApiError::invalid(
            param,
            format!(
                "`{param}`: ids starting with `{}`, or with a payment's or refund's id and `:`, are reserved for Settle's own ledger entries",
                settle_domain::postings::SYSTEM_PREFIX
            ),
        ));
    }
    Ok(id)
}

pub fn currency(value: &str, param: &str) -> Result<Currency, ApiError> {
    Currency::parse(value).ok_or_else(|| ApiError::invalid(param, format!("`{param}`: unknown currency")))
}

/// Longest description (payments, invoices, customers, webhook endpoints).
pub const DESCRIPTION_LEN_MAX: usize = 1_000;

/// A description: at most [`DESCRIPTION_LEN_MAX`] characters, no control character but a line
/// break, no card number.
pub fn description(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(d) if d.chars().count() > DESCRIPTION_LEN_MAX || d.chars().any(|c| c.is_control() && c != '\n') => {
            Err(ApiError::invalid(
                "description",
                format!("`description` must be at most {DESCRIPTION_LEN_MAX} printable characters"),
            ))
        }
        Some(d) => no_card_number(&d, "description").map(|()| Some(d)),
        None => Ok(None),
    }
}

pub fn name(value: Option<String>, param: &str) -> Result<Option<String>, ApiError> {
    match value {
        Some(n) if n.trim().is_empty() || n.chars().count() > NAME_LEN_MAX || n.chars().any(char::is_control) => {
            Err(ApiError::invalid(
                param,
                format!("`{param}` must be 1-{NAME_LEN_MAX} printable characters"),
            ))
        }
        Some(n) => no_card_number(&n, param).map(|()| Some(n)),
        None => Ok(None),
    }
}

pub fn positive_amount(value: i64, param: &str) -> Result<i64, ApiError> {
    if value > 0 {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            param,
            format!("`{param}` must be a positive integer in minor units"),
        ))
    }
}

/// An email address, trimmed and lower-cased: `local@domain.tld`, at most [`EMAIL_LEN_MAX`]
/// characters, no spaces or control characters.
pub fn email(value: &str, param: &str) -> Result<String, ApiError> {
    let email = value.trim().to_lowercase();
    let valid = email.len() <= EMAIL_LEN_MAX
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !email.chars().any(|ch| ch.is_whitespace() || ch.is_control());
    if !valid {
        return Err(ApiError::invalid(param, format!("`{param}` must be an email address")));
    }
    no_card_number(&email, param)?;
    Ok(email)
}
