//! Request parsing at the edge: JSON bodies (1 MiB at most, unknown fields refused, errors that
//! name the field) and list parameters.

use axum::{
    body::{Body, Bytes},
    extract::{FromRequest, FromRequestParts, MatchedPath, Request},
    http::{header, request::Parts, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use serde::de::DeserializeOwned;
use serde_json::Value;
use settle_store::PageRequest;

use crate::error::ApiError;

/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// Reads the whole body, refusing more than [`BODY_BYTES_MAX`].
pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, BODY_BYTES_MAX)
        .await
        .map_err(|_| ApiError::Invalid {
            code: "body_too_large",
            message: format!("the request body exceeds {BODY_BYTES_MAX} bytes"),
            param: Some("body".into()),
        })
}

/// Whether [`buffered_body`] is still waiting for the request's body (told to the request
/// timeout: a request whose body never came is the client's timeout, not the server's).
#[derive(Clone, Default)]
pub struct BodyPending(Arc<AtomicBool>);

impl BodyPending {
    pub fn waiting(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Reads a request's whole body before its handler runs (at most [`BODY_BYTES_MAX`]), once
/// the caller is authenticated. A handler that answers without reading the body (a 404 for an
/// unknown id) would otherwise leave part of it unread, and hyper would close the connection
/// under a client about to reuse it. A body too large is refused with `Connection: close`, since
/// its rest is never read.
pub async fn buffered_body(req: Request, next: Next) -> Response {
    if axum::body::HttpBody::size_hint(req.body()).exact() == Some(0) {
        return next.run(req).await;
    }
    let pending = req.extensions().get::<BodyPending>().cloned().unwrap_or_default();
    let (parts, body) = req.into_parts();
    pending.0.store(true, Ordering::Relaxed);
    let read = read_body(body).await;
    pending.0.store(false, Ordering::Relaxed);
    match read {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(e) => closing(e.into_response()),
    }
}

/// `response`, closing its connection (which may hold bytes of a body no one will read).
pub fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Parses JSON text into an object `Value` (an empty body is `{}`).
pub fn parse_value(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    let value = parse_json(bytes).map_err(|e| match e {
        ApiError::Invalid {
            code: "invalid_json",
            message,
            param,
        } => ApiError::Invalid {
            code: "invalid_json",
            message: format!(
                "{message} (this API takes JSON bodies; the Stripe-compatible API under /stripe/v1 takes form bodies)"
            ),
            param,
        },
        other => other,
    })?;
    // JSON can carry a NUL only escaped; a body without the escape is looked at no further.
    if bytes.windows(6).any(|w| w == b"\\u0000") {
        if let Some(param) = nul_path(&value) {
            return Err(ApiError::invalid(
                &param,
                format!("`{param}` must not contain a NUL character"),
            ));
        }
    }
    require_object(value, "body")
}

/// JSON text, any value: 400 `invalid_json`, or a key given twice named by its path.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    crate::strict_json::parse(bytes).map_err(|refusal| match refusal {
        crate::strict_json::Refusal::Invalid(e) => ApiError::Invalid {
            code: "invalid_json",
            message: format!("the body is not valid JSON: {e}"),
            param: Some("body".into()),
        },
        crate::strict_json::Refusal::Duplicate(param) => ApiError::invalid(&param, format!("`{param}` is given twice")),
    })
}

/// The path (`transfers[2].id`) of the first string or key holding a NUL character, which no
/// text column stores (PostgreSQL refuses it).
pub fn nul_path(value: &Value) -> Option<String> {
    nul_at(value, crate::strict_json::At::Root)
}

fn nul_at(value: &Value, at: crate::strict_json::At<'_>) -> Option<String> {
    use crate::strict_json::At;
    match value {
        Value::String(s) => s.contains('\0').then(|| at.path()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| nul_at(v, At::Index(&at, i))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = At::Key(&at, k);
            if k.contains('\0') {
                Some(here.path())
            } else {
                nul_at(v, here)
            }
        }),
        _ => None,
    }
}

/// Objects only: serde would otherwise read a struct from an array too.
pub fn require_object(value: Value, param: &str) -> Result<Value, ApiError> {
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::invalid(param, format!("`{param}` must be a JSON object")))
    }
}

/// Converts a JSON value into `T`, naming the offending field (`transfers[2].amount`) on error.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(crate::strict_json::Strict(&value)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // The path of an unknown field already ends with the field's name; that of a missing
        // field is its parent's.
        let missing = inner.starts_with("missing field");
        let param = match (named_field(&inner), path.as_str()) {
            (Some(field), ".") => field.to_owned(),
            (Some(field), parent) if missing => format!("{parent}.{field}"),
            (_, ".") => "body".to_owned(),
            _ => path,
        };
        let (code, message) = if inner.starts_with("unknown field") {
            ("parameter_unknown", format!("unknown field `{param}`"))
        } else if missing {
            ("parameter_missing", format!("`{param}` is required"))
        } else {
            ("parameter_invalid", plain(&param, &inner))
        };
        ApiError::Invalid {
            code,
            message,
            param: Some(param),
        }
    })
}

/// serde's "invalid type: integer `4242…`, expected a string" said plainly ("`cvc` must be a
/// string") and without the value sent, which may be a card number or CVC in the wrong field or
/// of the wrong type: no value a client sent is echoed in an error, nor a Rust type's name.
fn plain(param: &str, message: &str) -> String {
    let Some((kind, expected)) = message.split_once(", expected ") else {
        return format!("`{param}`: {message}");
    };
    let (min, max) = match expected {
        "u8" => (0, i128::from(u8::MAX)),
        "u16" => (0, i128::from(u16::MAX)),
        "u32" => (0, i128::from(u32::MAX)),
        "u64" | "usize" => (0, i128::from(u64::MAX)),
        "i8" => (i128::from(i8::MIN), i128::from(i8::MAX)),
        "i16" => (i128::from(i16::MIN), i128::from(i16::MAX)),
        "i32" => (i128::from(i32::MIN), i128::from(i32::MAX)),
        "i64" | "isize" => (i128::from(i64::MIN), i128::from(i64::MAX)),
        _ => {
            let what = match expected {
                "f32" | "f64" => "a number",
                "a string" | "a borrowed string" | "a character" | "char" => "a string",
                "a boolean" => "true or false",
                "a sequence" => "an array",
                e if e.starts_with("struct ") || e.contains("map") || e == "an object" => "an object",
                e if e.starts_with("one of ") || e.starts_with('`') => e,
                _ => return format!("`{param}` is invalid"),
            };
            return format!("`{param}` must be {what}");
        }
    };
    if kind.starts_with("invalid value") && min == i128::from(i64::MIN) {
        // Amounts, mostly: a 64-bit range's lower end would suggest that negatives are taken.
        format!("`{param}` must be an integer no larger than {max}")
    } else if kind.starts_with("invalid value") {
        format!("`{param}` must be an integer from {min} to {max}")
    } else {
        format!("`{param}` must be an integer")
    }
}

/// serde names the field in "unknown field `x`, expected …" and "missing field `x`".
fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next()
}

/// A JSON request body parsed into `T`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req.into_body()).await?;
        Ok(JsonBody(from_value(parse_value(&bytes)?)?))
    }
}

/// The body of a call that takes no field (`{}` or nothing): anything else is a 400, rather
/// than ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// `limit`, `starting_after`, `ending_before`.
pub struct Page(pub PageRequest);

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(page_and_filters(parts.uri.query().unwrap_or(""), &[])?.0)
    }
}

/// For a route that takes no query parameter: any is a 400 naming it, rather than ignored.
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        match query_pairs(parts.uri.query().unwrap_or("")).into_iter().next() {
            Some((name, _)) => Err(unknown_parameter(&name)),
            None => Ok(NoQuery),
        }
    }
}

/// Refuses a query parameter on a `POST`: a write takes its fields in its body only, and
/// `POST /v1/payments/{id}/capture?amount=500` must not capture the whole amount because the
/// parameter went unread. (A `DELETE` of the native API takes none either: its handlers say so
/// with [`NoQuery`]; Stripe's take theirs in the query string.)
pub async fn no_query_on_posts(req: Request, next: Next) -> Response {
    if req.method() == axum::http::Method::POST {
        if let Some((name, _)) = query_pairs(req.uri().query().unwrap_or("")).into_iter().next() {
            return ApiError::Invalid {
                code: "parameter_unknown",
                message: format!("unknown query parameter `{name}`: a write takes its fields in its body"),
                param: Some(name),
            }
            .into_response();
        }
    }
    next.run(req).await
}

fn unknown_parameter(name: &str) -> ApiError {
    ApiError::Invalid {
        code: "parameter_unknown",
        message: format!("unknown query parameter `{name}`"),
        param: Some(name.to_owned()),
    }
}

/// The pagination parameters of a query string, and the pairs named in `filters`; any other
/// parameter, or one given twice, is a 400.
pub fn page_and_filters(query: &str, filters: &[&str]) -> Result<(Page, Vec<(String, String)>), ApiError> {
    let mut page = PageRequest {
        limit: 10,
        ..PageRequest::default()
    };
    let mut picked = Vec::new();
    let pairs = query_pairs(query);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
            return Err(ApiError::invalid(name, format!("`{name}` is given twice")));
        }
        let (name, value) = (name.clone(), value.clone());
        match name.as_str() {
            "limit" => {
                page.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| ApiError::invalid("limit", "`limit` must be an integer from 1 to 100"))?;
            }
            "starting_after" => page.starting_after = Some(value),
            "ending_before" => page.ending_before = Some(value),
            other if filters.contains(&other) && value.is_empty() => {
                return Err(ApiError::invalid(other, format!("`{other}` must not be empty")));
            }
            other if filters.contains(&other) => picked.push((name, value)),
            other => return Err(unknown_parameter(other)),
        }
    }
    if page.starting_after.is_some() && page.ending_before.is_some() {
        return Err(ApiError::invalid(
            "ending_before",
            "use `starting_after` or `ending_before`, not both",
        ));
    }
    Ok((Page(page), picked))
}

impl Page {
    /// The parameter a missing cursor came from, for the 400.
    pub fn cursor_param(&self) -> &'static str {
        if self.0.ending_before.is_some() {
            "ending_before"
        } else {
            "starting_after"
        }
    }
}

/// Splits a query string into decoded pairs (`+` is a space, `%XX` a byte).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

fn percent_decode_bytes(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Whether a percent-encoded path segment or query part decodes to text a column can store:
/// UTF-8 without NUL characters.
fn storable(part: &str) -> bool {
    !part.contains('%') || std::str::from_utf8(&percent_decode_bytes(part)).is_ok_and(|t| !t.contains('\0'))
}

/// Refuses, naming the parameter, a request whose path segments or query parameters decode to
/// bytes that are not UTF-8 or to a NUL character: no id or filter can be either, PostgreSQL
/// refuses a NUL in text, and axum's own refusal of bad UTF-8 is plain text. A route layer, so
/// that the matched route names the path's segments.
pub async fn storable_uri(req: Request, next: Next) -> Response {
    match unstorable_param(&req) {
        Some(name) => {
            ApiError::invalid(&name, format!("`{name}` must be UTF-8 text without NUL characters")).into_response()
        }
        None => next.run(req).await,
    }
}

fn unstorable_param(req: &Request) -> Option<String> {
    let uri = req.uri();
    if uri.path().contains('%') {
        let template = req.extensions().get::<MatchedPath>().map_or("", MatchedPath::as_str);
        if let Some(i) = uri.path().split('/').position(|segment| !storable(segment)) {
            let name = template
                .split('/')
                .nth(i)
                .and_then(|t| t.strip_prefix('{'))
                .and_then(|t| t.strip_suffix('}'))
                .map_or("path", |t| t.trim_start_matches('*'));
            return Some(name.to_owned());
        }
    }
    unstorable_pair(uri.query().filter(|q| q.contains('%'))?)
}

/// In a query string or form body: the name of the first pair whose name or value decodes to
/// bytes that are not UTF-8 or to a NUL character.
pub fn unstorable_pair(text: &str) -> Option<String> {
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (!storable(k) || !storable(v)).then(|| percent_decode(k).replace('\0', ""))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_are_said_plainly() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            n: u32,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            inner: Option<Inner>,
            kind: Option<Kind>,
            amount: Option<i64>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(rename_all = "snake_case")]
        enum Kind {
            Card,
            Bank,
        }
        for (body, param, message) in [
            (r#"{"inner": [5]}"#, "inner", "`inner` must be an object"),
            (
                r#"{"inner": {"n": -1}}"#,
                "inner.n",
                "`inner.n` must be an integer from 0 to 4294967295",
            ),
            (
                r#"{"inner": {"n": "4242424242424242"}}"#,
                "inner.n",
                "`inner.n` must be an integer",
            ),
            (r#"{"kind": "x"}"#, "kind", "`kind` must be `card` or `bank`"),
            (r#"{"kind": 1}"#, "kind", "`kind` must be `card` or `bank`"),
            (
                r#"{"amount": 9223372036854775808}"#,
                "amount",
                "`amount` must be an integer no larger than 9223372036854775807",
            ),
        ] {
            match from_value::<Outer>(parse_value(body.as_bytes()).expect("json")) {
                Err(ApiError::Invalid {
                    message: m, param: p, ..
                }) => {
                    assert_eq!((p.as_deref(), m.as_str()), (Some(param), message), "{body}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn decodes_query_pairs() {
        assert_eq!(
            query_pairs("limit=5&starting_after=la_1%3Ax&x=a+b&bad=%zz&end=%4"),
            vec![
                ("limit".into(), "5".into()),
                ("starting_after".into(), "la_1:x".into()),
                ("x".into(), "a b".into()),
                ("bad".into(), "%zz".into()),
                ("end".into(), "%4".into()),
            ]
        );
    }
}
