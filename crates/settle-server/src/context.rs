//! Who is calling and how a mutating call finishes: its audit row and its idempotency record
//! commit in the same transaction as its effects.

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{header, request::Parts, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use settle_domain::{
    tenancy::{AuditEntry, IdempotencyRecord, Merchant, ADMIN_SCOPE},
    Timestamp,
};
use settle_store::Tx;

use crate::{auth::Caller, error::ApiError, AppState};

/// The request's idempotency key and fingerprint, put in place by the idempotency middleware.
#[derive(Clone, Debug)]
pub struct IdempotencyDraft {
    pub key: String,
    pub fingerprint: String,
    pub method: String,
    pub path: String,
}

/// Marks a response whose idempotency record lost a race with another process: the middleware
/// answers with the winner's stored response instead.
#[derive(Clone, Copy, Debug)]
pub struct IdempotencyRace;

/// The id the request-id middleware assigned.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A serialized JSON response, as sent and as stored for idempotent replay.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
}

impl Reply {
    pub fn json(status: StatusCode, value: &impl Serialize) -> Result<Reply, ApiError> {
        let body = serde_json::to_string(value).map_err(|e| ApiError::Internal(format!("serialize: {e}")))?;
        Ok(Reply { status, body })
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// Everything a handler needs to know about the call besides its body.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub caller: Caller,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub idempotency: Option<IdempotencyDraft>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthenticated)?;
        let ip = parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect());
        Ok(Ctx {
            caller,
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
            ip,
            user_agent,
            idempotency: parts.extensions.get::<IdempotencyDraft>().cloned(),
        })
    }
}

impl Ctx {
    /// The calling merchant's record as read with its API key (none for the operator).
    pub fn merchant(&self) -> Option<&Merchant> {
        match &self.caller {
            Caller::Merchant(p) => Some(&p.merchant),
            Caller::Admin => None,
        }
    }

    /// The merchant the call acts for (404 for the operator, who has none).
    pub fn merchant_id(&self) -> &str {
        match &self.caller {
            Caller::Merchant(p) => &p.merchant_id,
            Caller::Admin => ADMIN_SCOPE,
        }
    }

    pub fn audit(
        &self,
        state: &AppState,
        merchant_id: &str,
        action: &str,
        resource_type: &str,
        resource_id: &str,
    ) -> AuditEntry {
        AuditEntry {
            id: state.ids.make("aud"),
            merchant_id: merchant_id.to_owned(),
            actor: match &self.caller {
                Caller::Merchant(p) => p.key_prefix.clone(),
                Caller::Admin => ADMIN_SCOPE.to_owned(),
            },
            action: action.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: resource_id.to_owned(),
            request_id: self.request_id.clone(),
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            created_at: state.clock.now(),
        }
    }

    /// The idempotency record to store with a successful reply, if the call carried a key.
    pub fn idempotency_record(&self, reply: &Reply, now: Timestamp) -> Option<IdempotencyRecord> {
        let draft = self.idempotency.as_ref()?;
        // A declined card (402 in the Stripe-compatible API) changed the payment: its reply is
        // kept like a success, so that a retry replays the decline.
        (reply.status.is_success() || reply.status == axum::http::StatusCode::PAYMENT_REQUIRED).then(|| {
            IdempotencyRecord {
                merchant_id: self.merchant_id().to_owned(),
                key: draft.key.clone(),
                fingerprint: draft.fingerprint.clone(),
                method: draft.method.clone(),
                path: draft.path.clone(),
                status_code: reply.status.as_u16(),
                response_body: reply.body.clone(),
                created_at: now,
            }
        })
    }

    /// Writes the audit rows and (for a 2xx reply with a key) the idempotency record, then
    /// commits the transaction holding the call's effects.
    pub async fn commit(
        &self,
        state: &AppState,
        tx: Box<dyn Tx>,
        reply: Reply,
        audit: &[AuditEntry],
    ) -> Result<Response, ApiError> {
        let kept = reply.clone();
        self.commit_keeping(state, tx, reply, &kept, audit).await
    }

    /// [`Ctx::commit`] that stores `kept` for idempotent replays instead of `reply`: a reply
    /// that shows a secret once keeps a copy without it.
    pub async fn commit_keeping(
        &self,
        state: &AppState,
        mut tx: Box<dyn Tx>,
        reply: Reply,
        kept: &Reply,
        audit: &[AuditEntry],
    ) -> Result<Response, ApiError> {
        tx.insert_audit(audit).await?;
        if let Some(record) = self.idempotency_record(kept, state.clock.now()) {
            insert_idempotency(tx.as_mut(), &record).await?;
        }
        tx.commit().await?;
        Ok(reply.into_response())
    }
}

/// Stores an idempotency record; a unique violation means another process finished the same
/// key first, which the middleware turns into a replay of its response.
pub async fn insert_idempotency(tx: &mut dyn Tx, record: &IdempotencyRecord) -> Result<(), ApiError> {
    match tx.insert_idempotency(record).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_conflict_on("idempotency_keys") => Err(ApiError::IdempotencyRaceLost),
        Err(e) => Err(e.into()),
    }
}
