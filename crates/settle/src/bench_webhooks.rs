//! `settle bench webhooks`: inbound (signed provider webhooks accepted per second, then the
//! inbox drained; see `bench_inbound`), then outbound deliveries per second to a local receiver.
//!
//! Outbound starts Settle in-process on a fresh database (jobs off, so nothing is delivered early), a
//! receiver on 127.0.0.1 that answers 200 to every request, and one webhook endpoint for
//! `transfer_batch.created`. It then posts `--events` single-transfer requests (each records
//! one event), and measures the time the dispatcher (`--dispatchers` concurrent loops of the
//! fan-out and delivery rounds, as that many processes would run) takes to deliver them all.
//! Bounded by `--events` and `--timeout-seconds`; loopback only.

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{routing::post, Router};
use clap::Args;
use serde_json::json;
use settle_domain::webhook::DeliveryStatus;
use settle_server::webhooks::{self, dispatch};

use crate::bench::{post as api_post, setup, Running};

#[derive(Args, Clone, Debug)]
pub struct WebhooksArgs {
    /// PostgreSQL URL; without it a temporary SQLite database is used.
    #[arg(long, env = "SETTLE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Concurrent HTTP clients (posting webhooks; creating the outbound events).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Inbound: measured seconds (after a 2-second warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration_seconds: u64,
    /// Inbound: stop after this many webhooks (the warm-up's included) even if time remains.
    #[arg(long, default_value_t = 1_000_000)]
    pub webhooks_max: u64,
    /// Inbound: skip draining the backlog of accepted webhooks (the drain of webhooks that move
    /// money is `--applied`; 0 skips it).
    #[arg(long)]
    pub no_drain: bool,
    /// Inbound: then drain this many webhooks that each authorize a processing payment.
    #[arg(long, default_value_t = 5_000)]
    pub applied: u64,
    /// Outbound: events to deliver.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Outbound: concurrent dispatcher loops.
    #[arg(long, default_value_t = 2)]
    pub dispatchers: usize,
    /// Outbound: give up after this long.
    #[arg(long, default_value_t = 300)]
    pub timeout_seconds: u64,
    /// Run only `inbound` or `outbound`.
    #[arg(long, value_parser = ["inbound", "outbound"])]
    pub only: Option<String>,
}

pub async fn run(a: &WebhooksArgs) -> Result<ExitCode, String> {
    let mut ok = true;
    if a.only.as_deref() != Some("outbound") {
        ok &= crate::bench_inbound::run(a).await?;
    }
    if a.only.as_deref() != Some("inbound") {
        ok &= outbound(a).await?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Returns whether every event was delivered and `verify` passed.
async fn outbound(a: &WebhooksArgs) -> Result<bool, String> {
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let received = received.clone();
        let app = Router::new().route(
            "/hook",
            post(move || {
                let received = received.clone();
                async move {
                    received.fetch_add(1, Ordering::Relaxed);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let url = format!("http://{}/hook", listener.local_addr().map_err(|e| e.to_string())?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    };
    let running = Running::start(a.database_url.as_deref(), a.clients, |config| {
        config.run_jobs = false;
        config.webhook_private_targets = true;
    })
    .await?;
    let key = setup(&running.http, &running.base, &running.admin, 2).await?;
    api_post(
        &running.http,
        &format!("{}/v1/webhook_endpoints", running.base),
        &key,
        &json!({ "url": receiver, "enabled_events": ["transfer_batch.created"] }),
    )
    .await?;

    let made = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..a.clients.max(1) {
        let (http, base, key, next, total) = (
            running.http.clone(),
            running.base.clone(),
            key.clone(),
            next.clone(),
            a.events,
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<(), String>(());
                }
                api_post(
                    &http,
                    &format!("{base}/v1/ledger/transfers"),
                    &key,
                    &json!({ "id": format!("wh{n}"), "debit_account_id": "acct0", "credit_account_id": "acct1",
                             "amount": 1, "currency": "USD" }),
                )
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let making = made.elapsed().as_secs_f64();

    let state = running.app.state.clone();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.timeout_seconds.max(1));
    let mut loops = Vec::new();
    for _ in 0..a.dispatchers.max(1) {
        let state = state.clone();
        loops.push(tokio::spawn(async move {
            let mut idle = 0;
            while Instant::now() < deadline && idle < 3 {
                let fanned = dispatch::try_execute_outbox(&state)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let sent = dispatch::try_execute_deliveries(&state)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                if fanned + sent == 0 {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                } else {
                    idle = 0;
                }
            }
            Ok::<(), String>(())
        }));
    }
    for l in loops {
        l.await.map_err(|e| e.to_string())??;
    }
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    let delivered = webhooks::count(&state, DeliveryStatus::Delivered)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let got = received.load(Ordering::Relaxed);
    // The state holds the ledger writer, which must close before the server can stop.
    drop(state);
    let verified = running.stop().await?;
    let engine = if a.database_url.is_some() { "postgres" } else { "sqlite" };
    println!(
        "webhooks outbound ({engine}, {} dispatchers): {:.0} deliveries/s ({delivered} delivered of {} events, \
         receiver saw {got}, {seconds:.1}s; events made at {:.0}/s); verify {}",
        a.dispatchers,
        delivered as f64 / seconds,
        a.events,
        a.events as f64 / making.max(0.001),
        if verified { "ok" } else { "FAILED" }
    );
    Ok(verified && delivered == i64::try_from(a.events).unwrap_or(i64::MAX))
}
