//! Customers (`/v1/customers`): who pays. A payment may name one (`customer: "cus_…"`) and
//! keeps a copy of its contact details; payment methods may be attached to one. The
//! Stripe-compatible layer serves the same objects as Stripe's `cus_` customers.

use axum::{
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use settle_domain::customer::{Customer, CustomerFilter};
use settle_store::Listing;

use crate::{
    context::{Ctx, Reply},
    error::ApiError,
    extract::{from_value, page_and_filters, JsonBody},
    fields,
    ledger::{cursor_error, list_reply},
    payments::{methods::method_json, Render},
    AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/customers", post(create).get(list))
        .route("/v1/customers/{id}", get(retrieve).post(update).delete(delete))
        .route("/v1/customers/{id}/payment_methods", get(payment_methods))
}

/// A customer's fields as given to create or update; on update an absent field is kept and an
/// empty string clears it (Stripe's convention).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<Value>,
}

impl CustomerBody {
    pub fn parse(value: Value) -> Result<CustomerBody, ApiError> {
        from_value(value)
    }

    /// Applies the fields to `customer`, checking each.
    fn apply(self, customer: &mut Customer) -> Result<(), ApiError> {
        let cleared = |v: Option<String>| v.map(|s| Some(s).filter(|s| !s.is_empty()));
        if let Some(email) = cleared(self.email) {
            customer.email = email.map(|e| fields::email(&e, "email")).transpose()?;
        }
        if let Some(name) = cleared(self.name) {
            customer.name = fields::name(name, "name")?;
        }
        if let Some(phone) = cleared(self.phone) {
            customer.phone = fields::phone(phone, "phone")?;
        }
        if let Some(d) = cleared(self.description) {
            customer.description = crate::fields::description(d)?;
        }
        if let Some(changes) = self.metadata {
            customer.metadata = fields::merge_metadata(&customer.metadata, changes, "metadata")?;
        }
        Ok(())
    }
}

pub fn customer_json(c: &Customer) -> Value {
    json!({
        "id": c.id,
        "object": "customer",
        "email": c.email,
        "name": c.name,
        "phone": c.phone,
        "description": c.description,
        "metadata": c.metadata,
        "created": c.created_at.to_rfc3339(),
        "updated": c.updated_at.to_rfc3339(),
    })
}

pub async fn create_customer(
    state: &AppState,
    ctx: &Ctx,
    body: CustomerBody,
    render: Render<'_, Customer>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let now = state.clock.now();
    let mut customer = Customer {
        merchant_id: merchant_id.clone(),
        id: state.ids.make("cus"),
        email: None,
        name: None,
        phone: None,
        description: None,
        metadata: json!({}),
        created_at: now,
        updated_at: now,
    };
    body.apply(&mut customer)?;
    let mut tx = state.begin_write(&merchant_id).await?;
    tx.insert_customer(&customer).await?;
    let audit = ctx.audit(state, &merchant_id, "customer.create", "customer", &customer.id);
    ctx.commit(state, tx, render(&customer)?, &[audit]).await
}

pub async fn load(state: &AppState, merchant_id: &str, id: &str) -> Result<Customer, ApiError> {
    let mut tx = state.reader(merchant_id).await?;
    tx.get_customer(merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", id))
}

pub async fn update_customer(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    body: CustomerBody,
    render: Render<'_, Customer>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.begin_write(&merchant_id).await?;
    let mut customer = tx
        .get_customer(&merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", id))?;
    body.apply(&mut customer)?;
    customer.updated_at = state.clock.now();
    tx.update_customer(&customer).await?;
    let audit = ctx.audit(state, &merchant_id, "customer.update", "customer", id);
    ctx.commit(state, tx, render(&customer)?, &[audit]).await
}

/// Deletes a customer (its payment methods are detached; its payments keep its id and the
/// contact details they were made with). `render` gets the deleted customer's id.
pub async fn delete_customer(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    render: Render<'_, str>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.begin_write(&merchant_id).await?;
    if !tx.delete_customer(&merchant_id, id).await? {
        return Err(ApiError::not_found("customer", id));
    }
    let audit = ctx.audit(state, &merchant_id, "customer.delete", "customer", id);
    ctx.commit(state, tx, render(id)?, &[audit]).await
}

pub async fn list_customers(
    state: &AppState,
    merchant_id: &str,
    filter: &CustomerFilter,
    page: &crate::extract::Page,
) -> Result<Listing<Customer>, ApiError> {
    let mut tx = state.reader(merchant_id).await?;
    tx.list_customers(merchant_id, filter, &page.0)
        .await
        .map_err(|e| cursor_error(e, page))
}

/// The payment methods attached to a customer (404 for an unknown customer).
pub async fn list_payment_methods(
    state: &AppState,
    merchant_id: &str,
    customer_id: &str,
    page: &crate::extract::Page,
) -> Result<Listing<settle_domain::payment::PaymentMethod>, ApiError> {
    load(state, merchant_id, customer_id).await?;
    let mut tx = state.reader(merchant_id).await?;
    tx.list_customer_payment_methods(merchant_id, customer_id, &page.0)
        .await
        .map_err(|e| cursor_error(e, page))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let render = |c: &Customer| Reply::json(StatusCode::CREATED, &customer_json(c));
    create_customer(&state, &ctx, CustomerBody::parse(body)?, &render).await
}

async fn retrieve(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let customer = load(&state, ctx.merchant_id(), &id).await?;
    Ok(Reply::json(StatusCode::OK, &customer_json(&customer))?.into_response())
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let render = |c: &Customer| Reply::json(StatusCode::OK, &customer_json(c));
    update_customer(&state, &ctx, &id, CustomerBody::parse(body)?, &render).await
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
    _: crate::extract::JsonBody<crate::extract::NoFields>,
) -> Result<Response, ApiError> {
    let render = |id: &str| {
        Reply::json(
            StatusCode::OK,
            &json!({ "id": id, "object": "customer", "deleted": true }),
        )
    };
    delete_customer(&state, &ctx, &id, &render).await
}

async fn list(State(state): State<AppState>, ctx: Ctx, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let (page, filters) = page_and_filters(query.as_deref().unwrap_or(""), &["email"])?;
    let filter = CustomerFilter {
        email: filters.into_iter().next().map(|(_, v)| v.trim().to_lowercase()),
    };
    let listing = list_customers(&state, ctx.merchant_id(), &filter, &page).await?;
    list_reply(
        "/v1/customers",
        listing.items.iter().map(customer_json).collect(),
        listing.has_more,
    )
}

async fn payment_methods(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (page, _) = page_and_filters(query.as_deref().unwrap_or(""), &[])?;
    let listing = list_payment_methods(&state, ctx.merchant_id(), &id, &page).await?;
    list_reply(
        &format!("/v1/customers/{id}/payment_methods"),
        listing.items.iter().map(method_json).collect(),
        listing.has_more,
    )
}
