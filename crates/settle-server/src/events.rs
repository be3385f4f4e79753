//! Domain events over HTTP: `GET /v1/events` (filters, cursor pagination) and
//! `GET /v1/events/{id}`; and [`new_event`], which every service uses to record one.

use axum::{
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::{json, Value};
use settle_domain::event::{self, Event, EventFilter, NewEvent};

use crate::{
    context::{Ctx, Reply},
    error::ApiError,
    extract::page_and_filters,
    fields,
    ledger::{cursor_error, list_reply},
    payments::timestamp_param,
    AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/events", get(list))
        .route("/v1/events/{id}", get(retrieve))
}

/// An event of `kind` about the aggregate `(aggregate_type, aggregate_id)`, carrying `data`
/// (the object after the change). The store numbers it when it is inserted.
pub fn new_event(
    state: &AppState,
    merchant_id: &str,
    kind: &str,
    aggregate_type: &'static str,
    aggregate_id: &str,
    data: Value,
) -> NewEvent {
    NewEvent {
        merchant_id: merchant_id.to_owned(),
        id: state.ids.make("evt"),
        kind: kind.to_owned(),
        aggregate_type,
        aggregate_id: aggregate_id.to_owned(),
        data: data.to_string(),
        created_at: state.clock.now(),
    }
}

pub fn event_json(e: &Event) -> Value {
    json!({
        "id": e.id,
        "object": "event",
        "type": e.kind,
        "created": e.created_at.unix_seconds(),
        "merchant_id": e.merchant_id,
        "aggregate": { "type": e.aggregate_type, "id": e.aggregate_id },
        "sequence": e.sequence,
        "data": { "object": e.data },
    })
}

async fn retrieve(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let event = load(&state, ctx.merchant_id(), &id).await?;
    Ok(Reply::json(StatusCode::OK, &event_json(&event))?.into_response())
}

pub async fn load(state: &AppState, merchant_id: &str, id: &str) -> Result<Event, ApiError> {
    let mut tx = state.reader(merchant_id).await?;
    tx.get_event(merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("event", id))
}

async fn list(State(state): State<AppState>, ctx: Ctx, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let (page, filters) = page_and_filters(
        query.as_deref().unwrap_or(""),
        &["type", "aggregate_id", "created[gte]", "created[lt]"],
    )?;
    let mut filter = EventFilter::default();
    for (name, value) in filters {
        match name.as_str() {
            "type" => {
                if !event::TYPES.contains(&value.as_str()) {
                    return Err(ApiError::invalid("type", "`type` is not an event type Settle records"));
                }
                filter.kind = Some(value);
            }
            "aggregate_id" => {
                fields::client_id(&value, "aggregate_id")?;
                filter.aggregate_id = Some(value);
            }
            "created[gte]" => filter.created_gte = Some(timestamp_param(&value, "created[gte]")?),
            _ => filter.created_lt = Some(timestamp_param(&value, "created[lt]")?),
        }
    }
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let listing = tx
        .list_events(&merchant_id, &filter, &page.0)
        .await
        .map_err(|e| cursor_error(e, &page))?;
    list_reply(
        "/v1/events",
        listing.items.iter().map(event_json).collect(),
        listing.has_more,
    )
}
