//! Payments: the state machine over HTTP, ledger postings with splits, refunds and their race,
//! routing with failover and the circuit breaker, the vault, the jobs.

use axum::http::StatusCode;
use serde_json::{json, Value};
use settle_server::payments::{jobs, refunds};

use crate::harness::{Merchant, Resp, TestApp, CAPTURED_LOGS};

const VISA: &str = "4242424242424242";

fn card(number: &str) -> Value {
    json!({ "type": "card", "card": { "number": number, "exp_month": 12, "exp_year": 2099, "cvc": "123" } })
}

impl TestApp {
    async fn pay(&self, m: &Merchant, body: Value) -> Resp {
        self.post("/v1/payments", &m.key, body).await
    }

    async fn authorized(&self, m: &Merchant, amount: i64, extra: Value) -> String {
        let mut body = json!({ "amount": amount, "currency": "USD", "capture_method": "manual",
                               "confirm": true, "payment_method": card(VISA) });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let r = self.pay(m, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json["status"], "requires_capture", "{}", r.text);
        r.json["id"].as_str().expect("id").to_owned()
    }

    async fn ledger_balance(&self, m: &Merchant, account: &str) -> i64 {
        let r = self.get(&format!("/v1/ledger/accounts/{account}"), &m.key).await;
        assert_eq!(r.status, StatusCode::OK, "{account}: {}", r.text);
        r.json["balance"].as_i64().expect("balance")
    }

    pub(crate) async fn sandbox_account(&self, m: &Merchant, credentials: Value) -> String {
        let r = self
            .post(
                "/v1/connector_accounts",
                &m.key,
                json!({ "connector": "sandbox", "credentials": credentials }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json["id"].as_str().expect("id").to_owned()
    }
}

async fn automatic_capture_moves_the_money_and_keeps_a_history(app: TestApp) {
    let m = app.merchant("shop").await;
    let r = app
        .pay(
            &m,
            json!({ "amount": 1050, "currency": "USD", "confirm": true, "payment_method": card(VISA),
                         "customer": { "email": "Ann@Example.test", "name": "Ann" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "succeeded");
    assert_eq!(r.json["amount_captured"], 1050);
    assert_eq!(r.json["customer"]["email"], "ann@example.test");
    let id = r.json["id"].as_str().expect("id");
    assert_eq!(app.ledger_balance(&m, "settle:clearing:sandbox:USD").await, 1050);
    assert_eq!(app.ledger_balance(&m, "settle:merchant_pending:USD").await, 1050);
    let events = app.get(&format!("/v1/payments/{id}/events"), &m.key).await;
    let path: Vec<&str> = events.json["data"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["to"].as_str().expect("to"))
        .collect();
    assert_eq!(
        path,
        ["requires_confirmation", "processing", "requires_capture", "succeeded"]
    );
    let listed = app
        .get("/v1/payments?customer_email=ann@example.test&status=succeeded", &m.key)
        .await;
    assert_eq!(listed.json["data"].as_array().map(Vec::len), Some(1), "{}", listed.text);
    app.verify_ok().await;
}

async fn partial_capture_releases_the_rest(app: TestApp) {
    let m = app.merchant("shop").await;
    let id = app.authorized(&m, 1000, json!({})).await;
    assert_eq!(
        app.ledger_balance(&m, "settle:clearing:sandbox:USD").await,
        0,
        "a hold is not a balance"
    );
    let too_much = app
        .post(&format!("/v1/payments/{id}/capture"), &m.key, json!({ "amount": 1001 }))
        .await;
    assert_eq!(too_much.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_much.param(), "amount");
    let r = app
        .post(&format!("/v1/payments/{id}/capture"), &m.key, json!({ "amount": 600 }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "succeeded");
    assert_eq!(r.json["amount_captured"], 600);
    assert_eq!(app.ledger_balance(&m, "settle:clearing:sandbox:USD").await, 600);
    let clearing = app.get("/v1/ledger/accounts/settle:clearing:sandbox:USD", &m.key).await;
    assert_eq!(
        clearing.json["debits_pending"], 0,
        "the remainder is released: {}",
        clearing.text
    );
    app.verify_ok().await;
}

async fn illegal_transitions_answer_409_naming_the_status(app: TestApp) {
    let m = app.merchant("shop").await;
    let r = app.pay(&m, json!({ "amount": 500, "currency": "USD" })).await;
    let id = r.json["id"].as_str().expect("id");
    assert_eq!(r.json["status"], "requires_payment_method");
    let capture = app.post(&format!("/v1/payments/{id}/capture"), &m.key, json!({})).await;
    assert_eq!(capture.status, StatusCode::CONFLICT);
    assert!(capture.text.contains("requires_payment_method"), "{}", capture.text);
    let confirm = app.post(&format!("/v1/payments/{id}/confirm"), &m.key, json!({})).await;
    assert_eq!(confirm.status, StatusCode::BAD_REQUEST);
    assert_eq!(confirm.param(), "payment_method");
    let cancel = app
        .post(
            &format!("/v1/payments/{id}/cancel"),
            &m.key,
            json!({ "reason": "abandoned" }),
        )
        .await;
    assert_eq!(cancel.json["status"], "canceled", "{}", cancel.text);
    let again = app.post(&format!("/v1/payments/{id}/cancel"), &m.key, json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.text.contains("canceled"), "{}", again.text);
}

async fn a_decline_can_be_retried_with_another_card(app: TestApp) {
    let m = app.merchant("shop").await;
    let r = app
        .pay(
            &m,
            json!({ "amount": 700, "currency": "USD", "confirm": true,
                         "payment_method": card("4000000000009995") }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "requires_payment_method");
    assert_eq!(r.json["last_payment_error"]["code"], "insufficient_funds");
    let id = r.json["id"].as_str().expect("id");
    let retry = app
        .post(
            &format!("/v1/payments/{id}/confirm"),
            &m.key,
            json!({ "payment_method": card(VISA) }),
        )
        .await;
    assert_eq!(retry.json["status"], "succeeded", "{}", retry.text);
    assert_eq!(retry.json["last_payment_error"], Value::Null);
    app.verify_ok().await;
}

async fn splits_and_fee_are_allocated_to_the_cent(app: TestApp) {
    let m = app.merchant("market").await;
    for payee in ["venue", "artist"] {
        app.account(&m, payee, json!({})).await;
    }
    let id = app
        .authorized(
            &m,
            1000,
            json!({ "splits": [{ "payee_account_id": "venue", "amount": 333 }, { "payee_account_id": "artist", "amount": 333 }],
                    "application_fee_amount": 101 }),
        )
        .await;
    let r = app
        .post(&format!("/v1/payments/{id}/capture"), &m.key, json!({ "amount": 999 }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let venue = app.ledger_balance(&m, "venue").await;
    let artist = app.ledger_balance(&m, "artist").await;
    let fee = app.ledger_balance(&m, "settle:platform_fees:USD").await;
    let merchant = app.ledger_balance(&m, "settle:merchant_pending:USD").await;
    assert_eq!(venue + artist + fee + merchant, 999, "no cent lost");
    // Largest remainders: 999 × (233, 333, 333, 101) / 1000 leaves 3 units for the fee (.899),
    // the merchant (.767) and the first payee (.667, tied with the second, which comes later).
    assert_eq!((venue, artist, fee, merchant), (333, 332, 101, 233));
    // Refund everything: each share gives back exactly what it received.
    let refund = app.post("/v1/refunds", &m.key, json!({ "payment_id": id })).await;
    assert_eq!(refund.json["status"], "succeeded", "{}", refund.text);
    for account in [
        "venue",
        "artist",
        "settle:platform_fees:USD",
        "settle:merchant_pending:USD",
        "settle:clearing:sandbox:USD",
    ] {
        assert_eq!(app.ledger_balance(&m, account).await, 0, "{account}");
    }
    // A fee of 0 is shown as sent and moves nothing.
    let r = app
        .pay(
            &m,
            json!({ "amount": 500, "currency": "USD", "confirm": true, "payment_method": card(VISA),
                    "application_fee_amount": 0 }),
        )
        .await;
    assert_eq!(
        (&r.json["status"], &r.json["application_fee_amount"]),
        (&json!("succeeded"), &json!(0)),
        "{}",
        r.text
    );
    assert_eq!(app.ledger_balance(&m, "settle:platform_fees:USD").await, 0);
    app.verify_ok().await;
}

async fn partial_refunds_never_exceed_the_capture(app: TestApp) {
    let m = app.merchant("shop").await;
    let r = app
        .pay(
            &m,
            json!({ "amount": 1000, "currency": "USD", "confirm": true, "payment_method": card(VISA) }),
        )
        .await;
    let id = r.json["id"].as_str().expect("id").to_owned();
    let router = app.router.clone();
    let key = m.key.clone();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (router, key, id) = (router.clone(), key.clone(), id.clone());
            tokio::spawn(async move {
                let body = json!({ "payment_id": id, "amount": 150 }).to_string();
                crate::harness::call(&router, axum::http::Method::POST, "/v1/refunds", &key, Some(&body), &[]).await
            })
        })
        .collect();
    let mut succeeded = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            StatusCode::CREATED => {
                assert_eq!(r.json["status"], "succeeded", "{}", r.text);
                succeeded += 1;
            }
            StatusCode::UNPROCESSABLE_ENTITY => assert_eq!(r.code(), "amount_too_large", "{}", r.text),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(succeeded, 6, "exactly the refunds that fit (6 × 150 ≤ 1000 < 7 × 150)");
    let p = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(p.json["amount_refunded"], 900);
    assert_eq!(p.json["refund_status"], "partial");
    let last = app.post("/v1/refunds", &m.key, json!({ "payment_id": id })).await;
    assert_eq!(last.json["amount"], 100, "the rest: {}", last.text);
    assert_eq!(app.ledger_balance(&m, "settle:clearing:sandbox:USD").await, 0);
    app.verify_ok().await;
}

async fn concurrent_commands_on_one_payment_have_one_winner(app: TestApp) {
    let m = app.merchant("shop").await;
    let id = app.authorized(&m, 1000, json!({})).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (router, key, id) = (app.router.clone(), m.key.clone(), id.clone());
            tokio::spawn(async move {
                let action = if i % 2 == 0 { "capture" } else { "cancel" };
                crate::harness::call(
                    &router,
                    axum::http::Method::POST,
                    &format!("/v1/payments/{id}/{action}"),
                    &key,
                    Some("{}"),
                    &[],
                )
                .await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            StatusCode::OK => wins += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(wins, 1);
    // The losers wrote nothing: one status change left `requires_capture`.
    let history = app.get(&format!("/v1/payments/{id}/events"), &m.key).await;
    let left = history.json["data"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["from"] == "requires_capture")
        .count();
    assert_eq!(left, 1, "{}", history.text);

    // Concurrent confirms: each claim numbers a `payment.processing` event, so a loser can
    // collide with the winner's event before its compare-and-set fails; it still answers 409.
    for round in 0..5 {
        let r = app
            .pay(
                &m,
                json!({ "amount": 500, "currency": "USD", "capture_method": "manual", "payment_method": card(VISA) }),
            )
            .await;
        let id = r.json["id"].as_str().expect("id").to_owned();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (router, key, path) = (app.router.clone(), m.key.clone(), format!("/v1/payments/{id}/confirm"));
                tokio::spawn(async move {
                    crate::harness::call(&router, axum::http::Method::POST, &path, &key, Some("{}"), &[]).await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            let r = t.await.expect("task");
            match r.status {
                StatusCode::OK => wins += 1,
                StatusCode::CONFLICT => {}
                other => panic!("round {round}: unexpected {other}: {}", r.text),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    app.verify_ok().await;
}

async fn failover_tries_the_next_connector_after_a_failure(app: TestApp) {
    let m = app.merchant("shop").await;
    for failure in ["server_error", "timeout"] {
        let broken = app.sandbox_account(&m, json!({ "failure": failure })).await;
        let healthy = app.sandbox_account(&m, json!({})).await;
        let rules = json!({ "rules": [{ "connector_account_id": broken }, { "connector_account_id": healthy }] });
        let r = app.post("/v1/routing", &m.key, rules).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let p = app
            .pay(
                &m,
                json!({ "amount": 900, "currency": "USD", "confirm": true, "payment_method": card(VISA) }),
            )
            .await;
        assert_eq!(p.json["status"], "succeeded", "{}", p.text);
        assert_eq!(p.json["connector_account_id"], healthy.as_str());
        let id = p.json["id"].as_str().expect("id");
        let attempts = app.get(&format!("/v1/payments/{id}/attempts"), &m.key).await;
        let seen: Vec<(String, String, String)> = attempts.json["data"]
            .as_array()
            .expect("attempts")
            .iter()
            .map(|a| {
                (
                    a["connector_account_id"].as_str().unwrap_or("").to_owned(),
                    a["operation"].as_str().unwrap_or("").to_owned(),
                    a["outcome"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let expected_failure = if failure == "timeout" { "timeout" } else { "error" };
        assert_eq!(
            seen,
            vec![
                (broken.clone(), "authorize".into(), expected_failure.into()),
                (broken.clone(), "sync".into(), "not_found".into()),
                (healthy.clone(), "authorize".into(), "succeeded".into()),
                (healthy.clone(), "capture".into(), "succeeded".into()),
            ],
            "{failure}"
        );
    }
    app.verify_ok().await;
}

async fn a_failing_connector_is_skipped_once_its_circuit_opens(app: TestApp) {
    let m = app.merchant("shop").await;
    let broken = app.sandbox_account(&m, json!({ "failure": "server_error" })).await;
    let healthy = app.sandbox_account(&m, json!({})).await;
    app.post(
        "/v1/routing",
        &m.key,
        json!({ "rules": [{ "connector_account_id": broken }, { "connector_account_id": healthy }] }),
    )
    .await;
    let mut skipped = 0;
    for _ in 0..7 {
        let p = app
            .pay(
                &m,
                json!({ "amount": 100, "currency": "USD", "confirm": true, "payment_method": card(VISA) }),
            )
            .await;
        assert_eq!(p.json["status"], "succeeded", "{}", p.text);
        let id = p.json["id"].as_str().expect("id");
        let attempts = app.get(&format!("/v1/payments/{id}/attempts"), &m.key).await;
        skipped += attempts.json["data"]
            .as_array()
            .expect("attempts")
            .iter()
            .filter(|a| a["outcome"] == "skipped")
            .count();
    }
    assert_eq!(
        skipped, 2,
        "5 failures open the circuit; the next 2 payments skip the account"
    );
    let account = app.get(&format!("/v1/connector_accounts/{broken}"), &m.key).await;
    assert_eq!(account.json["circuit"], "open", "{}", account.text);
    app.clock.advance_seconds(31);
    let p = app
        .pay(
            &m,
            json!({ "amount": 100, "currency": "USD", "confirm": true, "payment_method": card(VISA) }),
        )
        .await;
    let attempts = app
        .get(
            &format!("/v1/payments/{}/attempts", p.json["id"].as_str().expect("id")),
            &m.key,
        )
        .await;
    assert_eq!(
        attempts.json["data"][0]["outcome"], "error",
        "half-open lets one trial through: {}",
        attempts.text
    );
}

async fn card_numbers_and_cvcs_are_never_at_rest(app: TestApp) {
    let m = app.merchant("shop").await;
    let number = "5555555555554444";
    let cvc = "987";
    let pm = app
        .post(
            "/v1/payment_methods",
            &m.key,
            json!({ "type": "card", "card": { "number": number, "exp_month": 1, "exp_year": 2099, "cvc": cvc } }),
        )
        .await;
    assert_eq!(pm.status, StatusCode::CREATED, "{}", pm.text);
    assert_eq!(pm.json["card"]["last4"], "4444");
    assert_eq!(pm.json["card"]["brand"], "mastercard");
    let pm_id = pm.json["id"].as_str().expect("id");
    let again = app
        .post(
            "/v1/payment_methods",
            &m.key,
            json!({ "type": "card", "card": { "number": number, "exp_month": 1, "exp_year": 2099 } }),
        )
        .await;
    assert_eq!(
        again.json["card"]["fingerprint"], pm.json["card"]["fingerprint"],
        "one card, one fingerprint"
    );
    let p = app
        .pay(
            &m,
            json!({ "amount": 2500, "currency": "USD", "confirm": true, "payment_method": pm_id }),
        )
        .await;
    assert_eq!(p.json["status"], "succeeded", "{}", p.text);
    let bad = app
        .pay(&m, json!({ "amount": 100, "currency": "USD", "payment_method": { "type": "card", "card": { "number": "5555555555554445", "exp_month": 1, "exp_year": 2099, "cvc": cvc } } }))
        .await;
    assert_eq!(bad.param(), "payment_method.card.number");
    assert!(!bad.text.contains("555555555555444"), "{}", bad.text);
    // Nor as an id that names nothing, or as the name of a field that does not exist.
    let as_id = app
        .pay(
            &m,
            json!({ "amount": 100, "currency": "USD", "payment_method": number }),
        )
        .await;
    let as_key = app
        .post("/v1/payment_methods", &m.key, json!({ "type": "card", number: 1 }))
        .await;
    for r in [&as_id, &as_key] {
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert!(!r.text.contains(number), "echoed: {}", r.text);
    }
    // A number or CVC of the wrong JSON type, or in the wrong field, is not echoed either.
    let as_integer: u64 = number.parse().expect("digits");
    let mistyped = [
        (
            json!({ "number": as_integer, "exp_month": 1, "exp_year": 2099 }),
            "card.number",
        ),
        (
            json!({ "number": number, "exp_month": 1, "exp_year": 2099, "cvc": 987 }),
            "card.cvc",
        ),
        (
            json!({ "number": "4242424242424242", "exp_month": number, "exp_year": 2099 }),
            "card.exp_month",
        ),
        (
            json!({ "number": "4242424242424242", "exp_month": as_integer, "exp_year": 2099 }),
            "card.exp_month",
        ),
    ];
    for (card, param) in mistyped {
        let r = app
            .post("/v1/payment_methods", &m.key, json!({ "type": "card", "card": card }))
            .await;
        assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, param), "{}", r.text);
        let r2 = app
            .pay(
                &m,
                json!({ "amount": 100, "currency": "USD", "payment_method": { "type": "card", "card": card } }),
            )
            .await;
        assert_eq!(r2.param(), format!("payment_method.{param}"), "{}", r2.text);
        for text in [&r.text, &r2.text] {
            assert!(!text.contains(number) && !text.contains(cvc), "echoed: {text}");
        }
    }
    app.post("/v1/refunds", &m.key, json!({ "payment_id": p.json["id"] }))
        .await;
    let dump = app.dump_all_tables().await;
    assert!(dump.len() > 1000, "the dump has the data: {} bytes", dump.len());
    assert!(dump.contains("4444"), "last4 is stored");
    assert!(!dump.contains(number), "card number at rest");
    assert!(
        !dump.contains(&format!("\"{cvc}\"")) && !dump.contains(&format!("cvc{cvc}")),
        "cvc at rest"
    );
    let logs = String::from_utf8_lossy(&CAPTURED_LOGS.lock().expect("logs")).into_owned();
    assert!(!logs.contains(number), "card number in a log line");
    assert!(!logs.contains(&format!("\"{cvc}\"")), "cvc in a log line");
}

async fn bad_input_names_the_field(app: TestApp) {
    let m = app.merchant("shop").await;
    // A payee that cannot be credited.
    app.account(&m, "debit_only", json!({ "credits_must_not_exceed_debits": true }))
        .await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({ "amount": 100, "currency": "USD", "splits": [{ "payee_account_id": "debit_only", "amount": 10 }] }),
            "splits[0].payee_account_id",
        ),
        (json!({ "currency": "USD" }), "amount"),
        (json!({ "amount": 0, "currency": "USD" }), "amount"),
        (json!({ "amount": "10", "currency": "USD" }), "amount"),
        (json!({ "amount": 100 }), "currency"),
        (json!({ "amount": 100, "currency": "XXX" }), "currency"),
        (
            json!({ "amount": 100, "currency": "USD", "capture_method": "later" }),
            "capture_method",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "confirm": true }),
            "payment_method",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "payment_method": 7 }),
            "payment_method",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "payment_method": "pm_missing" }),
            "payment_method",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "payment_method": { "type": "bank" } }),
            "payment_method.type",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "payment_method": { "type": "card", "card": { "exp_month": 1, "exp_year": 2099 } } }),
            "payment_method.card.number",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "payment_method": { "type": "card", "card": { "number": "4242424242424241", "exp_month": 1, "exp_year": 2099 } } }),
            "payment_method.card.number",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "payment_method": { "type": "card", "card": { "number": VISA, "exp_month": 13, "exp_year": 2099 } } }),
            "payment_method.card.exp_month",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "payment_method": { "type": "card", "card": { "number": VISA, "exp_month": 1, "exp_year": 2001 } } }),
            "payment_method.card.exp_year",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "payment_method": { "type": "card", "card": { "number": VISA, "exp_month": 1, "exp_year": 2099, "cvc": "12" } } }),
            "payment_method.card.cvc",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "customer": { "email": "nope" } }),
            "customer.email",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "customer": { "name": "x" } }),
            "customer.email",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "metadata": { "k": 1 } }),
            "metadata.k",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "splits": [{ "payee_account_id": "nobody", "amount": 10 }] }),
            "splits[0].payee_account_id",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "splits": [{ "payee_account_id": "a", "amount": 0 }] }),
            "splits[0].amount",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "application_fee_amount": -1 }),
            "application_fee_amount",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "application_fee_amount": 101 }),
            "splits",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "connector": "paypal" }),
            "connector",
        ),
        (json!({ "amount": 100, "currency": "USD", "surprise": 1 }), "surprise"),
        // No text column stores a NUL (PostgreSQL refuses it): named like any bad field.
        (
            json!({ "amount": 100, "currency": "USD", "description": "a\u{0}b" }),
            "description",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "metadata": { "k\u{0}": "v" } }),
            "metadata.k\u{0}",
        ),
        (
            json!({ "amount": 100, "currency": "USD", "customer": { "email": "a@b.co", "name": "\u{0}" } }),
            "customer.name",
        ),
    ];
    for (body, param) in cases {
        let r = app.pay(&m, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.param(), param, "{body}: {}", r.text);
    }
    let too_big = app.pay(&m, json!({ "amount": 10_000_001, "currency": "USD" })).await;
    assert_eq!(too_big.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(too_big.param(), "amount");
    // JPY has exponent 0: the default limit is ¥1 to ¥100,000.
    let yen = app.pay(&m, json!({ "amount": 100_000, "currency": "JPY" })).await;
    assert_eq!(yen.status, StatusCode::CREATED, "{}", yen.text);
    let yen = app.pay(&m, json!({ "amount": 100_001, "currency": "JPY" })).await;
    assert_eq!(yen.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", yen.text);
    let bad_refund = app
        .post("/v1/refunds", &m.key, json!({ "payment_id": "pay_nope" }))
        .await;
    assert_eq!(bad_refund.param(), "payment_id");
    let bad_rules = app
        .post(
            "/v1/routing",
            &m.key,
            json!({ "rules": [{ "connector_account_id": "mca_nope" }] }),
        )
        .await;
    assert_eq!(bad_rules.param(), "rules[0].connector_account_id");
    let bad_list = app.get("/v1/payments?status=paid", &m.key).await;
    assert_eq!(bad_list.param(), "status");
}

/// A filtered list pages on from a cursor that no longer matches its filter (Stripe's lists take
/// any object as a cursor): the payment listed as `requires_capture` was captured since.
async fn a_cursor_that_left_the_filter_keeps_its_place(app: TestApp) {
    let m = app.merchant("shop").await;
    let mut ids = Vec::new();
    for amount in [100, 200, 300] {
        ids.push(app.authorized(&m, amount, json!({})).await);
    }
    let first = app.get("/v1/payments?status=requires_capture&limit=1", &m.key).await;
    assert_eq!(first.json["data"][0]["id"], ids[2].as_str(), "{}", first.text);
    let r = app
        .post(&format!("/v1/payments/{}/capture", ids[2]), &m.key, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let next = app
        .get(
            &format!("/v1/payments?status=requires_capture&limit=5&starting_after={}", ids[2]),
            &m.key,
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
    let listed: Vec<&str> = next.json["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|p| p["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, [ids[1].as_str(), ids[0].as_str()], "{}", next.text);
    let other = app.merchant("other").await;
    let foreign = app
        .get(&format!("/v1/payments?starting_after={}", ids[0]), &other.key)
        .await;
    assert_eq!(
        (foreign.status, foreign.param()),
        (StatusCode::BAD_REQUEST, "starting_after"),
        "another merchant's id is no cursor: {}",
        foreign.text
    );
}

async fn payments_of_other_merchants_are_not_found(app: TestApp) {
    let a = app.merchant("a").await;
    let b = app.merchant("b").await;
    let id = app.authorized(&a, 100, json!({})).await;
    for path in [
        format!("/v1/payments/{id}"),
        format!("/v1/payments/{id}/events"),
        format!("/v1/payments/{id}/attempts"),
    ] {
        assert_eq!(app.get(&path, &b.key).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    let capture = app.post(&format!("/v1/payments/{id}/capture"), &b.key, json!({})).await;
    assert_eq!(capture.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/v1/payments", &b.key).await.json["data"], json!([]));
}

async fn delayed_payments_are_resolved_by_the_sync_job(app: TestApp) {
    let m = app.merchant("shop").await;
    app.sandbox_account(&m, json!({ "resolve_after_seconds": 0 })).await;
    let p = app
        .pay(
            &m,
            json!({ "amount": 1200, "currency": "USD", "confirm": true, "payment_method": card("4000000000000077") }),
        )
        .await;
    assert_eq!(p.json["status"], "processing", "{}", p.text);
    let id = p.json["id"].as_str().expect("id");
    let history = app.get(&format!("/v1/payments/{id}/events"), &m.key).await;
    let last = history.json["data"]
        .as_array()
        .and_then(|h| h.iter().find(|e| e["from"] == "processing"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&last["to"], &last["reason"]),
        (&json!("processing"), &json!("pending_at_connector")),
        "the history says why it is still processing: {}",
        history.text
    );
    app.clock.advance_seconds(10);
    let changed = jobs::try_execute_payment_sync(app.state()).await.expect("sync");
    assert_eq!(changed, 1);
    let after = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(after.json["status"], "succeeded", "{}", after.text);
    assert_eq!(
        jobs::try_execute_payment_sync(app.state()).await.expect("sync"),
        0,
        "idempotent"
    );
    app.verify_ok().await;
}

/// An authorization expires 7 days after it was made, whatever changed on its payment since.
/// A connector that cannot be reached was sent nothing: the next one is tried at once, without
/// a sync; with none left the payment is declined (`connector_unreachable`), not left processing.
async fn an_unreachable_connector_is_passed_over_at_once(app: TestApp) {
    let m = app.merchant("shop").await;
    let r = app
        .post(
            "/v1/connector_accounts",
            &m.key,
            json!({ "connector": "stripe", "credentials": { "api_key": "sk_test_unreachable", "base_url": "http://127.0.0.1:9" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let down = r.json["id"].as_str().expect("id").to_owned();
    let rules = json!({ "rules": [{ "connector_account_id": down }] });
    assert_eq!(app.post("/v1/routing", &m.key, rules).await.status, StatusCode::OK);
    let body = json!({ "amount": 900, "currency": "USD", "confirm": true, "payment_method": card(VISA) });
    let p = app.pay(&m, body.clone()).await;
    assert_eq!(p.json["status"], "requires_payment_method", "{}", p.text);
    assert_eq!(
        p.json["last_payment_error"]["code"], "connector_unreachable",
        "{}",
        p.text
    );

    let healthy = app.sandbox_account(&m, json!({})).await;
    let rules = json!({ "rules": [{ "connector_account_id": down }, { "connector_account_id": healthy }] });
    assert_eq!(app.post("/v1/routing", &m.key, rules).await.status, StatusCode::OK);
    let p = app.pay(&m, body).await;
    assert_eq!(p.json["status"], "succeeded", "{}", p.text);
    let id = p.json["id"].as_str().expect("id");
    let attempts = app.get(&format!("/v1/payments/{id}/attempts"), &m.key).await;
    let ops: Vec<(&Value, &Value)> = attempts.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|a| (&a["operation"], &a["error_code"]))
        .collect();
    assert_eq!(
        ops[..2],
        [
            (&json!("authorize"), &json!("connector_unreachable")),
            (&json!("authorize"), &Value::Null)
        ],
        "{}",
        attempts.text
    );
    app.verify_ok().await;
}

/// A payment is at most `AMOUNT_MAX` minor units whatever its merchant's limits say (an invoice
/// takes the limits as they are).
async fn a_payment_is_bounded_whatever_the_limits(app: TestApp) {
    let m = app
        .merchant_with(
            "big",
            json!({ "amount_limits": { "USD": { "min": 1, "max": i64::MAX } } }),
        )
        .await;
    let max = settle_domain::payment::AMOUNT_MAX;
    let r = app.pay(&m, json!({ "amount": max + 1, "currency": "USD" })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!((r.code(), r.param()), ("amount_out_of_range", "amount"), "{}", r.text);
    assert!(r.text.contains(&max.to_string()), "{}", r.text);
    let r = app.pay(&m, json!({ "amount": max, "currency": "USD" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json["id"].as_str().expect("id");
    let r = app
        .post(&format!("/v1/payments/{id}"), &m.key, json!({ "amount": max + 1 }))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let invoice = app
        .post(
            "/v1/invoices",
            &m.key,
            json!({ "customer": { "email": "ann@example.test" }, "amount_due": max + 1, "currency": "USD" }),
        )
        .await;
    assert_eq!(invoice.status, StatusCode::CREATED, "{}", invoice.text);
}

async fn uncaptured_authorizations_expire(app: TestApp) {
    let m = app.merchant("shop").await;
    let id = app.authorized(&m, 800, json!({})).await;
    let updated = app.authorized(&m, 900, json!({})).await;
    assert_eq!(
        jobs::try_execute_authorization_expiry(app.state()).await.expect("job"),
        0
    );
    app.clock.advance_seconds(6 * 24 * 3600);
    let r = app
        .post(
            &format!("/v1/payments/{updated}"),
            &m.key,
            json!({ "metadata": { "k": "v" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.clock.advance_seconds(24 * 3600 + 1);
    // One just changed (or whose expiry just failed) waits a minute: the oldest cannot take
    // every round.
    let r = app
        .post(
            &format!("/v1/payments/{updated}"),
            &m.key,
            json!({ "metadata": { "k": "w" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        jobs::try_execute_authorization_expiry(app.state()).await.expect("job"),
        1
    );
    app.clock.advance_seconds(jobs::EXPIRY_RETRY_SECONDS + 1);
    assert_eq!(
        jobs::try_execute_authorization_expiry(app.state()).await.expect("job"),
        1
    );
    let p = app.get(&format!("/v1/payments/{updated}"), &m.key).await;
    assert_eq!(p.json["status"], "canceled", "{}", p.text);
    let p = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(p.json["status"], "canceled");
    assert_eq!(p.json["cancellation_reason"], "expired");
    let clearing = app.get("/v1/ledger/accounts/settle:clearing:sandbox:USD", &m.key).await;
    assert_eq!(clearing.json["debits_pending"], 0, "{}", clearing.text);
    assert_eq!(
        jobs::try_execute_authorization_expiry(app.state()).await.expect("job"),
        0
    );
    app.verify_ok().await;
}

async fn reference_lists_are_served(app: TestApp) {
    let m = app.merchant("shop").await;
    let c = app.get("/v1/currencies", &m.key).await;
    let codes: Vec<&str> = c.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|c| c["code"].as_str())
        .collect();
    for code in ["USD", "EUR", "GBP", "JPY", "THB"] {
        assert!(codes.contains(&code), "{code}");
    }
    let t = app.get("/v1/payment_method_types", &m.key).await;
    assert_eq!(t.json["data"][0]["type"], "card");
    assert_eq!(t.json["data"][0]["connectors"], json!(["sandbox", "stripe"]));
}

async fn a_retried_create_after_a_crash_finds_its_payment(app: TestApp) {
    let m = app.merchant("shop").await;
    let body = json!({ "amount": 700, "currency": "USD", "capture_method": "manual", "confirm": true,
                       "payment_method": card(VISA) })
    .to_string();
    let first = app.post_keyed("/v1/payments", &m.key, &body, "order-1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    // The process dies after the payment committed but before its idempotency record did.
    app.exec("DELETE FROM idempotency_keys WHERE key = 'order-1'").await;
    let retry = app.post_keyed("/v1/payments", &m.key, &body, "order-1").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(retry.json["id"], first.json["id"], "the retry finds the payment");
    assert_eq!(retry.json["status"], "requires_capture");
    let listed = app.get("/v1/payments", &m.key).await;
    assert_eq!(listed.json["data"].as_array().map(Vec::len), Some(1), "{}", listed.text);
    // While the payment is claimed, its first request may still be running elsewhere.
    app.exec("DELETE FROM idempotency_keys WHERE key = 'order-1'").await;
    app.exec("UPDATE payments SET claimed_until = 9000000000000000").await;
    let busy = app.post_keyed("/v1/payments", &m.key, &body, "order-1").await;
    assert_eq!(
        (busy.status, busy.code()),
        (StatusCode::CONFLICT, "idempotency_key_in_use"),
        "{}",
        busy.text
    );
    app.exec("UPDATE payments SET claimed_until = NULL").await;
    let other = json!({ "amount": 701, "currency": "USD", "capture_method": "manual", "confirm": true,
                        "payment_method": card(VISA) })
    .to_string();
    app.exec("DELETE FROM idempotency_keys WHERE key = 'order-1'").await;
    let reused = app.post_keyed("/v1/payments", &m.key, &other, "order-1").await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reused.text);
    // Once idempotency records of that age are pruned, the key may name a new payment.
    app.clock.advance_seconds(24 * 3600 + 1);
    settle_server::jobs::try_execute_prune(app.state())
        .await
        .expect("prune");
    let later = app.post_keyed("/v1/payments", &m.key, &other, "order-1").await;
    assert_eq!(later.status, StatusCode::CREATED, "{}", later.text);
    assert_ne!(later.json["id"], first.json["id"]);
    app.verify_ok().await;
}

async fn a_retried_refund_finds_its_refund_and_a_duplicate_elsewhere_refunds_nothing(app: TestApp) {
    let m = app.merchant("shop").await;
    let r = app
        .pay(
            &m,
            json!({ "amount": 2000, "currency": "USD", "confirm": true, "payment_method": card(VISA) }),
        )
        .await;
    let id = r.json["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/payments/{id}");
    let body = json!({ "payment_id": id, "amount": 300 }).to_string();
    let first = app.post_keyed("/v1/refunds", &m.key, &body, "refund-1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    // The process dies after the refund was stored but before its idempotency record was.
    app.exec("DELETE FROM idempotency_keys WHERE key = 'refund-1'").await;
    let retry = app.post_keyed("/v1/refunds", &m.key, &body, "refund-1").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(retry.json["id"], first.json["id"], "the retry finds the refund");
    assert_eq!(
        app.get(&path, &m.key).await.json["amount_refunded"],
        300,
        "refunded once"
    );
    // A pending refund younger than the sync job's wait may still be in its request's hands.
    app.exec("UPDATE refunds SET status = 'pending'").await;
    let busy = app.post_keyed("/v1/refunds", &m.key, &body, "refund-1").await;
    assert_eq!(
        (busy.status, busy.code()),
        (StatusCode::CONFLICT, "idempotency_key_in_use"),
        "{}",
        busy.text
    );
    app.exec("UPDATE refunds SET status = 'succeeded'").await;
    let other = json!({ "payment_id": id, "amount": 301 }).to_string();
    let reused = app.post_keyed("/v1/refunds", &m.key, &other, "refund-1").await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reused.text);

    // The same request sent to two processes at once: one refund, whichever stores it first.
    if let Some(second) = app.second_process().await {
        let body = json!({ "payment_id": id, "amount": 50 }).to_string();
        for round in 0..6 {
            let key = format!("dup-{round}");
            let calls = [app.router.clone(), second.clone()].map(|router| {
                let (token, body, key) = (m.key.clone(), body.clone(), key.clone());
                tokio::spawn(async move {
                    let headers = [("idempotency-key", key.as_str())];
                    crate::harness::call(
                        &router,
                        axum::http::Method::POST,
                        "/v1/refunds",
                        &token,
                        Some(&body),
                        &headers,
                    )
                    .await
                })
            });
            let mut ids = Vec::new();
            for call in calls {
                let r = call.await.expect("task");
                match r.status {
                    StatusCode::CREATED => ids.push(r.json["id"].clone()),
                    StatusCode::CONFLICT => assert_eq!(r.code(), "idempotency_key_in_use", "{}", r.text),
                    other => panic!("unexpected {other}: {}", r.text),
                }
            }
            assert!(
                !ids.is_empty() && ids.iter().all(|i| *i == ids[0]),
                "one refund: {ids:?}"
            );
            assert_eq!(
                app.get(&path, &m.key).await.json["amount_refunded"],
                300 + 50 * (round + 1),
                "round {round} refunded once"
            );
        }
    }
    let listed = app.get(&format!("/v1/refunds?payment_id={id}&limit=100"), &m.key).await;
    let expected = if app.second_process().await.is_some() { 7 } else { 1 };
    assert_eq!(
        listed.json["data"].as_array().map(Vec::len),
        Some(expected),
        "{}",
        listed.text
    );
    // Once idempotency records of that age are pruned, the key may name a new refund.
    app.clock.advance_seconds(24 * 3600 + 1);
    settle_server::jobs::try_execute_prune(app.state())
        .await
        .expect("prune");
    let later = app.post_keyed("/v1/refunds", &m.key, &other, "refund-1").await;
    assert_eq!(later.status, StatusCode::CREATED, "{}", later.text);
    assert_ne!(later.json["id"], first.json["id"]);

    // The rest, asked of two processes at once: the one that waited for the other's row lock
    // finds the refund by its key, rather than answering that nothing is left to refund.
    if let Some(second) = app.second_process().await {
        // Both wait for the payment's row lock, so that the one served second finds its
        // reservation refused after the first committed.
        let mut lock = app
            .blocker(&[format!("SELECT 1 FROM payments WHERE id = '{id}' FOR UPDATE")])
            .await
            .expect("PostgreSQL");
        let body = json!({ "payment_id": id }).to_string();
        let calls = [app.router.clone(), second].map(|router| {
            let (token, body) = (m.key.clone(), body.clone());
            tokio::spawn(async move {
                let headers = [("idempotency-key", "the-rest")];
                crate::harness::call(
                    &router,
                    axum::http::Method::POST,
                    "/v1/refunds",
                    &token,
                    Some(&body),
                    &headers,
                )
                .await
            })
        });
        app.await_lock_waits(2).await;
        sqlx::query("COMMIT").execute(&mut lock).await.expect("unlock");
        for call in calls {
            let r = call.await.expect("task");
            match r.status {
                StatusCode::CREATED => assert_eq!(r.json["amount"], 2000 - 300 - 300 - 301, "{}", r.text),
                StatusCode::CONFLICT => assert_eq!(r.code(), "idempotency_key_in_use", "{}", r.text),
                other => panic!("unexpected {other}: {}", r.text),
            }
        }
        assert_eq!(app.get(&path, &m.key).await.json["amount_refunded"], 2000);
    }
    app.verify_ok().await;
}

/// A refund the ledger refuses (its payee no longer holds its share) answers 422 and keeps no
/// claim on its key: a retry runs again, as after any failed request.
async fn a_refund_the_ledger_refuses_can_be_retried_with_its_key(app: TestApp) {
    let m = app.merchant("market").await;
    app.account(&m, "venue", json!({ "debits_must_not_exceed_credits": true }))
        .await;
    app.account(&m, "bank", json!({})).await;
    let r = app
        .pay(
            &m,
            json!({ "amount": 1000, "currency": "USD", "confirm": true, "payment_method": card(VISA),
                    "splits": [{ "payee_account_id": "venue", "amount": 600 }] }),
        )
        .await;
    assert_eq!(r.json["status"], "succeeded", "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    // The venue was paid out: it no longer holds its share.
    let out = json!({ "id": "payout-1", "debit_account_id": "venue", "credit_account_id": "bank",
                      "amount": 600, "currency": "USD" });
    assert_eq!(app.transfer(&m, out).await.status, StatusCode::CREATED);
    let body = json!({ "payment_id": id }).to_string();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = app.post_keyed("/v1/refunds", &m.key, &body, "rf-1").await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "refund_failed"),
            "{}",
            r.text
        );
        let message = r.json["error"]["message"].as_str().unwrap_or("").to_owned();
        assert!(
            message.contains("exceeds_credits"),
            "the venue's own refusal, not its batch's: {message}"
        );
        ids.push(message);
    }
    assert_ne!(ids[0], ids[1], "the retry ran again: {ids:?}");
    let refunds = app.get(&format!("/v1/refunds?payment_id={id}"), &m.key).await;
    assert_eq!(
        refunds.json["data"][0]["failure_code"], "exceeds_credits",
        "{}",
        refunds.text
    );
    let p = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(p.json["amount_refunded"], 0, "{}", p.text);
    app.verify_ok().await;
}

/// Leaves `id` as a process that claimed it and died would: claimed until two minutes from
/// now, with `plan`, in `status`.
pub async fn kill_mid_claim(app: &TestApp, id: &str, status: &str, plan: Value) {
    let until = app.state().clock.now().0 + 120_000_000;
    let plan = plan.to_string().replace('\'', "''");
    let sql = format!(
        "UPDATE payments SET status = '{status}', claimed_until = {until}, claim_plan = '{plan}', \
         version = version + 1 WHERE id = '{id}'"
    );
    assert_eq!(app.exec(&sql).await, 1);
}

async fn a_dead_confirm_is_recovered_from_its_planned_attempts(app: TestApp) {
    let m = app.merchant("shop").await;
    let p = app
        .pay(
            &m,
            json!({ "amount": 900, "currency": "USD", "capture_method": "manual", "payment_method": card(VISA) }),
        )
        .await;
    let id = p.json["id"].as_str().expect("id");
    let plan = json!({ "op": "authorize", "tries": [{ "connector_account_id": "sandbox", "reference": "att_lost" }] });
    kill_mid_claim(&app, id, "processing", plan).await;
    assert_eq!(
        jobs::try_execute_payment_sync(app.state()).await.expect("sync"),
        0,
        "a live claim is left alone"
    );
    let during = app.post(&format!("/v1/payments/{id}/cancel"), &m.key, json!({})).await;
    assert_eq!(during.code(), "payment_in_progress", "{}", during.text);
    app.clock.advance_seconds(200);
    assert_eq!(jobs::try_execute_payment_sync(app.state()).await.expect("sync"), 1);
    let after = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    // The sandbox never saw the planned reference: nothing is held, the payment may be retried.
    assert_eq!(after.json["status"], "requires_payment_method", "{}", after.text);
    assert_eq!(after.json["last_payment_error"]["code"], "interrupted");
    let attempts = app.get(&format!("/v1/payments/{id}/attempts"), &m.key).await;
    let synced = attempts.json["data"].as_array().is_some_and(|a| {
        a.iter()
            .any(|a| a["operation"] == "sync" && a["outcome"] == "not_found")
    });
    assert!(synced, "the planned reference was looked up: {}", attempts.text);
    let retried = app
        .post(
            &format!("/v1/payments/{id}/confirm"),
            &m.key,
            json!({ "payment_method": card(VISA) }),
        )
        .await;
    assert_eq!(retried.json["status"], "requires_capture", "{}", retried.text);
    app.verify_ok().await;
}

async fn a_dead_capture_is_released_when_nothing_was_captured(app: TestApp) {
    let m = app.merchant("shop").await;
    let id = app.authorized(&m, 1_000, json!({})).await;
    kill_mid_claim(&app, &id, "requires_capture", json!({ "op": "capture", "amount": 400 })).await;
    let during = app.post(&format!("/v1/payments/{id}/capture"), &m.key, json!({})).await;
    assert_eq!(during.code(), "payment_in_progress", "{}", during.text);
    assert_eq!(jobs::try_execute_claim_recovery(app.state()).await.expect("job"), 0);
    app.clock.advance_seconds(200);
    // The sandbox still holds the authorization: the capture never reached it; the claim ends.
    assert_eq!(jobs::try_execute_claim_recovery(app.state()).await.expect("job"), 0);
    let released = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(released.json["status"], "requires_capture", "{}", released.text);
    let captured = app
        .post(&format!("/v1/payments/{id}/capture"), &m.key, json!({ "amount": 400 }))
        .await;
    assert_eq!(captured.json["status"], "succeeded", "{}", captured.text);
    assert_eq!(captured.json["amount_captured"], 400);
    assert_eq!(jobs::try_execute_claim_recovery(app.state()).await.expect("job"), 0);
    app.verify_ok().await;
}

/// A confirm whose answer nobody waits for any more (its request timed out, or its client went
/// away) still records its connector's outcome: no claim is left for the recovery job.
async fn a_confirm_nobody_waits_for_still_records_its_outcome(app: TestApp) {
    let mut app = app;
    let m = app.merchant("shop").await;
    app.sandbox_account(&m, json!({ "latency_ms": 2_500 })).await;
    app.restart_with(|c| c.request_timeout = std::time::Duration::from_secs(1))
        .await;
    let r = app
        .pay(
            &m,
            json!({ "amount": 1000, "currency": "USD", "confirm": true, "payment_method": card(VISA) }),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.code(), "server_timeout", "says what happened: {}", r.text);
    let mut last = Value::Null;
    for _ in 0..300 {
        last = app.get("/v1/payments", &m.key).await.json["data"][0].clone();
        if last["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["amount_captured"], 1000, "{last}");
    // Shutdown waits for such a request (for as long as a request may take): here the
    // process knows when it has ended.
    let r = app
        .pay(
            &m,
            json!({ "amount": 700, "currency": "USD", "confirm": true, "capture_method": "manual",
                    "payment_method": card(VISA) }),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    tokio::time::timeout(std::time::Duration::from_secs(60), app.state().requests.all_ended())
        .await
        .expect("the request ended");
    let ended = app.get("/v1/payments", &m.key).await.json["data"][0].clone();
    assert_eq!(
        (ended["amount"].as_i64(), ended["status"].as_str()),
        (Some(700), Some("requires_capture")),
        "{ended}"
    );
    app.verify_ok().await;
}

/// A refund request that outlasts the sync job's wait may find, when it concludes, that the job
/// (here another process's) concluded the refund first: it answers with the refund as the job
/// left it, not an error, and nothing is applied twice.
async fn a_refund_the_sync_job_concluded_first_is_answered_as_it_is(app: TestApp) {
    let m = app.merchant("shop").await;
    let id = app.authorized(&m, 1_000, json!({})).await;
    let captured = app.post(&format!("/v1/payments/{id}/capture"), &m.key, json!({})).await;
    assert_eq!(captured.json["status"], "succeeded", "{}", captured.text);
    // This process's ledger writer is held up behind another merchant's transfer waiting on a
    // row lock (PostgreSQL: SQLite serves one process per database).
    let b = app.merchant_with_ab("elsewhere").await;
    let lock = format!(
        "SELECT 1 FROM ledger_accounts WHERE merchant_id = '{}' AND id = 'a' FOR UPDATE",
        b.id
    );
    let Some(blocker) = app.blocker(&[lock]).await else {
        return;
    };
    let spawn_post = |key: String, path: &'static str, body: Value| {
        let router = app.router.clone();
        tokio::spawn(async move {
            let body = body.to_string();
            crate::harness::call(&router, axum::http::Method::POST, path, &key, Some(&body), &[]).await
        })
    };
    let held = spawn_post(
        b.key.clone(),
        "/v1/ledger/transfers",
        json!({ "transfers": [{ "id": "t1", "debit_account_id": "a", "credit_account_id": "b",
                                "amount": 1, "currency": "USD" }] }),
    );
    app.await_lock_wait().await;
    let refund = spawn_post(m.key.clone(), "/v1/refunds", json!({ "payment_id": id, "amount": 300 }));
    let listed = format!("/v1/refunds?payment_id={id}");
    for _ in 0..600 {
        if app.get(&listed, &m.key).await.json["data"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Another process's sync job takes the refund as its request's and concludes it.
    let mut config = settle_server::Config::for_engine(app.store.engine());
    config.run_jobs = false;
    config.vault_key = app.state().config.vault_key.clone();
    let other = settle_server::App::build(app.store.clone(), std::sync::Arc::new(app.clock.clone()), config)
        .await
        .expect("build");
    app.clock.advance_seconds(60);
    assert_eq!(refunds::try_execute_refund_sync(&other.state).await.expect("job"), 1);
    drop(blocker);
    assert!(held.await.expect("transfer").status.is_success());
    let answered = refund.await.expect("request");
    assert_eq!(answered.status, StatusCode::CREATED, "{}", answered.text);
    assert_eq!(answered.json["status"], "succeeded", "{}", answered.text);
    let listed = app.get(&listed, &m.key).await;
    assert_eq!(listed.json["data"].as_array().map(Vec::len), Some(1), "{}", listed.text);
    let payment = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(payment.json["amount_refunded"], 300, "{}", payment.text);
    other.shutdown().await;
    app.verify_ok().await;
}

async fn a_refund_whose_process_died_is_finished_by_the_sync_job(app: TestApp) {
    let m = app.merchant("shop").await;
    let id = app.authorized(&m, 1_000, json!({})).await;
    let captured = app.post(&format!("/v1/payments/{id}/capture"), &m.key, json!({})).await;
    assert_eq!(captured.json["status"], "succeeded", "{}", captured.text);
    // A process reserved a refund of 300 (step 1) and died before holding it in the ledger.
    let now = app.state().clock.now().0;
    app.exec(&format!(
        "INSERT INTO refunds (merchant_id, id, payment_id, amount, currency, status, metadata, parts, \
         connector_account_id, created_at, updated_at) \
         VALUES ('{}', 're_dead', '{id}', 300, 'USD', 'pending', '{{}}', '[300]', 'sandbox', {now}, {now})",
        m.id
    ))
    .await;
    assert_eq!(
        app.exec(&format!("UPDATE payments SET amount_refunded = 300 WHERE id = '{id}'"))
            .await,
        1
    );
    assert_eq!(
        refunds::try_execute_refund_sync(app.state()).await.expect("job"),
        0,
        "a refund younger than the sync interval is left to its request"
    );
    app.clock.advance_seconds(60);
    assert_eq!(refunds::try_execute_refund_sync(app.state()).await.expect("job"), 1);
    let refund = app.get("/v1/refunds/re_dead", &m.key).await;
    assert_eq!(refund.json["status"], "succeeded", "{}", refund.text);
    assert_eq!(app.ledger_balance(&m, "settle:merchant_pending:USD").await, 700);
    assert_eq!(
        refunds::try_execute_refund_sync(app.state()).await.expect("job"),
        0,
        "idempotent"
    );
    app.verify_ok().await;
}

/// Many flows at once: their creates, claims and finishes share group commits (the rows
/// writer's and the ledger writer's, side by side), written in bulk; every row of every
/// payment is stored once and the books balance.
async fn concurrent_flows_share_group_commits_and_lose_nothing(app: TestApp) {
    const FLOWS: usize = 24;
    let m = app.merchant("shop").await;
    let tasks: Vec<_> = (0..FLOWS)
        .map(|i| {
            let (router, key) = (app.router.clone(), m.key.clone());
            tokio::spawn(async move {
                let call = |path: String, body: Value| {
                    let (router, key) = (router.clone(), key.clone());
                    async move {
                        let body = body.to_string();
                        crate::harness::call(&router, axum::http::Method::POST, &path, &key, Some(&body), &[]).await
                    }
                };
                let amount = 1000 + i64::try_from(i).expect("small");
                let created = call(
                    "/v1/payments".into(),
                    json!({ "amount": amount, "currency": "USD", "capture_method": "manual",
                            "payment_method": card(VISA), "metadata": { "flow": i.to_string() } }),
                )
                .await;
                assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
                let id = created.json["id"].as_str().expect("id").to_owned();
                let confirmed = call(format!("/v1/payments/{id}/confirm"), json!({})).await;
                assert_eq!(confirmed.json["status"], "requires_capture", "{}", confirmed.text);
                let captured = call(format!("/v1/payments/{id}/capture"), json!({ "amount": amount - 100 })).await;
                assert_eq!(captured.json["status"], "succeeded", "{}", captured.text);
                (id, amount)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        let (id, amount) = task.await.expect("flow");
        total += amount - 100;
        let p = app.get(&format!("/v1/payments/{id}"), &m.key).await;
        assert_eq!(p.json["amount_captured"], amount - 100, "{}", p.text);
        assert_eq!(p.json["amount_capturable"], 0, "{}", p.text);
        let history = app.get(&format!("/v1/payments/{id}/events"), &m.key).await;
        let statuses: Vec<&str> = history.json["data"]
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|e| e["to"].as_str())
            .collect();
        assert_eq!(
            statuses,
            ["requires_confirmation", "processing", "requires_capture", "succeeded"],
            "{}",
            history.text
        );
        let attempts = app.get(&format!("/v1/payments/{id}/attempts"), &m.key).await;
        let operations: Vec<&str> = attempts.json["data"]
            .as_array()
            .expect("attempts")
            .iter()
            .filter_map(|a| a["operation"].as_str())
            .collect();
        assert_eq!(operations, ["authorize", "capture"], "{}", attempts.text);
        let events = app.get(&format!("/v1/events?aggregate_id={id}"), &m.key).await;
        let mut sequences: Vec<i64> = events.json["data"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["sequence"].as_i64())
            .collect();
        sequences.sort_unstable();
        assert_eq!(sequences, [1, 2, 3, 4], "{}", events.text);
    }
    assert_eq!(app.ledger_balance(&m, "settle:merchant_pending:USD").await, total);
    app.verify_ok().await;
}

/// A process decides a claim on its last copy of the payment; when another process changed the
/// payment since, the copy is stale: the claim reads the stored row and decides again, so
/// neither the other process's change is lost nor a command refused on old facts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_in_one_process_never_overwrites_another_processs_change() {
    let Some(app) = TestApp::spawn(settle_store::Engine::Postgres).await else {
        return;
    };
    let other = app.second_process().await.expect("postgres");
    let m = app.merchant("shop").await;
    let call = |router: &axum::Router, path: String, body: Value| {
        let (router, key) = (router.clone(), m.key.clone());
        async move {
            let body = body.to_string();
            crate::harness::call(&router, axum::http::Method::POST, &path, &key, Some(&body), &[]).await
        }
    };
    // Changed elsewhere (metadata), then captured here: the capture keeps the change.
    let id = app.authorized(&m, 1000, json!({})).await;
    let updated = call(
        &other,
        format!("/v1/payments/{id}"),
        json!({ "metadata": { "order": "42" } }),
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    let captured = call(&app.router, format!("/v1/payments/{id}/capture"), json!({})).await;
    assert_eq!(captured.status, StatusCode::OK, "{}", captured.text);
    assert_eq!(captured.json["status"], "succeeded", "{}", captured.text);
    assert_eq!(captured.json["metadata"]["order"], "42", "{}", captured.text);
    let stored = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(stored.json["metadata"]["order"], "42", "{}", stored.text);
    assert_eq!(stored.json["amount_captured"], 1000, "{}", stored.text);

    // Canceled elsewhere, then captured here: refused with the status as stored.
    let id = app.authorized(&m, 700, json!({})).await;
    let canceled = call(&other, format!("/v1/payments/{id}/cancel"), json!({})).await;
    assert_eq!(canceled.json["status"], "canceled", "{}", canceled.text);
    let refused = call(&app.router, format!("/v1/payments/{id}/capture"), json!({})).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert!(refused.text.contains("canceled"), "{}", refused.text);
    app.verify_ok().await;
}

/// A server restart cuts every pooled connection; the next payments go through on new ones
/// (the writer's connections are not checked when handed out: a cut one is found by its
/// statement, which is then sent on another).
async fn payments_go_through_after_every_connection_is_cut(app: TestApp) {
    let m = app.merchant("shop").await;
    for _ in 0..3 {
        app.authorized(&m, 1000, json!({})).await;
    }
    let crate::harness::DbGuard::Postgres { schema } = &app.db else {
        return;
    };
    let cut = app
        .exec(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{schema}'"
        ))
        .await;
    assert!(cut > 0, "no connection of the app was found");
    for _ in 0..6 {
        let id = app.authorized(&m, 1000, json!({})).await;
        let r = app.post(&format!("/v1/payments/{id}/capture"), &m.key, json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    app.verify_ok().await;
}

/// Routing rules that could never match, or that repeat or overflow a list, are refused naming
/// the field; so are credential keys a connector does not take, and a change of credentials.
async fn routing_rules_and_credentials_that_cannot_work_are_refused(app: TestApp) {
    let m = app.merchant("shop").await;
    let account = app.sandbox_account(&m, json!({ "latency_ms": 0 })).await;
    let rule = |conditions: Value| json!({ "rules": [{ "connector_account_id": account, "conditions": conditions }] });
    let brands: Vec<&str> = std::iter::repeat_n("visa", 20_000).collect();
    let cases = [
        (
            json!({ "rules": [{ "connector_account_id": 5 }] }),
            "rules[0].connector_account_id",
            "parameter_invalid",
        ),
        (
            rule(json!({ "amount_min": 500, "amount_max": 100 })),
            "rules[0].conditions.amount_max",
            "parameter_invalid",
        ),
        (
            rule(json!({ "currencies": [] })),
            "rules[0].conditions.currencies",
            "parameter_invalid",
        ),
        (
            rule(json!({ "card_brands": [] })),
            "rules[0].conditions.card_brands",
            "parameter_invalid",
        ),
        (
            rule(json!({ "currencies": ["usd", "EUR", "USD"] })),
            "rules[0].conditions.currencies[2]",
            "parameter_invalid",
        ),
        (
            rule(json!({ "card_brands": brands })),
            "rules[0].conditions.card_brands",
            "parameter_invalid",
        ),
    ];
    for (body, param, code) in cases {
        let r = app.post("/v1/routing", &m.key, body.clone()).await;
        assert_eq!(
            (r.status, r.param(), r.code()),
            (StatusCode::BAD_REQUEST, param, code),
            "{}",
            r.text
        );
    }
    let fine = app
        .post(
            "/v1/routing",
            &m.key,
            rule(json!({ "amount_min": 100, "amount_max": 100, "currencies": ["USD"], "card_brands": ["visa"] })),
        )
        .await;
    assert_eq!(fine.status, StatusCode::OK, "{}", fine.text);

    for (connector, credentials, param) in [
        ("sandbox", json!({ "unknown": 1 }), "credentials.unknown"),
        ("sandbox", json!({ "api_key": "sk_test_x" }), "credentials.api_key"),
        (
            "stripe",
            json!({ "api_key": "sk_test_x", "latency_ms": 1 }),
            "credentials.latency_ms",
        ),
    ] {
        let r = app
            .post(
                "/v1/connector_accounts",
                &m.key,
                json!({ "connector": connector, "credentials": credentials }),
            )
            .await;
        assert_eq!(
            (r.status, r.param(), r.code()),
            (StatusCode::BAD_REQUEST, param, "parameter_unknown"),
            "{}",
            r.text
        );
    }
    let r = app
        .post(
            &format!("/v1/connector_accounts/{account}"),
            &m.key,
            json!({ "credentials": { "latency_ms": 5 } }),
        )
        .await;
    assert_eq!(
        (r.status, r.param()),
        (StatusCode::BAD_REQUEST, "credentials"),
        "{}",
        r.text
    );
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("create a new account"),
        "{}",
        r.text
    );
    let r = app
        .post(
            &format!("/v1/connector_accounts/{account}"),
            &m.key,
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(
        (r.status, &r.json["enabled"]),
        (StatusCode::OK, &json!(false)),
        "{}",
        r.text
    );
}

/// A 409 names the payment's status once, and an unknown status filter lists the valid ones.
async fn refusals_say_the_status_once_and_filters_list_their_values(app: TestApp) {
    let m = app.merchant("shop").await;
    let r = app.pay(&m, json!({ "amount": 500, "currency": "USD" })).await;
    let id = r.json["id"].as_str().expect("id");
    let capture = app.post(&format!("/v1/payments/{id}/capture"), &m.key, json!({})).await;
    assert_eq!(capture.status, StatusCode::CONFLICT);
    assert_eq!(
        capture.json["error"]["message"],
        "cannot capture a payment whose status is `requires_payment_method`"
    );
    let list = app.get("/v1/payments?status=paid", &m.key).await;
    assert_eq!((list.status, list.param()), (StatusCode::BAD_REQUEST, "status"));
    let message = list.json["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("requires_payment_method") && message.contains("succeeded"),
        "{message}"
    );
}

crate::conformance!(
    a_cursor_that_left_the_filter_keeps_its_place,
    automatic_capture_moves_the_money_and_keeps_a_history,
    partial_capture_releases_the_rest,
    illegal_transitions_answer_409_naming_the_status,
    a_decline_can_be_retried_with_another_card,
    splits_and_fee_are_allocated_to_the_cent,
    partial_refunds_never_exceed_the_capture,
    concurrent_commands_on_one_payment_have_one_winner,
    payments_go_through_after_every_connection_is_cut,
    concurrent_flows_share_group_commits_and_lose_nothing,
    failover_tries_the_next_connector_after_a_failure,
    a_failing_connector_is_skipped_once_its_circuit_opens,
    card_numbers_and_cvcs_are_never_at_rest,
    bad_input_names_the_field,
    payments_of_other_merchants_are_not_found,
    delayed_payments_are_resolved_by_the_sync_job,
    uncaptured_authorizations_expire,
    a_payment_is_bounded_whatever_the_limits,
    an_unreachable_connector_is_passed_over_at_once,
    reference_lists_are_served,
    a_retried_create_after_a_crash_finds_its_payment,
    a_retried_refund_finds_its_refund_and_a_duplicate_elsewhere_refunds_nothing,
    a_refund_the_ledger_refuses_can_be_retried_with_its_key,
    a_dead_confirm_is_recovered_from_its_planned_attempts,
    a_dead_capture_is_released_when_nothing_was_captured,
    a_refund_whose_process_died_is_finished_by_the_sync_job,
    a_refund_the_sync_job_concluded_first_is_answered_as_it_is,
    a_confirm_nobody_waits_for_still_records_its_outcome,
    routing_rules_and_credentials_that_cannot_work_are_refused,
    refusals_say_the_status_once_and_filters_list_their_values,
);

/// When the operator refuses private targets, a connector account's `base_url` may not be a
/// loopback or private address (card data goes there): refused at creation naming the field,
/// and an account made while they were allowed is not called once they are not.
async fn private_connector_targets_are_refused_when_the_operator_says_so(engine: settle_store::Engine) {
    let Some(mut app) = TestApp::spawn(engine).await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("addr"));
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let m = app.merchant("shop").await;
    let account = |base_url: &str| json!({ "connector": "stripe", "credentials": { "api_key": "sk_test_made_up", "base_url": base_url } });
    let r = app.post("/v1/connector_accounts", &m.key, account(&base_url)).await;
    assert_eq!(r.status, StatusCode::CREATED, "allowed here: {}", r.text);

    app.restart_with(|c| c.connector_private_targets = false).await;
    for url in [
        base_url.as_str(),
        "http://localhost:9",
        "http://[::1]:9",
        "http://10.0.0.1",
        "http://169.254.169.254",
        "http://[::ffff:127.0.0.1]:9",
        "http://[64:ff9b::7f00:1]:9",
        "http://2130706433:9",
    ] {
        let r = app.post("/v1/connector_accounts", &m.key, account(url)).await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, "credentials.base_url"),
            "{url}: {}",
            r.text
        );
    }
    let r = app
        .post(
            "/v1/connector_accounts",
            &m.key,
            account("https://api.stripe.example.test"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let public = r.json["id"].as_str().expect("id").to_owned();
    let r = app
        .post(
            &format!("/v1/connector_accounts/{public}"),
            &m.key,
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .post("/v1/connector_accounts", &m.key, json!({ "connector": "sandbox" }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let sandbox = r.json["id"].as_str().expect("id").to_owned();

    // The account made earlier is first in the routing order: passed over, not called.
    let body = json!({ "amount": 100, "currency": "USD", "confirm": true, "payment_method": card(VISA) });
    let r = app.pay(&m, body.clone()).await;
    assert_eq!(r.json["status"], "succeeded", "{}", r.text);
    assert_eq!(r.json["connector_account_id"], sandbox.as_str(), "{}", r.text);
    // With nothing else to try, the payment says why.
    let r = app
        .post(
            &format!("/v1/connector_accounts/{sandbox}"),
            &m.key,
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app.pay(&m, body).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert_eq!(r.code(), "connector_target_refused", "{}", r.text);
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached it"
    );
    app.verify_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_connector_targets_are_refused_on_sqlite() {
    private_connector_targets_are_refused_when_the_operator_says_so(settle_store::Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_connector_targets_are_refused_on_postgres() {
    private_connector_targets_are_refused_when_the_operator_says_so(settle_store::Engine::Postgres).await;
}
