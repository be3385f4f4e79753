//! The sandbox's webhooks: a delayed sandbox payment's outcome arrives as a signed webhook to
//! Settle's own endpoint, as a real provider's would.
//!
//! The sandbox connector is stateless and makes no calls of its own, so Settle arranges it:
//! when a confirm through a sandbox connector account answers `processing`, [`schedule`]
//! starts a task that waits the account's `resolve_after_seconds` (default 5) and posts the
//! outcome — `payment_intent.amount_capturable_updated`, the sandbox's delayed card always
//! authorizes — to `<public_url>/webhooks/sandbox/<account>`, signed with the account's
//! `webhook_secret` in Stripe's scheme. It is then verified, stored in the inbox and applied
//! by the worker like any provider's event. The sync job stays the safety net: a lost webhook
//! (process stopped, no `public_url`, the built-in sandbox, which has no account and no secret)
//! is resolved by polling, and whichever comes second is ignored.
//!
//! [`webhook_for`] builds the signed webhook (tests post it through the router directly);
//! [`event_body`] is its pure part. Event ids are derived from the attempt and the outcome,
//! so a re-sent webhook is a duplicate.

use std::{sync::atomic::Ordering, time::Duration};

use serde_json::{json, Value};
use settle_domain::payment::{Payment, PaymentStatus};

use crate::{error::ApiError, inbound, AppState};

/// Most sandbox webhooks waiting to be sent by one process; beyond it the sync job resolves.
pub const SCHEDULED_MAX: usize = 10_000;
/// Tries to post one webhook.
pub const SEND_ATTEMPTS_MAX: u32 = 3;
/// The sandbox's default `resolve_after_seconds` (see `settle_connectors::sandbox`).
pub const RESOLVE_AFTER_SECONDS_DEFAULT: u64 = 5;

/// What the sandbox reports. Its delayed card only ever authorizes; the other outcomes exist
/// for tests and for the same shapes Stripe sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SandboxOutcome {
    Processing,
    Authorized,
    Succeeded { amount: i64 },
    Failed { code: String, message: String },
    Canceled,
}

impl SandboxOutcome {
    pub fn event_type(&self) -> &'static str {
        match self {
            SandboxOutcome::Processing => "payment_intent.processing",
            SandboxOutcome::Authorized => "payment_intent.amount_capturable_updated",
            SandboxOutcome::Succeeded { .. } => "payment_intent.succeeded",
            SandboxOutcome::Failed { .. } => "payment_intent.payment_failed",
            SandboxOutcome::Canceled => "payment_intent.canceled",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            SandboxOutcome::Processing => "processing",
            SandboxOutcome::Authorized => "authorized",
            SandboxOutcome::Succeeded { .. } => "succeeded",
            SandboxOutcome::Failed { .. } => "failed",
            SandboxOutcome::Canceled => "canceled",
        }
    }
}

/// The event the sandbox sends about `payment` (whose provider id is `provider_ref` and whose
/// attempt reference is `reference`), created at `created_unix`: Stripe's event and
/// PaymentIntent shapes.
pub fn event_body(
    payment: &Payment,
    provider_ref: &str,
    reference: &str,
    outcome: &SandboxOutcome,
    created_unix: i64,
) -> Value {
    let (status, capturable, received) = match outcome {
        SandboxOutcome::Processing => ("processing", 0, 0),
        SandboxOutcome::Authorized => ("requires_capture", payment.amount, 0),
        SandboxOutcome::Succeeded { amount } => ("succeeded", 0, *amount),
        SandboxOutcome::Failed { .. } => ("requires_payment_method", 0, 0),
        SandboxOutcome::Canceled => ("canceled", 0, 0),
    };
    let last_payment_error = match outcome {
        SandboxOutcome::Failed { code, message } => json!({ "code": code, "message": message, "type": "card_error" }),
        _ => Value::Null,
    };
    json!({
        "id": format!("evt_sbx_{reference}_{}", outcome.name()),
        "object": "event",
        "type": outcome.event_type(),
        "created": created_unix,
        "livemode": false,
        "data": { "object": {
            "id": provider_ref,
            "object": "payment_intent",
            "amount": payment.amount,
            "amount_capturable": capturable,
            "amount_received": received,
            "currency": payment.currency.code().to_ascii_lowercase(),
            "capture_method": "manual",
            "status": status,
            "last_payment_error": last_payment_error,
            "metadata": { "settle_reference": reference, "settle_payment_id": payment.id },
        } },
    })
}

/// A webhook ready to post: where, what, and its `Stripe-Signature` header.
#[derive(Clone, Debug)]
pub struct SignedWebhook {
    pub path: String,
    pub body: String,
    pub signature: String,
}

/// The signed webhook the sandbox sends about `payment` now (`state.clock`), through the
/// sandbox connector account that holds it.
pub async fn webhook_for(
    state: &AppState,
    payment: &Payment,
    outcome: &SandboxOutcome,
) -> Result<SignedWebhook, ApiError> {
    let not_sandbox = || ApiError::Unprocessable {
        code: "not_a_sandbox_account_payment",
        message: "only payments through a sandbox connector account get sandbox webhooks".into(),
        param: None,
    };
    let account_id = payment.connector_account_id.as_deref().ok_or_else(not_sandbox)?;
    let merchant = &payment.merchant_id;
    let (account, attempts) = {
        let mut tx = state.reader(merchant).await?;
        (
            tx.get_connector_account(merchant, account_id).await?,
            tx.list_attempts(merchant, &payment.id).await?,
        )
    };
    let account = account
        .filter(|a| a.connector == settle_connectors::sandbox::NAME)
        .ok_or_else(not_sandbox)?;
    let secret = inbound::secret_of(state, &account)?.ok_or_else(not_sandbox)?;
    let reference = attempts
        .iter()
        .rev()
        .find(|a| a.operation == "authorize" && a.connector_account_id == account.id)
        .map(|a| a.id.clone())
        .unwrap_or_default();
    let provider_ref = payment.provider_ref.clone().unwrap_or_default();
    let now = state.clock.now().unix_seconds();
    let body = event_body(payment, &provider_ref, &reference, outcome, now).to_string();
    Ok(SignedWebhook {
        path: inbound::webhook_path(&account.connector, &account.id),
        signature: inbound::signature::header(secret.expose().as_bytes(), now, body.as_bytes()),
        body,
    })
}

/// After a confirm answered `processing` through a sandbox account: sends its outcome as a
/// webhook once the account's `resolve_after_seconds` have passed (see the module doc). Does
/// nothing without `public_url`, for other connectors, or when too many are waiting.
pub fn schedule(state: &AppState, payment: &Payment) {
    let Some(base) = state.config.public_url.clone() else {
        return;
    };
    if payment.status != PaymentStatus::Processing
        || payment.connector_name.as_deref() != Some(settle_connectors::sandbox::NAME)
    {
        return;
    }
    if state.inbound.scheduled.fetch_add(1, Ordering::SeqCst) >= SCHEDULED_MAX {
        state.inbound.scheduled.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!(payment = %payment.id, "too many sandbox webhooks waiting; the sync job will resolve this one");
        return;
    }
    let (state, payment) = (state.clone(), payment.clone());
    let mut stopping = state.stopping.clone();
    tokio::spawn(async move {
        tokio::select! {
            sent = send_later(&state, &payment, &base) => {
                if let Err(e) = sent {
                    tracing::warn!(payment = %payment.id, error = ?e, "sandbox webhook not sent; the sync job will resolve the payment");
                }
            }
            // Shutting down: the payment stays `processing` and the sync job resolves it.
            _ = stopping.wait_for(|stop| *stop) => {}
        }
        state.inbound.scheduled.fetch_sub(1, Ordering::SeqCst);
    });
}

async fn send_later(state: &AppState, payment: &Payment, base: &str) -> Result<(), ApiError> {
    let resolve_after = {
        let merchant = &payment.merchant_id;
        let account_id = payment.connector_account_id.as_deref().unwrap_or_default();
        let mut tx = state.reader(merchant).await?;
        match tx.get_connector_account(merchant, account_id).await? {
            Some(account) => inbound::credentials_of(state, &account)?["resolve_after_seconds"]
                .as_u64()
                .unwrap_or(RESOLVE_AFTER_SECONDS_DEFAULT),
            // The built-in sandbox has no account, hence no secret: the sync job resolves it.
            None => return Ok(()),
        }
    };
    tokio::time::sleep(Duration::from_secs(resolve_after)).await;
    for attempt in 1..=SEND_ATTEMPTS_MAX {
        // Signed at each try, so that a retry's timestamp is fresh.
        let webhook = webhook_for(state, payment, &SandboxOutcome::Authorized).await?;
        let sent = state
            .inbound
            .http
            .post(format!("{}{}", base.trim_end_matches('/'), webhook.path))
            .header("content-type", "application/json")
            .header(inbound::signature::HEADER, webhook.signature)
            .body(webhook.body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                tracing::warn!(payment = %payment.id, status = r.status().as_u16(), attempt, "sandbox webhook refused")
            }
            Err(e) => tracing::warn!(payment = %payment.id, error = %e, attempt, "sandbox webhook not delivered"),
        }
        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
    }
    Err(ApiError::Unavailable)
}
