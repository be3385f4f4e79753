//! Settle's objects in Stripe's shapes. Payments and refunds are rendered from their native
//! JSON (`payment_json`, `refund_json`), which is also what their domain events carry, so the
//! live object and the object inside an event are rendered by the same code.

use serde_json::{json, Value};
use settle_domain::{
    customer::Customer,
    event::{stripe_type, Event},
    payment::{Payment, PaymentMethod, PaymentStatus},
    webhook::Endpoint,
    Timestamp,
};

use crate::payments::payment_json;

/// The Stripe API version the shapes follow (answered, never negotiated).
pub const API_VERSION: &str = "2024-06-20";

/// `pay_X` → `pi_X`.
pub fn intent_id(payment_id: &str) -> String {
    format!("pi_{}", payment_id.strip_prefix("pay_").unwrap_or(payment_id))
}

/// `pay_X` → `ch_X`: a payment's one successful authorization is its charge.
pub fn charge_id(payment_id: &str) -> String {
    format!("ch_{}", payment_id.strip_prefix("pay_").unwrap_or(payment_id))
}

/// `pi_X` or `ch_X` → `pay_X` (`None` for anything else).
pub fn payment_id(stripe_id: &str) -> Option<String> {
    let rest = stripe_id
        .strip_prefix("pi_")
        .or_else(|| stripe_id.strip_prefix("ch_"))?;
    Some(format!("pay_{rest}"))
}

fn unix(rfc3339: &Value) -> Value {
    rfc3339
        .as_str()
        .and_then(Timestamp::parse_rfc3339)
        .map_or(Value::Null, |t| json!(t.0.div_euclid(1_000_000)))
}

fn lower(currency: &Value) -> Value {
    currency.as_str().map_or(Value::Null, |c| json!(c.to_lowercase()))
}

/// Stripe's `code` and `decline_code` for a connector's error code.
pub fn decline(code: &str) -> (&str, Option<&'static str>) {
    match code {
        "card_declined" => ("card_declined", Some("generic_decline")),
        "insufficient_funds" => ("card_declined", Some("insufficient_funds")),
        "expired_card" => ("expired_card", Some("expired_card")),
        "incorrect_cvc" => ("incorrect_cvc", Some("incorrect_cvc")),
        other => (other, None),
    }
}

/// A PaymentIntent from a payment's native JSON.
pub fn payment_intent(p: &Value) -> Value {
    let id = p["id"].as_str().unwrap_or_default();
    let error = &p["last_payment_error"];
    let last_payment_error = error["code"].as_str().map(|code| {
        let (code, decline_code) = decline(code);
        json!({
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": error["message"],
        })
    });
    json!({
        "id": intent_id(id),
        "object": "payment_intent",
        "amount": p["amount"],
        "amount_capturable": p["amount_capturable"],
        "amount_received": p["amount_captured"],
        "application_fee_amount": p["application_fee_amount"],
        "cancellation_reason": p["cancellation_reason"],
        "capture_method": p["capture_method"],
        "client_secret": Value::Null,
        "confirmation_method": "automatic",
        "created": unix(&p["created"]),
        "currency": lower(&p["currency"]),
        "customer": p["customer_id"],
        "description": p["description"],
        "last_payment_error": last_payment_error,
        "latest_charge": PaymentStatus::parse(p["status"].as_str().unwrap_or_default())
            .is_some_and(|s| s.has_charge(p["amount_captured"].as_i64().unwrap_or(0)))
            .then(|| charge_id(id)),
        "livemode": false,
        "metadata": p["metadata"],
        "payment_method": p["payment_method"],
        "payment_method_types": ["card"],
        "receipt_email": p["receipt_email"],
        "status": p["status"],
    })
}

pub fn intent(p: &Payment) -> Value {
    payment_intent(&payment_json(p))
}

fn card(m: &PaymentMethod) -> Value {
    json!({
        "brand": m.brand,
        "last4": m.last4,
        "exp_month": m.exp_month,
        "exp_year": m.exp_year,
        "fingerprint": m.fingerprint,
        "funding": "unknown",
    })
}

/// A payment's charge (it has one once authorized) from the payment's native JSON, with its
/// card when known.
pub fn charge(p: &Value, method: Option<&PaymentMethod>) -> Value {
    let id = p["id"].as_str().unwrap_or_default();
    let captured = p["amount_captured"].as_i64().unwrap_or(0);
    let refunded = p["amount_refunded"].as_i64().unwrap_or(0);
    let created = if p["authorized"].is_null() {
        &p["created"]
    } else {
        &p["authorized"]
    };
    json!({
        "id": charge_id(id),
        "object": "charge",
        "amount": p["amount"],
        "amount_captured": captured,
        "amount_refunded": refunded,
        "captured": captured > 0,
        "created": unix(created),
        "currency": lower(&p["currency"]),
        "customer": p["customer_id"],
        "description": p["description"],
        "livemode": false,
        "metadata": p["metadata"],
        "paid": true,
        "payment_intent": intent_id(id),
        "payment_method": p["payment_method"],
        "payment_method_details": method.map(|m| json!({ "type": "card", "card": card(m) })),
        "receipt_email": p["receipt_email"],
        "refunded": refunded > 0 && refunded == captured,
        "status": "succeeded",
    })
}

/// A refund from its native JSON.
pub fn refund(r: &Value) -> Value {
    let payment = r["payment_id"].as_str().unwrap_or_default();
    json!({
        "id": r["id"],
        "object": "refund",
        "amount": r["amount"],
        "charge": charge_id(payment),
        "created": unix(&r["created"]),
        "currency": lower(&r["currency"]),
        "failure_reason": r["failure_code"],
        "metadata": r["metadata"],
        "payment_intent": intent_id(payment),
        "reason": r["reason"],
        "status": r["status"],
    })
}

pub fn payment_method(m: &PaymentMethod) -> Value {
    json!({
        "id": m.id,
        "object": "payment_method",
        "billing_details": { "address": Value::Null, "email": Value::Null, "name": Value::Null, "phone": Value::Null },
        "card": card(m),
        "created": m.created_at.0.div_euclid(1_000_000),
        "customer": m.customer_id,
        "livemode": false,
        "metadata": {},
        "type": "card",
    })
}

pub fn customer(c: &Customer) -> Value {
    json!({
        "id": c.id,
        "object": "customer",
        "created": c.created_at.0.div_euclid(1_000_000),
        "description": c.description,
        "email": c.email,
        "livemode": false,
        "metadata": c.metadata,
        "name": c.name,
        "phone": c.phone,
    })
}

/// A webhook endpoint (`metadata` is not kept: always empty).
pub fn webhook_endpoint(e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "object": "webhook_endpoint",
        "api_version": API_VERSION,
        "application": Value::Null,
        "created": e.created_at.0.div_euclid(1_000_000),
        "description": e.description,
        "enabled_events": e.enabled_events,
        "livemode": false,
        "metadata": {},
        "status": if e.enabled { "enabled" } else { "disabled" },
        "url": e.url,
    })
}

/// A Settle event as a Stripe event (`None`: it has no Stripe counterpart).
pub fn event(e: &Event) -> Option<Value> {
    let kind = stripe_type(&e.kind)?;
    let object = match e.aggregate_type.as_str() {
        "payment" if kind.starts_with("charge.") => charge(&e.data, None),
        "payment" => payment_intent(&e.data),
        "refund" => refund(&e.data),
        _ => return None,
    };
    Some(json!({
        "id": e.id,
        "object": "event",
        "api_version": API_VERSION,
        "created": e.created_at.0.div_euclid(1_000_000),
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 0,
        "request": { "id": Value::Null, "idempotency_key": Value::Null },
        "type": kind,
    }))
}
