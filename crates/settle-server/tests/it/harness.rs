//! Test harness: a fresh database per test (a temp SQLite file, or a PostgreSQL schema owned by a
//! non-superuser role so that row-level security applies), the real app, and a small client
//! that calls the router directly.

use std::{
    str::FromStr,
    sync::{Arc, Once},
    time::Duration,
};

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
    Router,
};
use serde_json::{json, Value};
use settle_server::{clock::ManualClock, App, Config};
use settle_store::{Engine, PostgresStore, SqliteStore, Store, StoreOptions};
use sqlx::{postgres::PgConnectOptions, Connection, PgConnection};
use tower::ServiceExt;

pub const ADMIN_TOKEN: &str = "sat_test_admin_token";
/// The role tests connect as: it owns its schema but is no superuser, so RLS policies bind it.
pub const PG_ROLE: &str = "settle_test";

pub fn pg_url() -> String {
    std::env::var("SETTLE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Connection options for a test schema, as the ordinary role that owns it; its connections
/// are named after the schema, so a test can find (and cut) its own.
pub fn pg_options(schema: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(&pg_url())
        .expect("pg url")
        .username(PG_ROLE)
        .application_name(schema)
        .options([("search_path", schema)])
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub struct TestApp {
    pub router: Router,
    pub app: Option<App>,
    pub store: Arc<dyn Store>,
    pub clock: ManualClock,
    pub db: DbGuard,
}

pub enum DbGuard {
    Sqlite(tempfile::TempDir),
    Postgres { schema: String },
}

impl Drop for DbGuard {
    fn drop(&mut self) {
        if let DbGuard::Postgres { schema } = self {
            let schema = schema.clone();
            // Drop the schema from a thread with its own runtime (Drop cannot await).
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                rt.block_on(async {
                    if let Ok(mut c) = PgConnection::connect(&pg_url()).await {
                        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .execute(&mut c)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

static LOGS: Once = Once::new();

/// Every log line of every test in this process, at debug level (for the tests that search
/// the logs for secrets).
pub static CAPTURED_LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct CapturedWriter;

impl std::io::Write for CapturedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = CAPTURED_LOGS.lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TestApp {
    /// A fresh app, or `None` when PostgreSQL is unreachable outside CI (the test is skipped).
    pub async fn spawn(engine: Engine) -> Option<TestApp> {
        Self::spawn_with(engine, |_| {}).await
    }

    /// [`TestApp::spawn`] with the configuration adjusted by `tweak`.
    pub async fn spawn_with(engine: Engine, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
        LOGS.call_once(|| {
            use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
            let shown = tracing_subscriber::fmt::layer().with_test_writer().with_filter(
                tracing_subscriber::EnvFilter::try_from_env("SETTLE_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            );
            let captured = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(|| CapturedWriter)
                .with_filter(tracing_subscriber::EnvFilter::new("debug"));
            let _ = tracing_subscriber::registry().with(shown).with(captured).try_init();
        });
        let options = StoreOptions {
            pool_size_max: 8,
            ..StoreOptions::default()
        };
        let (store, db): (Arc<dyn Store>, DbGuard) = match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = SqliteStore::open(&dir.path().join("settle.db"), &options)
                    .await
                    .expect("open sqlite");
                (Arc::new(store), DbGuard::Sqlite(dir))
            }
            Engine::Postgres => {
                let schema = match create_pg_schema().await {
                    Ok(schema) => schema,
                    Err(e) if in_ci() => panic!("PostgreSQL is required in CI ({}): {e}", pg_url()),
                    Err(e) => {
                        eprintln!("\n!!! SKIPPING a PostgreSQL test: cannot reach {} ({e}).\n!!! Set SETTLE_TEST_DATABASE_URL or start PostgreSQL.\n", pg_url());
                        return None;
                    }
                };
                let store = PostgresStore::connect_with(pg_options(&schema), &options)
                    .await
                    .expect("connect pg");
                (Arc::new(store), DbGuard::Postgres { schema })
            }
        };
        store.migrate().await.expect("migrate");
        let clock = ManualClock::at(settle_server::clock::Clock::now(&settle_server::clock::SystemClock));
        let mut config = Config::for_engine(engine);
        config.run_jobs = false;
        config.auth_cache_ttl = Duration::from_secs(60);
        config.webhook_private_targets = true;
        config.connector_private_targets = true;
        // A delivery round records every attempt before it returns (tests read them right
        // after), unless a test says otherwise.
        config.webhook_round_wait = Duration::from_secs(30);
        tweak(&mut config);
        let app = App::build(store.clone(), Arc::new(clock.clone()), config)
            .await
            .expect("build app");
        settle_server::set_admin_token(&app.state, ADMIN_TOKEN)
            .await
            .expect("admin token");
        Some(TestApp {
            router: app.router.clone(),
            app: Some(app),
            store,
            clock,
            db,
        })
    }

    /// Shuts the app down (its writer drains, its tasks stop) and builds a new one on the same
    /// database, clock and vault key, as a restarted `settle` process would be.
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// [`TestApp::restart`] with the configuration adjusted by `tweak`.
    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut Config)) {
        let old = self.app.take().expect("app");
        let mut config = old.state.config.clone();
        tweak(&mut config);
        // The router holds the state: it must go before shutdown can drain the writer.
        self.router = Router::new();
        old.shutdown().await;
        config.run_jobs = false;
        let app = App::build(self.store.clone(), Arc::new(self.clock.clone()), config)
            .await
            .expect("rebuild app");
        self.router = app.router.clone();
        self.app = Some(app);
    }

    /// A second app on the same PostgreSQL schema, as a second `settle` process would be.
    pub async fn second_process(&self) -> Option<Router> {
        Some(settle_server::router(self.second_state().await?))
    }

    /// The state of a second app on the same PostgreSQL schema (`None` on SQLite).
    pub async fn second_state(&self) -> Option<settle_server::AppState> {
        let DbGuard::Postgres { schema } = &self.db else {
            return None;
        };
        let store = PostgresStore::connect_with(pg_options(schema), &StoreOptions::default())
            .await
            .expect("connect pg");
        let mut config = Config::for_engine(Engine::Postgres);
        config.run_jobs = false;
        config.vault_key = self.state().config.vault_key.clone();
        config.webhook_private_targets = true;
        config.connector_private_targets = true;
        config.webhook_round_wait = Duration::from_secs(30);
        let app = App::build(Arc::new(store), Arc::new(self.clock.clone()), config)
            .await
            .expect("build");
        Some(app.state.clone())
    }

    /// Runs SQL on the test database behind the app's back (as the superuser on PostgreSQL).
    pub async fn exec(&self, sql: &str) -> u64 {
        self.try_exec(sql).await.expect("exec")
    }

    pub async fn try_exec(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match &self.db {
            DbGuard::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("settle.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await?;
                Ok(sqlx::query(sql).execute(&mut c).await?.rows_affected())
            }
            DbGuard::Postgres { schema } => {
                let mut c = PgConnection::connect(&pg_url()).await?;
                sqlx::query(&format!("SET search_path = {schema}"))
                    .execute(&mut c)
                    .await?;
                Ok(sqlx::query(sql).execute(&mut c).await?.rows_affected())
            }
        }
    }

    /// On PostgreSQL, a connection of its own with `statements` run in an open transaction
    /// (locks that the app's next write will wait for); `None` on SQLite.
    pub async fn blocker(&self, statements: &[String]) -> Option<PgConnection> {
        let DbGuard::Postgres { schema } = &self.db else {
            return None;
        };
        let mut c = PgConnection::connect(&pg_url()).await.expect("connect");
        let setup = [format!("SET search_path = {schema}"), "BEGIN".to_owned()];
        for sql in setup.iter().chain(statements) {
            sqlx::query(sql).execute(&mut c).await.expect("blocker statement");
        }
        Some(c)
    }

    /// Waits (up to 30 s) until one of the app's PostgreSQL connections waits for a lock.
    pub async fn await_lock_wait(&self) {
        self.await_lock_waits(1).await;
    }

    /// Waits (up to 30 s) until `n` of the app's PostgreSQL connections (of any process on its
    /// schema) wait for a lock.
    pub async fn await_lock_waits(&self, n: u64) {
        let DbGuard::Postgres { schema } = &self.db else {
            return;
        };
        let waiting =
            format!("SELECT 1 FROM pg_stat_activity WHERE application_name = '{schema}' AND wait_event_type = 'Lock'");
        for _ in 0..600 {
            if self.exec(&waiting).await >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no write of the app reached the locked rows");
    }

    /// Every byte the database holds, as text: on SQLite the database file and its write-ahead
    /// log (free pages included); on PostgreSQL every row of every table of the schema as JSON,
    /// with byte columns also decoded, so a secret stored in any form shows up.
    pub async fn dump_all_tables(&self) -> String {
        match &self.db {
            DbGuard::Sqlite(dir) => {
                let mut out = Vec::new();
                for file in ["settle.db", "settle.db-wal"] {
                    out.extend(std::fs::read(dir.path().join(file)).unwrap_or_default());
                }
                String::from_utf8_lossy(&out).into_owned()
            }
            DbGuard::Postgres { schema } => {
                let mut c = PgConnection::connect(&pg_url()).await.expect("connect");
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
                )
                .bind(schema)
                .fetch_all(&mut c)
                .await
                .expect("tables");
                let mut out = String::new();
                for t in tables {
                    let rows: Vec<String> =
                        sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {schema}.{t} t"))
                            .fetch_all(&mut c)
                            .await
                            .expect("rows");
                    for row in rows {
                        // bytea appears as "\\x…" hex: decode it as well.
                        for hexed in row.split("\\\\x").skip(1) {
                            let digits: String = hexed.chars().take_while(char::is_ascii_hexdigit).collect();
                            if let Ok(bytes) = hex::decode(&digits) {
                                out.push_str(&String::from_utf8_lossy(&bytes));
                            }
                        }
                        out.push_str(&row);
                        out.push('\n');
                    }
                }
                out
            }
        }
    }

    pub fn state(&self) -> &settle_server::AppState {
        &self.app.as_ref().expect("app").state
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        call(&self.router, method, path, token, body, headers).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, path, token, Some(&body.to_string()), &[]).await
    }

    /// A POST with an `Idempotency-Key`.
    pub async fn post_keyed(&self, path: &str, token: &str, body: &str, key: &str) -> Resp {
        self.call(Method::POST, path, token, Some(body), &[("idempotency-key", key)])
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, token, None, &[]).await
    }

    /// A new merchant and a read+write API key for it.
    pub async fn merchant(&self, name: &str) -> Merchant {
        self.merchant_with(name, json!({})).await
    }

    /// A new merchant with `fields` (`amount_limits`, say) beside its name and email.
    pub async fn merchant_with(&self, name: &str, fields: Value) -> Merchant {
        let mut body = json!({ "name": name, "email": format!("{name}-{}@example.test", rand_suffix()) });
        if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), fields) {
            body.extend(fields);
        }
        let m = self.post("/admin/v1/merchants", ADMIN_TOKEN, body).await;
        assert_eq!(m.status, StatusCode::CREATED, "{}", m.text);
        let id = m.json["id"].as_str().expect("id").to_owned();
        let k = self
            .post(&format!("/admin/v1/merchants/{id}/api_keys"), ADMIN_TOKEN, json!({}))
            .await;
        assert_eq!(k.status, StatusCode::CREATED, "{}", k.text);
        Merchant {
            id,
            key: k.json["secret"].as_str().expect("secret").to_owned(),
            key_id: k.json["id"].as_str().expect("key id").to_owned(),
        }
    }

    /// A new merchant with two unflagged USD accounts, `a` and `b`.
    pub async fn merchant_with_ab(&self, name: &str) -> Merchant {
        let m = self.merchant(name).await;
        self.account(&m, "a", json!({})).await;
        self.account(&m, "b", json!({})).await;
        m
    }

    pub async fn account(&self, m: &Merchant, id: &str, flags: Value) -> Resp {
        let r = self
            .post(
                "/v1/ledger/accounts",
                &m.key,
                json!({ "id": id, "currency": "USD", "flags": flags }),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.text);
        r
    }

    pub async fn transfer(&self, m: &Merchant, body: Value) -> Resp {
        self.post("/v1/ledger/transfers", &m.key, body).await
    }

    pub async fn balance(&self, m: &Merchant, account: &str) -> Value {
        let r = self.get(&format!("/v1/ledger/accounts/{account}"), &m.key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json
    }

    pub async fn verify_ok(&self) {
        let report = settle_server::verify::verify(self.store.as_ref())
            .await
            .expect("verify");
        assert!(report.ok(), "verify found violations: {:?}", report.violations);
    }
}

pub struct Merchant {
    pub id: String,
    pub key: String,
    pub key_id: String,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    pub fn param(&self) -> &str {
        self.json["error"]["param"].as_str().unwrap_or("")
    }
}

/// One request against a router.
pub async fn call(
    router: &Router,
    method: Method,
    path: &str,
    token: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = Request::builder().method(method).uri(path);
    if !token.is_empty() {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.map(|b| Body::from(b.to_owned())).unwrap_or_else(Body::empty))
        .expect("request");
    send(router, req).await
}

/// One request as built, any body.
pub async fn send(router: &Router, req: Request<Body>) -> Resp {
    let res = router.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.expect("body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        json,
        text,
    }
}

pub fn rand_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

async fn create_pg_schema() -> Result<String, sqlx::Error> {
    let mut admin = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&pg_url()))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    // Create the test role once; concurrent tests may race to it.
    let _ = sqlx::query(&format!(
        "DO $$ BEGIN CREATE ROLE {PG_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    ))
    .execute(&mut admin)
    .await;
    let schema = format!("t_{}", rand_suffix());
    sqlx::query(&format!("CREATE SCHEMA {schema} AUTHORIZATION {PG_ROLE}"))
        .execute(&mut admin)
        .await?;
    Ok(schema)
}

/// Runs each listed `async fn(TestApp)` against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::harness::TestApp::spawn(settle_store::Engine::Sqlite).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::harness::TestApp::spawn(settle_store::Engine::Postgres).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}
