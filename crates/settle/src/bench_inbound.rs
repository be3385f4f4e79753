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
    let pi = {
        let id = payment["id"].as_str().ok_or("payment id")?;
        let mut tx = running
            .store
            .begin(Scope::System, Mode::Read)
            .await
            .map_err(|e| e.to_string())?;
        let merchant_id = tx
            .list_merchants(&settle_store::PageRequest {
                limit: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .items
            .first()
            .map(|m| m.id.clone())
            .ok_or("merchant")?;
        tx.get_payment(&merchant_id, id)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|p| p.provider_ref)
            .ok_or("the delayed payment has no provider ref")?
    };

    let warmup = Duration::from_secs(1);
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
                if budget.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 0 {
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
    println!(
        "webhooks inbound ({engine}, {} clients): {:.0} accepted/s ({} accepted, {errors} errors, {seconds:.1}s); \
         request p50 {:.2} ms p99 {:.2} ms",
        a.clients,
        latencies.len() as f64 / seconds,
        latencies.len(),
        pct(&mut latencies, 0.50),
        pct(&mut latencies, 0.99),
    );
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
    let verified = running.stop().await?;
    Ok(ok && verified)
}
