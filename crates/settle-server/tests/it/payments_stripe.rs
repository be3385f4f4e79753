//! Payments routed to a merchant's `stripe` connector account, end to end over HTTP against a
//! real `localstripe` (PyPI package; a stateful fake Stripe server) on loopback.
//!
//! Each test starts its own `localstripe` on a free loopback port and kills it when it ends.
//! When `localstripe` is not installed the tests say so loudly and pass, unless `CI=true`
//! (as in `.ci/run`), where they fail, like the connector crate's.
//!
//! What `localstripe` does not model (checked as far as it goes, see each test): it declines only
//! card 4000000000000341, its 402 does not name the PaymentIntent (so a decline has no provider
//! reference), a PaymentIntent has no `amount_received` (the capture shows on its charge instead:
//! a partial capture refunds the uncaptured rest on the charge), and it ignores idempotency keys.

use std::{
    io::Read,
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::harness::{Merchant, Resp, TestApp};

const API_KEY: &str = "sk_test_settle_localstripe";
const VISA: &str = "4242424242424242";
/// The one card `localstripe` declines when a PaymentIntent is confirmed (`card_declined`).
const DECLINED: &str = "4000000000000341";

// ---------------------------------------------------------------------------------------------
// localstripe as a child process

/// Binds `127.0.0.1` (the stock command listens on every interface) and keeps the store in
/// memory (the stock command writes `/tmp/localstripe.pickle`, shared by every instance).
const LAUNCHER: &str = "\
import sys
from aiohttp import web
from localstripe import resources, server
resources.Store.dump_to_disk = lambda self: None
web.run_app(server.app, host='127.0.0.1', port=int(sys.argv[1]), print=None, access_log=None)
";

struct LocalStripe {
    child: Child,
    base_url: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    http: reqwest::Client,
}

fn quietly(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl LocalStripe {
    /// A fresh, empty `localstripe`; `None` (after a loud message) when it is not installed.
    async fn start() -> Option<LocalStripe> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port()
            .to_string();
        let mut command = if quietly(Command::new("python3").args(["-c", "import localstripe.server, aiohttp"])) {
            let mut c = Command::new("python3");
            c.args(["-c", LAUNCHER, &port]);
            c
        } else if quietly(Command::new("localstripe").arg("--help")) {
            let mut c = Command::new("localstripe");
            c.args(["--port", &port, "--from-scratch"]);
            c
        } else if std::env::var("CI").as_deref() == Ok("true") {
            panic!("localstripe is not installed (pip install localstripe) and CI=true");
        } else {
            eprintln!(
                "\n**************************************************************\n\
                 SKIPPED: localstripe is not installed (pip install localstripe);\n\
                 /v1/payments was NOT tested against a Stripe server.\n\
                 With CI=true this is a failure.\n\
                 **************************************************************\n"
            );
            return None;
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start localstripe");
        // Drain stderr so a chatty server never blocks on a full pipe; keep the tail.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let tail = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    let mut tail = tail.lock().expect("stderr");
                    tail.extend_from_slice(&buf[..n]);
                    let excess = tail.len().saturating_sub(8192);
                    tail.drain(..excess);
                }
            });
        }
        let mut server = LocalStripe {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            stderr,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait().expect("poll localstripe") {
                panic!("localstripe exited early ({status}):\n{}", server.stderr_tail());
            }
            let probe = server
                .http
                .get(format!("{}/v1/balance", server.base_url))
                .bearer_auth(API_KEY)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if probe.is_ok() {
                return Some(server);
            }
            assert!(
                Instant::now() < deadline,
                "localstripe did not answer within 20 s:\n{}",
                server.stderr_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr")).into_owned()
    }

    /// `GET {path}` at localstripe itself, with the merchant's key.
    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path).await
    }

    /// `POST {path}` (no parameters) at localstripe itself, with the merchant's key.
    async fn post(&self, path: &str) -> Value {
        self.call(reqwest::Method::POST, path).await
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> Value {
        let r = self
            .http
            .request(method.clone(), format!("{}{path}", self.base_url))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("localstripe answers");
        let status = r.status();
        let text = r.text().await.expect("body");
        assert!(status.is_success(), "{method} {path} at localstripe: {status} {text}");
        serde_json::from_str(&text).expect("json")
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

macro_rules! localstripe_or_skip {
    () => {
        match LocalStripe::start().await {
            Some(server) => server,
            None => return,
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn card(number: &str) -> Value {
    json!({ "type": "card", "card": { "number": number, "exp_month": 12, "exp_year": 2099, "cvc": "123" } })
}

/// A merchant whose only connector account is `stripe`, at `server`: every payment routes there.
async fn stripe_merchant(app: &TestApp, server: &LocalStripe) -> (Merchant, String) {
    let m = app.merchant("shop").await;
    let account = stripe_account(app, &m, &server.base_url).await;
    (m, account)
}

/// A `stripe` connector account of `m` at `base_url`; its id.
async fn stripe_account(app: &TestApp, m: &Merchant, base_url: &str) -> String {
    let r = app
        .post(
            "/v1/connector_accounts",
            &m.key,
            json!({ "connector": "stripe", "label": "localstripe",
                    "credentials": { "api_key": API_KEY, "base_url": base_url } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["connector"], "stripe");
    assert!(!r.text.contains(API_KEY), "credentials are never shown: {}", r.text);
    r.json["id"].as_str().expect("id").to_owned()
}

async fn attempts(app: &TestApp, m: &Merchant, id: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/payments/{id}/attempts"), &m.key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["data"].as_array().expect("attempts").clone()
}

/// A payment of `amount` USD with manual capture, confirmed at once with card `number`.
async fn pay_manually(app: &TestApp, m: &Merchant, amount: i64, number: &str) -> Resp {
    app.post(
        "/v1/payments",
        &m.key,
        json!({ "amount": amount, "currency": "USD", "capture_method": "manual", "confirm": true,
                "payment_method": card(number) }),
    )
    .await
}

/// Each attempt of a payment as (operation, outcome), oldest first.
async fn operations(app: &TestApp, m: &Merchant, id: &str) -> Vec<(Value, Value)> {
    attempts(app, m, id)
        .await
        .iter()
        .map(|a| (a["operation"].clone(), a["outcome"].clone()))
        .collect()
}

/// A `requires_capture` payment of `amount` at `account`, and its PaymentIntent id.
async fn authorized(app: &TestApp, m: &Merchant, account: &str, amount: i64) -> (String, String) {
    let r = pay_manually(app, m, amount, VISA).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "requires_capture", "{}", r.text);
    assert_eq!(r.json["connector"], "stripe", "{}", r.text);
    assert_eq!(r.json["connector_account_id"], account, "{}", r.text);
    assert_eq!(r.json["amount_capturable"], amount, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let attempts = attempts(app, m, &id).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let a = &attempts[0];
    assert_eq!(a["operation"], "authorize", "{a}");
    assert_eq!(a["connector"], "stripe", "{a}");
    assert_eq!(a["connector_account_id"], account, "{a}");
    assert_eq!(a["outcome"], "succeeded", "{a}");
    assert_eq!(a["error_code"], Value::Null, "{a}");
    let pi = a["provider_ref"].as_str().unwrap_or("").to_owned();
    assert!(pi.starts_with("pi_"), "{a}");
    (id, pi)
}

/// A proxy to `upstream` on loopback that holds every `POST` whose path `held` picks for `delay`
/// before passing it on: a request that reaches the provider after its caller gave up. It stops
/// listening (connections to it are refused) when its sender is dropped or sent to.
async fn slow_proxy(
    upstream: &str,
    delay: Duration,
    held: fn(&str) -> bool,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    use axum::{body::Bytes, extract::Request, http::HeaderMap, response::IntoResponse};
    let upstream = upstream.to_owned();
    let http = reqwest::Client::new();
    let forward = move |req: Request| {
        let (upstream, http) = (upstream.clone(), http.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
            let mut headers = HeaderMap::new();
            for name in ["authorization", "content-type", "idempotency-key"] {
                if let Some(v) = parts.headers.get(name) {
                    headers.insert(name, v.clone());
                }
            }
            let held = parts.method == axum::http::Method::POST && held(parts.uri.path());
            // A task of its own: it goes on when the caller hangs up, as a request on its way does.
            let passed_on = tokio::spawn(async move {
                if held {
                    tokio::time::sleep(delay).await;
                }
                let answer = http
                    .request(parts.method, format!("{upstream}{}", parts.uri))
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .expect("upstream answers");
                (answer.status(), answer.bytes().await.expect("upstream body"))
            });
            passed_on.await.expect("forward").into_response()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().fallback(forward))
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (url, stop)
}

async fn ledger(app: &TestApp, m: &Merchant, account: &str) -> Resp {
    app.get(&format!("/v1/ledger/accounts/{account}"), &m.key).await
}

// ---------------------------------------------------------------------------------------------
// Tests

async fn stripe_authorize_partial_capture_and_partial_refund(app: TestApp) {
    let server = localstripe_or_skip!();
    let (m, account) = stripe_merchant(&app, &server).await;
    let (id, pi) = authorized(&app, &m, &account, 1000).await;

    let intent = server.get(&format!("/v1/payment_intents/{pi}")).await;
    assert_eq!(intent["status"], "requires_capture", "{intent}");
    assert_eq!(intent["amount"], 1000, "{intent}");
    assert_eq!(intent["capture_method"], "manual", "{intent}");

    let r = app
        .post(&format!("/v1/payments/{id}/capture"), &m.key, json!({ "amount": 600 }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "succeeded", "{}", r.text);
    assert_eq!(r.json["amount_captured"], 600, "{}", r.text);
    let ops = operations(&app, &m, &id).await;
    assert_eq!(
        ops,
        [
            (json!("authorize"), json!("succeeded")),
            (json!("capture"), json!("succeeded"))
        ]
    );
    let clearing = ledger(&app, &m, "settle:clearing:stripe:USD").await;
    assert_eq!(clearing.json["balance"], 600, "{}", clearing.text);
    assert_eq!(
        clearing.json["debits_pending"], 0,
        "the rest is released: {}",
        clearing.text
    );

    // At localstripe: the intent succeeded. localstripe's PaymentIntent has no `amount_received`;
    // the capture shows on its charge, which keeps the authorized `amount`, is `captured`, and
    // carries a refund of the uncaptured rest (1000 − 600), as localstripe models a partial capture.
    let intent = server.get(&format!("/v1/payment_intents/{pi}")).await;
    assert_eq!(intent["status"], "succeeded", "{intent}");
    match intent.get("amount_received") {
        None | Some(Value::Null) => {}
        Some(received) => assert_eq!(received, 600, "{intent}"),
    }
    let charge = &intent["latest_charge"];
    assert_eq!(charge["captured"], true, "{intent}");
    assert_eq!(charge["amount"], 1000, "{intent}");
    assert_eq!(charge["amount_refunded"], 400, "captured 600 of 1000: {intent}");

    let refund = app
        .post("/v1/refunds", &m.key, json!({ "payment_id": id, "amount": 250 }))
        .await;
    assert!(refund.status.is_success(), "{}", refund.text);
    assert_eq!(refund.json["status"], "succeeded", "{}", refund.text);
    assert_eq!(refund.json["amount"], 250, "{}", refund.text);
    let p = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(p.json["amount_refunded"], 250, "{}", p.text);
    assert_eq!(p.json["refund_status"], "partial", "{}", p.text);
    assert_eq!(
        ledger(&app, &m, "settle:clearing:stripe:USD").await.json["balance"],
        350
    );

    // At localstripe: the refund sits on the charge, beside the capture's own.
    let intent = server.get(&format!("/v1/payment_intents/{pi}")).await;
    assert_eq!(intent["status"], "succeeded", "{intent}");
    assert_eq!(intent["latest_charge"]["amount_refunded"], 400 + 250, "{intent}");
    let refunds = server.get(&format!("/v1/refunds?payment_intent={pi}")).await;
    let amounts: Vec<&Value> = refunds["data"]
        .as_array()
        .expect("refunds")
        .iter()
        .map(|r| &r["amount"])
        .collect();
    assert!(amounts.contains(&&json!(250)), "{refunds}");

    app.verify_ok().await;
}

async fn stripe_decline_leaves_nothing_in_the_ledger(app: TestApp) {
    let server = localstripe_or_skip!();
    let (m, account) = stripe_merchant(&app, &server).await;
    let r = pay_manually(&app, &m, 1000, DECLINED).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "requires_payment_method", "{}", r.text);
    assert_eq!(r.json["last_payment_error"]["code"], "card_declined", "{}", r.text);
    assert_eq!(r.json["last_payment_error"]["connector"], "stripe", "{}", r.text);
    assert_eq!(r.json["amount_capturable"], 0, "{}", r.text);
    assert!(!r.text.contains(DECLINED), "{}", r.text);
    let id = r.json["id"].as_str().expect("id");

    let attempts = attempts(&app, &m, id).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let a = &attempts[0];
    assert_eq!(a["operation"], "authorize", "{a}");
    assert_eq!(a["connector_account_id"], account, "{a}");
    assert_eq!(a["outcome"], "declined", "{a}");
    assert_eq!(a["error_code"], "card_declined", "{a}");
    // localstripe's 402 does not name the PaymentIntent, so the attempt has no provider
    // reference; the intent exists there all the same, found by the attempt id it carries.
    let attempt_id = a["id"].as_str().expect("attempt id");
    let listed = server.get("/v1/payment_intents?limit=100").await;
    let intents: Vec<&Value> = listed["data"]
        .as_array()
        .expect("intents")
        .iter()
        .filter(|i| i["metadata"]["settle_reference"] == attempt_id)
        .collect();
    assert_eq!(intents.len(), 1, "{listed}");
    assert_eq!(intents[0]["status"], "requires_payment_method", "{listed}");
    assert_eq!(intents[0]["last_payment_error"]["code"], "card_declined", "{listed}");

    // The ledger holds nothing for it: no hold, no balance (the account may not even exist).
    let clearing = ledger(&app, &m, "settle:clearing:stripe:USD").await;
    match clearing.status {
        StatusCode::NOT_FOUND => {}
        StatusCode::OK => {
            for field in [
                "balance",
                "debits_pending",
                "credits_pending",
                "debits_posted",
                "credits_posted",
            ] {
                assert_eq!(clearing.json[field], 0, "{field}: {}", clearing.text);
            }
        }
        other => panic!("clearing account: {other} {}", clearing.text),
    }
    app.verify_ok().await;
}

async fn stripe_cancel_voids_the_payment_intent(app: TestApp) {
    let server = localstripe_or_skip!();
    let (m, account) = stripe_merchant(&app, &server).await;
    let (id, pi) = authorized(&app, &m, &account, 2500).await;
    let held = ledger(&app, &m, "settle:clearing:stripe:USD").await;
    assert_eq!(held.json["debits_pending"], 2500, "{}", held.text);

    let r = app
        .post(
            &format!("/v1/payments/{id}/cancel"),
            &m.key,
            json!({ "reason": "requested_by_customer" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "canceled", "{}", r.text);
    assert_eq!(r.json["cancellation_reason"], "requested_by_customer", "{}", r.text);
    let attempts = attempts(&app, &m, &id).await;
    let void = attempts.last().expect("attempts");
    assert_eq!(void["operation"], "void", "{attempts:?}");
    assert_eq!(void["outcome"], "succeeded", "{attempts:?}");
    assert_eq!(void["provider_ref"], pi.as_str(), "{attempts:?}");

    let intent = server.get(&format!("/v1/payment_intents/{pi}")).await;
    assert_eq!(intent["status"], "canceled", "{intent}");

    let clearing = ledger(&app, &m, "settle:clearing:stripe:USD").await;
    assert_eq!(
        clearing.json["debits_pending"], 0,
        "the hold is voided: {}",
        clearing.text
    );
    assert_eq!(clearing.json["balance"], 0, "{}", clearing.text);
    app.verify_ok().await;
}

/// A capture that reached Stripe from a process that died before storing it: the recovery job
/// learns from Stripe that the PaymentIntent is captured and finishes the step, ledger included.
async fn stripe_capture_of_a_dead_process_is_finished_by_recovery(app: TestApp) {
    let server = localstripe_or_skip!();
    let (m, account) = stripe_merchant(&app, &server).await;
    let (id, pi) = authorized(&app, &m, &account, 1800).await;
    let captured = server.post(&format!("/v1/payment_intents/{pi}/capture")).await;
    assert_eq!(captured["status"], "succeeded", "{captured}");
    crate::payments::kill_mid_claim(
        &app,
        &id,
        "requires_capture",
        json!({ "op": "capture", "amount": 1800 }),
    )
    .await;
    app.clock.advance_seconds(200);
    assert_eq!(
        settle_server::payments::jobs::try_execute_claim_recovery(app.state())
            .await
            .expect("job"),
        1
    );
    let p = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(p.json["status"], "succeeded", "{}", p.text);
    assert_eq!(p.json["amount_captured"], 1800, "{}", p.text);
    let clearing = ledger(&app, &m, "settle:clearing:stripe:USD").await;
    assert_eq!(clearing.json["debits_pending"], 0, "{}", clearing.text);
    assert_eq!(clearing.json["balance"], 1800, "{}", clearing.text);
    let history = app.get(&format!("/v1/payments/{id}/events"), &m.key).await;
    let recovered = history.json["data"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| e["to"] == "succeeded" && e["reason"] == "recovered"));
    assert!(recovered, "{}", history.text);
    app.verify_ok().await;
}

/// A capture the provider made but whose answer never arrived (here: captured at localstripe
/// directly) is finished by asking the provider: the next capture's refusal ("already
/// captured") is followed by a sync, which finds the intent captured, and the payment, ledger
/// included, is captured too; a cancel of an intent already canceled there is a cancel here.
/// (localstripe captures a canceled intent, so the refusal that stands, the sync finding it not
/// captured, is not shown here.)
async fn stripe_steps_already_made_at_the_provider_are_finished_by_a_sync(app: TestApp) {
    let server = localstripe_or_skip!();
    let (m, account) = stripe_merchant(&app, &server).await;
    let (id, pi) = authorized(&app, &m, &account, 1000).await;
    let captured = server.post(&format!("/v1/payment_intents/{pi}/capture")).await;
    assert_eq!(captured["status"], "succeeded", "{captured}");

    let r = app.post(&format!("/v1/payments/{id}/capture"), &m.key, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "succeeded", "{}", r.text);
    assert_eq!(r.json["amount_captured"], 1000, "{}", r.text);
    let ops = operations(&app, &m, &id).await;
    assert_eq!(ops[0], (json!("authorize"), json!("succeeded")));
    assert_eq!(ops[1].0, json!("capture"));
    assert_ne!(ops[1].1, json!("succeeded"), "{ops:?}");
    assert_eq!(ops[2], (json!("sync"), json!("succeeded")));
    let clearing = ledger(&app, &m, "settle:clearing:stripe:USD").await;
    assert_eq!(clearing.json["balance"], 1000, "{}", clearing.text);
    assert_eq!(clearing.json["debits_pending"], 0, "{}", clearing.text);

    // Likewise a cancel of an intent already canceled there.
    let (other, pi) = authorized(&app, &m, &account, 300).await;
    server.post(&format!("/v1/payment_intents/{pi}/cancel")).await;
    let r = app
        .post(&format!("/v1/payments/{other}/cancel"), &m.key, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "canceled", "{}", r.text);
    let clearing = ledger(&app, &m, "settle:clearing:stripe:USD").await;
    assert_eq!(clearing.json["debits_pending"], 0, "{}", clearing.text);
    app.verify_ok().await;
}

/// An authorization that reaches Stripe after Settle gave up on it (timed out, synced, found
/// nothing, and failed over to the next connector) is found by the late check and voided: the
/// payment keeps its one authorization, at the connector that answered.
async fn stripe_authorization_made_after_failover_is_voided_by_the_late_check(mut app: TestApp) {
    let server = localstripe_or_skip!();
    app.restart_with(|c| c.connector_timeout = Duration::from_secs(1)).await;
    let (proxy, _proxy) = slow_proxy(&server.base_url, Duration::from_secs(3), |path| {
        path == "/v1/payment_intents"
    })
    .await;
    let m = app.merchant("shop").await;
    let slow = stripe_account(&app, &m, &proxy).await;
    let sandbox = app.sandbox_account(&m, json!({})).await;
    let rules = json!({ "rules": [{ "connector_account_id": slow }, { "connector_account_id": sandbox }] });
    assert_eq!(app.post("/v1/routing", &m.key, rules).await.status, StatusCode::OK);
    let r = pay_manually(&app, &m, 700, VISA).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "requires_capture", "{}", r.text);
    assert_eq!(r.json["connector_account_id"], sandbox.as_str(), "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let ops = operations(&app, &m, &id).await;
    assert_eq!(
        ops,
        [
            (json!("authorize"), json!("timeout")),
            (json!("sync"), json!("not_found")),
            (json!("authorize"), json!("succeeded"))
        ]
    );

    // The held create reaches localstripe: a second authorization, at the first connector.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stray = loop {
        let intents = server.get("/v1/payment_intents?limit=100").await;
        if let Some(pi) = intents["data"].as_array().and_then(|d| d.first()) {
            break pi["id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < deadline, "the held create never reached localstripe");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let intent = server.get(&format!("/v1/payment_intents/{stray}")).await;
    assert_eq!(intent["status"], "requires_capture", "{intent}");

    let late = || settle_server::payments::jobs::try_execute_late_authorization_check(app.state());
    assert_eq!(late().await.expect("job"), 0, "not looked for again so soon");
    app.clock
        .advance_seconds(settle_server::payments::jobs::LATE_CHECK_AFTER_SECONDS + 1);
    assert_eq!(late().await.expect("job"), 1);
    let intent = server.get(&format!("/v1/payment_intents/{stray}")).await;
    assert_eq!(intent["status"], "canceled", "{intent}");
    let all = attempts(&app, &m, &id).await;
    let void = all.last().expect("attempts");
    assert_eq!(
        (&void["operation"], &void["outcome"]),
        (&json!("void"), &json!("succeeded")),
        "{all:?}"
    );
    assert_eq!(void["provider_ref"], stray.as_str(), "{all:?}");
    // Looked up once: the next rounds leave it alone.
    assert_eq!(late().await.expect("job"), 0);
    assert_eq!(attempts(&app, &m, &id).await.len(), all.len());
    let p = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(p.json["status"], "requires_capture", "{}", p.text);
    assert_eq!(p.json["connector_account_id"], sandbox.as_str(), "{}", p.text);
    app.verify_ok().await;
}

/// A capture that reaches Stripe after Settle timed out on it (its sync still found the intent
/// only authorized): the payment stays claimed for the capture, so nothing else (a cancel) can
/// act on it, and once the claim expires the recovery job finds it captured and captures it
/// here too, ledger included. The same for an automatic capture right after its authorization.
async fn stripe_capture_that_arrives_late_is_finished_by_recovery(mut app: TestApp) {
    let server = localstripe_or_skip!();
    app.restart_with(|c| c.connector_timeout = Duration::from_secs(1)).await;
    let (proxy, _proxy) = slow_proxy(&server.base_url, Duration::from_secs(2), |path| {
        path.ends_with("/capture")
    })
    .await;
    let m = app.merchant("shop").await;
    stripe_account(&app, &m, &proxy).await;
    let r = pay_manually(&app, &m, 1000, VISA).await;
    assert_eq!(r.json["status"], "requires_capture", "{}", r.text);
    let manual = r.json["id"].as_str().expect("id").to_owned();
    let r = app
        .post(
            &format!("/v1/payments/{manual}/capture"),
            &m.key,
            json!({ "amount": 600 }),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_GATEWAY, "connector_timeout"),
        "{}",
        r.text
    );
    let r = app
        .post(&format!("/v1/payments/{manual}/cancel"), &m.key, json!({}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "payment_in_progress"),
        "{}",
        r.text
    );

    let r = app
        .post(
            "/v1/payments",
            &m.key,
            json!({ "amount": 700, "currency": "USD", "confirm": true, "payment_method": card(VISA) }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "requires_capture", "{}", r.text);
    let automatic = r.json["id"].as_str().expect("id").to_owned();

    // Both captures reach localstripe.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let intents = server.get("/v1/payment_intents?limit=100").await;
        let succeeded = intents["data"]
            .as_array()
            .map_or(0, |d| d.iter().filter(|i| i["status"] == "succeeded").count());
        if succeeded == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the held captures never reached localstripe: {intents}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.clock.advance_seconds(200);
    assert_eq!(
        settle_server::payments::jobs::try_execute_claim_recovery(app.state())
            .await
            .expect("job"),
        2
    );
    for (id, amount) in [(&manual, 600), (&automatic, 700)] {
        let p = app.get(&format!("/v1/payments/{id}"), &m.key).await;
        assert_eq!(p.json["status"], "succeeded", "{}", p.text);
        assert_eq!(p.json["amount_captured"], amount, "{}", p.text);
    }
    let clearing = ledger(&app, &m, "settle:clearing:stripe:USD").await;
    assert_eq!(clearing.json["balance"], 1300, "{}", clearing.text);
    assert_eq!(clearing.json["debits_pending"], 0, "{}", clearing.text);
    app.verify_ok().await;
}

/// A refund whose call timed out stays `pending` while its sync cannot reach the provider: a
/// lookup that was never made says nothing about the refund the provider may have made.
async fn stripe_refund_stays_pending_while_its_sync_cannot_reach_the_provider(mut app: TestApp) {
    let server = localstripe_or_skip!();
    app.restart_with(|c| c.connector_timeout = Duration::from_secs(1)).await;
    let (proxy, stop) = slow_proxy(&server.base_url, Duration::from_secs(2), |path| path == "/v1/refunds").await;
    let m = app.merchant("shop").await;
    stripe_account(&app, &m, &proxy).await;
    let r = pay_manually(&app, &m, 1000, VISA).await;
    let id = r.json["id"].as_str().expect("id").to_owned();
    let r = app.post(&format!("/v1/payments/{id}/capture"), &m.key, json!({})).await;
    assert_eq!(r.json["status"], "succeeded", "{}", r.text);
    let refund = app
        .post("/v1/refunds", &m.key, json!({ "payment_id": id, "amount": 400 }))
        .await;
    assert_eq!(refund.json["status"], "pending", "{}", refund.text);
    let refund = refund.json["id"].as_str().expect("id").to_owned();
    // The held refund reaches localstripe; then the provider cannot be reached.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop.send(());
    app.clock.advance_seconds(3600);
    settle_server::payments::refunds::try_execute_refund_sync(app.state())
        .await
        .expect("job");
    let r = app.get(&format!("/v1/refunds/{refund}"), &m.key).await;
    assert_eq!(r.json["status"], "pending", "{}", r.text);
    let p = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(p.json["amount_refunded"], 400, "still reserved: {}", p.text);
    app.verify_ok().await;
}

crate::conformance!(
    stripe_refund_stays_pending_while_its_sync_cannot_reach_the_provider,
    stripe_capture_that_arrives_late_is_finished_by_recovery,
    stripe_authorization_made_after_failover_is_voided_by_the_late_check,
    stripe_steps_already_made_at_the_provider_are_finished_by_a_sync,
    stripe_capture_of_a_dead_process_is_finished_by_recovery,
    stripe_authorize_partial_capture_and_partial_refund,
    stripe_decline_leaves_nothing_in_the_ledger,
    stripe_cancel_voids_the_payment_intent,
);
