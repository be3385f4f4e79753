//! `Idempotency-Key` on POST, with Stripe's semantics.
//!
//! - same key, same request (method, path, canonical body), after completion: the stored response
//!   is replayed with `Idempotent-Replayed: true`;
//! - same key, different request: 422 `idempotency_key_reused`, naming what differs;
//! - same key while the first request is executing: 409 `idempotency_key_in_use`.
//!
//! Only 2xx responses are stored, and they commit in the same transaction as the request's
//! effects (see `Ctx::commit` and the ledger writer); a request that failed committed nothing,
//! so a retry with the same key simply executes. "Executing" is tracked per process; across
//! processes the unique key in the database decides, and the loser replays the winner's response
//! (as does a duplicate refused with 409 once the winner's record is stored). A payment or
//! refund stores its key when created, before its record: a duplicate finds it, and answers 409
//! `idempotency_key_in_use` while the first request may still be executing.

use std::{collections::HashSet, sync::Mutex};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use settle_domain::{
    tenancy::{IdempotencyRecord, ADMIN_SCOPE},
    validate,
};
use settle_store::{Mode, Scope};
use sha2::{Digest, Sha256};

use crate::{
    auth::Caller,
    context::{IdempotencyDraft, IdempotencyRace, Reply},
    error::ApiError,
    extract::read_body,
    AppState,
};

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Keys being executed in this process.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<(String, String)>>);

pub struct Claim<'a> {
    set: &'a InFlight,
    key: (String, String),
}

impl InFlight {
    fn claim(&self, scope: &str, key: &str) -> Option<Claim<'_>> {
        let k = (scope.to_owned(), key.to_owned());
        let inserted = self.0.lock().ok()?.insert(k.clone());
        // Built only on success: a Claim's drop releases the key, and must not run for a loser.
        inserted.then(|| Claim { set: self, key: k })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.0.lock() {
            set.remove(&self.key);
        }
    }
}

/// Hex SHA-256 over method, path and the body in canonical form: JSON re-serialized with sorted
/// keys and no insignificant whitespace; any other body (a Stripe form) as its `&`-separated
/// pairs ordered by name, those of one name (a list's items) kept in the order sent.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|_| {
            let mut pairs: Vec<&[u8]> = body.split(|b| *b == b'&').filter(|p| !p.is_empty()).collect();
            pairs.sort_by_key(|p| p.split(|b| *b == b'=').next().unwrap_or_default());
            pairs.join(&b'&')
        });
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(&canonical);
    hex::encode(h.finalize())
}

pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    run(state, req, next).await.unwrap_or_else(IntoResponse::into_response)
}

async fn run(state: AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    if req.method() != Method::POST {
        return Ok(next.run(req).await);
    }
    let Some(key) = req.headers().get(HEADER) else {
        return Ok(next.run(req).await);
    };
    if req.headers().get_all(HEADER).iter().nth(1).is_some() {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "the Idempotency-Key header is given twice",
        ));
    }
    let key = key
        .to_str()
        .ok()
        .filter(|k| validate::is_idempotency_key(k))
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "the Idempotency-Key header must be 1-255 printable ASCII characters",
            )
        })?
        .to_owned();
    let scope = match req.extensions().get::<Caller>() {
        Some(Caller::Merchant(p)) => p.merchant_id.clone(),
        _ => ADMIN_SCOPE.to_owned(),
    };
    let (mut parts, body) = req.into_parts();
    let bytes = read_body(body).await?;
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let draft = IdempotencyDraft {
        fingerprint: fingerprint(&method, &path, &bytes),
        key,
        method,
        path,
    };

    // A request with this key running in this process holds the claim; so, for a moment, does
    // a replay of a finished one: a request that finds the claim taken replays the stored
    // answer if there is one.
    let claim = state.inflight.claim(&scope, &draft.key);
    if let Some(stored) = lookup(&state, &scope, &draft.key).await? {
        return replay(&stored, &draft);
    }
    let _claim = claim.ok_or(ApiError::IdempotencyInUse)?;
    parts.extensions.insert(draft.clone());
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    // Lost to another process with the same key, or refused because the same request, run
    // elsewhere, changed the object meanwhile (a duplicate capture finds it captured): the
    // first request's stored answer, once there, is the answer.
    if response.extensions().get::<IdempotencyRace>().is_some() || response.status() == StatusCode::CONFLICT {
        if let Some(stored) = lookup(&state, &scope, &draft.key).await? {
            return replay(&stored, &draft);
        }
    }
    Ok(response)
}

async fn lookup(state: &AppState, scope: &str, key: &str) -> Result<Option<IdempotencyRecord>, ApiError> {
    let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
    Ok(tx.get_idempotency(scope, key).await?)
}

fn replay(stored: &IdempotencyRecord, draft: &IdempotencyDraft) -> Result<Response, ApiError> {
    let mismatch = if stored.method != draft.method {
        Some("method")
    } else if stored.path != draft.path {
        Some("path")
    } else if stored.fingerprint != draft.fingerprint {
        Some("body")
    } else {
        None
    };
    if let Some(mismatch) = mismatch {
        return Err(ApiError::IdempotencyReused { mismatch });
    }
    let status = axum::http::StatusCode::from_u16(stored.status_code)
        .map_err(|_| ApiError::Internal(format!("stored status {}", stored.status_code)))?;
    let mut response = Reply {
        status,
        body: stored.response_body.clone(),
    }
    .into_response();
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn a_request_is_the_same_whatever_the_order_of_its_fields() {
        let json = |b: &str| fingerprint("POST", "/v1/payments", b.as_bytes());
        assert_eq!(
            json(r#"{"amount": 1, "currency": "USD"}"#),
            json(r#"{"currency":"USD","amount":1}"#)
        );
        let form = |b: &str| fingerprint("POST", "/stripe/v1/payment_intents", b.as_bytes());
        assert_eq!(form("amount=100&currency=usd"), form("currency=usd&amount=100"));
        assert_eq!(
            form("expand[]=a&amount=1&expand[]=b"),
            form("amount=1&expand[]=a&expand[]=b")
        );
        assert_ne!(
            form("expand[]=a&expand[]=b"),
            form("expand[]=b&expand[]=a"),
            "a list's order counts"
        );
        assert_ne!(form("amount=100"), form("amount=101"));
        assert_ne!(
            form("amount=100"),
            fingerprint("POST", "/stripe/v1/refunds", b"amount=100")
        );
    }
}
