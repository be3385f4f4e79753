//! What a process settles with its database at start: the card-vault key it was sealed with,
//! and the one admin token every process sharing it accepts.

use axum::http::StatusCode;
use serde_json::json;
use settle_server::{
    startup::{check_vault_key, claim_admin_token, VaultKeyCheck, VaultKeyError},
    vault::{Vault, KEY_LEN},
};

use crate::{
    conformance,
    harness::{TestApp, ADMIN_TOKEN},
};

/// A new database records its key; the same key matches, another is refused. A database made
/// before the check (sealed data, no check value) records the key only if it opens that data.
pub async fn the_vault_key_is_the_databases(app: TestApp) {
    let key: [u8; KEY_LEN] = *app.state().config.vault_key.expose();
    let other = Vault::generate_key();
    let store = app.store.clone();
    let check = check_vault_key(store.as_ref(), &key).await.expect("first check");
    assert_eq!(check, VaultKeyCheck::Recorded);
    let check = check_vault_key(store.as_ref(), &key).await.expect("second check");
    assert_eq!(check, VaultKeyCheck::Matches);
    let refused = check_vault_key(store.as_ref(), &other).await;
    assert!(matches!(refused, Err(VaultKeyError::Differs)), "{refused:?}");

    // Sealed data (a webhook secret only, then connector credentials too), then the check
    // value removed as before the check existed.
    let m = app.merchant("Acme").await;
    let sealers = [
        (
            "/v1/webhook_endpoints",
            json!({ "url": "http://127.0.0.1:9/hook", "enabled_events": ["*"] }),
        ),
        (
            "/v1/connector_accounts",
            json!({ "connector": "sandbox", "credentials": {} }),
        ),
    ];
    for (path, body) in sealers {
        let created = app.post(path, &m.key, body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{path}: {}", created.text);
        app.exec("DELETE FROM settings WHERE name = 'vault_key_check'").await;
        let refused = check_vault_key(store.as_ref(), &other).await;
        assert!(
            matches!(refused, Err(VaultKeyError::DoesNotOpen)),
            "{path}: {refused:?}"
        );
        let check = check_vault_key(store.as_ref(), &key).await.expect("upgrade");
        assert_eq!(check, VaultKeyCheck::Recorded, "{path}");
        let refused = check_vault_key(store.as_ref(), &other).await;
        assert!(matches!(refused, Err(VaultKeyError::Differs)), "{path}: {refused:?}");
    }
}

/// A process that finds a token in the database keeps it: its own generated one is not stored.
pub async fn a_later_process_accepts_the_databases_admin_token(app: TestApp) {
    let claimed = claim_admin_token(app.state(), "sat_generated_later")
        .await
        .expect("claim");
    assert!(!claimed, "the database had a token");
    let ok = app.get("/admin/v1/merchants", ADMIN_TOKEN).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let refused = app.get("/admin/v1/merchants", "sat_generated_later").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

conformance!(
    the_vault_key_is_the_databases,
    a_later_process_accepts_the_databases_admin_token
);
