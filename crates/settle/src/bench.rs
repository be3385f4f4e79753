//! `settle bench`: load generators that drive the HTTP API on loopback and print figures.
//!
//! `settle bench ledger` starts Settle in-process on 127.0.0.1 (a fresh temporary SQLite
//! database, or a fresh schema in the PostgreSQL of `--database-url`), creates a merchant and its
//! accounts through the API, runs `--clients` concurrent HTTP clients for `--duration-seconds`,
//! prints transfers/s and latency percentiles, and finally runs `verify`. With `--pgbench` it
//! also runs pgbench's built-in TPC-B-like script against the same PostgreSQL and prints the
//! ratio. `settle bench suite` runs the four scenarios and prints one table.
//! Every run is bounded in time and count and targets loopback only.

use std::{
    fmt::Write as _,
    process::ExitCode,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use settle_server::{clock::SystemClock, App, Config};
use settle_store::{Engine, PostgresStore, SqliteStore, Store, StoreOptions};
use sqlx::{postgres::PgConnectOptions, Connection, PgConnection};

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Clone, Debug)]
enum What {
    /// One ledger scenario.
    Ledger(LedgerArgs),
    /// The four ledger scenarios (single transfers, batches of 100, a hot account; PostgreSQL
    /// and SQLite), plus pgbench, as one table with their targets.
    Suite(SuiteArgs),
    /// Payments: create + confirm + capture through the sandbox connector, then verify.
    Payments(crate::bench_payments::PaymentsArgs),
    /// Webhooks: inbound accepted/s and drain, outbound deliveries/s to a local receiver.
    Webhooks(crate::bench_webhooks::WebhooksArgs),
}

#[derive(Args, Clone, Debug)]
pub struct LedgerArgs {
    /// PostgreSQL URL; without it a temporary SQLite database is used.
    #[arg(long, env = "SETTLE_DATABASE_URL")]
    database_url: Option<String>,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Ledger accounts transfers are spread over.
    #[arg(long, default_value_t = 1_000)]
    accounts: usize,
    /// Transfers per request (1 = single-transfer requests).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Measured seconds (after a 2-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration_seconds: u64,
    /// Stop after this many transfers even if time remains.
    #[arg(long, default_value_t = 5_000_000)]
    transfers_max: u64,
    /// Every transfer debits the same account.
    #[arg(long)]
    hot: bool,
    /// Ledger writer tasks (default: the server's default for the engine).
    #[arg(long)]
    writers: Option<usize>,
    /// Also run pgbench (TPC-B-like) against the same PostgreSQL and print the ratio.
    #[arg(long)]
    pgbench: bool,
}

#[derive(Args, Clone, Debug)]
pub struct SuiteArgs {
    /// PostgreSQL URL for the PostgreSQL scenarios and pgbench.
    #[arg(
        long,
        env = "SETTLE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 10)]
    duration_seconds: u64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

pub async fn run(args: BenchArgs) -> Result<ExitCode, String> {
    match args.what {
        What::Ledger(a) => {
            let result = ledger(&a).await?;
            println!("{}", result.line());
            let mut ok = result.verified;
            if a.pgbench {
                let url = a
                    .database_url
                    .as_deref()
                    .ok_or("--pgbench needs --database-url (PostgreSQL)")?;
                let tps = pgbench(url, a.clients, a.duration_seconds).await?;
                println!(
                    "pgbench TPC-B-like: {tps:.0} tps; settle/pgbench = {:.2}x",
                    result.transfers_per_second / tps
                );
                ok &= tps > 0.0;
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        What::Suite(s) => suite(&s).await,
        What::Payments(p) => crate::bench_payments::run(&p).await,
        What::Webhooks(w) => crate::bench_webhooks::run(&w).await,
    }
}

pub struct Outcome {
    label: String,
    transfers: u64,
    requests: u64,
    errors: u64,
    seconds: f64,
    transfers_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    verified: bool,
}

impl Outcome {
    fn line(&self) -> String {
        format!(
            "{}: {:.0} transfers/s ({} transfers in {} requests over {:.1}s, {} errors); latency p50 {:.2} ms, p99 {:.2} ms; verify {}",
            self.label,
            self.transfers_per_second,
            self.transfers,
            self.requests,
            self.seconds,
            self.errors,
            self.p50_ms,
            self.p99_ms,
            if self.verified { "ok" } else { "FAILED" }
        )
    }
}

/// How long clients run before measuring starts. Halfway through, the planner's statistics are
/// refreshed ([`refresh_statistics_midway`]), as autovacuum would have done on a database that
/// has served traffic for a minute: every run starts from empty tables, and PostgreSQL would
/// otherwise keep the foreign-key plans it made for them.
pub const WARMUP: Duration = Duration::from_secs(2);

/// Refreshes the planner's statistics halfway through [`WARMUP`].
pub fn refresh_statistics_midway(store: &Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(WARMUP / 2).await;
        if let Err(e) = store.refresh_statistics().await {
            eprintln!("warm-up: refreshing the planner's statistics failed: {e}");
        }
    })
}

/// A fresh database for one run: a temp SQLite file, or a new schema dropped afterwards.
pub enum Fresh {
    /// Held so that the directory lives as long as the run.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        schema: String,
    },
}

async fn open_fresh(url: Option<&str>, write_alone_max: u32) -> Result<(Arc<dyn Store>, Fresh), String> {
    let options = StoreOptions {
        pool_size_max: 16,
        write_alone_max,
        ..StoreOptions::default()
    };
    match url {
        None => {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let store = SqliteStore::open(&dir.path().join("bench.db"), &options)
                .await
                .map_err(|e| e.to_string())?;
            Ok((Arc::new(store), Fresh::Sqlite { _dir: dir }))
        }
        Some(url) => {
            let schema = format!("bench_{}", std::process::id());
            let mut c = PgConnection::connect(url)
                .await
                .map_err(|e| format!("cannot reach {url}: {e}"))?;
            for sql in [
                format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                format!("CREATE SCHEMA {schema}"),
            ] {
                sqlx::query(&sql).execute(&mut c).await.map_err(|e| e.to_string())?;
            }
            let connect = PgConnectOptions::from_str(url)
                .map_err(|e| e.to_string())?
                .options([("search_path", schema.as_str())]);
            let store = PostgresStore::connect_with(connect, &options)
                .await
                .map_err(|e| e.to_string())?;
            Ok((
                Arc::new(store),
                Fresh::Postgres {
                    url: url.to_owned(),
                    schema,
                },
            ))
        }
    }
}

impl Fresh {
    async fn drop_now(self) {
        if let Fresh::Postgres { url, schema } = self {
            if let Ok(mut c) = PgConnection::connect(&url).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut c)
                    .await;
            }
        }
    }
}

/// An in-process server on a loopback port over a fresh database.
pub struct Running {
    pub app: App,
    pub store: Arc<dyn Store>,
    pub fresh: Fresh,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    /// Served as `settle serve` serves (see `http::serve`); stopped by `stop`.
    server: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    pub async fn start(url: Option<&str>, clients: usize, tune: impl FnOnce(&mut Config)) -> Result<Running, String> {
        if std::env::var_os("SETTLE_LOG").is_some() {
            crate::config::init_logging("text");
        }
        let mut config = Config::for_engine(if url.is_some() {
            Engine::Postgres
        } else {
            Engine::Sqlite
        });
        config.auth_cache_ttl = Duration::from_secs(60);
        tune(&mut config);
        let writers = settle_server::ledger::writer::write_alone_tasks(config.ledger_writers);
        let (store, fresh) = open_fresh(url, writers).await?;
        store.migrate().await.map_err(|e| e.to_string())?;
        let app = App::build(store.clone(), Arc::new(SystemClock), config)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let admin = format!("sat_bench_{}", std::process::id());
        settle_server::set_admin_token(&app.state, &admin)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let base = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(crate::http::serve(
            listener,
            app.router.clone(),
            app.state.config.request_timeout,
            stopped,
        ));
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Running {
            app,
            store,
            fresh,
            base,
            admin,
            http,
            server,
            stop,
        })
    }

    /// Stops the server, verifies the ledger, drops the database. Returns whether verify passed.
    pub async fn stop(self) -> Result<bool, String> {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        self.app.shutdown().await;
        let report = settle_server::verify::verify(self.store.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        if !report.ok() {
            crate::print_report(&report);
        }
        self.store.close().await;
        self.fresh.drop_now().await;
        Ok(report.ok())
    }
}

pub async fn ledger(a: &LedgerArgs) -> Result<Outcome, String> {
    let running = Running::start(a.database_url.as_deref(), a.clients, |config| {
        if let Some(w) = a.writers {
            config.ledger_writers = w;
        }
    })
    .await?;
    let key = setup(&running.http, &running.base, &running.admin, a.accounts).await?;
    let stats = refresh_statistics_midway(&running.store);
    let outcome = drive(&running.http, &running.base, &key, a).await;
    let _ = stats.await;
    let verified = running.stop().await?;
    let mut outcome = outcome?;
    outcome.verified = verified;
    Ok(outcome)
}

pub async fn post(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> Result<Value, String> {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!("{url}: {status} {v}"))
    }
}

/// Takes `n` units of a run's budget; `false` once it is spent (it never wraps below zero).
pub fn take(budget: &std::sync::atomic::AtomicU64, n: u64) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    budget
        .fetch_update(Relaxed, Relaxed, |left| left.checked_sub(n))
        .is_ok()
}

/// Creates the merchant, its key and the accounts; returns the key.
pub async fn setup(http: &reqwest::Client, base: &str, admin: &str, accounts: usize) -> Result<String, String> {
    let m = post(
        http,
        &format!("{base}/admin/v1/merchants"),
        admin,
        &json!({
        "name": "bench", "email": format!("bench-{}@example.test", std::process::id()) }),
    )
    .await?;
    let id = m["id"].as_str().ok_or("merchant id")?;
    let k = post(
        http,
        &format!("{base}/admin/v1/merchants/{id}/api_keys"),
        admin,
        &json!({}),
    )
    .await?;
    let key = k["secret"].as_str().ok_or("key")?.to_owned();
    for i in 0..accounts {
        post(
            http,
            &format!("{base}/v1/ledger/accounts"),
            &key,
            &json!({ "id": format!("acct{i}"), "currency": "USD" }),
        )
        .await?;
    }
    Ok(key)
}

async fn drive(http: &reqwest::Client, base: &str, key: &str, a: &LedgerArgs) -> Result<Outcome, String> {
    let warmup = WARMUP;
    let started = Instant::now();
    let measure_from = started + warmup;
    let deadline = measure_from + Duration::from_secs(a.duration_seconds.max(1));
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(a.transfers_max));
    let url = format!("{base}/v1/ledger/transfers");
    let mut tasks = Vec::new();
    for client in 0..a.clients.max(1) {
        let (http, url, key, budget) = (http.clone(), url.clone(), key.to_owned(), budget.clone());
        let (batch, accounts, hot) = (a.batch.clamp(1, 1_000), a.accounts.max(2), a.hot);
        tasks.push(tokio::spawn(async move {
            let mut seed = (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut next = move |n: usize| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % n as u64) as usize
            };
            let (mut transfers, mut requests, mut errors, mut latencies) = (0_u64, 0_u64, 0_u64, Vec::new());
            let mut seq = 0_u64;
            while Instant::now() < deadline {
                if !take(&budget, batch as u64) {
                    break;
                }
                // The body is written directly (no JSON value tree): the load generator shares
                // the machine with the server, so its own cost is kept small.
                let mut body = String::with_capacity(batch * 128 + 16);
                if batch > 1 {
                    body.push_str("{\"transfers\":[");
                }
                for k in 0..batch {
                    seq += 1;
                    let debit = if hot { 0 } else { next(accounts) };
                    let credit = (debit + 1 + next(accounts - 1)) % accounts;
                    let amount = 1 + next(1_000);
                    let sep = if k > 0 { "," } else { "" };
                    let _ = write!(
                        body,
                        "{sep}{{\"id\":\"c{client}-{seq}\",\"debit_account_id\":\"acct{debit}\",\"credit_account_id\":\"acct{credit}\",\"amount\":{amount},\"currency\":\"USD\"}}"
                    );
                }
                if batch > 1 {
                    body.push_str("]}");
                }
                let sent = Instant::now();
                let request = http.post(&url).bearer_auth(&key).header("content-type", "application/json");
                let ok = match request.body(body).send().await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let _ = r.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                if sent >= measure_from {
                    requests += 1;
                    latencies.push(sent.elapsed().as_micros() as u32);
                    if ok {
                        transfers += batch as u64;
                    } else {
                        errors += 1;
                    }
                }
            }
            (transfers, requests, errors, latencies)
        }));
    }
    let (mut transfers, mut requests, mut errors, mut latencies) = (0, 0, 0, Vec::new());
    for t in tasks {
        let (t, r, e, l) = t.await.map_err(|e| e.to_string())?;
        transfers += t;
        requests += r;
        errors += e;
        latencies.extend(l);
    }
    let seconds = Instant::now()
        .min(deadline)
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(0.001);
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let engine = if a.database_url.is_some() { "postgres" } else { "sqlite" };
    Ok(Outcome {
        label: format!(
            "{engine}, {} clients, batch {}{}",
            a.clients,
            a.batch,
            if a.hot { ", hot account" } else { "" }
        ),
        transfers,
        requests,
        errors,
        seconds,
        transfers_per_second: transfers as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        verified: false,
    })
}

/// pgbench's built-in TPC-B-like script on a database of its own on the same server (scale =
/// clients, initialized once and reused). Returns tps.
pub async fn pgbench(url: &str, clients: usize, seconds: u64) -> Result<f64, String> {
    let db = "settle_pgbench";
    let mut admin = PgConnection::connect(url).await.map_err(|e| e.to_string())?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(db)
        .fetch_optional(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut admin)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut options = PgConnectOptions::from_str(url).map_err(|e| e.to_string())?.database(db);
    options = options.application_name("settle-bench");
    let scale = clients.max(1);
    let initialized = match PgConnection::connect_with(&options).await {
        Ok(mut c) => sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pgbench_branches")
            .fetch_one(&mut c)
            .await
            .is_ok_and(|n| n == scale as i64),
        Err(_) => false,
    };
    let target = pgbench_target(url, db)?;
    if !initialized {
        let out = tokio::process::Command::new("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string(), &target])
            .output()
            .await
            .map_err(|e| format!("pgbench not found ({e}); it ships with the PostgreSQL client packages"))?;
        if !out.status.success() {
            return Err(format!("pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let out = tokio::process::Command::new("pgbench")
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.max(1).to_string(),
            "-M",
            "prepared",
            &target,
        ])
        .output()
        .await
        .map_err(|e| format!("pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .ok_or_else(|| {
            format!(
                "pgbench printed no tps: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The same server as `url`, database `db`, as a libpq URI.
fn pgbench_target(url: &str, db: &str) -> Result<String, String> {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').ok_or("database URL without a path")?;
    let server = if server.ends_with('/') { base } else { server };
    Ok(match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    })
}

async fn suite(s: &SuiteArgs) -> Result<ExitCode, String> {
    let scenario = |url: Option<&str>, batch: usize, hot: bool| LedgerArgs {
        database_url: url.map(str::to_owned),
        clients: s.clients,
        accounts: 1_000,
        batch,
        duration_seconds: s.duration_seconds,
        transfers_max: 5_000_000,
        hot,
        writers: None,
        pgbench: false,
    };
    let pg = Some(s.database_url.as_str());
    // pgbench runs before and after our scenarios: its figure moves with checkpoints and the
    // host's load, so the ratios use the mean of the two.
    let before = pgbench(&s.database_url, s.clients, s.duration_seconds).await?;
    println!(
        "pgbench TPC-B-like, {} clients, scale {}: {before:.0} tps",
        s.clients, s.clients
    );
    let single = ledger(&scenario(pg, 1, false)).await?;
    println!("{}", single.line());
    let batched = ledger(&scenario(pg, 100, false)).await?;
    println!("{}", batched.line());
    let hot = ledger(&scenario(pg, 1, true)).await?;
    println!("{}", hot.line());
    let sqlite = ledger(&scenario(None, 100, false)).await?;
    println!("{}", sqlite.line());
    let after = pgbench(&s.database_url, s.clients, s.duration_seconds).await?;
    println!("pgbench TPC-B-like, again: {after:.0} tps");
    let tps = (before + after) / 2.0;
    let rows = [
        (
            "PostgreSQL, single-transfer requests",
            &single,
            format!("{:.2}x pgbench", single.transfers_per_second / tps),
            ">= 1.0x pgbench",
        ),
        (
            "PostgreSQL, batches of 100",
            &batched,
            format!("{:.2}x pgbench", batched.transfers_per_second / tps),
            ">= 10x pgbench",
        ),
        (
            "PostgreSQL, hot account, single",
            &hot,
            format!("{:.2}x uniform", hot.transfers_per_second / single.transfers_per_second),
            ">= 0.5x uniform",
        ),
        (
            "SQLite, batches of 100",
            &sqlite,
            format!("{:.0} transfers/s", sqlite.transfers_per_second),
            ">= 20,000/s",
        ),
    ];
    println!(
        "\n| scenario ({} clients) | transfers/s | p50 ms | p99 ms | measured | target | verify |",
        s.clients
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, o, measured, target) in &rows {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {measured} | {target} | {} |",
            o.transfers_per_second,
            o.p50_ms,
            o.p99_ms,
            if o.verified { "OK" } else { "FAILED" }
        );
    }
    println!(
        "| pgbench TPC-B-like (scale {}), mean of before and after | {tps:.0} tps ({before:.0}, {after:.0}) | | | | | |",
        s.clients
    );
    let all_verified = rows.iter().all(|(_, o, _, _)| o.verified);
    Ok(if all_verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
