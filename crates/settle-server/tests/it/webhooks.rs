//! Outbound webhooks against a real HTTP receiver on loopback: retries with backoff, signatures
//! in the documented scheme, nothing lost across a restart, no attempt sent twice by two
//! dispatchers, secret rotation, disabling after three days of failures, redelivery, and bad
//! input for every field.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode},
    routing::post,
    Router,
};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use settle_domain::webhook::DeliveryStatus;
use settle_server::webhooks::{self, dispatch};
use sha2::Sha256;

use crate::harness::{Merchant, TestApp};

/// What the receiver saw of one request.
#[derive(Clone, Debug)]
pub struct Received {
    /// The value of whichever signature header came (`Settle-Signature` or `Stripe-Signature`).
    pub signature: String,
    /// `settle-signature` or `stripe-signature`.
    pub signature_header: &'static str,
    pub event_id: String,
    pub body: String,
    pub answered: u16,
}

#[derive(Clone)]
struct ReceiverState {
    seen: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
    delay: Duration,
}

/// An HTTP server on loopback that answers 500 to its first `fail_first` requests, then 200.
pub struct Receiver {
    pub url: String,
    state: ReceiverState,
}

impl Receiver {
    pub async fn start(fail_first: usize, delay: Duration) -> Receiver {
        let state = ReceiverState {
            seen: Arc::new(Mutex::new(Vec::new())),
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            delay,
        };
        let app = Router::new().route("/hook", post(receive)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, state }
    }

    pub fn seen(&self) -> Vec<Received> {
        self.state.seen.lock().expect("lock").clone()
    }
}

async fn receive(State(state): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    tokio::time::sleep(state.delay).await;
    let failing = state
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signature_header = if headers.contains_key("stripe-signature") {
        "stripe-signature"
    } else {
        "settle-signature"
    };
    state.seen.lock().expect("lock").push(Received {
        signature: header(signature_header),
        signature_header,
        event_id: header("settle-event-id"),
        body: String::from_utf8_lossy(&body).into_owned(),
        answered: status.as_u16(),
    });
    (status, if failing { "try later ".repeat(200) } else { "ok".into() })
}

/// Verifies `Settle-Signature` as a receiver would (Stripe's scheme): some `v1` must be the
/// HMAC-SHA256 of `"<t>.<body>"` under `secret`.
pub fn verifies(received: &Received, secret: &str) -> bool {
    let mut t = "";
    let mut signatures = Vec::new();
    for part in received.signature.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v,
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.{}", received.body).as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    signatures.contains(&expected.as_str())
}

impl TestApp {
    pub async fn endpoint(&self, m: &Merchant, url: &str, events: Value) -> (String, String) {
        let r = self
            .post(
                "/v1/webhook_endpoints",
                &m.key,
                json!({ "url": url, "enabled_events": events }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let secret = r.json["secret"].as_str().expect("secret").to_owned();
        (r.json["id"].as_str().expect("id").to_owned(), secret)
    }

    /// Fan-out then one delivery round; returns how many attempts were made.
    pub async fn dispatch(&self) -> usize {
        dispatch::try_execute_outbox(self.state()).await.expect("fan-out");
        dispatch::try_execute_deliveries(self.state())
            .await
            .expect("deliveries")
    }

    async fn sandbox_payment(&self, m: &Merchant) -> String {
        let r = self
            .post(
                "/v1/payments",
                &m.key,
                json!({ "amount": 500, "currency": "USD", "confirm": true,
                        "payment_method": { "type": "card", "card": { "number": "4242424242424242",
                                            "exp_month": 12, "exp_year": 2099, "cvc": "123" } } }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json["id"].as_str().expect("id").to_owned()
    }
}

async fn a_failing_receiver_gets_every_event_signed_after_retries_and_a_restart(mut app: TestApp) {
    let receiver = Receiver::start(3, Duration::ZERO).await;
    let m = app.merchant_with_ab("shop").await;
    let (endpoint, secret) = app.endpoint(&m, &receiver.url, json!(["payment.*"])).await;
    let pay = app.sandbox_payment(&m).await;
    // Not selected: a transfer batch.
    let t = app
        .transfer(
            &m,
            json!({ "id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "currency": "USD" }),
        )
        .await;
    assert!(t.status.is_success(), "{}", t.text);

    // Four payment events; the first three attempts fail (500), spread over the deliveries.
    assert_eq!(app.dispatch().await, 4);
    assert_eq!(receiver.seen().len(), 4);
    // Nothing is due before its backoff; then the failed ones are retried.
    assert_eq!(app.dispatch().await, 0);
    app.restart().await;
    app.clock.advance_seconds(20);
    assert_eq!(app.dispatch().await, 3);
    assert_eq!(app.dispatch().await, 0);
    assert_eq!(
        webhooks::count(app.state(), DeliveryStatus::Delivered)
            .await
            .expect("count"),
        4
    );
    assert_eq!(
        webhooks::count(app.state(), DeliveryStatus::Pending)
            .await
            .expect("count"),
        0
    );

    let seen = receiver.seen();
    assert_eq!(seen.len(), 7);
    for r in &seen {
        assert!(verifies(r, &secret), "signature does not verify: {r:?}");
        let body: Value = serde_json::from_str(&r.body).expect("json body");
        assert_eq!(body["id"], r.event_id.as_str());
        assert_eq!(body["aggregate"]["id"], pay.as_str());
        assert!(body["type"].as_str().expect("type").starts_with("payment."));
    }
    let delivered: std::collections::BTreeSet<&str> = seen
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.event_id.as_str())
        .collect();
    assert_eq!(delivered.len(), 4);
    // A forged signature does not verify.
    assert!(!verifies(&seen[0], "whsec_wrong"));

    let attempts = app
        .get(
            &format!("/v1/webhook_endpoints/{endpoint}/deliveries?limit=100"),
            &m.key,
        )
        .await;
    assert_eq!(attempts.status, StatusCode::OK, "{}", attempts.text);
    let rows = attempts.json["data"].as_array().expect("data");
    assert_eq!(rows.len(), 7);
    let failed: Vec<&Value> = rows.iter().filter(|a| a["status_code"] == 500).collect();
    assert_eq!(failed.len(), 3);
    for a in &failed {
        assert_eq!(a["succeeded"], false);
        assert_eq!(a["error"], "status");
        assert_eq!(a["response_body"].as_str().expect("body").len(), 1024, "first KiB kept");
    }
    assert!(rows.iter().any(|a| a["attempt"] == 2 && a["status_code"] == 200));
}

/// A dispatcher killed mid-round (its deliveries leased, nothing recorded): nothing goes out
/// while its lease lasts, and everything goes out once the lease has expired.
async fn a_dead_dispatchers_leases_expire_and_nothing_is_lost(app: TestApp) {
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let m = app.merchant_with_ab("shop").await;
    app.endpoint(&m, &receiver.url, json!(["transfer_batch.created"])).await;
    for i in 0..5 {
        app.transfer(&m, transfer(i)).await;
    }
    dispatch::try_execute_outbox(app.state()).await.expect("fan-out");
    let now = settle_server::clock::Clock::now(&app.clock);
    let until = now.checked_add_seconds(dispatch::LEASE_SECONDS).expect("until");
    let mut tx = app
        .store
        .begin(settle_store::Scope::System, settle_store::Mode::Write)
        .await
        .expect("begin");
    assert_eq!(tx.lease_deliveries(now, until, 100).await.expect("lease").len(), 5);
    tx.commit().await.expect("commit");
    // The dead process's lease holds…
    app.clock.advance_seconds(dispatch::LEASE_SECONDS - 1);
    assert_eq!(app.dispatch().await, 0);
    // …then expires, and every delivery goes out once.
    app.clock.advance_seconds(2);
    assert_eq!(app.dispatch().await, 5);
    assert_eq!(receiver.seen().len(), 5);
    assert_eq!(
        webhooks::count(app.state(), DeliveryStatus::Delivered)
            .await
            .expect("count"),
        5
    );
}

/// The jobs look before they write: an empty outbox, or no delivery due, is seen by a read,
/// and a round of the fan-out empties the outbox of a merchant without endpoints (no
/// deliveries, its events not read) beside a merchant whose events go out.
async fn the_fan_out_skips_merchants_without_endpoints_and_the_jobs_see_when_nothing_is_due(app: TestApp) {
    use settle_store::{Mode, Scope};
    let peek = || async {
        let now = settle_server::clock::Clock::now(&app.clock);
        let mut tx = app.store.begin(Scope::System, Mode::Read).await.expect("begin");
        (
            tx.outbox_waiting().await.expect("outbox"),
            tx.deliveries_due(now).await.expect("deliveries"),
        )
    };
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let quiet = app.merchant_with_ab("quiet").await;
    let loud = app.merchant_with_ab("loud").await;
    app.endpoint(&loud, &receiver.url, json!(["transfer_batch.created"]))
        .await;
    app.dispatch().await;
    assert_eq!(peek().await, (false, false), "nothing waits after a round");
    for (m, n) in [(&quiet, 3), (&loud, 2)] {
        for i in 0..n {
            let t = app.transfer(m, transfer(i)).await;
            assert!(t.status.is_success(), "{}", t.text);
        }
    }
    assert_eq!(peek().await, (true, false));
    assert_eq!(dispatch::try_execute_outbox(app.state()).await.expect("fan-out"), 5);
    assert_eq!(
        peek().await,
        (false, true),
        "the loud merchant's two deliveries are due"
    );
    assert_eq!(
        dispatch::try_execute_deliveries(app.state()).await.expect("deliveries"),
        2
    );
    assert_eq!(peek().await, (false, false));
    assert_eq!(receiver.seen().len(), 2);
    // Nothing due: the rounds find nothing and write nothing.
    assert_eq!(app.dispatch().await, 0);
    assert_eq!(
        webhooks::count(app.state(), DeliveryStatus::Delivered)
            .await
            .expect("count"),
        2
    );
}

async fn two_dispatchers_never_send_one_attempt_twice(app: TestApp) {
    let receiver = Receiver::start(0, Duration::from_millis(20)).await;
    let m = app.merchant_with_ab("shop").await;
    app.endpoint(&m, &receiver.url, json!(["transfer_batch.created"])).await;
    for i in 0..60 {
        let t = app
            .transfer(
                &m,
                json!({ "id": format!("t{i}"), "debit_account_id": "a", "credit_account_id": "b",
                        "amount": 1, "currency": "USD" }),
            )
            .await;
        assert!(t.status.is_success(), "{}", t.text);
    }
    dispatch::try_execute_outbox(app.state()).await.expect("fan-out");
    // Two dispatchers (on PostgreSQL a second process; on SQLite two rounds of one) at once.
    let second = match app.second_state().await {
        Some(state) => state,
        None => app.state().clone(),
    };
    let first = app.state().clone();
    let a = tokio::spawn(async move { dispatch::try_execute_deliveries(&first).await.expect("a") });
    let b = tokio::spawn(async move { dispatch::try_execute_deliveries(&second).await.expect("b") });
    let (a, b) = (a.await.expect("join"), b.await.expect("join"));
    assert_eq!(a + b, 60, "each delivery leased by exactly one dispatcher ({a} + {b})");
    let seen = receiver.seen();
    let mut ids: Vec<&str> = seen.iter().map(|r| r.event_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 60);
    assert_eq!(seen.len(), 60, "no event was sent twice");
}

async fn a_rotated_secret_keeps_signing_for_a_day(app: TestApp) {
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let m = app.merchant_with_ab("shop").await;
    let (endpoint, old) = app.endpoint(&m, &receiver.url, json!(["*"])).await;
    let rotate = format!("/v1/webhook_endpoints/{endpoint}/rotate_secret");
    // It takes no field: a body with one, or no JSON object, rotates nothing.
    for body in [r#"{"secret": "mine"}"#, "[]", "{"] {
        let r = app
            .call(axum::http::Method::POST, &rotate, &m.key, Some(body), &[])
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
    }
    let r = app.post(&rotate, &m.key, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let new = r.json["secret"].as_str().expect("secret").to_owned();
    assert_ne!(new, old);
    assert!(new.starts_with("whsec_"));
    app.transfer(
        &m,
        json!({ "id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "currency": "USD" }),
    )
    .await;
    app.dispatch().await;
    app.clock.advance_seconds(24 * 3600 + 1);
    app.transfer(
        &m,
        json!({ "id": "t2", "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "currency": "USD" }),
    )
    .await;
    app.dispatch().await;
    let seen = receiver.seen();
    // The first events (endpoint updated by the rotation, the first batch) carry both
    // signatures; a day later only the new one signs.
    let first = seen.iter().find(|r| r.body.contains("\"t1\"")).expect("t1 delivered");
    assert!(verifies(first, &old) && verifies(first, &new));
    let later = seen.iter().find(|r| r.body.contains("\"t2\"")).expect("t2 delivered");
    assert!(verifies(later, &new) && !verifies(later, &old));
    assert_eq!(later.signature.matches("v1=").count(), 1);
}

async fn an_endpoint_failing_for_three_days_is_disabled_and_its_deliveries_dead(app: TestApp) {
    let receiver = Receiver::start(usize::MAX, Duration::ZERO).await;
    let m = app.merchant_with_ab("shop").await;
    let (endpoint, _) = app.endpoint(&m, &receiver.url, json!(["transfer_batch.*"])).await;
    app.transfer(
        &m,
        json!({ "id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "currency": "USD" }),
    )
    .await;
    let mut attempts = 0;
    for _ in 0..200 {
        attempts += app.dispatch().await;
        if webhooks::count(app.state(), DeliveryStatus::Dead).await.expect("count") == 1 {
            break;
        }
        app.clock.advance_seconds(3600);
    }
    assert_eq!(
        webhooks::count(app.state(), DeliveryStatus::Dead).await.expect("count"),
        1
    );
    assert!((15..40).contains(&attempts), "{attempts} attempts over three days");
    let e = app.get(&format!("/v1/webhook_endpoints/{endpoint}"), &m.key).await;
    assert_eq!(e.json["status"], "disabled", "{}", e.text);
    assert_eq!(e.json["disabled_reason"], "failing_for_3_days");
    let events = app.events_of(&m, &endpoint).await;
    assert_eq!(
        events.last().expect("events")["type"],
        "webhook_endpoint.disabled",
        "{events:?}"
    );
    // Re-enabled by the merchant, and a redelivery of the batch's event then succeeds.
    receiver.state.fail_first.store(0, Ordering::SeqCst);
    let on = app
        .post(
            &format!("/v1/webhook_endpoints/{endpoint}"),
            &m.key,
            json!({ "enabled": true }),
        )
        .await;
    assert_eq!(on.json["status"], "enabled", "{}", on.text);
    assert_eq!(on.json["failing_since"], Value::Null);
    let batch = app.get("/v1/events?type=transfer_batch.created", &m.key).await;
    let event_id = batch.json["data"][0]["id"].as_str().expect("event").to_owned();
    let again = app
        .post(&format!("/v1/events/{event_id}/redeliver"), &m.key, json!({}))
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
    assert_eq!(again.json["data"].as_array().expect("data").len(), 1);
    app.dispatch().await;
    assert_eq!(receiver.seen().last().expect("seen").answered, 200);
    let bad = app
        .post(
            &format!("/v1/events/{event_id}/redeliver"),
            &m.key,
            json!({ "endpoint_id": "we_nope" }),
        )
        .await;
    assert_eq!(
        (bad.status, bad.param()),
        (StatusCode::BAD_REQUEST, "endpoint_id"),
        "{}",
        bad.text
    );
}

async fn endpoints_are_managed_and_bad_input_is_named(app: TestApp) {
    let m = app.merchant("shop").await;
    let url = "https://hooks.example.test/settle";
    let r = app
        .post_keyed(
            "/v1/webhook_endpoints",
            &m.key,
            &json!({ "url": url, "enabled_events": ["payment.*", "refund.failed"], "description": "main" }).to_string(),
            "create-endpoint-1",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let secret = r.json["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() > 40);
    // The secret is shown once: not by get, list, a replay, nor stored in clear anywhere.
    let got = app.get(&format!("/v1/webhook_endpoints/{id}"), &m.key).await;
    assert_eq!(got.json["url"], url);
    assert_eq!(got.json["status"], "enabled");
    assert_eq!(got.json["secret"], Value::Null);
    let replay = app
        .post_keyed(
            "/v1/webhook_endpoints",
            &m.key,
            &json!({ "url": url, "enabled_events": ["payment.*", "refund.failed"], "description": "main" }).to_string(),
            "create-endpoint-1",
        )
        .await;
    assert_eq!(replay.json["id"], id.as_str());
    assert!(!replay.text.contains(&secret));
    assert!(
        !app.dump_all_tables().await.contains(&secret[6..]),
        "secret stored in clear"
    );
    // One made disabled from the start.
    let off = app
        .post(
            "/v1/webhook_endpoints",
            &m.key,
            json!({ "url": url, "enabled_events": ["*"], "enabled": false }),
        )
        .await;
    assert_eq!(off.status, StatusCode::CREATED, "{}", off.text);
    assert_eq!(off.json["status"], "disabled", "{}", off.text);
    assert_eq!(off.json["disabled_reason"], "disabled_by_merchant", "{}", off.text);
    let off = off.json["id"].as_str().expect("id").to_owned();
    let deleted = app
        .call(
            Method::DELETE,
            &format!("/v1/webhook_endpoints/{off}"),
            &m.key,
            None,
            &[],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    let listed = app.get("/v1/webhook_endpoints", &m.key).await;
    assert_eq!(listed.json["data"][0]["id"], id.as_str());
    assert!(!listed.text.contains(&secret));

    let updated = app
        .post(
            &format!("/v1/webhook_endpoints/{id}"),
            &m.key,
            json!({ "enabled_events": ["*"], "enabled": false }),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    assert_eq!(updated.json["enabled_events"], json!(["*"]));
    assert_eq!(updated.json["status"], "disabled");

    for (body, param) in [
        (json!({ "enabled_events": ["*"] }), "url"),
        (json!({ "url": url }), "enabled_events"),
        (json!({ "url": "not a url", "enabled_events": ["*"] }), "url"),
        (json!({ "url": "ftp://example.test/x", "enabled_events": ["*"] }), "url"),
        (
            json!({ "url": "http:///example.test/x", "enabled_events": ["*"] }),
            "url",
        ),
        (json!({ "url": "https:example.test/x", "enabled_events": ["*"] }), "url"),
        (
            json!({ "url": "https://example.test\\@evil.test/x", "enabled_events": ["*"] }),
            "url",
        ),
        (
            json!({ "url": "https://user:pw@example.test/x", "enabled_events": ["*"] }),
            "url",
        ),
        (
            json!({ "url": format!("https://example.test/{}", "x".repeat(3000)), "enabled_events": ["*"] }),
            "url",
        ),
        (json!({ "url": 7, "enabled_events": ["*"] }), "url"),
        (json!({ "url": url, "enabled_events": [] }), "enabled_events"),
        (json!({ "url": url, "enabled_events": "*" }), "enabled_events"),
        (
            json!({ "url": url, "enabled_events": ["*", "payment.nope"] }),
            "enabled_events[1]",
        ),
        (
            json!({ "url": url, "enabled_events": ["nothing.*"] }),
            "enabled_events[0]",
        ),
        (
            json!({ "url": url, "enabled_events": ["*"], "description": "d".repeat(1001) }),
            "description",
        ),
        (
            json!({ "url": url, "enabled_events": ["*"], "colour": "blue" }),
            "colour",
        ),
    ] {
        let r = app.post("/v1/webhook_endpoints", &m.key, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.param(), param, "{body}: {}", r.text);
    }
    let r = app
        .post(
            &format!("/v1/webhook_endpoints/{id}"),
            &m.key,
            json!({ "enabled": "yes" }),
        )
        .await;
    assert_eq!(
        (r.status, r.param()),
        (StatusCode::BAD_REQUEST, "enabled"),
        "{}",
        r.text
    );
    let r = app.get("/v1/webhook_endpoints?limit=0", &m.key).await;
    assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, "limit"), "{}", r.text);

    // Another merchant sees nothing; deletion is final.
    let other = app.merchant("other").await;
    for path in [
        format!("/v1/webhook_endpoints/{id}"),
        format!("/v1/webhook_endpoints/{id}/deliveries"),
    ] {
        let r = app.get(&path, &other.key).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
    }
    let r = app
        .call(
            axum::http::Method::DELETE,
            &format!("/v1/webhook_endpoints/{id}"),
            &other.key,
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = app
        .call(
            axum::http::Method::DELETE,
            &format!("/v1/webhook_endpoints/{id}"),
            &m.key,
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["deleted"], true);
    let r = app.get(&format!("/v1/webhook_endpoints/{id}"), &m.key).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let types: Vec<Value> = app.events_of(&m, &id).await.iter().map(|e| e["type"].clone()).collect();
    assert_eq!(
        types,
        [
            json!("webhook_endpoint.created"),
            json!("webhook_endpoint.updated"),
            json!("webhook_endpoint.deleted")
        ]
    );
}

async fn private_targets_are_refused_when_the_operator_says_so(engine: settle_store::Engine) {
    let Some(app) = TestApp::spawn_with(engine, |c| c.webhook_private_targets = false).await else {
        return;
    };
    let m = app.merchant("shop").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
    ] {
        let r = app
            .post(
                "/v1/webhook_endpoints",
                &m.key,
                json!({ "url": url, "enabled_events": ["*"] }),
            )
            .await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, "url"),
            "{url}: {}",
            r.text
        );
    }
    let r = app
        .post(
            "/v1/webhook_endpoints",
            &m.key,
            json!({ "url": "https://hooks.example.test/x", "enabled_events": ["*"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

/// An endpoint made while private targets were allowed gets nothing once they are refused.
async fn a_private_endpoint_is_not_called_once_refused(mut app: TestApp) {
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let m = app.merchant_with_ab("shop").await;
    let (endpoint, _) = app.endpoint(&m, &receiver.url, json!(["transfer_batch.created"])).await;
    app.restart_with(|c| c.webhook_private_targets = false).await;
    app.transfer(
        &m,
        json!({ "id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "currency": "USD" }),
    )
    .await;
    assert_eq!(app.dispatch().await, 1);
    assert!(receiver.seen().is_empty());
    let attempts = app
        .get(&format!("/v1/webhook_endpoints/{endpoint}/deliveries"), &m.key)
        .await;
    assert_eq!(
        attempts.json["data"][0]["error"], "private_address_refused",
        "{}",
        attempts.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_on_sqlite() {
    private_targets_are_refused_when_the_operator_says_so(settle_store::Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_on_postgres() {
    private_targets_are_refused_when_the_operator_says_so(settle_store::Engine::Postgres).await;
}

const FORM: &[(&str, &str)] = &[("content-type", "application/x-www-form-urlencoded")];

/// Endpoints made through `/stripe/v1` get Stripe-shaped events of the Stripe types they chose,
/// signed in `Stripe-Signature`; each API manages its own endpoints (the native API sees all).
async fn stripe_endpoints_get_stripe_shaped_events_signed_for_stripe(app: TestApp) {
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let m = app.merchant("shop").await;
    let url = receiver.url.replace(':', "%3A").replace('/', "%2F");
    let created = app
        .call(
            Method::POST,
            "/stripe/v1/webhook_endpoints",
            &m.key,
            Some(&format!(
                "url={url}&enabled_events[]=payment_intent.succeeded&enabled_events[]=refund.updated&api_version=2024-06-20"
            )),
            FORM,
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    assert_eq!(created.json["object"], "webhook_endpoint");
    assert_eq!(created.json["status"], "enabled");
    assert_eq!(
        created.json["enabled_events"],
        json!(["payment_intent.succeeded", "refund.updated"])
    );
    let stripe_ep = created.json["id"].as_str().expect("id").to_owned();
    assert!(stripe_ep.starts_with("we_"));
    let secret = created.json["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    let (native_ep, native_secret) = app.endpoint(&m, &receiver.url, json!(["payment.*"])).await;

    // Each API's view.
    let listed = app.get("/stripe/v1/webhook_endpoints", &m.key).await;
    assert_eq!(listed.json["url"], "/v1/webhook_endpoints");
    let ids: Vec<&Value> = listed.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, vec![&json!(stripe_ep)], "{}", listed.text);
    assert_eq!(
        app.get(&format!("/stripe/v1/webhook_endpoints/{native_ep}"), &m.key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let native = app.get(&format!("/v1/webhook_endpoints/{stripe_ep}"), &m.key).await;
    assert_eq!(native.json["api"], "stripe", "{}", native.text);
    assert_eq!(
        app.get("/v1/webhook_endpoints", &m.key).await.json["data"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // A Stripe endpoint takes Stripe types only, whichever API changes it.
    let bad = app
        .post(
            &format!("/v1/webhook_endpoints/{stripe_ep}"),
            &m.key,
            json!({ "enabled_events": ["payment.*"] }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert_eq!(bad.json["error"]["param"], "enabled_events[0]");
    let replay = app
        .call(
            Method::POST,
            &format!("/stripe/v1/webhook_endpoints/{stripe_ep}"),
            &m.key,
            Some("description=orders&disabled=false"),
            FORM,
        )
        .await;
    assert_eq!(replay.json["description"], "orders", "{}", replay.text);
    assert!(replay.json.get("secret").is_none());

    let pay = app.sandbox_payment(&m).await;
    let refund = app
        .post("/v1/refunds", &m.key, json!({ "payment_id": pay, "amount": 200 }))
        .await;
    assert!(refund.status.is_success(), "{}", refund.text);
    app.dispatch().await;
    let seen = receiver.seen();
    let stripe_seen: Vec<&Received> = seen
        .iter()
        .filter(|r| r.signature_header == "stripe-signature")
        .collect();
    let types: Vec<Value> = stripe_seen
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.body).expect("json")["type"].clone())
        .collect();
    assert_eq!(types.len(), 2, "{types:?}");
    assert!(
        types.contains(&json!("payment_intent.succeeded")) && types.contains(&json!("refund.updated")),
        "{types:?}"
    );
    for r in &stripe_seen {
        assert!(verifies(r, &secret), "{r:?}");
        assert!(!verifies(r, &native_secret));
        let event: Value = serde_json::from_str(&r.body).expect("json");
        assert_eq!(event["object"], "event");
        assert!(event["id"].as_str().is_some_and(|id| id.starts_with("evt_")));
        let object = &event["data"]["object"];
        let pi = format!("pi_{}", pay.strip_prefix("pay_").expect("pay_"));
        match event["type"].as_str() {
            Some("payment_intent.succeeded") => {
                assert_eq!(object["id"], pi.as_str());
                assert_eq!(object["amount_received"], 500);
            }
            _ => {
                assert_eq!(object["object"], "refund");
                assert_eq!(object["payment_intent"], pi.as_str());
                assert_eq!(object["status"], "succeeded");
            }
        }
    }
    // The native endpoint got Settle's events in Settle's header.
    let native_seen: Vec<&Received> = seen
        .iter()
        .filter(|r| r.signature_header == "settle-signature")
        .collect();
    assert!(!native_seen.is_empty());
    assert!(native_seen
        .iter()
        .all(|r| verifies(r, &native_secret) && r.body.contains("\"payment.")));

    // The refund is also the charge's event.
    let charge_events = app.get("/stripe/v1/events?type=charge.refunded", &m.key).await;
    let charge = &charge_events.json["data"][0]["data"]["object"];
    assert_eq!(charge["object"], "charge", "{}", charge_events.text);
    assert_eq!(charge["amount_refunded"], 200);
    assert_eq!(charge["refunded"], false);

    // An event with no Stripe counterpart cannot be redelivered to a Stripe endpoint.
    let events = app.get("/v1/events?type=webhook_endpoint.created", &m.key).await;
    let event_id = events.json["data"][0]["id"].as_str().expect("event").to_owned();
    let refused = app
        .post(
            &format!("/v1/events/{event_id}/redeliver"),
            &m.key,
            json!({ "endpoint_id": stripe_ep }),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert_eq!(refused.json["error"]["param"], "endpoint_id");

    let deleted = app
        .call(
            Method::DELETE,
            &format!("/stripe/v1/webhook_endpoints/{stripe_ep}"),
            &m.key,
            None,
            &[],
        )
        .await;
    assert_eq!(
        deleted.json,
        json!({ "id": stripe_ep, "object": "webhook_endpoint", "deleted": true })
    );
    assert_eq!(
        app.get(&format!("/v1/webhook_endpoints/{stripe_ep}"), &m.key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

/// A merchant has at most 100 endpoints, also when the last ones are created at once.
async fn the_endpoint_limit_holds_under_concurrent_creates(app: TestApp) {
    let m = app.merchant("shop").await;
    let body = json!({ "url": "https://hooks.example.test/x", "enabled_events": ["*"] }).to_string();
    for _ in 0..97 {
        let r = app
            .post(
                "/v1/webhook_endpoints",
                &m.key,
                json!({ "url": "https://hooks.example.test/x", "enabled_events": ["*"] }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (router, key, body) = (app.router.clone(), m.key.clone(), body.clone());
            tokio::spawn(async move {
                crate::harness::call(&router, Method::POST, "/v1/webhook_endpoints", &key, Some(&body), &[]).await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        let r = task.await.expect("task");
        match r.status {
            StatusCode::CREATED => created += 1,
            StatusCode::UNPROCESSABLE_ENTITY => assert_eq!(r.code(), "too_many_endpoints", "{}", r.text),
            other => panic!("{other}: {}", r.text),
        }
    }
    assert_eq!(created, 3);
    let listed = app.get("/v1/webhook_endpoints?limit=100", &m.key).await;
    assert_eq!(
        listed.json["data"].as_array().map(Vec::len),
        Some(100),
        "{}",
        listed.text
    );
    assert_eq!(listed.json["has_more"], false);
}

/// A receiver that never answers does not hold a shutdown up: the delivery round in flight has
/// the request timeout to finish, then is abandoned; the delivery stays due for the next start.
async fn a_receiver_that_never_answers_does_not_hold_shutdown(app: TestApp) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (reached, mut arrived) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = reached.try_send(());
        }
    });
    let mut config = settle_server::Config::for_engine(app.store.engine());
    config.vault_key = app.state().config.vault_key.clone();
    config.webhook_private_targets = true;
    config.webhook_timeout = Duration::from_secs(60);
    config.request_timeout = Duration::from_secs(1);
    let other = settle_server::App::build(app.store.clone(), Arc::new(app.clock.clone()), config)
        .await
        .expect("build");
    let m = app.merchant("shop").await;
    let endpoint = json!({ "url": url, "enabled_events": ["*"] }).to_string();
    let r = crate::harness::call(
        &other.router,
        Method::POST,
        "/v1/webhook_endpoints",
        &m.key,
        Some(&endpoint),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let account = json!({ "connector": "sandbox" }).to_string();
    let r = crate::harness::call(
        &other.router,
        Method::POST,
        "/v1/connector_accounts",
        &m.key,
        Some(&account),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    tokio::time::timeout(Duration::from_secs(60), arrived.recv())
        .await
        .expect("no delivery reached the receiver");
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(45), other.shutdown())
        .await
        .expect("shutdown waited for a receiver that never answers");
    assert!(started.elapsed() < Duration::from_secs(45));
}

/// An endpoint URL is at most 2,048 characters as stored (percent-encoded), and one with a
/// `#fragment`, which is never sent, is refused.
async fn endpoint_urls_are_bounded_as_stored_and_keep_no_fragment(app: TestApp) {
    let m = app.merchant("acme").await;
    let long = format!("https://example.test/{}", "ü".repeat(999));
    assert!(long.len() < 2_048);
    for url in [long, "https://example.test/hook#part".to_owned()] {
        let r = app
            .post(
                "/v1/webhook_endpoints",
                &m.key,
                json!({ "url": url, "enabled_events": ["*"] }),
            )
            .await;
        assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, "url"), "{}", r.text);
    }
    let fine = format!("https://example.test/{}", "ü".repeat(300));
    let r = app
        .post(
            "/v1/webhook_endpoints",
            &m.key,
            json!({ "url": fine, "enabled_events": ["*"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.json["url"].as_str().is_some_and(|u| u.len() <= 2_048), "{}", r.text);
}

/// A receiver on loopback that accepts every connection and never answers; the connections
/// close when the sender is told to stop. Counts the connections it accepted.
async fn hanging_receiver() -> (String, Arc<AtomicUsize>, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                Ok((socket, _)) = listener.accept() => {
                    held.push(socket);
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                _ = stopped.changed() => break, // the held connections close
            }
        }
    });
    (url, accepted, stop)
}

/// Runs delivery rounds until `receiver` saw something (at most 10 rounds).
async fn dispatch_until_seen(app: &TestApp, receiver: &Receiver, what: &str) {
    for _ in 0..10 {
        if !receiver.seen().is_empty() {
            return;
        }
        app.dispatch().await;
    }
    assert!(
        !receiver.seen().is_empty(),
        "{what} waited behind a receiver that never answers"
    );
}

/// Restarts `app` with delivery rounds that wait for their requests 100 ms and requests that
/// time out after 30 s: a hanging receiver's requests stay out for the whole test.
async fn waiting_only_a_while(app: &mut TestApp) {
    app.restart_with(|c| {
        c.webhook_round_wait = Duration::from_millis(100);
        c.webhook_timeout = Duration::from_secs(30);
    })
    .await;
}

/// A single-transfer request's body (one `transfer_batch.created` event).
fn transfer(i: usize) -> Value {
    json!({ "id": format!("t{i}"), "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "currency": "USD" })
}

/// A new merchant's event reaches its receiver within a few delivery rounds.
async fn another_merchants_event_goes_out(app: &TestApp) {
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let other = app.merchant_with_ab("other").await;
    app.endpoint(&other, &receiver.url, json!(["transfer_batch.created"]))
        .await;
    assert!(app.transfer(&other, transfer(0)).await.status.is_success());
    dispatch_until_seen(app, &receiver, "another merchant's event").await;
}

/// A receiver that never answers holds up neither its merchant's other endpoints nor other
/// merchants: a round waits for its requests only a while, and an endpoint has at most half its
/// merchant's share of requests in flight, so other requests go out beside them.
async fn a_receiver_that_never_answers_holds_up_no_other_endpoint(mut app: TestApp) {
    let (hanging, accepted, stop) = hanging_receiver().await;
    waiting_only_a_while(&mut app).await;
    let slow = app.merchant_with_ab("slow").await;
    let events = ["transfer_batch.created"];
    app.endpoint(&slow, &format!("{hanging}/hook"), json!(events)).await;
    let backlog = dispatch::MERCHANT_IN_FLIGHT_MAX + 8;
    for i in 0..backlog {
        assert!(app.transfer(&slow, transfer(i)).await.status.is_success());
    }
    // Its requests go out first, and hang; then the merchant adds an endpoint that answers.
    app.dispatch().await;
    app.clock.advance_seconds(1);
    let own = Receiver::start(0, Duration::ZERO).await;
    app.endpoint(&slow, &own.url, json!(events)).await;
    assert!(app.transfer(&slow, transfer(backlog)).await.status.is_success());
    dispatch_until_seen(&app, &own, "the merchant's other endpoint").await;
    app.clock.advance_seconds(1);
    another_merchants_event_goes_out(&app).await;
    let out = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=dispatch::ENDPOINT_IN_FLIGHT_MAX).contains(&out),
        "{out} requests to one endpoint at once"
    );
    let _ = stop.send(true);
}

/// One merchant's receivers that never answer, however many, hold up no other merchant: a
/// merchant has at most a quarter of the process's requests in flight.
async fn one_merchants_hanging_receivers_hold_up_no_other_merchant(mut app: TestApp) {
    let (hanging, accepted, stop) = hanging_receiver().await;
    waiting_only_a_while(&mut app).await;
    let events = ["transfer_batch.created"];
    let slow = app.merchant_with_ab("slow").await;
    let endpoints = dispatch::IN_FLIGHT_MAX / dispatch::ENDPOINT_IN_FLIGHT_MAX;
    for e in 0..endpoints {
        app.endpoint(&slow, &format!("{hanging}/h{e}"), json!(events)).await;
    }
    for i in 0..dispatch::ENDPOINT_IN_FLIGHT_MAX + 8 {
        assert!(app.transfer(&slow, transfer(i)).await.status.is_success());
    }
    // The slow merchant's requests go out first, and hang.
    app.dispatch().await;
    app.clock.advance_seconds(1);
    another_merchants_event_goes_out(&app).await;
    let out = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=dispatch::MERCHANT_IN_FLIGHT_MAX).contains(&out),
        "{out} requests to one merchant at once"
    );
    assert_eq!(
        webhooks::count(app.state(), DeliveryStatus::Delivered)
            .await
            .expect("count"),
        1
    );
    let _ = stop.send(true);
}

/// A receiver's answer is kept as text whatever its bytes: a NUL (which no PostgreSQL text
/// takes) and bytes that are not UTF-8 become U+FFFD, and the attempt is recorded.
async fn a_receivers_nul_and_binary_bytes_are_kept_as_text(app: TestApp) {
    let answer = Router::new().route("/hook", post(|| async { (StatusCode::OK, b"a\0b\xffc".to_vec()) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, answer).await;
    });
    let m = app.merchant_with_ab("shop").await;
    let (endpoint, _) = app.endpoint(&m, &url, json!(["transfer_batch.created"])).await;
    let t = json!({ "id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "currency": "USD" });
    assert!(app.transfer(&m, t).await.status.is_success());
    assert_eq!(app.dispatch().await, 1);
    let attempts = app
        .get(&format!("/v1/webhook_endpoints/{endpoint}/deliveries"), &m.key)
        .await;
    assert_eq!(attempts.status, StatusCode::OK, "{}", attempts.text);
    assert_eq!(attempts.json["data"][0]["status_code"], 200, "{}", attempts.text);
    assert_eq!(attempts.json["data"][0]["response_body"], "a\u{FFFD}b\u{FFFD}c");
    assert_eq!(
        webhooks::count(app.state(), DeliveryStatus::Delivered)
            .await
            .expect("count"),
        1
    );
}

/// An endpoint's health is stored only over the health it was judged from: a late request's
/// judgment, made on the endpoint as its round read it, does not undo a newer one.
async fn a_stale_judgment_of_an_endpoints_health_is_not_stored(app: TestApp) {
    use settle_store::{Mode, Scope};
    let m = app.merchant("shop").await;
    let (id, _) = app.endpoint(&m, "https://hooks.example.test/x", json!(["*"])).await;
    let now = settle_server::clock::Clock::now(&app.clock);
    let read = |app: &TestApp| {
        let (store, m, id) = (app.store.clone(), m.id.clone(), id.clone());
        async move {
            let mut tx = store.begin(Scope::System, Mode::Read).await.expect("begin");
            tx.get_endpoints(&[(m, id)]).await.expect("endpoint").remove(0)
        }
    };
    let healthy = read(&app).await;
    assert_eq!(healthy.failing_since, None);
    let failing = settle_domain::webhook::Endpoint {
        failing_since: Some(now),
        ..healthy.clone()
    };
    let mut tx = app.store.begin(Scope::System, Mode::Write).await.expect("begin");
    // Judged from a health that is not the stored one: not stored.
    assert!(!tx.update_endpoint_health(&failing, Some(now)).await.expect("update"));
    // Judged from the stored health: stored.
    assert!(tx.update_endpoint_health(&failing, None).await.expect("update"));
    // And a late judgment made on the healthy endpoint is not stored over it.
    assert!(!tx.update_endpoint_health(&healthy, None).await.expect("update"));
    tx.commit().await.expect("commit");
    assert_eq!(read(&app).await.failing_since, Some(now));
}

crate::conformance!(
    a_stale_judgment_of_an_endpoints_health_is_not_stored,
    a_receiver_that_never_answers_holds_up_no_other_endpoint,
    one_merchants_hanging_receivers_hold_up_no_other_merchant,
    a_receivers_nul_and_binary_bytes_are_kept_as_text,
    the_endpoint_limit_holds_under_concurrent_creates,
    a_receiver_that_never_answers_does_not_hold_shutdown,
    stripe_endpoints_get_stripe_shaped_events_signed_for_stripe,
    a_failing_receiver_gets_every_event_signed_after_retries_and_a_restart,
    two_dispatchers_never_send_one_attempt_twice,
    the_fan_out_skips_merchants_without_endpoints_and_the_jobs_see_when_nothing_is_due,
    a_dead_dispatchers_leases_expire_and_nothing_is_lost,
    a_rotated_secret_keeps_signing_for_a_day,
    an_endpoint_failing_for_three_days_is_disabled_and_its_deliveries_dead,
    endpoints_are_managed_and_bad_input_is_named,
    a_private_endpoint_is_not_called_once_refused,
    endpoint_urls_are_bounded_as_stored_and_keep_no_fragment,
);
