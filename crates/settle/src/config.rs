//! Flags and `SETTLE_*` environment variables (see the README's configuration table).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use settle_domain::Secret;
use settle_server::vault::{Vault, KEY_LEN};
use settle_server::{auth::sha256_hex, clock::Ids, AppState, Config};
use settle_store::{Engine, Store, StoreOptions};

#[derive(Args, Clone, Debug)]
pub struct Common {
    /// PostgreSQL URL (`postgres://user@host/db`, or `postgresql://`); without it, SQLite at
    /// <data-dir>/settle.db. Other schemes are refused.
    #[arg(long, env = "SETTLE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the embedded database, its lock file, its vault key and the admin token file live.
    #[arg(long, env = "SETTLE_DATA_DIR", default_value = "./settle-data")]
    pub data_dir: PathBuf,
    /// Most database connections this process opens.
    #[arg(long, env = "SETTLE_DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,
}

/// Which database a `--database-url` names: PostgreSQL for `postgres://` and `postgresql://`,
/// SQLite for none, a `sqlite:` URL or a plain path; any other scheme is refused.
pub fn engine_of(url: Option<&str>) -> Result<Engine, String> {
    let Some(url) = url else { return Ok(Engine::Sqlite) };
    let Some((scheme, rest)) = url.split_once(':') else {
        return Ok(Engine::Sqlite);
    };
    let is_scheme = scheme.len() >= 2
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return Ok(Engine::Sqlite);
    }
    match scheme {
        "postgres" | "postgresql" if rest.starts_with("//") => Ok(Engine::Postgres),
        "postgres" | "postgresql" => Err(format!(
            "--database-url / SETTLE_DATABASE_URL: a PostgreSQL URL starts with `{scheme}://` \
             (postgres://user@host:5432/database)"
        )),
        "sqlite" => Ok(Engine::Sqlite),
        _ => Err(format!(
            "--database-url / SETTLE_DATABASE_URL: `{}:` is no database Settle runs on; give a \
             postgres:// URL, or none for SQLite in --data-dir",
            scheme.chars().take(40).collect::<String>()
        )),
    }
}

impl Common {
    pub fn engine(&self) -> Result<Engine, String> {
        engine_of(self.database_url.as_deref())
    }

    /// The SQLite database file (`None` on PostgreSQL).
    pub fn sqlite_path(&self) -> Result<Option<PathBuf>, String> {
        if self.engine()? == Engine::Postgres {
            return Ok(None);
        }
        Ok(Some(match &self.database_url {
            Some(url) => PathBuf::from(
                url.strip_prefix("sqlite://")
                    .or_else(|| url.strip_prefix("sqlite:"))
                    .unwrap_or(url),
            ),
            None => self.data_dir.join("settle.db"),
        }))
    }

    /// The database as messages name it: the SQLite file, or PostgreSQL's host, port and
    /// database (never the password).
    pub fn database_name(&self) -> String {
        use sqlx::postgres::PgConnectOptions;
        match (self.sqlite_path(), &self.database_url) {
            (Ok(Some(path)), _) => path.display().to_string(),
            (_, Some(url)) => match url.parse::<PgConnectOptions>() {
                Ok(o) => format!(
                    "PostgreSQL {}:{}/{}",
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or_default()
                ),
                Err(_) => "--database-url".to_owned(),
            },
            _ => "--database-url".to_owned(),
        }
    }

    /// The store of `--database-url` (or the embedded default). `write_alone_max`: the
    /// server's writer tasks, when a server is to run on it (see [`StoreOptions`]). `create`:
    /// whether a missing SQLite database is created (`serve`, `migrate`) or refused (`verify`).
    pub async fn open_store(&self, write_alone_max: Option<u32>, create: bool) -> Result<Arc<dyn Store>, String> {
        let url = match (&self.database_url, self.sqlite_path()?) {
            (_, Some(path)) if !create && !path.exists() => {
                return Err(format!(
                    "no database at {}; give --database-url or --data-dir",
                    path.display()
                ))
            }
            (None, Some(path)) => {
                create_private_dir(&self.data_dir)?;
                // Created private before SQLite opens it (its journal files take its mode).
                create_private_file(&path)?;
                path.to_string_lossy().into_owned()
            }
            (Some(url), _) => url.clone(),
            // PostgreSQL is chosen only by a URL.
            (None, None) => return Err("no database URL".into()),
        };
        let defaults = StoreOptions::default();
        let options = StoreOptions {
            pool_size_max: self.db_pool_size,
            write_alone_max: write_alone_max.unwrap_or(defaults.write_alone_max),
            ..defaults
        };
        match settle_store::connect(&url, &options).await {
            Ok(store) => Ok(store),
            Err(e) if self.engine() == Ok(Engine::Postgres) => Err(postgres_unreachable(&url, &e).await),
            Err(e) => Err(format!("cannot open the database: {e}")),
        }
    }

    /// Takes the SQLite database's lock file (`<database>.lock`, beside it) for as long as the
    /// returned file is open: a second server on the same database is refused, and the lock
    /// goes with the process however it ends (kill -9 included).
    pub fn lock_sqlite(&self) -> Result<Option<std::fs::File>, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(db) = self.sqlite_path()? else {
            return Ok(None);
        };
        if self.database_url.is_none() {
            create_private_dir(&self.data_dir)?;
        }
        let mut name = db.clone().into_os_string();
        name.push(".lock");
        let path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(format!(
                "another settle process is serving {} (it holds {}); stop it first, or give \
                 another --data-dir (several processes share one database only on PostgreSQL)",
                db.display(),
                path.display()
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
        }
    }
}

/// A failed PostgreSQL connection, named by host and port (never the URL: it may hold a
/// password). The pool reports only that it timed out when every try failed, so one direct
/// connection tells why (refused, or an answer from the server).
async fn postgres_unreachable(url: &str, e: &settle_store::StoreError) -> String {
    use settle_store::StoreError;
    use sqlx::{postgres::PgConnectOptions, ConnectOptions};
    let Ok(options) = url.parse::<PgConnectOptions>() else {
        return format!("--database-url / SETTLE_DATABASE_URL is not a valid PostgreSQL URL: {e}");
    };
    let at = format!("{}:{}", options.get_host(), options.get_port());
    let why = match e {
        StoreError::Database(sqlx::Error::PoolTimedOut) => {
            match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
                Ok(Ok(_connection)) => "the connection timed out".to_owned(),
                Ok(Err(direct)) => connect_failure(&direct),
                Err(_) => "the connection timed out (is the host reachable, and PostgreSQL listening \
                           there?)"
                    .to_owned(),
            }
        }
        StoreError::Database(direct) => connect_failure(direct),
        other => other.to_string(),
    };
    format!("cannot connect to PostgreSQL at {at}: {why}")
}

fn connect_failure(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "the connection was refused (is PostgreSQL running and listening there?)".to_owned()
        }
        other => other.to_string(),
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
    #[arg(long, env = "SETTLE_LEDGER_WRITERS", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub ledger_writers: Option<u64>,
    /// Hours an idempotency key is kept.
    #[arg(long, env = "SETTLE_IDEMPOTENCY_RETENTION_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
    pub idempotency_retention_hours: u64,
    /// Seconds a verified API key (and the admin token's digest) is trusted without a database read.
    #[arg(long, env = "SETTLE_AUTH_CACHE_SECONDS", default_value_t = 2)]
    pub auth_cache_seconds: u64,
    /// Seconds a merchant's connector accounts and routing rules are trusted without a
    /// database read (a change through this process is seen at once).
    #[arg(long, env = "SETTLE_SETTINGS_CACHE_SECONDS", default_value_t = 2)]
    pub settings_cache_seconds: u64,
    /// Longest time one request may take, in seconds.
    #[arg(long, env = "SETTLE_REQUEST_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_seconds: u64,
    /// Do not run background jobs in this process (another process runs them).
    #[arg(long, env = "SETTLE_NO_JOBS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_jobs: bool,
    /// Log format: json or text.
    #[arg(long, env = "SETTLE_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
    /// The card vault's key, 64 hex digits (default: generated into the data directory on
    /// SQLite; required on PostgreSQL, where every process must use the same one).
    #[arg(long, env = "SETTLE_VAULT_KEY", hide_env_values = true)]
    pub vault_key: Option<String>,
    /// Longest wait for one call to a payment connector, in seconds.
    #[arg(long, env = "SETTLE_CONNECTOR_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub connector_timeout_seconds: u64,
    /// Hours after which an uncaptured authorization is voided and its payment canceled.
    #[arg(long, env = "SETTLE_AUTHORIZATION_TTL_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=8760))]
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
    #[arg(long, env = "SETTLE_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=30))]
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
    /// The ledger writer tasks asked for (1–64, checked when parsed; `None`: the engine's
    /// default).
    pub fn ledger_writers(&self) -> Option<usize> {
        self.ledger_writers.and_then(|w| usize::try_from(w).ok())
    }

    pub fn server_config(&self, engine: Engine, vault_key: [u8; KEY_LEN]) -> Result<Config, String> {
        let mut config = Config::for_engine(engine);
        config.vault_key = Secret::new(vault_key);
        config.connector_timeout = Duration::from_secs(self.connector_timeout_seconds);
        config.authorization_ttl = Duration::from_secs(self.authorization_ttl_hours.saturating_mul(3600));
        if let Some(w) = self.ledger_writers() {
            config.ledger_writers = w;
        }
        config.idempotency_retention = Duration::from_secs(self.idempotency_retention_hours.saturating_mul(3600));
        config.auth_cache_ttl = Duration::from_secs(self.auth_cache_seconds);
        config.settings_cache_ttl = Duration::from_secs(self.settings_cache_seconds);
        config.request_timeout = Duration::from_secs(self.request_timeout_seconds);
        config.run_jobs = !self.no_jobs;
        if let Some(choice) = &self.webhook_private_targets {
            config.webhook_private_targets = choice == "allow";
        }
        if let Some(choice) = &self.connector_private_targets {
            config.connector_private_targets = choice == "allow";
        }
        config.webhook_timeout = Duration::from_secs(self.webhook_timeout_seconds);
        if let Some(url) = &self.public_url {
            let parsed = reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"));
            if parsed.is_none_or(|u| u.host_str().is_none()) {
                return Err(format!(
                    "--public-url / SETTLE_PUBLIC_URL: '{url}' is not an http or https URL with a host"
                ));
            }
        }
        Ok(config)
    }

    /// `--vault-key`; else, on SQLite only, `<data dir>/vault-key`, or a new key to be written
    /// there once the database has accepted it. Runs before the database is opened.
    pub fn vault_key(&self, engine: Engine) -> Result<([u8; KEY_LEN], KeySource), String> {
        if let Some(key) = &self.vault_key {
            let key = Vault::parse_key(key).map_err(|e| format!("--vault-key / SETTLE_VAULT_KEY: {e}"))?;
            return Ok((key, KeySource::Given));
        }
        if engine == Engine::Postgres {
            return Err(
                "--vault-key / SETTLE_VAULT_KEY is required with PostgreSQL (every process must use \
                 the same key); generate one with `openssl rand -hex 32`"
                    .into(),
            );
        }
        let path = self.common.data_dir.join("vault-key");
        match std::fs::read_to_string(&path) {
            Ok(text) => Vault::parse_key(&text)
                .map(|key| (key, KeySource::File(path.clone())))
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Vault::generate_key(), KeySource::New(path))),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// Where the card-vault key came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `--vault-key` or `SETTLE_VAULT_KEY`.
    Given,
    /// Read from this file (SQLite).
    File(PathBuf),
    /// Generated now (SQLite), to be written to this file once the database accepts it.
    New(PathBuf),
}

impl KeySource {
    /// Writes a newly generated key to its file (mode 0600).
    pub fn keep(&self, key: &[u8; KEY_LEN], data_dir: &std::path::Path) -> Result<(), String> {
        if let KeySource::New(path) = self {
            create_private_dir(data_dir)?;
            write_private(path, &hex::encode(key))?;
        }
        Ok(())
    }

    /// Removes a newly generated key's file again (the database was sealed with another key).
    pub fn discard(&self) {
        if let KeySource::New(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }

    /// What to do when the database was sealed with another key than this one.
    pub fn mismatch_hint(&self, data_dir: &std::path::Path, engine: Engine) -> String {
        match self {
            KeySource::Given => {
                // SQLite's generated key; never PostgreSQL's.
                let file = data_dir.join("vault-key");
                if engine == Engine::Sqlite && file.exists() {
                    format!(
                        "start with the key the data was sealed with; this key came from --vault-key / \
                         SETTLE_VAULT_KEY, while {} holds the key generated on first start (unset \
                         SETTLE_VAULT_KEY to use it)",
                        file.display()
                    )
                } else {
                    "start with the key the data was sealed with (--vault-key / SETTLE_VAULT_KEY)".to_owned()
                }
            }
            KeySource::File(path) => format!(
                "start with the key the data was sealed with (--vault-key / SETTLE_VAULT_KEY); this \
                 key came from {}",
                path.display()
            ),
            KeySource::New(path) => format!(
                "{} is missing: put back the key the data was sealed with (or give it with \
                 --vault-key / SETTLE_VAULT_KEY)",
                path.display()
            ),
        }
    }
}

pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SETTLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

/// The admin token file this data directory keeps for `engine`'s database: one name per engine,
/// so that a PostgreSQL start never touches the token of the SQLite database beside it.
pub fn admin_token_path(data_dir: &std::path::Path, engine: Engine) -> PathBuf {
    data_dir.join(match engine {
        Engine::Sqlite => "admin-token",
        Engine::Postgres => "admin-token-postgres",
    })
}

/// Where the admin token this process accepts can be found (for the getting-started text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenNote {
    /// Generated now, stored in the database and written to this file.
    Written(PathBuf),
    /// Generated on an earlier start, into this file (which still holds it).
    InFile(PathBuf),
    /// The database's token is in no file of this data directory: another process created it
    /// (in its own data directory), or it was given with `--admin-token` earlier.
    Elsewhere,
    /// Given with `--admin-token`; the file that held the token it replaced, removed.
    Given { removed: Option<PathBuf> },
}

/// Makes sure the database has an admin token: `--admin-token` replaces the stored one (and the
/// token file of this data directory, when it held the replaced token, is removed); otherwise
/// the first process to start on a database generates one and writes it to its data
/// directory's token file, and later processes accept the same token.
/// Refuses a start that would generate an admin token for a PostgreSQL database while the token
/// file exists: it is another database's (this one has none yet), maybe that token's only copy,
/// and is never overwritten. (SQLite's file belongs to the database beside it, which is new when
/// it has no token.) A given `--admin-token` writes no file.
pub fn no_foreign_token_file(args: &ServeArgs, engine: Engine) -> Result<(), String> {
    let path = admin_token_path(&args.common.data_dir, engine);
    if engine == Engine::Postgres && args.admin_token.is_none() && path.exists() {
        return Err(format!(
            "{} holds the admin token of another PostgreSQL database (this one has none yet); move \
             it away, or give --admin-token",
            path.display()
        ));
    }
    Ok(())
}

pub async fn ensure_admin_token(state: &AppState, args: &ServeArgs, engine: Engine) -> Result<TokenNote, String> {
    let path = admin_token_path(&args.common.data_dir, engine);
    if let Some(token) = &args.admin_token {
        let previous = settle_server::set_admin_token(state, token)
            .await
            .map_err(|e| format!("cannot set the admin token: {e:?}"))?;
        let stale = match (&previous, file_token_digest(&path)) {
            (Some(previous), Some(in_file)) => in_file == *previous && in_file != sha256_hex(token),
            _ => false,
        };
        if stale {
            std::fs::remove_file(&path).map_err(|e| {
                format!(
                    "cannot remove {}, which holds the replaced admin token: {e}",
                    path.display()
                )
            })?;
        }
        return Ok(TokenNote::Given {
            removed: stale.then_some(path),
        });
    }
    let stored = settle_server::startup::stored_admin_token_digest(state)
        .await
        .map_err(|e| format!("cannot read the admin token: {e:?}"))?;
    if let Some(stored) = stored {
        return Ok(if file_token_digest(&path).as_deref() == Some(stored.as_str()) {
            TokenNote::InFile(path)
        } else {
            TokenNote::Elsewhere
        });
    }
    no_foreign_token_file(args, engine)?;
    let token = Ids::new(state.clock.clone()).secret("sat_");
    let claimed = settle_server::startup::claim_admin_token(state, &token)
        .await
        .map_err(|e| format!("cannot store the admin token: {e:?}"))?;
    if !claimed {
        // Another process starting on the same database stored its token first.
        return Ok(TokenNote::Elsewhere);
    }
    create_private_dir(&args.common.data_dir)?;
    write_private(&path, &format!("{token}\n")).map_err(|e| {
        format!("{e}; the admin token just stored is in no file: restart with --admin-token to set one")
    })?;
    Ok(TokenNote::Written(path))
}

/// SHA-256 (hex) of the token in `path`, if the file exists and can be read.
fn file_token_digest(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(sha256_hex(text.trim()))
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
    token: &TokenNote,
) -> String {
    let token_line = match token {
        TokenNote::Written(path) => format!(
            "A new admin token was written to {} (mode 0600); it is shown nowhere else.",
            path.display()
        ),
        TokenNote::InFile(path) => format!("The admin token was created on first start (see {}).", path.display()),
        TokenNote::Elsewhere => format!(
            "The admin token was created by the process that first started on this database (in the \
             token file of its data directory), or set with --admin-token; {} has no file for it.",
            args.common.data_dir.display()
        ),
        TokenNote::Given { removed } => {
            let mut line = "The admin token is the one given by --admin-token / SETTLE_ADMIN_TOKEN \
                            (it replaces any earlier one of this database)."
                .to_owned();
            if let Some(path) = removed {
                line.push_str(&format!(" {} held the replaced token and was removed.", path.display()));
            }
            line
        }
    };
    // The token given by flag or variable is in no file: the example reads the variable when
    // that is where it came from, and otherwise leaves a place for it.
    let bearer = match token {
        TokenNote::Written(path) | TokenNote::InFile(path) => format!("$(cat {})", path.display()),
        TokenNote::Given { .. } if std::env::var_os("SETTLE_ADMIN_TOKEN").is_some() => "$SETTLE_ADMIN_TOKEN".to_owned(),
        TokenNote::Given { .. } => "<the --admin-token value>".to_owned(),
        TokenNote::Elsewhere => "<the admin token>".to_owned(),
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

    /// Settings out of range or malformed are refused at start, naming the flag.
    #[test]
    fn settings_out_of_range_are_refused() {
        for args in [
            ["--webhook-timeout-seconds", "0"],
            ["--webhook-timeout-seconds", "31"],
            ["--connector-timeout-seconds", "0"],
            ["--request-timeout-seconds", "0"],
            ["--ledger-writers", "0"],
            ["--db-pool-size", "0"],
            ["--authorization-ttl-hours", "0"],
            ["--idempotency-retention-hours", "0"],
            ["--log-format", "xml"],
        ] {
            let refused = Cli::try_parse_from(["settle", args[0], args[1]])
                .err()
                .map(|e| e.to_string());
            assert!(
                refused.as_deref().is_some_and(|e| e.contains(args[0])),
                "{args:?}: {refused:?}"
            );
        }
        for url in ["notaurl", "ftp://x", "http://"] {
            let serve = Cli::parse_from(["settle", "--public-url", url]).serve;
            let refused = serve.server_config(Engine::Sqlite, [7; KEY_LEN]).err();
            assert!(refused.is_some_and(|e| e.contains("--public-url")), "{url}");
        }
        let serve = Cli::parse_from([
            "settle",
            "--public-url",
            "https://pay.example.test",
            "--ledger-writers",
            "3",
        ])
        .serve;
        let config = serve.server_config(Engine::Sqlite, [7; KEY_LEN]).expect("valid");
        assert_eq!(config.ledger_writers, 3);
    }

    /// The example reads the token from where it is: the generated file, or the variable.
    #[test]
    fn the_getting_started_example_reads_the_token_from_where_it_is() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let generated = Cli::parse_from(["settle", "--data-dir", "/tmp/d"]).serve;
        let note = TokenNote::Written(PathBuf::from("/tmp/d/admin-token"));
        let text = getting_started(addr, None, Engine::Sqlite, &generated, &note);
        assert!(text.contains("Bearer $(cat /tmp/d/admin-token)"), "{text}");
        let text = getting_started(addr, None, Engine::Postgres, &generated, &TokenNote::Elsewhere);
        assert!(!text.contains("$(cat"), "no file to point to: {text}");
        assert!(text.contains("first started on this database"), "{text}");
        let given = Cli::parse_from(["settle", "--admin-token", "t0ken-given"]).serve;
        let text = getting_started(addr, None, Engine::Sqlite, &given, &TokenNote::Given { removed: None });
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

    /// Only postgres:// and postgresql:// URLs are PostgreSQL; other schemes are refused.
    #[test]
    fn a_database_url_names_postgres_or_sqlite_or_is_refused() {
        assert_eq!(engine_of(None), Ok(Engine::Sqlite));
        assert_eq!(engine_of(Some("postgres://u@h/d")), Ok(Engine::Postgres));
        assert_eq!(engine_of(Some("postgresql://u@h/d")), Ok(Engine::Postgres));
        assert_eq!(engine_of(Some("sqlite:///tmp/x.db")), Ok(Engine::Sqlite));
        assert_eq!(engine_of(Some("/tmp/x.db")), Ok(Engine::Sqlite));
        for bad in ["mysql://u@h/d", "postgresql:/bad", "postgres:bad", "http://x"] {
            let e = engine_of(Some(bad)).expect_err(bad);
            assert!(e.contains("--database-url"), "{e}");
        }
    }
}
