//! `GET /v1/audit_logs`: one row per mutating call, newest first.

use axum::{extract::State, response::Response, routing::get, Router};
use serde_json::json;

use crate::{context::Ctx, error::ApiError, extract::Page, ledger, AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit_logs", get(list_audit_logs))
}

async fn list_audit_logs(State(state): State<AppState>, ctx: Ctx, page: Page) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let listing = tx
        .list_audit(&merchant_id, &page.0)
        .await
        .map_err(|e| ledger::cursor_error(e, &page))?;
    let data = listing
        .items
        .iter()
        .map(|a| {
            json!({
                "object": "audit_log",
                "id": a.id,
                "actor": a.actor,
                "action": a.action,
                "resource_type": a.resource_type,
                "resource_id": a.resource_id,
                "request_id": a.request_id,
                "ip": a.ip,
                "user_agent": a.user_agent,
                "created": a.created_at.to_rfc3339(),
            })
        })
        .collect();
    ledger::list_reply("/v1/audit_logs", data, listing.has_more)
}
