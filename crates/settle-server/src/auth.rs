//! Bearer authentication (and HTTP Basic for API keys): the operator's admin token and merchants' API keys.
//!
//! Secrets are compared as SHA-256 digests in constant time. Verified keys are cached for a
//! short time (`auth_cache_ttl`) so that a request costs no database read; revoking a key or
//! deactivating a merchant clears this process's cache at once, other processes within the TTL.
//! `last_used_at` is collected in memory and written by a background job, not per request.

use std::{collections::HashMap, sync::Arc, sync::Mutex};

use axum::{
    extract::{Request, State},
    http::{header, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};
use settle_domain::{
    tenancy::{Merchant, MerchantStatus, Scopes},
    Timestamp,
};
use settle_store::{Mode, Scope};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{cache::TtlCache, error::ApiError, AppState};

pub const API_KEY_PREFIX: &str = "sk_test_";
/// `sk_test_` plus 43 base62 characters.
pub const API_KEY_LEN: usize = API_KEY_PREFIX.len() + 43;
/// The part of a key kept in clear to find it: `sk_test_` plus 8 characters.
pub const API_KEY_LOOKUP_LEN: usize = API_KEY_PREFIX.len() + 8;
/// Settings row holding the admin token's digest.
pub const ADMIN_TOKEN_SETTING: &str = "admin_token_sha256";

/// An authenticated merchant API key.
#[derive(Clone, Debug)]
pub struct Principal {
    pub merchant_id: String,
    pub key_id: String,
    pub key_prefix: String,
    pub scopes: Scopes,
    /// The key's merchant as it was read with the key (its amount limits never change).
    pub merchant: Arc<Merchant>,
}

#[derive(Clone, Debug)]
pub enum Caller {
    Admin,
    Merchant(Principal),
}

pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn same_digest(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[derive(Default)]
pub struct AuthCache {
    keys: TtlCache<String, Principal>,
    used: Mutex<HashMap<String, Timestamp>>,
}

impl AuthCache {
    pub fn clear(&self) {
        self.keys.clear();
    }

    fn mark_used(&self, key_id: &str, at: Timestamp) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(key_id.to_owned(), at);
        }
    }

    /// Takes the keys used since the last call, for the `last_used_at` job.
    pub fn take_used(&self) -> Vec<(String, Timestamp)> {
        self.used.lock().map(|mut u| u.drain().collect()).unwrap_or_default()
    }
}

/// The request's one `Authorization` header: none when it is given twice (which of two
/// credentials a proxy or a log took is anyone's guess).
fn authorization(req: &Request) -> Option<&str> {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    values.next().is_none().then(|| value.to_str().ok()).flatten()
}

fn bearer(req: &Request) -> Option<&str> {
    let value = authorization(req)?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The API key of a request: `Bearer <key>`, or HTTP Basic with the key as user name (as
/// Stripe accepts it; the password is ignored).
fn api_key(req: &Request) -> Option<String> {
    if let Some(token) = bearer(req) {
        return Some(token.to_owned());
    }
    use base64::Engine as _;
    let value = authorization(req)?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':').map_or(text.as_str(), |(user, _)| user).to_owned())
}

/// Looks a merchant API key up (cache first) and checks it is live.
pub async fn verify_api_key(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    if token.len() != API_KEY_LEN || !token.starts_with(API_KEY_PREFIX) || !token.is_ascii() {
        return Err(ApiError::Credentials {
            code: "invalid_api_key",
            message: "this is not an API key (API keys start with `sk_test_` and are 51 characters; \
                      the admin token is for /admin only)",
        });
    }
    let digest = sha256_hex(token);
    if let Some(principal) = state.auth.keys.get(&digest, state.config.auth_cache_ttl) {
        return Ok(principal);
    }
    let prefix = &token[..API_KEY_LOOKUP_LEN];
    let candidates = {
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        tx.find_api_keys(prefix).await?
    };
    let (key, merchant) = candidates
        .into_iter()
        .find(|(key, _)| same_digest(&key.secret_hash, &digest))
        .ok_or(ApiError::Unauthenticated)?;
    if key.revoked_at.is_some() || merchant.status != MerchantStatus::Active {
        return Err(ApiError::Unauthenticated);
    }
    let principal = Principal {
        merchant_id: merchant.id.clone(),
        key_id: key.id,
        key_prefix: key.prefix,
        scopes: key.scopes,
        merchant: Arc::new(merchant),
    };
    state.auth.keys.put(digest, principal.clone());
    Ok(principal)
}

/// Middleware for `/v1`: a live API key with `read` (GET) or `write` (anything else) scope.
pub async fn require_merchant(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let principal = match api_key(&req) {
        Some(token) => verify_api_key(&state, &token).await,
        None => Err(ApiError::Credentials {
            code: "missing_api_key",
            message: "no API key: send `Authorization: Bearer sk_test_…` (or HTTP Basic with the key as user name)",
        }),
    };
    let principal = match principal {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if reads && !principal.scopes.read {
        return ApiError::Forbidden("read").into_response();
    }
    if !reads && !principal.scopes.write {
        return ApiError::Forbidden("write").into_response();
    }
    state.auth.mark_used(&principal.key_id, state.clock.now());
    req.extensions_mut().insert(Caller::Merchant(principal));
    next.run(req).await
}

/// Middleware for `/admin`: the operator's admin token.
pub async fn require_admin(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let expected = match admin_token_digest(&state).await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let refusal = match (bearer(&req), expected) {
        (Some(token), Some(expected)) if same_digest(&sha256_hex(token), &expected) => None,
        (None, _) => Some(ApiError::Credentials {
            code: "missing_admin_token",
            message: "no admin token: send `Authorization: Bearer <admin token>`",
        }),
        (Some(_), _) => Some(ApiError::Credentials {
            code: "invalid_admin_token",
            message: "this is not the admin token (an API key is for /v1, not /admin)",
        }),
    };
    if let Some(refusal) = refusal {
        return refusal.into_response();
    }
    req.extensions_mut().insert(Caller::Admin);
    next.run(req).await
}

/// The admin token's digest: the one read from the database less than `auth_cache_ttl` ago,
/// else the database's now (another process sharing it may have set a new token).
pub async fn admin_token_digest(state: &AppState) -> Result<Option<String>, ApiError> {
    if let Some(digest) = state.admin_token_digest.get(&(), state.config.auth_cache_ttl) {
        return Ok(digest);
    }
    let digest = crate::startup::stored_admin_token_digest(state).await?;
    state.admin_token_digest.put((), digest.clone());
    Ok(digest)
}

/// Makes the next admin request read the digest from the database.
pub fn admin_token_digest_forget(state: &AppState) {
    state.admin_token_digest.forget(&());
}
