//! One merchant never sees another's data: every endpoint answers 404 for another merchant's
//! ids, exactly as for unknown ids.

use axum::http::StatusCode;
use serde_json::json;

use crate::{conformance, harness::TestApp};

pub async fn another_merchants_ids_answer_404_everywhere(app: TestApp) {
    let owner = app.merchant("owner").await;
    let other = app.merchant("other").await;
    app.account(&owner, "a", json!({})).await;
    app.account(&owner, "b", json!({})).await;
    let t = json!({ "id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "currency": "USD" });
    assert_eq!(app.transfer(&owner, t).await.status, StatusCode::CREATED);

    for path in [
        "/v1/ledger/accounts/a",
        "/v1/ledger/accounts/a/entries",
        "/v1/ledger/transfers/t1",
    ] {
        let theirs = app.get(path, &other.key).await;
        let unknown = app
            .get(&path.replace("/a", "/zz").replace("t1", "zz"), &other.key)
            .await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            (theirs.status, theirs.code()),
            (unknown.status, unknown.code()),
            "{path}: same answer as unknown"
        );
    }
    for path in ["/v1/ledger/accounts", "/v1/audit_logs"] {
        let list = app.get(path, &other.key).await;
        let leaked = list.json["data"]
            .as_array()
            .expect("data")
            .iter()
            .any(|x| x.to_string().contains(&owner.id) || x["id"] == "a");
        assert!(!leaked, "{path} leaked: {}", list.text);
    }
    let cursor = app.get("/v1/ledger/accounts?starting_after=a", &other.key).await;
    assert_eq!(
        cursor.status,
        StatusCode::BAD_REQUEST,
        "another merchant's id is no cursor"
    );
    // Writes that name another merchant's accounts or pending transfers find nothing.
    app.account(&other, "mine", json!({})).await;
    let steal =
        json!({ "id": "x", "debit_account_id": "a", "credit_account_id": "mine", "amount": 5, "currency": "USD" });
    assert_eq!(app.transfer(&other, steal).await.code(), "account_not_found");
    let hold = json!({ "id": "h", "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "currency": "USD", "pending": true });
    app.transfer(&owner, hold).await;
    assert_eq!(
        app.transfer(&other, json!({ "id": "p", "post_pending_id": "h" }))
            .await
            .code(),
        "pending_transfer_not_found"
    );
    // The same client-chosen ids are independent per merchant.
    app.account(&other, "a", json!({})).await;
    assert_eq!(app.balance(&other, "a").await["debits_posted"], 0);
    assert_eq!(app.balance(&owner, "a").await["debits_posted"], 5);
    app.verify_ok().await;
}

pub async fn merchants_sharing_one_group_commit_keep_their_own_books(app: TestApp) {
    let mut merchants = Vec::new();
    for name in ["m0", "m1", "m2", "m3"] {
        let m = app.merchant(name).await;
        app.account(&m, "a", json!({})).await;
        app.account(&m, "b", json!({ "debits_must_not_exceed_credits": true }))
            .await;
        merchants.push(m);
    }
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    // The same transfer and account ids from every merchant at once: the writer groups them into
    // shared transactions, and each must land in its own merchant's ledger. Odd batches ask b to
    // pay more than it receives and fail, alone.
    for (n, m) in merchants.iter().enumerate() {
        for i in 0..10 {
            let (app, key) = (app.clone(), m.key.clone());
            let amount = (n as i64 + 1) * 10;
            let back = if i % 2 == 0 { amount } else { amount + 1 };
            tasks.push(tokio::spawn(async move {
                let body = json!({ "transfers": [
                    { "id": format!("t{i}"), "debit_account_id": "a", "credit_account_id": "b", "amount": amount, "currency": "USD" },
                    { "id": format!("u{i}"), "debit_account_id": "b", "credit_account_id": "a", "amount": back, "currency": "USD" }
                ], "atomic": true });
                let r = app.post("/v1/ledger/transfers", &key, body).await;
                (i, r.json["results"][0]["result"].as_str().unwrap_or("").to_owned())
            }));
        }
    }
    for t in tasks {
        let (i, result) = t.await.expect("task");
        assert_eq!(
            result,
            if i % 2 == 0 { "created" } else { "linked_event_failed" },
            "batch {i}"
        );
    }
    for (n, m) in merchants.iter().enumerate() {
        let amount = (n as i64 + 1) * 10;
        let b = app.balance(m, "b").await;
        assert_eq!(
            (b["credits_posted"].as_i64(), b["debits_posted"].as_i64()),
            (Some(5 * amount), Some(5 * amount))
        );
        assert_eq!(app.get("/v1/ledger/transfers/t0", &m.key).await.json["amount"], amount);
        assert_eq!(
            app.get("/v1/ledger/transfers/t1", &m.key).await.status,
            StatusCode::NOT_FOUND
        );
    }
    app.verify_ok().await;
}

conformance!(
    another_merchants_ids_answer_404_everywhere,
    merchants_sharing_one_group_commit_keep_their_own_books
);
