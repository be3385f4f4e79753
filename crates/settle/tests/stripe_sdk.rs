//! The Stripe-compatible API as Stripe's official SDKs see it: a fresh `settle serve` (on
//! SQLite, and on PostgreSQL) with `--stripe-listen`, a merchant and an API key made through the
//! admin API, then
//! - `tests/stripe_sdk/suite.py` (stdlib `unittest` + the `stripe` Python package), pointed at
//!   the Stripe listener's root on SQLite and at `/stripe` on the main listener on PostgreSQL;
//! - `tests/stripe_sdk/node_suite.js` (stripe-node, which takes only a host and a port), pointed
//!   at the Stripe listener.
//!
//! Each must exit 0. Without a `python3` that can `import stripe` (`pip install stripe`), or
//! without `node` and stripe-node in `SETTLE_STRIPE_NODE_MODULES` (default
//! `~/.cache/settle/stripe-node/node_modules`; `npm install --prefix ~/.cache/settle/stripe-node
//! stripe@16.12.0`), that suite is skipped with a loud message, unless `CI=true`, where that is a
//! failure. PostgreSQL comes from `SETTLE_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), with the same convention when it cannot be
//! reached.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};

mod common;
use common::{ci, free_port, fresh_database, vault_key};

/// Longest run of one SDK suite (each of its waits is bounded much lower).
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

/// `false` after a loud skip message (a failure under `CI=true`) saying what is missing.
fn missing(what: &str, problem: &str, install: &str) -> bool {
    assert!(!ci(), "the {what} suite cannot run ({install}): {problem}");
    eprintln!("\n!!! SKIPPING the {what} suite: {problem}. Install it with `{install}`.\n");
    false
}

/// Where stripe-node is installed (the `node_modules` directory).
fn node_modules() -> PathBuf {
    match std::env::var_os("SETTLE_STRIPE_NODE_MODULES") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/settle/stripe-node/node_modules")
        }
    }
}

/// Whether `node` runs and can load stripe-node from [`node_modules`].
fn node_sdk_available() -> bool {
    let probe = Command::new("node")
        .args(["-e", "require('stripe')"])
        .env("NODE_PATH", node_modules())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let problem = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(_) => format!("node cannot load stripe from {}", node_modules().display()),
        Err(e) => format!("cannot run node: {e}"),
    };
    missing(
        "stripe-node",
        &problem,
        "npm install --prefix ~/.cache/settle/stripe-node stripe@16.12.0",
    )
}

/// Whether `python3` can import `stripe`.
fn python_sdk_available() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import stripe"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let problem = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("no output")
            .to_owned(),
        Err(e) => format!("cannot run python3: {e}"),
    };
    missing(
        "Stripe Python SDK",
        &format!("python3 cannot import stripe ({problem})"),
        "pip install stripe==16.1.0",
    )
}

/// A running `settle serve`, killed when dropped (also when the test panics). Its log (text
/// format, stderr) goes to a file in the test's directory.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `settle serve` on `127.0.0.1:port` (and the Stripe listener on `stripe_port`) with its
/// data directory under `dir` and waits for its getting-started text. Webhook endpoints on
/// loopback are allowed (the suites' receivers).
fn serve(dir: &Path, port: u16, stripe_port: u16, extra: &[&str]) -> Server {
    let log = dir.join("serve.log");
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_settle"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--stripe-listen",
            &format!("127.0.0.1:{stripe_port}"),
            "--log-format",
            "text",
        ])
        .args(extra)
        .env("SETTLE_DATA_DIR", dir.join("settle-data"))
        .env("SETTLE_WEBHOOK_PRIVATE_TARGETS", "allow")
        .env("NO_COLOR", "1")
        .env_remove("SETTLE_DATABASE_URL")
        .env_remove("SETTLE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn settle serve");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server { child, log };
    let mut lines = BufReader::new(stdout).lines();
    let mut text = String::new();
    let mut ready = false;
    for line in lines.by_ref().map_while(Result::ok) {
        text.push_str(&line);
        text.push('\n');
        if line.contains("curl") {
            ready = true;
            break;
        }
    }
    // Keep draining stdout so that the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    assert!(
        ready,
        "settle serve did not start:\n{text}\n--- log ---\n{}",
        server.log_tail(40)
    );
    server
}

async fn post(http: &reqwest::Client, url: &str, token: &str, body: Value) -> Value {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "POST {url}: {status} {text}");
    serde_json::from_str(&text).expect("json")
}

/// A merchant and an API key (`sk_test_…`) for it, through the admin API.
async fn merchant_key(base: &str, admin: &str) -> String {
    let http = reqwest::Client::builder().no_proxy().build().expect("http client");
    let merchant = post(
        &http,
        &format!("{base}/admin/v1/merchants"),
        admin,
        json!({ "name": "Stripe SDK suite", "email": "stripe-sdk@settle.test" }),
    )
    .await;
    let id = merchant["id"].as_str().expect("merchant id");
    let key = post(
        &http,
        &format!("{base}/admin/v1/merchants/{id}/api_keys"),
        admin,
        json!({}),
    )
    .await;
    key["secret"].as_str().expect("secret").to_owned()
}

/// Runs one suite (`program` with `args` and `env`); `Err` carries its output.
async fn run_suite(program: &str, args: &[PathBuf], env: &[(&str, String)]) -> Result<(), String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program} {args:?}: {e}"))?;
    let out = match tokio::time::timeout(SUITE_TIMEOUT, child.wait_with_output()).await {
        Err(_) => return Err(format!("{args:?} did not finish within {SUITE_TIMEOUT:?} (killed)")),
        Ok(Err(e)) => return Err(format!("waiting for {args:?}: {e}")),
        Ok(Ok(out)) => out,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("{stderr}");
        Ok(())
    } else {
        Err(format!(
            "{args:?} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            out.status
        ))
    }
}

fn suite_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/stripe_sdk")
        .join(name)
}

/// Runs the SDK suites that can run here against a started server: Python against
/// `python_base`, stripe-node against the Stripe listener on `stripe_port`.
async fn run_suites(python_base: &str, stripe_port: u16, key: &str) -> Result<(), String> {
    if python_sdk_available() {
        let env = [
            ("SETTLE_STRIPE_BASE", python_base.to_owned()),
            ("SETTLE_STRIPE_KEY", key.to_owned()),
        ];
        run_suite("python3", &[suite_file("suite.py")], &env).await?;
    }
    if node_sdk_available() {
        let env = [
            ("SETTLE_STRIPE_HOST", "127.0.0.1".to_owned()),
            ("SETTLE_STRIPE_PORT", stripe_port.to_string()),
            ("SETTLE_STRIPE_KEY", key.to_owned()),
            ("NODE_PATH", node_modules().display().to_string()),
        ];
        run_suite("node", &[suite_file("node_suite.js")], &env).await?;
    }
    Ok(())
}

/// The token the server generated: `file` is `admin-token` (SQLite) or `admin-token-postgres`.
fn admin_token(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join("settle-data").join(file))
        .expect("admin token file")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_sdk_suites_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, stripe_port) = (free_port(), free_port());
    let server = serve(dir.path(), port, stripe_port, &[]);
    let base = format!("http://127.0.0.1:{port}");
    let key = merchant_key(&base, &admin_token(dir.path(), "admin-token")).await;
    // The Python SDK at the Stripe listener's root, as stripe-node.
    let outcome = run_suites(&format!("http://127.0.0.1:{stripe_port}"), stripe_port, &key).await;
    let log = server.log_tail(80);
    drop(server);
    if let Err(report) = outcome {
        panic!("{report}\n--- settle serve (last lines) ---\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_sdk_suites_on_postgres() {
    let Some((pg, name, db_url)) = fresh_database("settle_sdk").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let vault_key = vault_key();
    let (port, stripe_port) = (free_port(), free_port());
    let server = serve(
        dir.path(),
        port,
        stripe_port,
        &["--database-url", db_url.as_str(), "--vault-key", vault_key.as_str()],
    );
    let base = format!("http://127.0.0.1:{port}");
    let key = merchant_key(&base, &admin_token(dir.path(), "admin-token-postgres")).await;
    // The Python SDK at `/stripe` on the main listener.
    let outcome = run_suites(&format!("{base}/stripe"), stripe_port, &key).await;
    let log = server.log_tail(80);
    drop(server);
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&pg)
        .await
        .expect("drop database");
    if let Err(report) = outcome {
        panic!("{report}\n--- settle serve (last lines) ---\n{log}");
    }
}
