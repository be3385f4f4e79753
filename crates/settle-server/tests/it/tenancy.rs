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

conformance!(another_merchants_ids_answer_404_everywhere);
