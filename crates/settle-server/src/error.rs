//! The API's one error type. Each variant's doc names its HTTP status.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;
use settle_store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed; `param` names the offending field.
    Invalid {
        code: &'static str,
        message: String,
        param: Option<String>,
    },
    /// 401: no, unknown, revoked or deactivated credentials.
    Unauthenticated,
    /// 401, saying what is wrong with the credentials sent (none, or not of the right kind).
    Credentials { code: &'static str, message: &'static str },
    /// 403: the key lacks the scope this call needs.
    Forbidden(&'static str),
    /// 404: no such object for this merchant (another merchant's ids answer the same).
    /// `param` names the field that gave the id (`id` for a path's).
    NotFound {
        what: &'static str,
        id: String,
        param: Option<&'static str>,
    },
    /// 405: the route exists, not with this method.
    MethodNotAllowed,
    /// 408: the client did not send its request's body within the request timeout.
    RequestTimeout,
    /// 409: the object's state conflicts with the request.
    Conflict {
        code: &'static str,
        message: String,
        param: Option<String>,
    },
    /// 409: the same idempotency key is still being executed.
    IdempotencyInUse,
    /// 422: the idempotency key was used with a different request.
    IdempotencyReused { mismatch: &'static str },
    /// 422: a business rule refused the request.
    Unprocessable {
        code: &'static str,
        message: String,
        param: Option<String>,
    },
    /// 409, replaced by the middleware with the stored response: another process committed
    /// the same idempotency key first.
    IdempotencyRaceLost,
    /// 502: a payment connector failed or did not answer; nothing changed.
    Upstream { code: &'static str, message: String },
    /// 503: shutting down or the database is unreachable.
    Unavailable,
    /// 503: the request did not finish within the request timeout; `write`: it goes on.
    TimedOut { write: bool },
    /// 500: opaque to the client; the cause is logged once.
    Internal(String),
}

/// At most [`SHOWN_ID_CHARS`] of an id echoed in a message: a client's 5,000-character id need
/// not come back whole.
pub(crate) fn shown_id(id: String) -> String {
    cut(id, SHOWN_ID_CHARS)
}

const SHOWN_ID_CHARS: usize = 200;

/// An error message is cut to this many characters.
const MESSAGE_CHARS: usize = 600;

/// `text` cut to `chars` characters, marked with `…` when cut.
fn cut(mut text: String, chars: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(chars) {
        text.truncate(at);
        text.push('…');
    }
    text
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            code: "parameter_invalid",
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn missing(param: impl Into<String>) -> Self {
        let param = param.into();
        ApiError::Invalid {
            code: "parameter_missing",
            message: format!("`{param}` is required"),
            param: Some(param),
        }
    }

    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        ApiError::not_found_at(what, id, "id")
    }

    /// No such `what`, named by the field `param`.
    pub fn not_found_at(what: &'static str, id: impl Into<String>, param: &'static str) -> Self {
        ApiError::NotFound {
            what,
            id: shown_id(id.into()),
            param: Some(param),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated | ApiError::Credentials { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict { .. } | ApiError::IdempotencyInUse | ApiError::IdempotencyRaceLost => {
                StatusCode::CONFLICT
            }
            ApiError::IdempotencyReused { .. } | ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable | ApiError::TimedOut { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body: `{"error": {"type", "code", "message", "param"}}`.
    pub fn body(&self) -> serde_json::Value {
        let (kind, code, message, param): (&str, &str, String, Option<&str>) = match self {
            ApiError::Invalid { code, message, param } => {
                ("invalid_request_error", code, message.clone(), param.as_deref())
            }
            ApiError::Unauthenticated => (
                "authentication_error",
                "invalid_api_key",
                "unknown or revoked API key, or its merchant is deactivated".into(),
                None,
            ),
            ApiError::Credentials { code, message } => ("authentication_error", code, (*message).into(), None),
            ApiError::Forbidden(scope) => (
                "permission_error",
                "insufficient_scope",
                format!("this call needs the `{scope}` scope"),
                None,
            ),
            ApiError::NotFound { what, id, param } => (
                "invalid_request_error",
                "resource_missing",
                format!("no such {what}: '{id}'"),
                *param,
            ),
            ApiError::MethodNotAllowed => (
                "invalid_request_error",
                "method_not_allowed",
                "this route does not take this HTTP method".into(),
                None,
            ),
            ApiError::RequestTimeout => (
                "invalid_request_error",
                "request_timeout",
                "the request's body did not arrive within the request timeout".into(),
                Some("body"),
            ),
            ApiError::Conflict { code, message, param } => {
                ("invalid_request_error", code, message.clone(), param.as_deref())
            }
            ApiError::IdempotencyInUse | ApiError::IdempotencyRaceLost => (
                "idempotency_error",
                "idempotency_key_in_use",
                "a request with this idempotency key is still being executed; retry later".into(),
                None,
            ),
            ApiError::IdempotencyReused { mismatch } => (
                "idempotency_error",
                "idempotency_key_reused",
                format!("this idempotency key was used with a different request ({mismatch} differs)"),
                Some(mismatch),
            ),
            ApiError::Unprocessable { code, message, param } => {
                ("invalid_request_error", code, message.clone(), param.as_deref())
            }
            ApiError::Upstream { code, message } => ("api_error", code, message.clone(), None),
            ApiError::Unavailable => (
                "api_error",
                "service_unavailable",
                "the service is unavailable".into(),
                None,
            ),
            ApiError::TimedOut { write } => (
                "api_error",
                "server_timeout",
                if *write {
                    "the request did not finish within the server's request timeout; what it was doing goes \
                     on: retried with the same Idempotency-Key, it answers with its outcome (without a key, \
                     read the object before trying again)"
                } else {
                    "the request did not finish within the server's request timeout; try again"
                }
                .into(),
                None,
            ),
            ApiError::Internal(_) => ("api_error", "internal_error", "an internal error occurred".into(), None),
        };
        // What a client sent comes back at most so long (a 5,000-character parameter name need
        // not come back twice over).
        let param = param.map(|p| shown_id(without_card_numbers(p)));
        let message = cut(without_card_numbers(&message), MESSAGE_CHARS);
        json!({ "error": { "type": kind, "code": code, "message": message, "param": param } })
    }
}

/// Whether `text` holds a card number of a known brand: a run [`without_card_numbers`] would
/// mask whose digits start in a card brand's range.
pub(crate) fn has_card_number(text: &str) -> bool {
    text.bytes().filter(u8::is_ascii_digit).count() >= 13
        && card_runs(text).any(|digits| settle_domain::card::brand(&digits) != settle_domain::card::CardBrand::Unknown)
}

/// The digits of each run of 13 to 19 digits in `text` (maybe grouped by single spaces or
/// dashes) that passes the Luhn check.
fn card_runs(text: &str) -> impl Iterator<Item = String> + '_ {
    runs(text).filter_map(|(run, is_digits)| card_digits(&run, is_digits))
}

/// A run's digits when they could be a card number: 13 to 19 of them passing the Luhn check.
fn card_digits(run: &str, is_digits: bool) -> Option<String> {
    let digits: String = run.chars().filter(char::is_ascii_digit).collect();
    (is_digits && (13..=19).contains(&digits.len()) && settle_domain::card::luhn_valid(&digits)).then_some(digits)
}

/// `text` cut into runs of digits (with single spaces or dashes between digits) and the rest,
/// one character at a time: `(run, true)` for a run of digits, `(char, false)` otherwise.
fn runs(text: &str) -> impl Iterator<Item = (String, bool)> + '_ {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = *chars.get(i)?;
        if !first.is_ascii_digit() {
            i += 1;
            return Some((first.to_string(), false));
        }
        let mut end = i;
        while end + 1 < chars.len()
            && (chars[end + 1].is_ascii_digit()
                || (matches!(chars[end + 1], ' ' | '-') && chars.get(end + 2).is_some_and(char::is_ascii_digit)))
        {
            end += 1;
        }
        let run: String = chars[i..=end].iter().collect();
        i = end + 1;
        Some((run, true))
    })
}

/// `text` with every card number in it masked: 13 to 19 digits, maybe grouped by single spaces
/// or dashes, that pass the Luhn check. An error may name what the client sent (an unknown id, an
/// unknown field), and a card number sent there must not come back.
fn without_card_numbers(text: &str) -> String {
    runs(text)
        .map(|(run, is_digits)| match card_digits(&run, is_digits) {
            Some(_) => "[redacted]".to_owned(),
            None => run,
        })
        .collect()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(cause = %cause, "internal error");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if matches!(self, ApiError::IdempotencyRaceLost) {
            response.extensions_mut().insert(crate::context::IdempotencyRace);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::CursorNotFound => ApiError::Invalid {
                code: "cursor_invalid",
                message: "the pagination cursor names no object of this list".into(),
                param: Some("starting_after".into()),
            },
            StoreError::Unstorable => ApiError::Invalid {
                code: "parameter_invalid",
                message: "a value of this request contains a NUL character".into(),
                param: None,
            },
            StoreError::Database(sqlx_error) if is_unavailable(&sqlx_error) => {
                tracing::warn!(error = %sqlx_error, "database unavailable");
                ApiError::Unavailable
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

#[cfg(test)]
mod tests {
    use super::{without_card_numbers, ApiError};

    #[test]
    fn a_long_id_is_echoed_cut_short() {
        let long = ApiError::not_found("payment", "é".repeat(5_000)).body();
        let message = long["error"]["message"].as_str().expect("message");
        assert_eq!(message, format!("no such payment: '{}…'", "é".repeat(200)));
        let short = ApiError::not_found("payment", "pay_1").body();
        assert_eq!(short["error"]["message"], "no such payment: 'pay_1'");
        // A long parameter name, in the message and as the parameter.
        let name = "a".repeat(5_000);
        let named = ApiError::invalid(&name, format!("unknown field `{name}`")).body();
        assert_eq!(named["error"]["param"].as_str().map(|p| p.chars().count()), Some(201));
        assert_eq!(named["error"]["message"].as_str().map(|m| m.chars().count()), Some(601));
    }

    #[test]
    fn card_numbers_are_masked_and_other_numbers_kept() {
        for (text, masked) in [
            (
                "no such payment method: '4242424242424242'",
                "no such payment method: '[redacted]'",
            ),
            ("card.4242424242424242", "card.[redacted]"),
            (
                "no such payment: '4242-4242-4242-4242'",
                "no such payment: '[redacted]'",
            ),
            (
                "no such customer: 'a 4242 4242 4242 4242'",
                "no such customer: 'a [redacted]'",
            ),
            ("`amount` must be between 1 and 10000000 USD minor units", ""),
            ("no such account: 'acct-100000000001'", ""),
            ("the refund exceeds what remains refundable (123456789012345)", ""),
            ("transfers[3].amount", ""),
            ("4242424242424241", ""),
        ] {
            let expected = if masked.is_empty() { text } else { masked };
            assert_eq!(without_card_numbers(text), expected);
        }
    }
}
