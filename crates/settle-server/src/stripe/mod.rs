//! The Stripe-compatible API under `/stripe/v1`: Stripe's form encoding, object shapes, ids,
//! errors and lists over Settle's own services, so that an application written against a
//! Stripe SDK works by pointing the SDK at Settle. Nothing here decides anything about money:
//! every operation calls the same service function as the native `/v1` route (with a renderer
//! for Stripe's shape), so the two APIs show the same payments.
//!
//! Layers, outermost first: errors in Stripe's shape (status, `type`, bracketed `param`),
//! authentication (Bearer or HTTP Basic), `expand[]` (applied after the handler, so an
//! idempotent replay is expanded too), idempotency (the native middleware: same semantics).
//! Parameters a handler does not know are refused with 400 `parameter_unknown`: nothing that
//! could change money is ever silently ignored.

pub mod form;
mod handlers;
pub mod shapes;

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::{from_fn, from_fn_with_state, Next},
    response::{IntoResponse, Response},
    Router,
};
use serde_json::{json, Map, Value};
use settle_store::PageRequest;

use crate::{
    auth::Caller,
    context::Reply,
    error::ApiError,
    extract::{read_body, Page},
    AppState,
};

pub fn router(state: AppState) -> Router<AppState> {
    handlers::router()
        .layer(from_fn_with_state(state.clone(), crate::idempotency::middleware))
        .layer(from_fn_with_state(state.clone(), handlers::expand))
        .layer(from_fn(form_bodies))
        .layer(from_fn(crate::extract::no_query_on_posts))
        .layer(from_fn(crate::extract::buffered_body))
        .layer(from_fn_with_state(state, crate::auth::require_merchant))
        .layer(from_fn(errors))
}

/// The app as served at the root of the Stripe listener (`--stripe-listen`): `/v1/…` there is
/// `/stripe/v1/…` here, for SDKs that take only a host and a port (stripe-node); other paths
/// (`/healthz`, …) are served as on the main listener.
pub fn rooted(app: Router) -> Router {
    let prefixed = tower::ServiceExt::map_request(app, |mut req: Request| {
        let path = req.uri().path();
        if path == "/v1" || path.starts_with("/v1/") {
            let target = req.uri().path_and_query().map_or(path, |p| p.as_str());
            if let Ok(uri) = format!("/stripe{target}").parse() {
                *req.uri_mut() = uri;
            }
        }
        req
    });
    Router::new().fallback_service(prefixed)
}

/// Refuses a JSON body (`Content-Type: application/json` or `…+json`, or a body that opens with
/// `{` or `[`, which no form parameter does): Stripe's API, and so this one, takes
/// `application/x-www-form-urlencoded` bodies, and reading JSON as a form would only answer
/// with a garbled "unknown parameter".
async fn form_bodies(req: Request, next: Next) -> Response {
    if axum::body::HttpBody::size_hint(req.body()).exact() == Some(0) {
        return next.run(req).await;
    }
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| mime.trim().to_ascii_lowercase())
        .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"));
    let (parts, body) = req.into_parts();
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let opening = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let json_body = matches!(opening, Some(b'{' | b'['));
    if opening.is_some() && (json_type || json_body) {
        return ApiError::invalid(
            "body",
            "Settle's Stripe-compatible API takes `application/x-www-form-urlencoded` bodies, as Stripe's \
             does, not JSON: send e.g. `email=ann%40example.test&metadata[order]=42` (the Stripe SDKs do)",
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// A request's parameters (form body or query string), taken one by one; whatever is left
/// at the end is refused.
pub struct Params(Map<String, Value>);

impl Params {
    pub fn parse(text: &str) -> Result<Params, ApiError> {
        let mut map = form::parse(text)?;
        // Read by the expand layer.
        map.remove("expand");
        Ok(Params(map))
    }

    pub fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name)
    }

    pub fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(name, format!("`{name}` must be a string"))),
        }
    }

    pub fn integer(&mut self, name: &str) -> Result<Option<i64>, ApiError> {
        self.string(name)?
            .map(|s| {
                // The value is not echoed: it may be a card number in the wrong field.
                strict_integer(&s).ok_or_else(|| ApiError::Invalid {
                    code: "parameter_invalid_integer",
                    message: format!(
                        "Invalid integer: `{name}` must be an integer in decimal digits, without a sign `+` or leading zeros"
                    ),
                    param: Some(name.to_owned()),
                })
            })
            .transpose()
    }

    pub fn boolean(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.string(name)?.as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::invalid(name, format!("Invalid boolean: {other}"))),
        }
    }

    /// A list of strings (`name[]=a&name[]=b` or `name[0]=a&name[1]=b`).
    pub fn strings(&mut self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        let not_list = || ApiError::invalid(name, format!("`{name}` must be a list of strings"));
        match self.take(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(not_list()),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(not_list()),
        }
    }

    /// Metadata: an object of strings; an empty string (`metadata=`) means no change.
    pub fn metadata(&mut self) -> Result<Option<Value>, ApiError> {
        match self.take("metadata") {
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            other => crate::fields::metadata(other, "metadata").map_err(metadata_error),
        }
    }

    /// `limit`, `starting_after`, `ending_before`, with cursors mapped by `cursor`.
    pub fn page(&mut self, cursor: impl Fn(&str) -> String) -> Result<Page, ApiError> {
        let limit = match self.integer("limit")? {
            None => 10,
            Some(l @ 1..=100) => l as u32,
            Some(_) => return Err(ApiError::invalid("limit", "`limit` must be between 1 and 100")),
        };
        let starting_after = self.string("starting_after")?.map(|s| cursor(&s));
        let ending_before = self.string("ending_before")?.map(|s| cursor(&s));
        if starting_after.is_some() && ending_before.is_some() {
            return Err(ApiError::invalid(
                "ending_before",
                "use `starting_after` or `ending_before`, not both",
            ));
        }
        Ok(Page(PageRequest {
            limit,
            starting_after,
            ending_before,
        }))
    }

    /// Refuses any parameter not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(name) => Err(ApiError::Invalid {
                code: "parameter_unknown",
                message: format!(
                    "Received unknown parameter: {name} (not supported by Settle's Stripe-compatible API)"
                ),
                param: Some(name.clone()),
            }),
        }
    }
}

/// A metadata key's parameter in Stripe's terms: the native check names `metadata.<key>`, and
/// the key may itself hold dots (`metadata[a.b]`), so it is bracketed here, whole.
pub fn metadata_param(param: &str) -> String {
    match param.strip_prefix("metadata.") {
        Some(key) => format!("metadata[{key}]"),
        None => param.to_owned(),
    }
}

/// An error about metadata, naming the key as Stripe does (see [`metadata_param`]).
pub fn metadata_error(e: ApiError) -> ApiError {
    match e {
        ApiError::Invalid {
            code,
            message,
            param: Some(param),
        } => ApiError::Invalid {
            code,
            message,
            param: Some(metadata_param(&param)),
        },
        other => other,
    }
}

/// An integer as written canonically: an optional `-`, then `0` or digits not starting with
/// `0`. Rust's parser would also take `+5` and `007`; an amount is read one way only.
fn strict_integer(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical =
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// A Stripe list.
pub fn list(url: &str, data: Vec<Value>, has_more: bool) -> Result<Response, ApiError> {
    let body = json!({ "object": "list", "url": format!("/v1/{url}"), "has_more": has_more, "data": data });
    Ok(Reply::json(StatusCode::OK, &body)?.into_response())
}

/// `a.b.c` → `a[b][c]` (Stripe names nested parameters with brackets). A dot inside brackets
/// is part of a key (`metadata[a.b]`), not a separator.
fn bracketed(param: &str) -> String {
    let mut out = String::with_capacity(param.len() + 2);
    let mut depth = 0usize;
    let mut open = false;
    for c in param.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c == '.' && depth == 0 {
            if open {
                out.push(']');
            }
            out.push('[');
            open = true;
        } else {
            out.push(c);
        }
    }
    if open {
        out.push(']');
    }
    out
}

/// Stripe's error `type`, status and `code` for a native error.
fn stripe_error(status: StatusCode, error: &Value) -> (StatusCode, &'static str, String) {
    let code = error["code"].as_str().unwrap_or_default();
    match (status.as_u16(), code) {
        (_, "idempotency_key_reused") => (StatusCode::BAD_REQUEST, "idempotency_error", code.into()),
        (409, "idempotency_key_in_use") => (StatusCode::CONFLICT, "idempotency_error", code.into()),
        // Another request holds the payment: worth retrying (the SDKs retry 409).
        (409, "payment_in_progress") => (StatusCode::CONFLICT, "invalid_request_error", "lock_timeout".into()),
        (409, "payment_unexpected_state") => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "payment_intent_unexpected_state".into(),
        ),
        (401, _) => (status, "authentication_error", code.into()),
        (403, _) => (status, "permission_error", code.into()),
        (429, _) => (status, "rate_limit_error", code.into()),
        (s, _) if s >= 500 => (status, "api_error", code.into()),
        (409 | 422, _) => (StatusCode::BAD_REQUEST, "invalid_request_error", code.into()),
        _ => (status, "invalid_request_error", code.into()),
    }
}

/// Rewrites native error bodies into Stripe's (card errors are already in Stripe's shape).
async fn errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if status.is_success() || status == StatusCode::PAYMENT_REQUIRED {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = read_body(body).await else {
        return ApiError::Internal("error body unreadable".into()).into_response();
    };
    let mut value = match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) => value,
        // A rejection in plain text (a form body that is not UTF-8): in the error shape too.
        Err(_) if status.is_client_error() => ApiError::invalid(
            "body",
            String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>(),
        )
        .body(),
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    let (status, kind, code) = stripe_error(status, &value["error"]);
    let error = &mut value["error"];
    error["type"] = json!(kind);
    error["code"] = json!(code);
    if let Some(p) = error["param"].as_str().map(bracketed) {
        error["param"] = json!(p);
    }
    let mut response = (status, value.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(id) = parts.headers.get("x-request-id") {
        response.headers_mut().insert("request-id", id.clone());
    }
    response
}

/// The merchant of a request that passed authentication.
fn merchant_of(req: &Request) -> Option<String> {
    match req.extensions().get::<Caller>()? {
        Caller::Merchant(p) => Some(p.merchant_id.clone()),
        Caller::Admin => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_params_are_bracketed() {
        assert_eq!(bracketed("card.number"), "card[number]");
        assert_eq!(bracketed("amount"), "amount");
        assert_eq!(bracketed("metadata.a.b"), "metadata[a][b]");
        assert_eq!(bracketed("metadata[a.b]"), "metadata[a.b]");
        assert_eq!(bracketed("items[0].amount"), "items[0][amount]");
        assert_eq!(bracketed(&metadata_param("metadata.a.b")), "metadata[a.b]");
        assert_eq!(metadata_param("amount"), "amount");
    }

    #[test]
    fn integers_are_read_one_way_only() {
        for (text, value) in [("0", Some(0)), ("5", Some(5)), ("-5", Some(-5)), ("2000", Some(2000))] {
            assert_eq!(strict_integer(text), value, "{text}");
        }
        for bad in [
            "+5",
            "01",
            "007",
            "-01",
            "",
            "-",
            "1e3",
            " 5",
            "5 ",
            "99999999999999999999",
            "１",
        ] {
            assert_eq!(strict_integer(bad), None, "{bad}");
        }
    }

    #[test]
    fn native_errors_map_onto_stripe_statuses() {
        let e = |code: &str| json!({ "code": code });
        assert_eq!(
            stripe_error(StatusCode::UNPROCESSABLE_ENTITY, &e("idempotency_key_reused")),
            (
                StatusCode::BAD_REQUEST,
                "idempotency_error",
                "idempotency_key_reused".into()
            )
        );
        assert_eq!(
            stripe_error(StatusCode::UNPROCESSABLE_ENTITY, &e("amount_too_large")).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            stripe_error(StatusCode::CONFLICT, &e("payment_unexpected_state")).2,
            "payment_intent_unexpected_state"
        );
        assert_eq!(
            stripe_error(StatusCode::NOT_FOUND, &e("resource_missing")).1,
            "invalid_request_error"
        );
        assert_eq!(
            stripe_error(StatusCode::BAD_GATEWAY, &e("connector_error")).1,
            "api_error"
        );
    }
}
