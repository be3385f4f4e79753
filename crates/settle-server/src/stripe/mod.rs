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
                s.parse::<i64>().map_err(|_| ApiError::Invalid {
                    code: "parameter_invalid_integer",
                    message: format!("Invalid integer: `{name}` must be an integer"),
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
            other => crate::fields::metadata(other, "metadata"),
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

/// A Stripe list.
pub fn list(url: &str, data: Vec<Value>, has_more: bool) -> Result<Response, ApiError> {
    let body = json!({ "object": "list", "url": format!("/v1/{url}"), "has_more": has_more, "data": data });
    Ok(Reply::json(StatusCode::OK, &body)?.into_response())
}

/// `a.b.c` → `a[b][c]` (Stripe names nested parameters with brackets).
fn bracketed(param: &str) -> String {
    let mut parts = param.split('.');
    let mut out = parts.next().unwrap_or_default().to_owned();
    for p in parts {
        out.push_str(&format!("[{p}]"));
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
