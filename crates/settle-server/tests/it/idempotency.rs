//! `Idempotency-Key`: replay, mismatch, concurrent use, retry after a failure.

use axum::http::StatusCode;
use serde_json::json;

use crate::{
    conformance,
    harness::{TestApp, ADMIN_TOKEN},
};

fn body(id: &str, amount: i64) -> String {
    json!({ "id": id, "debit_account_id": "a", "credit_account_id": "b", "amount": amount, "currency": "USD" })
        .to_string()
}

pub async fn a_completed_request_is_replayed_byte_for_byte(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let key = "order-42";
    let first = app
        .post_keyed("/v1/ledger/transfers", &m.key, &body("t1", 10), key)
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // Same canonical body with keys reordered and whitespace: still the same request.
    let reordered =
        r#"{ "currency": "USD", "amount": 10, "credit_account_id": "b", "debit_account_id": "a", "id": "t1" }"#;
    let second = app.post_keyed("/v1/ledger/transfers", &m.key, reordered, key).await;
    assert_eq!(
        second.status,
        StatusCode::CREATED,
        "the stored status, not 200 'exists'"
    );
    assert_eq!(
        second.headers.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(second.text, first.text);
    assert_eq!(app.balance(&m, "a").await["debits_posted"], 10);

    // Accounts (a direct transaction, not the ledger writer) replay too.
    let acct = r#"{"id": "c", "currency": "USD"}"#;
    let k2 = "acct-c";
    let a1 = app.post_keyed("/v1/ledger/accounts", &m.key, acct, k2).await;
    let a2 = app.post_keyed("/v1/ledger/accounts", &m.key, acct, k2).await;
    assert_eq!((a1.status, a2.status), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(
        a2.headers.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
}

pub async fn a_key_reused_for_a_different_request_is_refused_naming_the_difference(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let key = "k";
    app.post_keyed("/v1/ledger/transfers", &m.key, &body("t1", 10), key)
        .await;
    let other_body = app
        .post_keyed("/v1/ledger/transfers", &m.key, &body("t1", 11), key)
        .await;
    assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (other_body.code(), other_body.param()),
        ("idempotency_key_reused", "body")
    );
    let other_path = app
        .post_keyed("/v1/ledger/accounts", &m.key, r#"{"currency":"USD"}"#, key)
        .await;
    assert_eq!(
        (other_path.code(), other_path.param()),
        ("idempotency_key_reused", "path")
    );
    assert_eq!(app.balance(&m, "a").await["debits_posted"], 10);
}

pub async fn keys_are_scoped_per_merchant(app: TestApp) {
    let m1 = app.merchant("one").await;
    let m2 = app.merchant("two").await;
    for m in [&m1, &m2] {
        app.account(m, "a", json!({})).await;
        app.account(m, "b", json!({})).await;
    }
    let key = "shared";
    let r1 = app
        .post_keyed("/v1/ledger/transfers", &m1.key, &body("t", 10), key)
        .await;
    let r2 = app
        .post_keyed("/v1/ledger/transfers", &m2.key, &body("t", 20), key)
        .await;
    assert_eq!((r1.status, r2.status), (StatusCode::CREATED, StatusCode::CREATED));
    assert!(r2.headers.get("idempotent-replayed").is_none());
}

pub async fn a_failed_request_stores_nothing_so_a_retry_executes(app: TestApp) {
    let m = app.merchant("acme").await;
    app.account(&m, "a", json!({})).await;
    app.account(&m, "w", json!({ "debits_must_not_exceed_credits": true }))
        .await;
    let spend = json!({ "id": "s", "debit_account_id": "w", "credit_account_id": "a", "amount": 5, "currency": "USD" })
        .to_string();
    let key = "retry-me";
    let failed = app.post_keyed("/v1/ledger/transfers", &m.key, &spend, key).await;
    assert_eq!(failed.code(), "exceeds_credits");
    let fund = json!({ "id": "f", "debit_account_id": "a", "credit_account_id": "w", "amount": 5, "currency": "USD" });
    app.transfer(&m, fund).await;
    let retried = app.post_keyed("/v1/ledger/transfers", &m.key, &spend, key).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text);
    assert!(retried.headers.get("idempotent-replayed").is_none());
    // Validation failures store nothing either.
    let bad = app.post_keyed("/v1/ledger/transfers", &m.key, "{", "v").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let good = app
        .post_keyed("/v1/ledger/accounts", &m.key, r#"{"currency":"USD"}"#, "v")
        .await;
    assert_eq!(good.status, StatusCode::CREATED);
}

pub async fn concurrent_requests_with_one_key_have_exactly_one_effect(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let app = app.clone();
        let key = m.key.clone();
        // Different transfer ids under one key: only the winner's may take effect.
        tasks.push(tokio::spawn(async move {
            let b = body(&format!("t{i}"), 10);
            let r = app.post_keyed("/v1/ledger/transfers", &key, &b, "same").await;
            (r.status, r.code().to_owned())
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (status, code) = t.await.expect("task");
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => assert_eq!(code, "idempotency_key_in_use"),
            StatusCode::UNPROCESSABLE_ENTITY => assert_eq!(code, "idempotency_key_reused"),
            other => panic!("unexpected {other} {code}"),
        }
    }
    assert_eq!(created, 1, "exactly one request executed");
    assert_eq!(app.balance(&m, "a").await["debits_posted"], 10);
}

/// A finished request replayed many times at once: every copy gets the stored answer, none a
/// 409 for a request that is no longer executing.
pub async fn concurrent_replays_of_a_finished_request_all_replay(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let b = body("t1", 10);
    let first = app.post_keyed("/v1/ledger/transfers", &m.key, &b, "done").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (app, key, b) = (app.clone(), m.key.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            app.post_keyed("/v1/ledger/transfers", &key, &b, "done").await
        }));
    }
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!((r.status, &r.text), (first.status, &first.text));
        assert_eq!(
            r.headers.get("idempotent-replayed").map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
    }
    assert_eq!(app.balance(&m, "a").await["debits_posted"], 10);
}

pub async fn malformed_keys_are_refused_and_the_operator_api_honours_keys(app: TestApp) {
    let m = app.merchant("acme").await;
    let long = "k".repeat(256);
    for bad in ["", long.as_str(), "tab\there"] {
        let r = app
            .post_keyed("/v1/ledger/accounts", &m.key, r#"{"currency":"USD"}"#, bad)
            .await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, "Idempotency-Key"),
            "{bad:?}"
        );
    }
    let create = r#"{"name": "Once", "email": "once@example.test"}"#;
    let k = "merchant-once";
    let a = app.post_keyed("/admin/v1/merchants", ADMIN_TOKEN, create, k).await;
    let b = app.post_keyed("/admin/v1/merchants", ADMIN_TOKEN, create, k).await;
    assert_eq!((a.status, b.status), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(a.json["id"], b.json["id"], "the second call replayed the first");
}

pub async fn old_keys_are_pruned_by_the_job(app: TestApp) {
    let m = app.merchant("acme").await;
    let k = "old";
    app.post_keyed("/v1/ledger/accounts", &m.key, r#"{"currency":"USD"}"#, k)
        .await;
    assert_eq!(
        settle_server::jobs::try_execute_prune(app.state())
            .await
            .expect("prune"),
        0
    );
    app.clock.advance_seconds(24 * 3600 + 1);
    assert_eq!(
        settle_server::jobs::try_execute_prune(app.state())
            .await
            .expect("prune"),
        1
    );
    let again = app
        .post_keyed("/v1/ledger/accounts", &m.key, r#"{"currency":"USD"}"#, k)
        .await;
    assert!(
        again.headers.get("idempotent-replayed").is_none(),
        "pruned key executes anew"
    );
}

conformance!(
    a_completed_request_is_replayed_byte_for_byte,
    a_key_reused_for_a_different_request_is_refused_naming_the_difference,
    keys_are_scoped_per_merchant,
    a_failed_request_stores_nothing_so_a_retry_executes,
    concurrent_requests_with_one_key_have_exactly_one_effect,
    concurrent_replays_of_a_finished_request_all_replay,
    malformed_keys_are_refused_and_the_operator_api_honours_keys,
    old_keys_are_pruned_by_the_job,
);
