//! Inbound provider webhooks: signed sandbox and Stripe events through the public endpoint,
//! the inbox (duplicates stored once), the worker (applied once, never backwards, unknown
//! payments parked) and the operator's view.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use settle_domain::payment::Payment;
use settle_server::inbound::{
    sandbox::{self, SandboxOutcome, SignedWebhook},
    signature,
    worker::try_execute_webhook_inbox,
};
use settle_store::{Mode, Scope};

use crate::harness::{Merchant, Resp, TestApp, ADMIN_TOKEN};

const DELAYED: &str = "4000000000000077";

fn card(number: &str) -> Value {
    json!({ "type": "card", "card": { "number": number, "exp_month": 12, "exp_year": 2099, "cvc": "123" } })
}

struct Account {
    id: String,
    secret: String,
}

impl TestApp {
    /// A sandbox connector account; its generated signing secret is shown once, here.
    async fn sandbox_with_secret(&self, m: &Merchant) -> Account {
        let r = self
            .post(
                "/v1/connector_accounts",
                &m.key,
                json!({ "connector": "sandbox", "credentials": { "resolve_after_seconds": 0 } }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let secret = r.json["webhook_secret"].as_str().expect("secret shown once").to_owned();
        assert!(secret.starts_with("whsec_"), "{secret}");
        let id = r.json["id"].as_str().expect("id").to_owned();
        assert_eq!(r.json["webhook_path"], format!("/webhooks/sandbox/{id}"));
        Account { id, secret }
    }

    /// A payment left `processing` by the sandbox's delayed card.
    async fn delayed_payment(&self, m: &Merchant, capture_method: &str) -> Payment {
        let r = self
            .post(
                "/v1/payments",
                &m.key,
                json!({ "amount": 1200, "currency": "USD", "confirm": true, "capture_method": capture_method,
                        "payment_method": card(DELAYED) }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json["status"], "processing", "{}", r.text);
        self.payment_row(m, r.json["id"].as_str().expect("id")).await
    }

    async fn payment_row(&self, m: &Merchant, id: &str) -> Payment {
        let mut tx = self
            .store
            .begin(Scope::Merchant(m.id.clone()), Mode::Read)
            .await
            .expect("begin");
        tx.get_payment(&m.id, id).await.expect("read").expect("payment")
    }

    async fn sandbox_webhook(&self, payment: &Payment, outcome: SandboxOutcome) -> SignedWebhook {
        sandbox::webhook_for(self.state(), payment, &outcome)
            .await
            .expect("sandbox webhook")
    }

    async fn deliver(&self, path: &str, body: &str, signature: Option<&str>) -> Resp {
        let headers: Vec<(&str, &str)> = signature.map(|s| ("stripe-signature", s)).into_iter().collect();
        self.call(Method::POST, path, "", Some(body), &headers).await
    }

    async fn deliver_signed(&self, w: &SignedWebhook) -> Resp {
        self.deliver(&w.path, &w.body, Some(&w.signature)).await
    }

    /// Every inbox entry (operator's view), newest first.
    async fn inbox(&self, query: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/admin/v1/webhook_inbox?limit=100{query}"), ADMIN_TOKEN)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json["data"].as_array().expect("data").clone()
    }

    fn now_unix(&self) -> i64 {
        settle_server::clock::Clock::now(&self.clock).unix_seconds()
    }

    async fn work_inbox(&self) -> usize {
        try_execute_webhook_inbox(self.state()).await.expect("inbox round")
    }

    async fn status_of(&self, m: &Merchant, id: &str) -> Value {
        let r = self.get(&format!("/v1/payments/{id}"), &m.key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json
    }
}

fn signed(secret: &str, t: i64, body: &Value) -> (String, String) {
    let text = body.to_string();
    let header = signature::header(secret.as_bytes(), t, text.as_bytes());
    (text, header)
}

fn event(id: &str, kind: &str, object: Value) -> Value {
    json!({ "id": id, "object": "event", "type": kind, "data": { "object": object } })
}

async fn a_delayed_sandbox_payment_is_resolved_by_its_signed_webhook(app: TestApp) {
    let m = app.merchant("shop").await;
    let account = app.sandbox_with_secret(&m).await;
    // Shown once: not in the account as read back, nor anywhere in the database in clear.
    let read = app.get(&format!("/v1/connector_accounts/{}", account.id), &m.key).await;
    assert_eq!(read.json["webhook_secret"], Value::Null, "{}", read.text);
    assert!(!app.dump_all_tables().await.contains(&account.secret));

    let auto = app.delayed_payment(&m, "automatic").await;
    let manual = app.delayed_payment(&m, "manual").await;
    for p in [&auto, &manual] {
        let w = app.sandbox_webhook(p, SandboxOutcome::Authorized).await;
        assert_eq!(w.path, format!("/webhooks/sandbox/{}", account.id));
        let r = app.deliver_signed(&w).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["duplicate"], false, "{}", r.text);
        // Accepted, not applied yet: the worker applies it.
        assert_eq!(app.status_of(&m, &p.id).await["status"], "processing");
    }
    assert_eq!(app.work_inbox().await, 2);
    assert_eq!(app.work_inbox().await, 0, "nothing left");

    let auto_now = app.status_of(&m, &auto.id).await;
    assert_eq!(auto_now["status"], "succeeded", "{auto_now}");
    assert_eq!(auto_now["amount_captured"], 1200);
    let manual_now = app.status_of(&m, &manual.id).await;
    assert_eq!(manual_now["status"], "requires_capture", "{manual_now}");
    assert_eq!(manual_now["amount_capturable"], 1200);

    // Ledger: the automatic one captured into the merchant's balance, the manual one is held.
    let pending = app.get("/v1/ledger/accounts/settle:merchant_pending:USD", &m.key).await;
    assert_eq!(pending.json["balance"], 1200, "{}", pending.text);
    let clearing = app.get("/v1/ledger/accounts/settle:clearing:sandbox:USD", &m.key).await;
    assert_eq!(clearing.json["debits_pending"], 1200, "{}", clearing.text);
    assert_eq!(clearing.json["debits_posted"], 1200, "{}", clearing.text);

    // History and events: the webhook is the reason, events are complete and gap-free.
    let history = app.get(&format!("/v1/payments/{}/events", auto.id), &m.key).await;
    let reasons: Vec<(&str, &str)> = history.json["data"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["to"].as_str().unwrap_or(""), r["reason"].as_str().unwrap_or("")))
        .collect();
    assert!(reasons.contains(&("requires_capture", "webhook")), "{reasons:?}");
    assert!(reasons.contains(&("succeeded", "webhook")), "{reasons:?}");
    let events = app.events_of(&m, &auto.id).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("")).collect();
    // (A confirm answered `processing` records its claim and its pending outcome.)
    assert_eq!(types.first(), Some(&"payment.created"));
    assert!(
        types[1..types.len() - 2].iter().all(|t| *t == "payment.processing"),
        "{types:?}"
    );
    assert_eq!(types[types.len() - 2..], ["payment.authorized", "payment.captured"]);
    let sequences: Vec<i64> = events.iter().map(|e| e["sequence"].as_i64().unwrap_or(0)).collect();
    assert_eq!(sequences, (1..=events.len() as i64).collect::<Vec<_>>());

    let entries = app.inbox("").await;
    assert_eq!(entries.len(), 2);
    for e in &entries {
        assert_eq!(e["status"], "applied", "{e}");
        assert_eq!(e["attempts"], 1);
        assert_eq!(e["merchant_id"], m.id.as_str());
        assert_eq!(e["type"], "payment_intent.amount_capturable_updated");
    }
    app.verify_ok().await;
}

async fn a_webhook_posted_three_times_is_stored_once_and_applied_once(app: TestApp) {
    let m = app.merchant("shop").await;
    app.sandbox_with_secret(&m).await;
    let p = app.delayed_payment(&m, "automatic").await;
    let w = app.sandbox_webhook(&p, SandboxOutcome::Authorized).await;
    let first = app.deliver_signed(&w).await;
    assert_eq!(first.json["duplicate"], false, "{}", first.text);
    // Two more, concurrently: both are duplicates.
    let (a, b) = tokio::join!(app.deliver_signed(&w), app.deliver_signed(&w));
    for r in [&a, &b] {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["duplicate"], true, "{}", r.text);
    }
    assert_eq!(app.inbox("").await.len(), 1);
    assert_eq!(app.work_inbox().await, 1);
    // Once applied, the same event again is still a duplicate and changes nothing.
    let again = app.deliver_signed(&w).await;
    assert_eq!(again.json["duplicate"], true, "{}", again.text);
    assert_eq!(app.work_inbox().await, 0);
    let events = app.events_of(&m, &p.id).await;
    let captured = events.iter().filter(|e| e["type"] == "payment.captured").count();
    assert_eq!(captured, 1);
    assert_eq!(app.status_of(&m, &p.id).await["amount_captured"], 1200);
    app.verify_ok().await;
}

async fn late_events_never_move_a_payment_backwards(app: TestApp) {
    let m = app.merchant("shop").await;
    app.sandbox_with_secret(&m).await;
    let p = app.delayed_payment(&m, "manual").await;
    // The provider captured (its `succeeded`), and its earlier `processing` arrives after.
    let succeeded = app
        .sandbox_webhook(&p, SandboxOutcome::Succeeded { amount: 1200 })
        .await;
    let processing = app.sandbox_webhook(&p, SandboxOutcome::Processing).await;
    let failed = app
        .sandbox_webhook(
            &p,
            SandboxOutcome::Failed {
                code: "card_declined".into(),
                message: "late".into(),
            },
        )
        .await;
    for w in [&succeeded, &processing, &failed] {
        let r = app.deliver_signed(w).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    assert_eq!(app.work_inbox().await, 3);
    let now = app.status_of(&m, &p.id).await;
    assert_eq!(now["status"], "succeeded", "{now}");
    assert_eq!(now["amount_captured"], 1200);
    let entries = app.inbox("").await;
    let by_type = |t: &str| entries.iter().find(|e| e["type"] == t).cloned().unwrap_or(Value::Null);
    assert_eq!(by_type("payment_intent.succeeded")["status"], "applied");
    let late = by_type("payment_intent.processing");
    assert_eq!(late["status"], "ignored", "{late}");
    assert_eq!(late["reason"], "out_of_order");
    assert_eq!(late["payment_id"], p.id.as_str());
    assert_eq!(by_type("payment_intent.payment_failed")["reason"], "out_of_order");
    let ignored = app.inbox("&status=ignored").await;
    assert_eq!(ignored.len(), 2);
    // Ledger: authorized then captured by the provider's word, without a capture call.
    let pending = app.get("/v1/ledger/accounts/settle:merchant_pending:USD", &m.key).await;
    assert_eq!(pending.json["balance"], 1200, "{}", pending.text);
    app.verify_ok().await;
}

async fn a_failed_delayed_payment_returns_to_requires_payment_method(app: TestApp) {
    let m = app.merchant("shop").await;
    app.sandbox_with_secret(&m).await;
    let p = app.delayed_payment(&m, "automatic").await;
    let failed = SandboxOutcome::Failed {
        code: "insufficient_funds".into(),
        message: "Your card has insufficient funds.".into(),
    };
    let w = app.sandbox_webhook(&p, failed).await;
    assert_eq!(app.deliver_signed(&w).await.status, StatusCode::OK);
    assert_eq!(app.work_inbox().await, 1);
    let now = app.status_of(&m, &p.id).await;
    assert_eq!(now["status"], "requires_payment_method", "{now}");
    assert_eq!(now["last_payment_error"]["code"], "insufficient_funds");
    // Its late authorization is for an attempt that is over: ignored.
    let late = app.sandbox_webhook(&p, SandboxOutcome::Authorized).await;
    assert_eq!(app.deliver_signed(&late).await.status, StatusCode::OK);
    assert_eq!(app.work_inbox().await, 1);
    assert_eq!(app.status_of(&m, &p.id).await["status"], "requires_payment_method");
    let ignored = app.inbox("&status=ignored").await;
    assert_eq!(ignored.len(), 1);
    assert_eq!(ignored[0]["reason"], "payment_not_processing");
    app.verify_ok().await;
}

async fn forged_stale_and_missing_signatures_are_refused_and_nothing_is_stored(app: TestApp) {
    let m = app.merchant("shop").await;
    let account = app.sandbox_with_secret(&m).await;
    let p = app.delayed_payment(&m, "automatic").await;
    let w = app.sandbox_webhook(&p, SandboxOutcome::Authorized).await;
    let now = app.now_unix();

    let forged = signature::header(b"whsec_not_the_secret", now, w.body.as_bytes());
    let r = app.deliver(&w.path, &w.body, Some(&forged)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "signature_invalid"),
        "{}",
        r.text
    );
    assert_eq!(r.param(), "Stripe-Signature");

    let tampered = w.body.replace("1200", "1201");
    let r = app.deliver(&w.path, &tampered, Some(&w.signature)).await;
    assert_eq!(r.code(), "signature_invalid", "{}", r.text);

    let r = app.deliver(&w.path, &w.body, None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "signature_missing"),
        "{}",
        r.text
    );

    for malformed in ["", "t=abc,v1=00", "v1=deadbeef", "t=1,v1=nothex", "nonsense"] {
        let r = app.deliver(&w.path, &w.body, Some(malformed)).await;
        assert_eq!(r.code(), "signature_malformed", "{malformed}: {}", r.text);
    }

    let future = signature::header(account.secret.as_bytes(), now + 301, w.body.as_bytes());
    let r = app.deliver(&w.path, &w.body, Some(&future)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "signature_timestamp_outside_tolerance"),
        "{}",
        r.text
    );
    let old = signature::header(account.secret.as_bytes(), now - 301, w.body.as_bytes());
    let r = app.deliver(&w.path, &w.body, Some(&old)).await;
    assert_eq!(r.code(), "signature_timestamp_outside_tolerance", "{}", r.text);

    // A genuine signature replayed too late: the clock moved on.
    app.clock.advance_seconds(301);
    let r = app.deliver_signed(&w).await;
    assert_eq!(r.code(), "signature_timestamp_outside_tolerance", "{}", r.text);

    assert_eq!(app.inbox("").await, Vec::<Value>::new());
    assert_eq!(app.work_inbox().await, 0);
    assert_eq!(app.status_of(&m, &p.id).await["status"], "processing");
    // Within the tolerance a fresh signature is accepted.
    let fresh = app.sandbox_webhook(&p, SandboxOutcome::Authorized).await;
    assert_eq!(app.deliver_signed(&fresh).await.status, StatusCode::OK);
    assert_eq!(app.inbox("").await.len(), 1);
}

async fn an_event_for_an_unknown_payment_is_retried_then_parked(app: TestApp) {
    let m = app.merchant("shop").await;
    let account = app.sandbox_with_secret(&m).await;
    let path = format!("/webhooks/sandbox/{}", account.id);
    let body = event(
        "evt_unknown_1",
        "payment_intent.succeeded",
        json!({ "id": "pi_nobody_knows", "object": "payment_intent", "amount_received": 500 }),
    );
    let (text, header) = signed(&account.secret, app.now_unix(), &body);
    assert_eq!(app.deliver(&path, &text, Some(&header)).await.status, StatusCode::OK);
    // An unsupported type is ignored at once.
    let other = event("evt_other_1", "customer.created", json!({ "id": "cus_1" }));
    let (text, header) = signed(&account.secret, app.now_unix(), &other);
    assert_eq!(app.deliver(&path, &text, Some(&header)).await.status, StatusCode::OK);

    assert_eq!(app.work_inbox().await, 2);
    let waiting = app.inbox("&status=received").await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["reason"], "payment_not_found");
    assert_eq!(waiting[0]["attempts"], 1);
    assert_eq!(
        app.inbox("&status=ignored").await[0]["reason"],
        "unsupported_event_type"
    );
    // Not due yet: nothing to do.
    assert_eq!(app.work_inbox().await, 0);

    let mut rounds = 1;
    while app.inbox("&status=parked").await.is_empty() {
        app.clock.advance_seconds(900);
        assert_eq!(app.work_inbox().await, 1);
        rounds += 1;
        assert!(rounds <= 10, "parked after at most 10 attempts");
    }
    assert_eq!(rounds, 10);
    let parked = app.inbox("&status=parked").await;
    assert_eq!(parked[0]["reason"], "payment_not_found");
    assert_eq!(parked[0]["event_id"], "evt_unknown_1");
    assert_eq!(parked[0]["attempts"], 10);
    assert_eq!(parked[0]["next_attempt"], Value::Null);
    app.clock.advance_seconds(86_400);
    assert_eq!(app.work_inbox().await, 0, "parked entries stay parked");

    // The operator's list: admin only, cursor-paginated, filtered.
    let r = app.get("/admin/v1/webhook_inbox?status=parked", &m.key).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let first = app.get("/admin/v1/webhook_inbox?limit=1", ADMIN_TOKEN).await;
    assert_eq!(first.json["has_more"], true, "{}", first.text);
    let cursor = first.json["data"][0]["id"].as_str().expect("id");
    let second = app
        .get(
            &format!("/admin/v1/webhook_inbox?limit=1&starting_after={cursor}"),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(second.json["has_more"], false, "{}", second.text);
    assert_ne!(second.json["data"][0]["id"], first.json["data"][0]["id"]);
    let mine = app.inbox(&format!("&merchant_id={}", m.id)).await;
    assert_eq!(mine.len(), 2);
    let bad = app.get("/admin/v1/webhook_inbox?status=lost", ADMIN_TOKEN).await;
    assert_eq!((bad.status, bad.param()), (StatusCode::BAD_REQUEST, "status"));
    let bad = app
        .get("/admin/v1/webhook_inbox?starting_after=whin_nope", ADMIN_TOKEN)
        .await;
    assert_eq!((bad.status, bad.param()), (StatusCode::BAD_REQUEST, "starting_after"));
}

async fn bad_webhook_input_answers_clear_4xx(app: TestApp) {
    let m = app.merchant("shop").await;
    let account = app.sandbox_with_secret(&m).await;
    let path = format!("/webhooks/sandbox/{}", account.id);
    let now = app.now_unix();
    let sign = |text: &str| signature::header(account.secret.as_bytes(), now, text.as_bytes());
    let cases: [(&str, &str, &str); 10] = [
        ("not json", "invalid_json", "body"),
        ("[1, 2]", "parameter_invalid", "body"),
        ("\"evt\"", "parameter_invalid", "body"),
        (r#"{"type": "payment_intent.succeeded"}"#, "parameter_missing", "id"),
        (r#"{"id": "evt_1"}"#, "parameter_missing", "type"),
        (
            r#"{"id": 7, "type": "payment_intent.succeeded"}"#,
            "parameter_invalid",
            "id",
        ),
        (
            r#"{"id": "", "type": "payment_intent.succeeded"}"#,
            "parameter_invalid",
            "id",
        ),
        (r#"{"id": "evt_1", "type": ["x"]}"#, "parameter_invalid", "type"),
        // Which id? Refused rather than taking the last.
        (
            r#"{"id": "evt_a", "id": "evt_b", "type": "x"}"#,
            "parameter_invalid",
            "id",
        ),
        // An id with a NUL could be neither stored nor looked up by the worker.
        (
            r#"{"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_\u0000"}}}"#,
            "parameter_invalid",
            "data.object.id",
        ),
    ];
    for (body, code, param) in cases {
        let r = app.deliver(&path, body, Some(&sign(body))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!((r.code(), r.param()), (code, param), "{body}: {}", r.text);
    }
    let huge = format!(r#"{{"id": "evt_big", "type": "x", "pad": "{}"}}"#, "a".repeat(1 << 20));
    let r = app.deliver(&path, &huge, Some(&sign(&huge))).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "body_too_large"),
        "{}",
        r.text
    );

    // Paths: an unknown connector, the wrong connector for the account, an unknown account.
    let good = r#"{"id": "evt_ok", "type": "payment_intent.processing"}"#;
    for p in [
        format!("/webhooks/paypal/{}", account.id),
        format!("/webhooks/stripe/{}", account.id),
        "/webhooks/sandbox/mca_does_not_exist".to_owned(),
    ] {
        let r = app.deliver(&p, good, Some(&sign(good))).await;
        assert_eq!(
            (r.status, r.code(), r.param()),
            (StatusCode::NOT_FOUND, "resource_missing", "account_id"),
            "{p}: {}",
            r.text
        );
        assert!(r.text.contains("no such connector account"), "{p}: {}", r.text);
    }
    // Another merchant's account: its secret is not ours, so our signature does not verify.
    let other = app.merchant("other").await;
    let theirs = app.sandbox_with_secret(&other).await;
    let r = app
        .deliver(&format!("/webhooks/sandbox/{}", theirs.id), good, Some(&sign(good)))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "signature_invalid"),
        "{}",
        r.text
    );
    // GET is not a webhook.
    let r = app.get(&path, "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(app.inbox("").await, Vec::<Value>::new());
    // A NUL elsewhere in a genuine event is kept (escaped in the stored payload): accepted.
    let body = r#"{"id": "evt_nul_ok", "type": "payment_intent.processing", "data": {"object": {"id": "pi_1", "description": "a\u0000b"}}}"#;
    let r = app.deliver(&path, body, Some(&sign(body))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Signing secrets are checked when an account is created, never echoed.
    let r = app
        .post(
            "/v1/connector_accounts",
            &m.key,
            json!({ "connector": "stripe", "credentials": { "api_key": "sk_test_x", "webhook_secret": "oops-secret" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.param(), "credentials.webhook_secret");
    assert!(!r.text.contains("oops-secret"));
    // A Stripe account without one cannot receive webhooks, and says so.
    let r = app
        .post(
            "/v1/connector_accounts",
            &m.key,
            json!({ "connector": "stripe", "credentials": { "api_key": "sk_test_x" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["webhook_secret"], Value::Null, "not generated for Stripe");
    let stripe_path = r.json["webhook_path"].as_str().expect("path").to_owned();
    let r = app.deliver(&stripe_path, good, Some(&sign(good))).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "webhook_secret_not_configured"),
        "{}",
        r.text
    );
}

async fn stripe_signed_events_are_verified(app: TestApp) {
    let m = app.merchant("shop").await;
    let secret = format!("whsec_{}", crate::harness::rand_suffix());
    let r = app
        .post(
            "/v1/connector_accounts",
            &m.key,
            json!({ "connector": "stripe", "credentials": { "api_key": "sk_test_x",
                    "base_url": "http://127.0.0.1:9", "webhook_secret": secret } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["webhook_secret"], Value::Null, "a given secret is not echoed");
    let path = r.json["webhook_path"].as_str().expect("path").to_owned();
    assert!(path.starts_with("/webhooks/stripe/mca_"), "{path}");
    assert!(!app.dump_all_tables().await.contains(&secret));

    let body = event(
        "evt_1StripeLike",
        "payment_intent.amount_capturable_updated",
        json!({ "id": "pi_3Stripe", "object": "payment_intent", "status": "requires_capture",
                "metadata": { "settle_reference": "att_unknown" } }),
    );
    let now = app.now_unix();
    let (text, header) = signed(&secret, now, &body);
    let r = app.deliver(&path, &text, Some(&header)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["event_id"], "evt_1StripeLike");
    // Stripe sends a second v1 while it rolls a secret: any match verifies.
    let old = signature::sign(b"whsec_rolled_out", now, text.as_bytes());
    let both = format!("{header},v1={old}");
    let r = app.deliver(&path, &text, Some(&both)).await;
    assert_eq!(r.json["duplicate"], true, "{}", r.text);
    let (_, sandbox_header) = signed("whsec_wrong", now, &body);
    let r = app.deliver(&path, &text, Some(&sandbox_header)).await;
    assert_eq!(r.code(), "signature_invalid", "{}", r.text);

    let entries = app.inbox("").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["connector"], "stripe");
    assert_eq!(entries[0]["payload"], body);
    // No such payment here: retried later, not applied.
    assert_eq!(app.work_inbox().await, 1);
    assert_eq!(app.inbox("&status=received").await[0]["reason"], "payment_not_found");
}

async fn webhook_secrets_never_reach_the_logs(app: TestApp) {
    let m = app.merchant("shop").await;
    let account = app.sandbox_with_secret(&m).await;
    let p = app.delayed_payment(&m, "automatic").await;
    let w = app.sandbox_webhook(&p, SandboxOutcome::Authorized).await;
    assert_eq!(app.deliver_signed(&w).await.status, StatusCode::OK);
    assert_eq!(app.work_inbox().await, 1);
    let logs = crate::harness::CAPTURED_LOGS
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    assert!(!String::from_utf8_lossy(&logs).contains(&account.secret));
}

async fn the_sandbox_posts_its_delayed_outcome_to_settle_over_http(app: TestApp) {
    // A second app on the same database that knows its own URL, served on a loopback port,
    // as `settle serve` is.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = settle_server::Config::for_engine(app.store.engine());
    config.run_jobs = false;
    config.vault_key = app.state().config.vault_key.clone();
    config.public_url = Some(format!("http://{}", listener.local_addr().expect("addr")));
    let served = settle_server::App::build(app.store.clone(), std::sync::Arc::new(app.clock.clone()), config)
        .await
        .expect("build");
    let router = served.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let m = app.merchant("shop").await;
    app.sandbox_with_secret(&m).await;
    let body =
        json!({ "amount": 1500, "currency": "USD", "confirm": true, "payment_method": card(DELAYED) }).to_string();
    let r = crate::harness::call(&served.router, Method::POST, "/v1/payments", &m.key, Some(&body), &[]).await;
    assert_eq!(r.json["status"], "processing", "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    // `resolve_after_seconds` is 0: the webhook is on its way at once.
    let mut waited = 0;
    while app.inbox("").await.is_empty() {
        waited += 1;
        assert!(waited < 200, "the sandbox's webhook did not arrive");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let entry = &app.inbox("").await[0];
    assert_eq!(entry["type"], "payment_intent.amount_capturable_updated");
    assert_eq!(try_execute_webhook_inbox(&served.state).await.expect("round"), 1);
    let now = app.status_of(&m, &id).await;
    assert_eq!(now["status"], "succeeded", "{now}");
    app.verify_ok().await;
}

/// A sandbox webhook due in an hour does not hold shutdown up: the payment stays `processing`
/// for the sync job.
async fn shutdown_does_not_wait_for_a_sandbox_webhook_due_later(app: TestApp) {
    let mut config = settle_server::Config::for_engine(app.store.engine());
    config.run_jobs = false;
    config.vault_key = app.state().config.vault_key.clone();
    // Never reached: the webhook is due long after the test.
    config.public_url = Some("http://127.0.0.1:9".into());
    let other = settle_server::App::build(app.store.clone(), std::sync::Arc::new(app.clock.clone()), config)
        .await
        .expect("build");
    let m = app.merchant("shop").await;
    let r = app
        .post(
            "/v1/connector_accounts",
            &m.key,
            json!({ "connector": "sandbox", "credentials": { "resolve_after_seconds": 3600 } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let body =
        json!({ "amount": 1500, "currency": "USD", "confirm": true, "payment_method": card(DELAYED) }).to_string();
    let r = crate::harness::call(&other.router, Method::POST, "/v1/payments", &m.key, Some(&body), &[]).await;
    assert_eq!(r.json["status"], "processing", "{}", r.text);
    tokio::time::timeout(std::time::Duration::from_secs(60), other.shutdown())
        .await
        .expect("shutdown waited for a webhook due in an hour");
    assert_eq!(
        app.status_of(&m, r.json["id"].as_str().expect("id")).await["status"],
        "processing"
    );
}

/// An inbox entry whose event names its payment by an id no query can carry (a NUL, stored by
/// a version that did not refuse it) fails alone: the round applies everyone else's events.
async fn an_entry_no_query_can_look_up_fails_alone(app: TestApp) {
    let (a, b) = (app.merchant("a").await, app.merchant("b").await);
    let account = app.sandbox_with_secret(&a).await;
    app.sandbox_with_secret(&b).await;
    let theirs = app.delayed_payment(&b, "manual").await;
    let ours = app.delayed_payment(&a, "manual").await;
    let w = app.sandbox_webhook(&ours, SandboxOutcome::Authorized).await;
    let provider_ref = ours.provider_ref.clone().expect("provider id");
    let payload = w.body.replace(&provider_ref, "pi_\\u0000").replace('\'', "''");
    app.exec(&format!(
        "INSERT INTO webhook_inbox (merchant_id, id, connector, connector_account_id, provider_event_id, type, \
         payload, status, attempts, next_attempt_at, created_at, updated_at) \
         VALUES ('{}', 'whin_nul', 'sandbox', '{}', 'evt_nul', 'payment_intent.amount_capturable_updated', \
         '{payload}', 'received', 0, 0, 0, 0)",
        a.id, account.id
    ))
    .await;
    let w = app.sandbox_webhook(&theirs, SandboxOutcome::Authorized).await;
    assert_eq!(app.deliver_signed(&w).await.status, StatusCode::OK);
    assert_eq!(app.work_inbox().await, 2);
    assert_eq!(app.status_of(&b, &theirs.id).await["status"], "requires_capture");
    let stuck = app.inbox("").await;
    let stuck = stuck.iter().find(|e| e["id"] == "whin_nul").expect("the entry");
    // Handled in this round like any other (PostgreSQL: retried later; SQLite can look the id
    // up, and finds the payment's event is not for this attempt).
    assert_eq!(stuck["attempts"], 1, "{stuck}");
    assert_ne!(stuck["status"], "applied", "{stuck}");
}

crate::conformance!(
    the_sandbox_posts_its_delayed_outcome_to_settle_over_http,
    a_delayed_sandbox_payment_is_resolved_by_its_signed_webhook,
    a_webhook_posted_three_times_is_stored_once_and_applied_once,
    late_events_never_move_a_payment_backwards,
    a_failed_delayed_payment_returns_to_requires_payment_method,
    forged_stale_and_missing_signatures_are_refused_and_nothing_is_stored,
    an_event_for_an_unknown_payment_is_retried_then_parked,
    bad_webhook_input_answers_clear_4xx,
    stripe_signed_events_are_verified,
    webhook_secrets_never_reach_the_logs,
    shutdown_does_not_wait_for_a_sandbox_webhook_due_later,
    an_entry_no_query_can_look_up_fails_alone,
);
