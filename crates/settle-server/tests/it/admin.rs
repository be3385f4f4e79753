//! The operator API and API keys: shown once, scoped, revocable.

use axum::http::StatusCode;
use serde_json::json;

use crate::{
    conformance,
    harness::{TestApp, ADMIN_TOKEN},
};

pub async fn merchants_are_created_listed_fetched_and_deactivated(app: TestApp) {
    let created = app
        .post(
            "/admin/v1/merchants",
            ADMIN_TOKEN,
            json!({ "name": "Acme", "email": "Ops@Acme.test", "default_currency": "eur",
            "amount_limits": { "usd": { "min": 50, "max": 100 } }, "metadata": { "tier": "gold" } }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json["email"], "ops@acme.test");
    assert_eq!(created.json["default_currency"], "EUR");
    assert_eq!(
        created.json["amount_limits"],
        json!({ "USD": { "min": 50, "max": 100 } })
    );
    let id = created.json["id"].as_str().expect("id").to_owned();
    let dup = app
        .post(
            "/admin/v1/merchants",
            ADMIN_TOKEN,
            json!({ "name": "Other", "email": "ops@acme.test" }),
        )
        .await;
    assert_eq!((dup.status, dup.code()), (StatusCode::CONFLICT, "email_taken"));
    assert_eq!(
        app.get(&format!("/admin/v1/merchants/{id}"), ADMIN_TOKEN).await.json["name"],
        "Acme"
    );
    assert_eq!(
        app.get("/admin/v1/merchants/mer_nope", ADMIN_TOKEN).await.status,
        StatusCode::NOT_FOUND
    );
    let list = app.get("/admin/v1/merchants?limit=1", ADMIN_TOKEN).await;
    assert_eq!(list.json["data"][0]["id"], id.as_str());

    let m = app.merchant("keys").await;
    let off = app
        .post(
            &format!("/admin/v1/merchants/{}/deactivate", m.id),
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!(off.json["status"], "deactivated");
    assert_eq!(
        app.get("/v1/ledger/accounts", &m.key).await.status,
        StatusCode::UNAUTHORIZED,
        "deactivated: 401"
    );
    let no_key = app
        .post(
            &format!("/admin/v1/merchants/{}/api_keys", m.id),
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!(no_key.code(), "merchant_deactivated");
}

pub async fn keys_are_shown_once_scoped_and_revocable(app: TestApp) {
    let m = app.merchant("acme").await;
    assert!(m.key.starts_with("sk_test_") && m.key.len() == 51, "{}", m.key);
    let list = app
        .get(&format!("/admin/v1/merchants/{}/api_keys", m.id), ADMIN_TOKEN)
        .await;
    assert!(!list.text.contains(&m.key), "the secret is never shown again");
    assert_eq!(list.json["data"][0]["prefix"], &m.key[..16]);

    let read_only = app
        .post(
            &format!("/admin/v1/merchants/{}/api_keys", m.id),
            ADMIN_TOKEN,
            json!({ "name": "ro", "scopes": ["read"] }),
        )
        .await;
    let ro = read_only.json["secret"].as_str().expect("secret").to_owned();
    assert_eq!(app.get("/v1/ledger/accounts", &ro).await.status, StatusCode::OK);
    let write = app.post("/v1/ledger/accounts", &ro, json!({ "currency": "USD" })).await;
    assert_eq!(
        (write.status, write.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );

    assert_eq!(app.get("/v1/ledger/accounts", &m.key).await.status, StatusCode::OK);
    let revoked = app
        .post(
            &format!("/admin/v1/merchants/{}/api_keys/{}/revoke", m.id, m.key_id),
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert!(revoked.json["revoked_at"].is_string(), "{}", revoked.text);
    assert_eq!(
        app.get("/v1/ledger/accounts", &m.key).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/v1/ledger/accounts", &ro).await.status,
        StatusCode::OK,
        "other keys still work"
    );

    // last_used_at is written by the job, not per request.
    assert_eq!(
        settle_server::jobs::try_execute_key_usage(app.state())
            .await
            .expect("job"),
        2
    );
    let keys = app
        .get(&format!("/admin/v1/merchants/{}/api_keys", m.id), ADMIN_TOKEN)
        .await;
    assert!(
        keys.json["data"]
            .as_array()
            .expect("data")
            .iter()
            .all(|k| k["last_used_at"].is_string()),
        "{}",
        keys.text
    );
}

pub async fn bad_credentials_are_401(app: TestApp) {
    let m = app.merchant("acme").await;
    let forged = format!("{}{}", &m.key[..50], if m.key.ends_with('A') { 'B' } else { 'A' });
    // Each 401 says what is wrong: nothing sent, not a key at all, or a key that is not live.
    for (token, code, says) in [
        ("", "missing_api_key", "no API key"),
        ("sk_test_short", "invalid_api_key", "not an API key"),
        (ADMIN_TOKEN, "invalid_api_key", "admin token is for /admin"),
        (forged.as_str(), "invalid_api_key", "unknown or revoked"),
    ] {
        let r = app.get("/v1/ledger/accounts", token).await;
        assert_eq!(
            (r.status, r.json["error"]["type"].as_str(), r.code()),
            (StatusCode::UNAUTHORIZED, Some("authentication_error"), code),
            "{token}"
        );
        assert!(r.text.contains(says), "{token}: {}", r.text);
    }
    for (token, code) in [
        ("", "missing_admin_token"),
        (m.key.as_str(), "invalid_admin_token"),
        ("sat_wrong", "invalid_admin_token"),
    ] {
        let r = app.get("/admin/v1/merchants", token).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, code), "{token}");
    }
}

/// A currency's limits given twice (`usd` and `USD`) are refused, not collapsed into one.
pub async fn a_currency_s_amount_limits_given_twice_are_refused(app: TestApp) {
    let r = app
        .post(
            "/admin/v1/merchants",
            ADMIN_TOKEN,
            json!({ "name": "Acme", "email": "ops@acme.test",
            "amount_limits": { "usd": { "min": 50, "max": 100 }, "USD": { "min": 1, "max": 1_000_000 } } }),
        )
        .await;
    assert_eq!(
        (r.status, r.param()),
        (StatusCode::BAD_REQUEST, "amount_limits.USD"),
        "{}",
        r.text
    );
    let list = app.get("/admin/v1/merchants", ADMIN_TOKEN).await;
    assert_eq!(list.json["data"], json!([]), "nothing was written: {}", list.text);
}

conformance!(
    merchants_are_created_listed_fetched_and_deactivated,
    a_currency_s_amount_limits_given_twice_are_refused,
    keys_are_shown_once_scoped_and_revocable,
    bad_credentials_are_401,
);
