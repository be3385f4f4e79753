//! `settle bench payments`: concurrent HTTP clients each run create → confirm → capture
//! (manual capture, the built-in sandbox at zero latency) against an in-process server on a
//! fresh database; then `verify`. Reports payments/s with the p50/p99 of a whole payment and
//! of one request, next to pgbench's tps in the same run when the database is PostgreSQL.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::json;

use crate::bench::{pgbench, post, setup, Running};

#[derive(Args, Clone, Debug)]
pub struct PaymentsArgs {
    /// PostgreSQL URL; without it a temporary SQLite database is used.
    #[arg(long, env = "SETTLE_DATABASE_URL")]
    database_url: Option<String>,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Measured seconds (after a 2-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration_seconds: u64,
    /// Stop after this many payments even if time remains.
    #[arg(long, default_value_t = 1_000_000)]
    payments_max: u64,
    /// Ledger writer tasks (default: the server's default for the engine).
    #[arg(long)]
    writers: Option<usize>,
    /// Also run pgbench (TPC-B-like) against the same PostgreSQL and print the ratio.
    #[arg(long)]
    pgbench: bool,
}

struct Sample {
    payment_us: u32,
    request_us: [u32; 3],
}

pub async fn run(a: &PaymentsArgs) -> Result<ExitCode, String> {
    let running = Running::start(a.database_url.as_deref(), a.clients, |config| {
        config.run_jobs = false;
        if let Some(w) = a.writers {
            config.ledger_writers = w;
        }
    })
    .await?;
    let key = setup(&running.http, &running.base, &running.admin, 0).await?;
    // One payment first so the system accounts exist before the clients start.
    one_payment(&running.http, &running.base, &key, 0).await?;
    let stats = crate::bench::refresh_statistics_midway(&running.store);
    let warmup = crate::bench::WARMUP;
    let started = Instant::now();
    let measure_from = started + warmup;
    let deadline = measure_from + Duration::from_secs(a.duration_seconds.max(1));
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(a.payments_max));
    let mut tasks = Vec::new();
    for client in 0..a.clients.max(1) {
        let (http, base, key, budget) = (running.http.clone(), running.base.clone(), key.clone(), budget.clone());
        tasks.push(tokio::spawn(async move {
            let (mut samples, mut errors) = (Vec::new(), 0u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                if !crate::bench::take(&budget, 1) {
                    break;
                }
                n += 1;
                let sent = Instant::now();
                let result = one_payment(&http, &base, &key, client as u64 * 1_000_000_000 + n).await;
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(request_us) => samples.push(Sample {
                        payment_us: sent.elapsed().as_micros() as u32,
                        request_us,
                    }),
                    Err(_) => errors += 1,
                }
            }
            (samples, errors)
        }));
    }
    let _ = stats.await;
    let (mut samples, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (s, e) = t.await.map_err(|e| e.to_string())?;
        samples.extend(s);
        errors += e;
    }
    let seconds = Instant::now()
        .min(deadline)
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(0.001);
    let verified = running.stop().await?;
    let mut payment: Vec<u32> = samples.iter().map(|s| s.payment_us).collect();
    let mut request: Vec<u32> = samples.iter().flat_map(|s| s.request_us).collect();
    let step = |i: usize| pct(&mut samples.iter().map(|s| s.request_us[i]).collect::<Vec<_>>(), 0.50);
    let steps = [step(0), step(1), step(2)];
    let rate = samples.len() as f64 / seconds;
    let engine = if a.database_url.is_some() { "postgres" } else { "sqlite" };
    println!(
        "payments ({engine}, {} clients): {rate:.0} payments/s ({} payments, {errors} errors, {seconds:.1}s); \
         payment p50 {:.2} ms p99 {:.2} ms; request p50 {:.2} ms p99 {:.2} ms \
         (create {:.2}, confirm {:.2}, capture {:.2}); verify {}",
        a.clients,
        samples.len(),
        pct(&mut payment, 0.50),
        pct(&mut payment, 0.99),
        pct(&mut request, 0.50),
        pct(&mut request, 0.99),
        steps[0],
        steps[1],
        steps[2],
        if verified { "ok" } else { "FAILED" }
    );
    let mut ok = verified && errors == 0;
    if a.pgbench {
        let url = a
            .database_url
            .as_deref()
            .ok_or("--pgbench needs --database-url (PostgreSQL)")?;
        let tps = pgbench(url, a.clients, a.duration_seconds).await?;
        println!(
            "pgbench TPC-B-like: {tps:.0} tps; payments/pgbench = {:.2}x",
            rate / tps
        );
        ok &= tps > 0.0;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn pct(values: &mut [u32], p: f64) -> f64 {
    values.sort_unstable();
    let i = ((values.len() as f64 * p) as usize).min(values.len().saturating_sub(1));
    values.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

/// create → confirm → capture; the microseconds of each request.
async fn one_payment(http: &reqwest::Client, base: &str, key: &str, n: u64) -> Result<[u32; 3], String> {
    let mut took = [0u32; 3];
    let t = Instant::now();
    let created = post(
        http,
        &format!("{base}/v1/payments"),
        key,
        &json!({ "amount": 1000 + (n % 9000), "currency": "USD", "capture_method": "manual",
                 "payment_method": { "type": "card", "card": { "number": "4242424242424242", "exp_month": 12, "exp_year": 2099 } } }),
    )
    .await?;
    took[0] = t.elapsed().as_micros() as u32;
    let id = created["id"].as_str().ok_or("payment id")?;
    let t = Instant::now();
    let confirmed = post(http, &format!("{base}/v1/payments/{id}/confirm"), key, &json!({})).await?;
    took[1] = t.elapsed().as_micros() as u32;
    if confirmed["status"] != "requires_capture" {
        return Err(format!("confirm: {confirmed}"));
    }
    let t = Instant::now();
    let captured = post(http, &format!("{base}/v1/payments/{id}/capture"), key, &json!({})).await?;
    took[2] = t.elapsed().as_micros() as u32;
    if captured["status"] != "succeeded" {
        return Err(format!("capture: {captured}"));
    }
    Ok(took)
}
