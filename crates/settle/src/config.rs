//! Flags and `SETTLE_*` environment variables (see the README's configuration table).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use settle_domain::Secret;
use settle_server::vault::{Vault, KEY_LEN};
use settle_server::{clock::Ids, AppState, Config};
use settle_store::{Engine, Store, StoreOptions};

#[derive(Args, Clone, Debug)]
pub struct Common {
    /// PostgreSQL URL (`postgres://user@host/db`); without it, SQLite at <data-dir>/settle.db.
    #[arg(long, env = "SETTLE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the embedded database and the admin token file live.
    #[arg(long, env = "SETTLE_DATA_DIR", default_value = "./settle-data")]
    pub data_dir: PathBuf,
    /// Most database connections this process opens.
    #[arg(long, env = "SETTLE_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
}

impl Common {
    /// The store of `--database-url` (or the embedded default). `write_alone_max`: the
    /// server's writer tasks, when a server is to run on it (see [`StoreOptions`]).
    pub async fn open_store(&self, write_alone_max: Option<u32>) -> Result<Arc<dyn Store>, String> {
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => {
                create_private_dir(&self.data_dir)?;
                let path = self.data_dir.join("settle.db");
                // Created private before SQLite opens it (its journal files take its mode).
                create_private_file(&path)?;
                path.to_string_lossy().into_owned()
            }
        };
        let defaults = StoreOptions::default();
        let options = StoreOptions {
            pool_size_max: self.db_pool_size,
            write_alone_max: write_alone_max.unwrap_or(defaults.write_alone_max),
            ..defaults
        };
        settle_store::connect(&url, &options)
            .await
            .map_err(|e| format!("cannot open the database: {e}"))
    }
}

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Address to listen on.
    #[arg(long, env = "SETTLE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Set the operator's admin token (otherwise one is generated on first start).
    #[arg(long, env = "SETTLE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Ledger group-commit writers (default: 1).
    #[arg(long, env = "SETTLE_LEDGER_WRITERS")]
    pub ledger_writers: Option<usize>,
    /// Hours an idempotency key is kept.
    #[arg(long, env = "SETTLE_IDEMPOTENCY_RETENTION_HOURS", default_value_t = 24)]
    pub idempotency_retention_hours: u64,
    /// Seconds a verified API key is trusted without a database read.
    #[arg(long, env = "SETTLE_AUTH_CACHE_SECONDS", default_value_t = 2)]
    pub auth_cache_seconds: u64,
    /// Seconds a merchant's connector accounts and routing rules are trusted without a
    /// database read (a change through this process is seen at once).
    #[arg(long, env = "SETTLE_SETTINGS_CACHE_SECONDS", default_value_t = 2)]
    pub settings_cache_seconds: u64,
    /// Longest time one request may take, in seconds.
    #[arg(long, env = "SETTLE_REQUEST_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,
    /// Do not run background jobs in this process (another process runs them).
    #[arg(long, env = "SETTLE_NO_JOBS")]
    pub no_jobs: bool,
    /// Log format: json or text.
    #[arg(long, env = "SETTLE_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// The card vault's key, 64 hex digits (default: generated into the data directory on
    /// SQLite; required on PostgreSQL, where every process must use the same one).
    #[arg(long, env = "SETTLE_VAULT_KEY", hide_env_values = true)]
    pub vault_key: Option<String>,
    /// Longest wait for one call to a payment connector, in seconds.
    #[arg(long, env = "SETTLE_CONNECTOR_TIMEOUT_SECONDS", default_value_t = 10)]
    pub connector_timeout_seconds: u64,
    /// Hours after which an uncaptured authorization is voided and its payment canceled.
    #[arg(long, env = "SETTLE_AUTHORIZATION_TTL_HOURS", default_value_t = 168)]
    pub authorization_ttl_hours: u64,
    /// Whether webhook endpoints may be loopback or private addresses: `allow` or `refuse`
    /// (default: allow on SQLite, refuse on PostgreSQL).
    #[arg(long, env = "SETTLE_WEBHOOK_PRIVATE_TARGETS", value_parser = ["allow", "refuse"])]
    pub webhook_private_targets: Option<String>,
    /// Whether a connector account's `base_url` may be a loopback or private address: `allow`
    /// or `refuse` (default: allow on SQLite, refuse on PostgreSQL).
    #[arg(long, env = "SETTLE_CONNECTOR_PRIVATE_TARGETS", value_parser = ["allow", "refuse"])]
    pub connector_private_targets: Option<String>,
    /// Longest wait for a webhook receiver's answer, in seconds.
    #[arg(long, env = "SETTLE_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    pub webhook_timeout_seconds: u64,
    /// Settle's own base URL, where the sandbox posts its webhooks (default: the listen
    /// address, with 127.0.0.1 for an unspecified one).
    #[arg(long, env = "SETTLE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// A second address that serves the Stripe-compatible API at its root (`/v1/…` there is
    /// `/stripe/v1/…`), for Stripe SDKs that take only a host and a port (stripe-node).
    #[arg(long, env = "SETTLE_STRIPE_LISTEN")]
    pub stripe_listen: Option<String>,
}

/// `http://<addr>`, with loopback for an unspecified address (`0.0.0.0`, `::`).
pub fn own_url(addr: std::net::SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
}

impl ServeArgs {
    /// The ledger writer tasks asked for, within bounds (`None`: the engine's default).
    pub fn ledger_writers(&self) -> Option<usize> {
        self.ledger_writers.map(|w| w.clamp(1, 64))
    }

    pub fn server_config(&self, engine: Engine) -> Result<Config, String> {
        let mut config = Config::for_engine(engine);
        config.vault_key = Secret::new(self.vault_key(engine)?);
        config.connector_timeout = Duration::from_secs(self.connector_timeout_seconds.clamp(1, 120));
        config.authorization_ttl = Duration::from_secs(self.authorization_ttl_hours.max(1).saturating_mul(3600));
        if let Some(w) = self.ledger_writers() {
            config.ledger_writers = w;
        }
        config.idempotency_retention = Duration::from_secs(self.idempotency_retention_hours.saturating_mul(3600));
        config.auth_cache_ttl = Duration::from_secs(self.auth_cache_seconds);
        config.settings_cache_ttl = Duration::from_secs(self.settings_cache_seconds);
        config.request_timeout = Duration::from_secs(self.request_timeout_seconds.max(1));
        config.run_jobs = !self.no_jobs;
        if let Some(choice) = &self.webhook_private_targets {
            config.webhook_private_targets = choice == "allow";
        }
        if let Some(choice) = &self.connector_private_targets {
            config.connector_private_targets = choice == "allow";
        }
        config.webhook_timeout = Duration::from_secs(self.webhook_timeout_seconds.clamp(1, 60));
        Ok(config)
    }

    /// `--vault-key`, else `<data dir>/vault-key`, else (SQLite only) a new key written there.
    fn vault_key(&self, engine: Engine) -> Result<[u8; KEY_LEN], String> {
        if let Some(key) = &self.vault_key {
            return Vault::parse_key(key).map_err(|e| format!("SETTLE_VAULT_KEY: {e}"));
        }
        let path = self.common.data_dir.join("vault-key");
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Vault::parse_key(&text).map_err(|e| format!("{}: {e}", path.display()));
        }
        if engine == Engine::Postgres {
            return Err(
                "SETTLE_VAULT_KEY is required with PostgreSQL (every process must use the same key); \
                        generate one with `openssl rand -hex 32`"
                    .into(),
            );
        }
        create_private_dir(&self.common.data_dir)?;
        let key = Vault::generate_key();
        write_private(&path, &hex::encode(key))?;
        Ok(key)
    }
}

pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SETTLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        let _ = builder.try_init();
    } else {
        let _ = builder.json().flatten_event(true).try_init();
    }
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Creates `path` empty with mode 0600 unless it exists.
fn create_private_file(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Makes sure an admin token exists. Returns where a newly generated one was written.
pub async fn ensure_admin_token(state: &AppState, args: &ServeArgs) -> Result<Option<String>, String> {
    if let Some(token) = &args.admin_token {
        settle_server::set_admin_token(state, token)
            .await
            .map_err(|e| format!("cannot set the admin token: {e:?}"))?;
        return Ok(None);
    }
    let exists = state.admin_token_digest.read().map(|d| d.is_some()).unwrap_or(false);
    if exists {
        return Ok(None);
    }
    let token = Ids::new(state.clock.clone()).secret("sat_");
    create_private_dir(&args.common.data_dir)?;
    let path = args.common.data_dir.join("admin-token");
    write_private(&path, &format!("{token}\n"))?;
    settle_server::set_admin_token(state, &token)
        .await
        .map_err(|e| format!("cannot store the admin token: {e:?}"))?;
    Ok(Some(path.display().to_string()))
}

fn write_private(path: &std::path::Path, contents: &str) -> Result<(), String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub fn getting_started(
    addr: SocketAddr,
    stripe_addr: Option<SocketAddr>,
    engine: Engine,
    args: &ServeArgs,
    new_token: Option<&str>,
) -> String {
    let token_line = match new_token {
        Some(path) => format!("A new admin token was written to {path} (mode 0600); it is shown nowhere else."),
        None => match &args.admin_token {
            Some(_) => "The admin token is the one given by --admin-token / SETTLE_ADMIN_TOKEN.".to_owned(),
            None => format!(
                "The admin token was created on first start (see {}/admin-token).",
                args.common.data_dir.display()
            ),
        },
    };
    // The token given by flag or variable is in no file: the example reads the variable when
    // that is where it came from, and otherwise leaves a place for it.
    let bearer = match &args.admin_token {
        Some(_) if std::env::var_os("SETTLE_ADMIN_TOKEN").is_some() => "$SETTLE_ADMIN_TOKEN".to_owned(),
        Some(_) => "<the --admin-token value>".to_owned(),
        None => format!("$(cat {})", args.common.data_dir.join("admin-token").display()),
    };
    let stripe_line = match stripe_addr {
        Some(s) => format!("Stripe SDKs: api_base http://{addr}/stripe, or host and port {s} (the API at its root)."),
        None => format!("Stripe SDKs: api_base http://{addr}/stripe."),
    };
    format!(
        "Settle is listening on http://{addr} ({engine}).\n{token_line}\n{stripe_line}\n\nCreate a merchant:\n  curl -s http://{addr}/admin/v1/merchants -H \"Authorization: Bearer {bearer}\" -d '{{\"name\": \"Acme\", \"email\": \"ops@acme.test\"}}'\n",
        engine = engine.as_str(),
    )
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// The example reads the token from where it is: the generated file, or the variable.
    #[test]
    fn the_getting_started_example_reads_the_token_from_where_it_is() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let mut generated = Cli::parse_from(["settle", "--data-dir", "/tmp/d"]).serve;
        generated.admin_token = None;
        let text = getting_started(addr, None, Engine::Sqlite, &generated, Some("/tmp/d/admin-token"));
        assert!(text.contains("Bearer $(cat /tmp/d/admin-token)"), "{text}");
        let given = Cli::parse_from(["settle", "--admin-token", "t0ken-given"]).serve;
        let text = getting_started(addr, None, Engine::Sqlite, &given, None);
        let expected = if std::env::var_os("SETTLE_ADMIN_TOKEN").is_some() {
            "Bearer $SETTLE_ADMIN_TOKEN"
        } else {
            "Bearer <the --admin-token value>"
        };
        assert!(text.contains(expected), "{text}");
        assert!(
            !text.contains("t0ken-given"),
            "the token itself is never printed: {text}"
        );
    }
}
