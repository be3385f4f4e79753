//! The `settle` binary: thin glue over the library crates.

mod bench;
mod bench_inbound;
mod bench_payments;
mod bench_webhooks;
mod config;
mod http;

use std::{io::Write, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use config::{Common, ServeArgs};
use settle_server::{clock::SystemClock, App, Config};
use settle_store::Engine;

/// Allocation-heavy request handling (JSON in and out) is measurably faster with mimalloc than
/// with glibc's allocator under many threads (see the README's performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "settle",
    version,
    about = "Settle: payments core in one binary (ledger, idempotency, merchants)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (embedded SQLite under ./settle-data unless a database URL is given).
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(Common),
    /// Check the ledger's invariants on a live database; exits 1 on any violation.
    Verify(Common),
    /// Benchmarks (drive the HTTP API on loopback and print figures).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("settle: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Migrate(common) => migrate(common).await,
            Command::Verify(common) => verify(common).await,
            Command::Bench(args) => {
                // Quiet unless asked for (`SETTLE_LOG=settle_server::ledger::writer=debug`, say).
                if std::env::var_os("SETTLE_LOG").is_some() {
                    config::init_logging("text");
                }
                bench::run(args).await
            }
        }
    });
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("settle: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<ExitCode, String> {
    config::init_logging(&args.log_format);
    // Everything that can be refused without the database is, before it is touched.
    let engine = args.common.engine()?;
    // Held until the process ends (the OS releases it however that happens).
    let _lock = args.common.lock_sqlite()?;
    let (vault_key, key_source) = args.vault_key(engine)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (--listen / SETTLE_LISTEN): {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stripe_listener = match &args.stripe_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on {a} (--stripe-listen): {e}"))?,
        ),
        None => None,
    };
    let stripe_addr = stripe_listener
        .as_ref()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .transpose()?;
    let mut server_config = args.server_config(engine, vault_key)?;
    // Where the sandbox posts its webhooks: the given public URL, else this listener.
    server_config.public_url = Some(args.public_url.clone().unwrap_or_else(|| config::own_url(addr)));
    let writers = args
        .ledger_writers()
        .unwrap_or(Config::for_engine(Engine::Postgres).ledger_writers);
    let store = args
        .common
        .open_store(Some(settle_server::ledger::writer::write_alone_tasks(writers)), true)
        .await?;
    // A start that would be refused for a token file is refused before a new database is
    // touched (migrated, tied to this vault key).
    if !store.has_schema().await.map_err(|e| e.to_string())? {
        config::no_foreign_token_file(&args, engine)?;
    }
    store.migrate().await.map_err(|e| format!("migrations failed: {e}"))?;
    // A new key is on disk before the database records it (so that a recorded key is never
    // lost), and removed again if the database was sealed with another.
    key_source.keep(&vault_key, &args.common.data_dir)?;
    match settle_server::startup::check_vault_key(store.as_ref(), &vault_key).await {
        Ok(_) => {}
        Err(e @ settle_server::startup::VaultKeyError::Store(_)) => return Err(e.to_string()),
        Err(e) => {
            key_source.discard();
            return Err(format!(
                "{e}: {}",
                key_source.mismatch_hint(&args.common.data_dir, engine)
            ));
        }
    }
    if store.bypasses_row_security().await.unwrap_or(false) {
        tracing::warn!("the database role is a superuser or has BYPASSRLS: row-level security is not enforced; connect as an ordinary role in production");
    }
    let app = App::build(store.clone(), Arc::new(SystemClock), server_config)
        .await
        .map_err(|e| format!("cannot build the app: {e:?}"))?;
    let token_note = config::ensure_admin_token(&app.state, &args, engine).await?;
    // Not `println!`: a closed stdout must not take the server down.
    let text = config::getting_started(addr, stripe_addr, engine, &args, &token_note);
    let _ = writeln!(std::io::stdout(), "{text}");
    match stripe_addr {
        Some(stripe) => tracing::info!(%addr, %stripe, engine = store.engine().as_str(), "listening"),
        None => tracing::info!(%addr, engine = store.engine().as_str(), "listening"),
    }
    // One signal stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        config::shutdown_signal().await;
        let _ = stop.send(true);
    });
    // A client has as long to send a request's headers as a request may take.
    let header_timeout = app.state.config.request_timeout;
    let main = http::serve(listener, app.router.clone(), header_timeout, stopped.clone());
    let stripe = async {
        if let Some(l) = stripe_listener {
            let rooted = settle_server::stripe::rooted(app.router.clone());
            http::serve(l, rooted, header_timeout, stopped.clone()).await;
        }
    };
    tokio::join!(main, stripe);
    tracing::info!("shutting down: in-flight requests done; draining the ledger writer and jobs");
    app.shutdown().await;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn migrate(common: Common) -> Result<ExitCode, String> {
    let store = common.open_store(None, true).await?;
    store.migrate().await.map_err(|e| format!("migrations failed: {e}"))?;
    println!("migrations applied ({})", store.engine().as_str());
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn verify(common: Common) -> Result<ExitCode, String> {
    // A check reads: a missing SQLite database is refused, not created empty, and a database
    // without Settle's tables is refused, not migrated. (One of an older version is migrated.)
    let store = common.open_store(None, false).await?;
    if !store.has_schema().await.map_err(|e| e.to_string())? {
        store.close().await;
        return Err(format!(
            "no Settle database at {}: nothing to verify (`settle migrate` or `settle serve` creates one)",
            common.database_name()
        ));
    }
    store.migrate().await.map_err(|e| format!("migrations failed: {e}"))?;
    let report = settle_server::verify::verify(store.as_ref())
        .await
        .map_err(|e| format!("verify failed: {e}"))?;
    store.close().await;
    print_report(&report);
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn print_report(report: &settle_server::verify::Report) {
    println!(
        "verify: {} merchants with ledger accounts, {} accounts, {} transfers: {}",
        report.merchants,
        report.accounts,
        report.transfers,
        if report.ok() {
            "OK, every invariant holds".to_owned()
        } else {
            format!("{} VIOLATIONS", report.violations.len())
        }
    );
    for v in &report.violations {
        println!("  violation: {v}");
    }
}
