//! The `settle` binary as a user runs it: `serve` on a fresh data directory (admin token file,
//! getting-started text), requests over a real socket, SIGTERM while requests are in flight
//! (every acknowledged transfer is kept, the process exits cleanly), then `verify` and `migrate`.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

mod common;
use common::{free_port, fresh_database, vault_key};

fn settle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_settle"))
}

/// Starts `settle serve` and waits for its getting-started text.
fn serve(dir: &std::path::Path, port: u16) -> (Child, String) {
    serve_with(dir, port, &[])
}

/// `settle serve` on `<dir>/settle-data` and `port`, with no `SETTLE_*` database, token or key.
fn serve_command(dir: &std::path::Path, port: u16, extra: &[&str]) -> Command {
    let mut command = settle();
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "text",
        ])
        .args(extra)
        .env("SETTLE_DATA_DIR", dir.join("settle-data"))
        .env_remove("SETTLE_DATABASE_URL")
        .env_remove("SETTLE_ADMIN_TOKEN")
        .env_remove("SETTLE_VAULT_KEY");
    command
}

fn serve_with(dir: &std::path::Path, port: u16, extra: &[&str]) -> (Child, String) {
    let mut child = serve_command(dir, port, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn settle serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut text = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        text.push_str(&line);
        text.push('\n');
        if line.contains("curl") {
            break;
        }
    }
    // Keep draining stdout so that the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, text)
}

async fn post(http: &reqwest::Client, url: &str, token: &str, body: Value) -> (u16, Value) {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A merchant with accounts `a` and `b`, made through the API; returns its API key.
async fn merchant_with_accounts(http: &reqwest::Client, base: &str, admin: &str) -> String {
    let (_, m) = post(
        http,
        &format!("{base}/admin/v1/merchants"),
        admin,
        json!({ "name": "Acme", "email": "ops@acme.test" }),
    )
    .await;
    let mid = m["id"].as_str().expect("merchant id").to_owned();
    let (_, k) = post(
        http,
        &format!("{base}/admin/v1/merchants/{mid}/api_keys"),
        admin,
        json!({}),
    )
    .await;
    let key = k["secret"].as_str().expect("secret").to_owned();
    for id in ["a", "b"] {
        let (status, _) = post(
            http,
            &format!("{base}/v1/ledger/accounts"),
            &key,
            json!({ "id": id, "currency": "USD" }),
        )
        .await;
        assert_eq!(status, 201);
    }
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sigterm_verify_as_a_user_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (mut child, text) = serve(dir.path(), port);
    assert!(text.contains("admin token was written"), "{text}");
    assert!(text.contains("curl"), "{text}");
    let token_path = dir.path().join("settle-data/admin-token");
    let mode = std::fs::metadata(&token_path).expect("token file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    for file in ["settle.db", "settle.db-wal"] {
        let path = dir.path().join("settle-data").join(file);
        let mode = std::fs::metadata(&path).expect(file).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let admin = std::fs::read_to_string(&token_path).expect("token").trim().to_owned();

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let key = merchant_with_accounts(&http, &base, &admin).await;

    // Clients keep posting transfers; SIGTERM arrives in the middle.
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, base, key) = (http.clone(), base.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            for i in 0..10_000 {
                if Instant::now() > deadline {
                    break;
                }
                let body = json!({ "id": format!("c{c}-{i}"), "debit_account_id": "a", "credit_account_id": "b",
                    "amount": 1, "currency": "USD" });
                match http
                    .post(format!("{base}/v1/ledger/transfers"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 201 => acknowledged.push(format!("c{c}-{i}")),
                    Ok(_) | Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let mut acknowledged = 0;
    for c in clients {
        acknowledged += c.await.expect("client").len();
    }
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "settle serve exits cleanly on SIGTERM: {exit:?}");
    assert!(acknowledged > 0, "transfers were acknowledged before the signal");

    // Every acknowledged transfer is stored, and the ledger balances.
    let out = settle()
        .arg("verify")
        .env("SETTLE_DATA_DIR", dir.path().join("settle-data"))
        .env_remove("SETTLE_DATABASE_URL")
        .output()
        .expect("verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("OK, every invariant holds"), "{report}");
    let transfers: usize = report
        .split(" transfers")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("transfer count");
    assert!(
        transfers >= acknowledged,
        "{transfers} stored < {acknowledged} acknowledged"
    );

    // Restarting keeps the admin token (no new file is written) and the data.
    let (mut again, text) = serve(dir.path(), port);
    assert!(!text.contains("admin token was written"), "{text}");
    let r = http
        .get(format!("{base}/v1/ledger/accounts/b"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("get");
    let b: Value = r.json().await.expect("json");
    assert_eq!(b["credits_posted"].as_u64(), Some(transfers as u64));
    let _ = again.kill();
    let _ = again.wait();
}

/// A client that never finishes a request's headers is cut off after the request timeout (as
/// is a connection left idle that long), and a kept-alive connection serves request after request.
#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (mut child, _) = serve_with(dir.path(), port, &["--request-timeout-seconds", "1"]);
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    slow.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let read = slow.read(&mut buf);
    let waited = started.elapsed();
    let mut answers = Vec::new();
    if let Ok(mut kept) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        for _ in 0..3 {
            let n = kept
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .and_then(|()| kept.read(&mut buf))
                .unwrap_or(0);
            answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    // Stopped before any assertion, so that a failure leaves no server behind.
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(read, Ok(0) | Err(_)), "the server answered: {read:?}");
    assert!(waited < Duration::from_secs(25), "cut off only after {waited:?}");
    assert_eq!(answers.len(), 3, "no connection");
    for a in answers {
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_flight_loses_no_acknowledged_transfer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (mut child, _) = serve(dir.path(), port);
    let admin = std::fs::read_to_string(dir.path().join("settle-data/admin-token"))
        .expect("token")
        .trim()
        .to_owned();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let key = merchant_with_accounts(&http, &base, &admin).await;
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, base, key) = (http.clone(), base.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..5_000 {
                let body = json!({ "transfers": [
                    { "id": format!("c{c}-{i}-x"), "debit_account_id": "a", "credit_account_id": "b", "amount": 2, "currency": "USD" },
                    { "id": format!("c{c}-{i}-y"), "debit_account_id": "b", "credit_account_id": "a", "amount": 1, "currency": "USD" }
                ], "atomic": true });
                match http.post(format!("{base}/v1/ledger/transfers")).bearer_auth(&key).json(&body).send().await {
                    Ok(r) if r.status().as_u16() == 200 => acknowledged.push(i),
                    Ok(_) | Err(_) => break,
                }
            }
            acknowledged.len()
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _ = child.kill(); // SIGKILL: no shutdown path runs
    let _ = child.wait();
    let mut acknowledged = 0;
    for c in clients {
        acknowledged += c.await.expect("client");
    }
    assert!(acknowledged > 0);
    let (mut again, _) = serve(dir.path(), port);
    let r = http
        .get(format!("{base}/v1/ledger/accounts/b"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("get");
    let b: Value = r.json().await.expect("json");
    // Each acknowledged atomic batch credited b with 2 and debited it 1; none is half-applied.
    let credits = b["credits_posted"].as_u64().expect("credits");
    let debits = b["debits_posted"].as_u64().expect("debits");
    assert_eq!(credits, 2 * debits, "an atomic batch was half-applied");
    assert!(
        debits >= acknowledged as u64,
        "{debits} batches stored < {acknowledged} acknowledged"
    );
    let _ = again.kill();
    let _ = again.wait();
    let out = settle()
        .arg("verify")
        .env("SETTLE_DATA_DIR", dir.path().join("settle-data"))
        .env_remove("SETTLE_DATABASE_URL")
        .output()
        .expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Every page of a list endpoint (`data`, `has_more`, `starting_after`).
async fn list_all(http: &reqwest::Client, url: &str, key: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let sep = if url.contains('?') { '&' } else { '?' };
        let mut page_url = format!("{url}{sep}limit=100");
        if let Some(last) = all.last().and_then(|v| v["id"].as_str()) {
            page_url.push_str(&format!("&starting_after={last}"));
        }
        let page: Value = http
            .get(page_url)
            .bearer_auth(key)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        all.extend(page["data"].as_array().cloned().unwrap_or_default());
        if page["has_more"] != json!(true) {
            return all;
        }
    }
}

/// One client's payments: create (confirmed; automatic capture, or manual then capture), then
/// a partial refund of every third, each create under an idempotency key. Returns the keys it
/// sent and the payments whose requests were all acknowledged, with their final status.
async fn pay_until_killed(
    http: reqwest::Client,
    base: String,
    key: String,
    c: usize,
) -> (Vec<String>, Vec<(String, String)>) {
    let card = json!({ "type": "card", "card": { "number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123" } });
    let mut keys = Vec::new();
    let mut done = Vec::new();
    for i in 0..2_000 {
        let manual = i % 2 == 1;
        let idem = format!("c{c}-{i}");
        keys.push(idem.clone());
        let body = json!({ "amount": 1_000 + i, "currency": "USD", "confirm": true, "payment_method": card,
                           "capture_method": if manual { "manual" } else { "automatic" } });
        let Ok(r) = http
            .post(format!("{base}/v1/payments"))
            .bearer_auth(&key)
            .header("Idempotency-Key", &idem)
            .json(&body)
            .send()
            .await
        else {
            break;
        };
        let Ok(p) = r.json::<Value>().await else { break };
        let Some(id) = p["id"].as_str().map(str::to_owned) else {
            break;
        };
        let mut status = p["status"].as_str().unwrap_or_default().to_owned();
        if manual {
            let Ok(r) = http
                .post(format!("{base}/v1/payments/{id}/capture"))
                .bearer_auth(&key)
                .json(&json!({}))
                .send()
                .await
            else {
                break;
            };
            let Ok(p) = r.json::<Value>().await else { break };
            status = p["status"].as_str().unwrap_or_default().to_owned();
        }
        if i % 3 == 0 {
            let refund = json!({ "payment_id": id, "amount": 100 });
            let Ok(r) = http
                .post(format!("{base}/v1/refunds"))
                .bearer_auth(&key)
                .json(&refund)
                .send()
                .await
            else {
                break;
            };
            if r.json::<Value>()
                .await
                .map(|v| v["status"] != "succeeded")
                .unwrap_or(true)
            {
                break;
            }
        }
        done.push((id, status));
    }
    (keys, done)
}

/// Creates a sandbox connector account with some latency (so that many calls are in flight
/// when a process dies), runs six paying clients against `base` for 1.5 s, then SIGKILLs
/// `victim`. Returns the idempotency keys sent and the fully acknowledged payments.
async fn pay_then_kill(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    mut victim: Child,
) -> (Vec<String>, Vec<(String, String)>) {
    let (status, _) = post(
        http,
        &format!("{base}/v1/connector_accounts"),
        key,
        json!({ "connector": "sandbox", "credentials": { "latency_ms": 15 } }),
    )
    .await;
    assert_eq!(status, 201);
    let clients: Vec<_> = (0..6)
        .map(|c| tokio::spawn(pay_until_killed(http.clone(), base.to_owned(), key.to_owned(), c)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let _ = victim.kill(); // SIGKILL: claims, holds and refunds are left mid-flight
    let _ = victim.wait();
    let mut keys = Vec::new();
    let mut acknowledged = Vec::new();
    for c in clients {
        let (k, d) = c.await.expect("client");
        keys.extend(k);
        acknowledged.extend(d);
    }
    assert!(!acknowledged.is_empty());
    (keys, acknowledged)
}

/// Against a live process (`base`) after another died: every create is retried with its key
/// (none may make a second payment); the jobs must resolve what the dead process left — no
/// payment stays `processing`, no refund `pending`, no claim outlives its expiry (a capture is
/// then accepted, not `payment_in_progress`) — and every acknowledged payment is unchanged.
async fn check_recovered(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    keys: &[String],
    acknowledged: &[(String, String)],
) {
    let card = json!({ "type": "card", "card": { "number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123" } });
    for idem in keys {
        let i: i64 = idem.rsplit('-').next().and_then(|i| i.parse().ok()).expect("key index");
        let body = json!({ "amount": 1_000 + i, "currency": "USD", "confirm": true, "payment_method": card,
                           "capture_method": if i % 2 == 1 { "manual" } else { "automatic" } });
        let r = http
            .post(format!("{base}/v1/payments"))
            .bearer_auth(key)
            .header("Idempotency-Key", idem)
            .json(&body)
            .send()
            .await
            .expect("retry");
        let code = r.status().as_u16();
        assert!(
            code == 201 || code == 409,
            "retry of {idem}: {code} {}",
            r.text().await.unwrap_or_default()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let payments = list_all(http, &format!("{base}/v1/payments"), key).await;
        let refunds = list_all(http, &format!("{base}/v1/refunds"), key).await;
        let processing = payments.iter().filter(|p| p["status"] == "processing").count();
        let pending = refunds.iter().filter(|r| r["status"] == "pending").count();
        let mut claimed = 0;
        for p in payments.iter().filter(|p| p["status"] == "requires_capture") {
            let id = p["id"].as_str().expect("id");
            let (_, after) = post(http, &format!("{base}/v1/payments/{id}/capture"), key, json!({})).await;
            if after["error"]["code"] == "payment_in_progress" {
                claimed += 1;
            }
        }
        eprintln!(
            "after the kill: {} payments for {} keys ({} acknowledged), {processing} processing, \
             {pending} pending refunds, {claimed} claimed",
            payments.len(),
            keys.len(),
            acknowledged.len()
        );
        if processing == 0 && pending == 0 && claimed == 0 {
            assert_eq!(payments.len(), keys.len(), "one payment per idempotency key");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still unresolved: {processing} processing, {pending} pending refunds, {claimed} claimed"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for (id, status) in acknowledged {
        let p: Value = http
            .get(format!("{base}/v1/payments/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(&p["status"], status, "acknowledged payment {id} changed");
    }
}

/// A short connector timeout makes claims (12 timeouts) expire within the tests.
const SHORT_CLAIMS: [&str; 2] = ["--connector-timeout-seconds", "1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_payment_flows_leaves_nothing_stuck_or_doubled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (child, _) = serve_with(dir.path(), port, &SHORT_CLAIMS);
    let admin = std::fs::read_to_string(dir.path().join("settle-data/admin-token"))
        .expect("token")
        .trim()
        .to_owned();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let key = merchant_with_accounts(&http, &base, &admin).await;
    let (keys, acknowledged) = pay_then_kill(&http, &base, &key, child).await;
    let (mut again, _) = serve_with(dir.path(), port, &SHORT_CLAIMS);
    check_recovered(&http, &base, &key, &keys, &acknowledged).await;
    let _ = again.kill();
    let _ = again.wait();
    let out = settle()
        .arg("verify")
        .env("SETTLE_DATA_DIR", dir.path().join("settle-data"))
        .env_remove("SETTLE_DATABASE_URL")
        .output()
        .expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_postgres_the_survivor_recovers_what_the_killed_one_left() {
    let Some((pg, name, db_url)) = fresh_database("settle_cli").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let vault_key = vault_key();
    let admin = format!("sat_{}", rand::random::<u64>());
    let flags = [
        "--database-url",
        db_url.as_str(),
        "--vault-key",
        vault_key.as_str(),
        "--admin-token",
        admin.as_str(),
        SHORT_CLAIMS[0],
        SHORT_CLAIMS[1],
    ];
    let (port_a, port_b) = (free_port(), free_port());
    let (a, _) = serve_with(&dir.path().join("a"), port_a, &flags);
    let (mut b, _) = serve_with(&dir.path().join("b"), port_b, &flags);
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let http = reqwest::Client::new();
    let key = merchant_with_accounts(&http, &base_a, &admin).await;
    let (keys, acknowledged) = pay_then_kill(&http, &base_a, &key, a).await;
    // Process b, which shared the database all along, finishes what a left.
    check_recovered(&http, &base_b, &key, &keys, &acknowledged).await;
    let _ = b.kill();
    let _ = b.wait();
    let out = settle()
        .args(["verify", "--database-url", db_url.as_str()])
        .output()
        .expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&pg)
        .await
        .expect("drop database");
}

#[test]
fn verify_exits_non_zero_on_a_tampered_ledger_and_migrate_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("settle-data");
    for _ in 0..2 {
        let out = settle()
            .arg("migrate")
            .env("SETTLE_DATA_DIR", &data)
            .env_remove("SETTLE_DATABASE_URL")
            .output()
            .expect("migrate");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let db = data.join("settle.db");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("open");
        for sql in [
            "INSERT INTO merchants (id, name, email, default_currency, amount_limits, metadata, status, created_at) \
             VALUES ('mer_x', 'x', 'x@x.test', 'USD', '{}', '{}', 'active', 0)",
            "INSERT INTO ledger_accounts (merchant_id, id, currency, flags, metadata, debits_pending, debits_posted, \
             credits_pending, credits_posted, created_at) VALUES ('mer_x', 'a', 'USD', 0, '{}', 0, 5, 0, 0, 0)",
        ] {
            sqlx::query(sql).execute(&mut c).await.expect("tamper");
        }
    });
    let out = settle()
        .arg("verify")
        .env("SETTLE_DATA_DIR", &data)
        .env_remove("SETTLE_DATABASE_URL")
        .output()
        .expect("verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("VIOLATIONS"), "{report}");
}

/// Runs a command that must refuse to start: waits for it to exit (killing it, and failing,
/// if it is still running after two minutes, i.e. if it started) and returns its stderr.
fn refused(command: &mut Command) -> String {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn settle");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("settle did not refuse to start: {}", reader.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().expect("stderr");
    assert!(!status.success(), "settle exited successfully: {text}");
    text
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn read_token(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

async fn admin_status(http: &reqwest::Client, base: &str, token: &str) -> u16 {
    http.get(format!("{base}/admin/v1/merchants"))
        .bearer_auth(token)
        .send()
        .await
        .expect("admin request")
        .status()
        .as_u16()
}

/// Regression: a second server on one SQLite data directory started and then failed its
/// writes with "database is locked". It is refused; a kill -9 of the first frees the lock.
#[test]
fn a_second_serve_on_one_sqlite_data_dir_is_refused_until_the_first_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, text) = serve(dir.path(), free_port());
    assert!(text.contains("curl"), "{text}");
    let second = refused(&mut serve_command(dir.path(), free_port(), &[]));
    assert!(second.contains("another settle process is serving"), "{second}");
    assert!(second.contains("settle.db.lock"), "{second}");
    stop(first); // SIGKILL
    let (again, text) = serve(dir.path(), free_port());
    stop(again);
    assert!(text.contains("curl"), "a restart after kill -9 starts: {text}");
}

/// Regression: an exported SETTLE_VAULT_KEY silently replaced the data directory's key and
/// every payment failed with a 500. A key other than the database's is refused at start.
#[test]
fn a_vault_key_other_than_the_sqlite_databases_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, _) = serve(dir.path(), free_port());
    stop(first);
    let other = vault_key();
    let text = refused(serve_command(dir.path(), free_port(), &[]).env("SETTLE_VAULT_KEY", &other));
    assert!(
        text.contains("differs from the one this database was created with"),
        "{text}"
    );
    assert!(
        text.contains("SETTLE_VAULT_KEY") && text.contains("vault-key"),
        "{text}"
    );
    // The right key (the generated file's, or the same given explicitly) starts.
    let key = read_token(&dir.path().join("settle-data/vault-key"));
    let (again, text) = serve_with(dir.path(), free_port(), &["--vault-key", &key]);
    stop(again);
    assert!(text.contains("curl"), "{text}");
    let bad = refused(&mut serve_command(dir.path(), free_port(), &["--vault-key", "nothex"]));
    assert!(bad.contains("--vault-key / SETTLE_VAULT_KEY"), "{bad}");
}

/// A database made before the key check (sealed data, no check value) gets the check on its
/// first start with the right key; with a key that does not open its data it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_database_is_checked_against_its_sealed_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (first, _) = serve(dir.path(), port);
    let data = dir.path().join("settle-data");
    let admin = read_token(&data.join("admin-token"));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let key = merchant_with_accounts(&http, &base, &admin).await;
    let (status, _) = post(
        &http,
        &format!("{base}/v1/connector_accounts"),
        &key,
        json!({ "connector": "sandbox", "credentials": {} }),
    )
    .await;
    assert_eq!(status, 201);
    stop(first);
    let db = format!("sqlite://{}", data.join("settle.db").display());
    let check = |db: String| async move {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&db).await.expect("open");
        let value: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE name = 'vault_key_check'")
            .fetch_optional(&mut c)
            .await
            .expect("read");
        sqlx::query("DELETE FROM settings WHERE name = 'vault_key_check'")
            .execute(&mut c)
            .await
            .expect("delete");
        value
    };
    assert!(
        check(db.clone()).await.is_some(),
        "a new database records its key check"
    );
    let other = vault_key();
    let text = refused(&mut serve_command(dir.path(), port, &["--vault-key", &other]));
    assert!(text.contains("does not open"), "{text}");
    let (again, text) = serve(dir.path(), port);
    stop(again);
    assert!(text.contains("curl"), "{text}");
    assert!(check(db).await.is_some(), "the upgraded database records its key check");
}

/// Regression: a second process with another SETTLE_VAULT_KEY started on a shared PostgreSQL
/// and its payments failed. It is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_key_other_than_the_postgres_databases_is_refused() {
    let Some((pg, name, db_url)) = fresh_database("settle_cli_key").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let key = vault_key();
    let flags = |key: &str| {
        vec![
            "--database-url".to_owned(),
            db_url.clone(),
            "--vault-key".to_owned(),
            key.to_owned(),
        ]
    };
    let first_flags = flags(&key);
    let first_flags: Vec<&str> = first_flags.iter().map(String::as_str).collect();
    let (first, text) = serve_with(dir.path(), free_port(), &first_flags);
    assert!(text.contains("curl"), "{text}");
    let other = flags(&vault_key());
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    // A SQLite key file beside it is not PostgreSQL's, and the advice does not point to it.
    let b = dir.path().join("b");
    std::fs::create_dir_all(b.join("settle-data")).expect("data dir");
    std::fs::write(b.join("settle-data/vault-key"), vault_key()).expect("sqlite's key");
    let text = refused(&mut serve_command(&b, free_port(), &other));
    stop(first);
    assert!(
        text.contains("differs from the one this database was created with"),
        "{text}"
    );
    assert!(!text.contains("vault-key holds"), "{text}");
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&pg)
        .await
        .expect("drop database");
}

/// How many tables the database at `db_url` has in its `public` schema.
async fn public_tables(db_url: &str) -> i64 {
    let db = sqlx::PgPool::connect(db_url).await.expect("connect");
    let n = sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        .fetch_one(&db)
        .await
        .expect("count");
    db.close().await;
    n
}

/// Regression: PostgreSQL without a vault key used `./settle-data/vault-key` (SQLite's). It is
/// refused before any migration or warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_a_vault_key_is_refused_before_migrating() {
    let Some((pg, name, db_url)) = fresh_database("settle_cli_nokey").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("settle-data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("vault-key"), vault_key()).expect("sqlite's key");
    let text = refused(&mut serve_command(
        dir.path(),
        free_port(),
        &["--database-url", &db_url],
    ));
    assert!(
        text.contains("--vault-key / SETTLE_VAULT_KEY is required with PostgreSQL"),
        "{text}"
    );
    assert!(!text.contains("WARN") && !text.contains("superuser"), "{text}");
    assert_eq!(public_tables(&db_url).await, 0, "nothing was migrated");
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&pg)
        .await
        .expect("drop database");
}

/// A start refused for its token file, and a `verify`, leave a new PostgreSQL database as it
/// was: no tables, no vault key recorded. (Regression: the refused start had migrated it and
/// tied it to its vault key, so the next start with another key was refused for that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_starts_and_verify_leave_a_new_postgres_database_untouched() {
    let Some((pg, name, db_url)) = fresh_database("settle_cli_untouched").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("settle-data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("admin-token-postgres"), "sat_another_databases\n").expect("token file");
    let key = vault_key();
    let text = refused(&mut serve_command(
        dir.path(),
        free_port(),
        &["--database-url", &db_url, "--vault-key", &key],
    ));
    assert!(
        text.contains("holds the admin token of another PostgreSQL database"),
        "{text}"
    );
    let text = refused(
        settle()
            .args(["verify", "--database-url", &db_url])
            .env("SETTLE_DATA_DIR", &data),
    );
    assert!(text.contains("no Settle database at PostgreSQL"), "{text}");
    assert!(!text.contains("postgres@"), "no credentials in the message: {text}");
    assert_eq!(public_tables(&db_url).await, 0, "nothing was migrated");
    // With the file moved away, another key than the refused start's is taken.
    std::fs::remove_file(data.join("admin-token-postgres")).expect("move the file away");
    let (server, text) = serve_with(
        dir.path(),
        free_port(),
        &["--database-url", &db_url, "--vault-key", &vault_key()],
    );
    assert!(text.contains("admin-token-postgres"), "{text}");
    stop(server);
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&pg)
        .await
        .expect("drop database");
}

/// Regression: a PostgreSQL start in SQLite's directory overwrote SQLite's admin token, and
/// each process on one PostgreSQL accepted only the token it had generated. The token's
/// digest is the database's: the first process writes its file (one per engine), later ones
/// accept the same token, and `--admin-token` replaces it everywhere, removing the file that
/// held the replaced token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_on_one_postgres_share_its_admin_token_and_leave_sqlites_alone() {
    let Some((pg, name, db_url)) = fresh_database("settle_cli_token").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("settle-data");
    let (sqlite, _) = serve(dir.path(), free_port());
    stop(sqlite);
    let sqlite_token = read_token(&data.join("admin-token"));
    let key = vault_key();
    let pg_flags = ["--database-url", db_url.as_str(), "--vault-key", key.as_str()];
    let (port_a, port_b) = (free_port(), free_port());
    let (a, text) = serve_with(dir.path(), port_a, &pg_flags);
    assert!(text.contains("admin-token-postgres"), "{text}");
    let token = read_token(&data.join("admin-token-postgres"));
    assert_eq!(
        read_token(&data.join("admin-token")),
        sqlite_token,
        "SQLite's token is untouched"
    );
    let b_dir = dir.path().join("b");
    let mut b_flags = pg_flags.to_vec();
    b_flags.extend(["--auth-cache-seconds", "0"]);
    let (b, text) = serve_with(&b_dir, port_b, &b_flags);
    assert!(text.contains("first started on this database"), "{text}");
    assert!(!text.contains("$(cat"), "no file to point to: {text}");
    assert!(!b_dir.join("settle-data/admin-token-postgres").exists());
    let http = reqwest::Client::new();
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    assert_eq!(admin_status(&http, &base_a, &token).await, 200);
    assert_eq!(admin_status(&http, &base_b, &token).await, 200, "b accepts a's token");
    stop(a);
    // A restart with --admin-token replaces the token, and its stale file goes.
    let given = format!("sat_{}", rand::random::<u64>());
    let mut c_flags = pg_flags.to_vec();
    c_flags.extend(["--admin-token", given.as_str()]);
    let (c, text) = serve_with(dir.path(), port_a, &c_flags);
    assert!(text.contains("was removed"), "{text}");
    assert!(!data.join("admin-token-postgres").exists());
    assert_eq!(
        read_token(&data.join("admin-token")),
        sqlite_token,
        "SQLite's token is untouched"
    );
    assert_eq!(
        admin_status(&http, &base_b, &given).await,
        200,
        "b accepts the new token"
    );
    assert_eq!(
        admin_status(&http, &base_b, &token).await,
        401,
        "b refuses the replaced one"
    );
    stop(c);
    stop(b);
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&pg)
        .await
        .expect("drop database");
}

/// Regression: `settle verify` with no database created an empty one and reported it sound.
#[test]
fn verify_without_a_database_refuses_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("settle-data");
    let text = refused(
        settle()
            .arg("verify")
            .env("SETTLE_DATA_DIR", &data)
            .env_remove("SETTLE_DATABASE_URL"),
    );
    assert!(text.contains("no database at") && text.contains("--data-dir"), "{text}");
    assert!(!data.exists(), "nothing was created");
}

/// A database URL of another engine is refused (not taken for a SQLite path), and an
/// unreachable PostgreSQL is named by host and port.
#[test]
fn database_urls_of_other_engines_and_closed_ports_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in ["mysql://root@127.0.0.1/settle", "postgresql:/bad"] {
        let text = refused(&mut serve_command(dir.path(), free_port(), &["--database-url", url]));
        assert!(text.contains("--database-url / SETTLE_DATABASE_URL"), "{url}: {text}");
    }
    assert!(!dir.path().join("settle-data").exists(), "nothing was created");
    // A port held bound but not listening: connections to it are refused, and no other test's
    // server can take it meanwhile (a port merely found free could be, and once was).
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let closed = held.local_addr().expect("address").port();
    let text = refused(
        settle()
            .args(["migrate", "--database-url"])
            .arg(format!("postgres://postgres@127.0.0.1:{closed}/postgres")),
    );
    assert!(
        text.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{closed}")),
        "{text}"
    );
    assert!(text.contains("the connection was refused"), "{text}");
}
