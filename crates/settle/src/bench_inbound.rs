//! The inbound half of `settle bench webhooks`: (a) — concurrent HTTP clients post signed provider webhooks
//! (Stripe's scheme, each event new) to an in-process server on a fresh database and report
//! accepted/s with the p50/p99 of one request; (b) the time the inbox worker takes to drain
//! that backlog. The events name one delayed (`processing`) sandbox payment and say
//! `payment_intent.processing`, so the worker finds the payment, decides and records each as
//! `ignored` (`already_processing`): the drain measures the worker's per-event cost without
//! moving money.

use std::time::{Duration, Instant};

use serde_json::json;
use settle_domain::inbound::InboxStatus;
use settle_server::inbound::{signature, worker};
use settle_store::{Mode, Scope};

use crate::{
    bench::{post, setup, Running},
    bench_payments::pct,
    bench_webhooks::WebhooksArgs,
};

/// Returns whether every webhook was accepted, the backlog drained and `verify` passed.
pub async fn run(a: &WebhooksArgs) -> Result<bool, String> {
    let running = Running::start(a.database_url.as_deref(), a.clients, |config| config.run_jobs = false).await?;
    let (http, base) = (running.http.clone(), running.base.clone());
    let key = setup(&http, &base, &running.admin, 0).await?;
    let account = post(
        &http,
        &format!("{base}/v1/connector_accounts"),
        &key,
        &json!({ "connector": "sandbox", "credentials": { "resolve_after_seconds": 86_400 } }),
    )
    .await?;
    let secret = account["webhook_secret"].as_str().ok_or("webhook secret")?.to_owned();
    let url = format!("{base}{}", account["webhook_path"].as_str().ok_or("webhook path")?);
    let payment = post(
        &http,
        &format!("{base}/v1/payments"),
        &key,
        &json!({ "amount": 1000, "currency": "USD", "confirm": true, "payment_method": { "type": "card",
                 "card": { "number": "4000000000000077", "exp_month": 12, "exp_year": 2099, "cvc": "123" } } }),
    )
    .await?;
    let merchant_id = {
        let mut tx = running
            .store
            .begin(Scope::System, Mode::Read)
            .await
            .map_err(|e| e.to_string())?;
        tx.list_merchants(&settle_store::PageRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .items
        .first()
        .map(|m| m.id.clone())
        .ok_or("merchant")?
    };
    let pi = provider_ref(&running, &merchant_id, payment["id"].as_str().ok_or("payment id")?).await?;

    let stats = crate::bench::refresh_statistics_midway(&running.store);
    let warmup = crate::bench::WARMUP;
    let started = Instant::now();
    let measure_from = started + warmup;
    let deadline = measure_from + Duration::from_secs(a.duration_seconds.max(1));
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(a.webhooks_max));
    let mut tasks = Vec::new();
    for client in 0..a.clients.max(1) {
        let (http, url, secret, pi, budget) = (http.clone(), url.clone(), secret.clone(), pi.clone(), budget.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut sent_total) = (Vec::new(), 0u64, 0u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                if !crate::bench::take(&budget, 1) {
                    break;
                }
                n += 1;
                let body = json!({ "id": format!("evt_bench_{client}_{n}"), "object": "event",
                    "type": "payment_intent.processing", "created": 0,
                    "data": { "object": { "id": pi, "object": "payment_intent", "status": "processing" } } })
                .to_string();
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let header = signature::header(secret.as_bytes(), t, body.as_bytes());
                let sent = Instant::now();
                let answer = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("stripe-signature", header)
                    .body(body)
                    .send()
                    .await;
                sent_total += 1;
                let ok = matches!(&answer, Ok(r) if r.status().is_success());
                if sent < measure_from {
                    continue;
                }
                if ok {
                    latencies.push(sent.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors, sent_total)
        }));
    }
    let _ = stats.await;
    let (mut latencies, mut errors, mut sent) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, e, s) = t.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        errors += e;
        sent += s;
    }
    let seconds = Instant::now()
        .min(deadline)
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(0.001);
    let engine = if a.database_url.is_some() { "postgres" } else { "sqlite" };
    if latencies.is_empty() && errors == 0 {
        println!(
            "webhooks inbound ({engine}, {} clients): the budget of {} webhooks (--webhooks-max) was spent \
             in the warm-up; nothing measured",
            a.clients, a.webhooks_max
        );
    } else {
        println!(
            "webhooks inbound ({engine}, {} clients): {:.0} accepted/s ({} accepted, {errors} errors, {seconds:.1}s); \
             request p50 {:.2} ms p99 {:.2} ms",
            a.clients,
            latencies.len() as f64 / seconds,
            latencies.len(),
            pct(&mut latencies, 0.50),
            pct(&mut latencies, 0.99),
        );
    }
    let mut ok = errors == 0;
    if !a.no_drain {
        let state = &running.app.state;
        let drain_started = Instant::now();
        let mut rounds = 0u64;
        loop {
            let handled = worker::try_execute_webhook_inbox(state)
                .await
                .map_err(|e| format!("{e:?}"))?;
            rounds += 1;
            if handled == 0 || rounds > 1_000_000 {
                break;
            }
        }
        let drained = drain_started.elapsed().as_secs_f64().max(0.001);
        let mut tx = running
            .store
            .begin(Scope::System, Mode::Read)
            .await
            .map_err(|e| e.to_string())?;
        let ignored = tx.count_inbox(InboxStatus::Ignored).await.map_err(|e| e.to_string())?;
        let left = tx.count_inbox(InboxStatus::Received).await.map_err(|e| e.to_string())?;
        println!(
            "webhooks drain ({engine}): {ignored} events in {drained:.1}s = {:.0} events/s (each found its payment and was recorded ignored); {left} left; {sent} sent in all",
            ignored as f64 / drained
        );
        ok &= left == 0;
    }
    if a.applied > 0 {
        ok &= applied(a, &running, &merchant_id, &key, &url, &secret).await?;
    }
    let verified = running.stop().await?;
    Ok(ok && verified)
}

async fn provider_ref(running: &Running, merchant_id: &str, payment_id: &str) -> Result<String, String> {
    let mut tx = running
        .store
        .begin(Scope::System, Mode::Read)
        .await
        .map_err(|e| e.to_string())?;
    tx.get_payment(merchant_id, payment_id)
        .await
        .map_err(|e| e.to_string())?
        .and_then(|p| p.provider_ref)
        .ok_or_else(|| format!("the delayed payment {payment_id} has no provider ref"))
}

/// The drain of webhooks that move money: `--applied` delayed (`processing`) payments with
/// manual capture, one signed `payment_intent.amount_capturable_updated` each; the worker
/// authorizes each payment (its ledger hold, history and events in one commit).
async fn applied(
    a: &WebhooksArgs,
    running: &Running,
    merchant_id: &str,
    key: &str,
    url: &str,
    secret: &str,
) -> Result<bool, String> {
    let (http, base) = (&running.http, &running.base);
    // Spares the seeding the plans made for empty tables; refreshed again before the drain.
    let seeding = crate::bench::refresh_statistics_midway(&running.store);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(a.applied));
    let mut tasks = Vec::new();
    for _ in 0..a.clients.max(1) {
        let (http, base, key, next) = (http.clone(), base.clone(), key.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while crate::bench::take(&next, 1) {
                let p = post(
                    &http,
                    &format!("{base}/v1/payments"),
                    &key,
                    &json!({ "amount": 1000, "currency": "USD", "confirm": true, "capture_method": "manual",
                             "payment_method": { "type": "card", "card": { "number": "4000000000000077",
                             "exp_month": 12, "exp_year": 2099, "cvc": "123" } } }),
                )
                .await?;
                ids.push(p["id"].as_str().ok_or("payment id")?.to_owned());
            }
            Ok::<_, String>(ids)
        }));
    }
    let _ = seeding.await;
    let mut refs = Vec::new();
    for t in tasks {
        for id in t.await.map_err(|e| e.to_string())?? {
            refs.push(provider_ref(running, merchant_id, &id).await?);
        }
    }
    let refs = std::sync::Arc::new(refs);
    let cursor = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut posts = Vec::new();
    for _ in 0..a.clients.max(1) {
        let (http, url, secret, refs, cursor) = (
            http.clone(),
            url.to_owned(),
            secret.to_owned(),
            refs.clone(),
            cursor.clone(),
        );
        posts.push(tokio::spawn(async move {
            loop {
                let i = cursor.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(pi) = refs.get(i) else {
                    return Ok::<(), String>(());
                };
                let body = json!({ "id": format!("evt_applied_{i}"), "object": "event",
                    "type": "payment_intent.amount_capturable_updated", "created": 0,
                    "data": { "object": { "id": pi, "object": "payment_intent", "status": "requires_capture" } } })
                .to_string();
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(
                        "stripe-signature",
                        signature::header(secret.as_bytes(), t, body.as_bytes()),
                    )
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("webhook answered {}", r.status()));
                }
            }
        }));
    }
    for p in posts {
        p.await.map_err(|e| e.to_string())??;
    }
    // As on a database that has been serving for a while (see `bench::WARMUP`).
    running.store.refresh_statistics().await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut rounds = 0u64;
    while worker::try_execute_webhook_inbox(&running.app.state)
        .await
        .map_err(|e| format!("{e:?}"))?
        > 0
        && rounds < 1_000_000
    {
        rounds += 1;
    }
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    let mut tx = running
        .store
        .begin(Scope::System, Mode::Read)
        .await
        .map_err(|e| e.to_string())?;
    let applied = tx.count_inbox(InboxStatus::Applied).await.map_err(|e| e.to_string())?;
    let engine = if a.database_url.is_some() { "postgres" } else { "sqlite" };
    println!(
        "webhooks drain, applied ({engine}): {applied} events in {seconds:.1}s = {:.0} events/s \
         (each authorized a processing payment: ledger hold, history, events)",
        applied as f64 / seconds
    );
    Ok(applied == i64::try_from(refs.len()).unwrap_or(i64::MAX))
}
