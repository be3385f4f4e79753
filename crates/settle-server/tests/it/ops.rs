//! Health, readiness, metrics, request ids, the audit log, `verify`, and row-level security.

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::{
    conformance,
    harness::{pg_options, DbGuard, TestApp},
};

pub async fn health_readiness_metrics_and_request_ids(app: TestApp) {
    assert_eq!(app.get("/healthz", "").await.status, StatusCode::OK);
    let ready = app.get("/readyz", "").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["engine"], app.store.engine().as_str());
    let m = app.merchant_with_ab("acme").await;
    let t = json!({ "id": "t", "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "currency": "USD" });
    let r = app
        .call(
            Method::POST,
            "/v1/ledger/transfers",
            &m.key,
            Some(&t.to_string()),
            &[("x-request-id", "my-req-1")],
        )
        .await;
    assert_eq!(
        r.headers.get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"my-req-1"[..])
    );
    let generated = app.get("/v1/ledger/accounts", &m.key).await;
    assert!(generated
        .headers
        .get("x-request-id")
        .is_some_and(|v| v.as_bytes().starts_with(b"req_")));
    let metrics = app.get("/metrics", "").await.text;
    for series in [
        "settle_http_requests_total{route=\"/v1/ledger/transfers\",method=\"POST\",status=\"201\"} 1",
        "settle_http_request_duration_seconds_bucket{route=\"/v1/ledger/transfers\",le=\"+Inf\"} 1",
        "settle_ledger_transfers_committed_total 1",
        "settle_ledger_commit_batch_transfers_count 1",
        "settle_db_connections_in_use",
    ] {
        assert!(metrics.contains(series), "missing {series} in\n{metrics}");
    }
    let unknown = app.get("/nope", "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

pub async fn every_mutating_call_leaves_an_audit_row(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let t = json!({ "id": "t", "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "currency": "USD" });
    app.call(
        Method::POST,
        "/v1/ledger/transfers",
        &m.key,
        Some(&t.to_string()),
        &[("x-request-id", "audit-me"), ("user-agent", "tests/1")],
    )
    .await;
    let failed =
        json!({ "id": "t2", "debit_account_id": "a", "credit_account_id": "zz", "amount": 5, "currency": "USD" });
    app.transfer(&m, failed).await;
    let logs = app.get("/v1/audit_logs", &m.key).await;
    let actions: Vec<&str> = logs.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|a| a["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        actions,
        [
            "ledger.transfer.create",
            "ledger.account.create",
            "ledger.account.create",
            "api_key.create",
            "merchant.create"
        ]
    );
    let row = &logs.json["data"][0];
    assert_eq!(row["request_id"], "audit-me");
    assert_eq!(row["user_agent"], "tests/1");
    assert_eq!(row["resource_id"], "t");
    assert_eq!(row["actor"], &m.key[..16]);
}

pub async fn verify_catches_a_tampered_balance(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let hold = json!({ "id": "h", "debit_account_id": "a", "credit_account_id": "b", "amount": 9, "currency": "USD", "pending": true });
    app.transfer(&m, hold).await;
    app.verify_ok().await;
    assert_eq!(
        app.exec("UPDATE ledger_accounts SET credits_posted = credits_posted + 1 WHERE id = 'b'")
            .await,
        1
    );
    let report = settle_server::verify::verify(app.store.as_ref()).await.expect("verify");
    assert!(!report.ok());
    let text = report.violations.join("\n");
    assert!(text.contains("/b: stored totals"), "{text}");
    assert!(text.contains("posted debits 0 != posted credits 1"), "{text}");
}

pub async fn the_database_refuses_what_the_code_must_never_write(app: TestApp) {
    let m = app.merchant("acme").await;
    app.account(&m, "w", json!({ "debits_must_not_exceed_credits": true }))
        .await;
    app.account(&m, "b", json!({})).await;
    // Each statement below is refused by a constraint; the rows are unchanged.
    for sql in [
        "UPDATE ledger_accounts SET debits_posted = 1 WHERE id = 'w'",
        "UPDATE ledger_accounts SET credits_posted = -1 WHERE id = 'b'",
    ] {
        assert!(app.try_exec(sql).await.is_err(), "the database accepted: {sql}");
    }
    app.verify_ok().await;
}

async fn count_accounts(c: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger_accounts")
        .fetch_one(c)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_hides_other_merchants_rows_on_postgres() {
    let Some(app) = TestApp::spawn(settle_store::Engine::Postgres).await else {
        return;
    };
    let one = app.merchant("one").await;
    let two = app.merchant("two").await;
    app.account(&one, "a", json!({})).await;
    app.account(&two, "b", json!({})).await;
    let DbGuard::Postgres { schema } = &app.db else {
        unreachable!()
    };
    let mut c = PgConnection::connect_with(&pg_options(schema)).await.expect("connect");
    assert_eq!(count_accounts(&mut c).await, 0, "no merchant in scope: no rows");
    sqlx::query("SELECT set_config('settle.merchant_id', $1, false)")
        .bind(&one.id)
        .execute(&mut c)
        .await
        .expect("scope");
    assert_eq!(count_accounts(&mut c).await, 1, "only merchant one's row");
    let id: String = sqlx::query_scalar("SELECT id FROM ledger_accounts")
        .fetch_one(&mut c)
        .await
        .expect("row");
    assert_eq!(id, "a");
    let sneaky = sqlx::query("UPDATE ledger_accounts SET name = 'x' WHERE id = 'b'")
        .execute(&mut c)
        .await
        .expect("update");
    assert_eq!(
        sneaky.rows_affected(),
        0,
        "another merchant's row cannot be written either"
    );
}

/// A table that fills gets its first statistics from the store's upkeep, not a minute later
/// from autovacuum (foreign-key checks planned over empty tables would otherwise stay slow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filled_table_gets_its_first_statistics_from_upkeep_on_postgres() {
    let Some(app) = TestApp::spawn(settle_store::Engine::Postgres).await else {
        return;
    };
    let m = app.merchant("stats").await;
    let rows = settle_store::FIRST_ANALYZE_ROWS + 50;
    let inserted = app
        .try_exec(&format!(
            "INSERT INTO customers (merchant_id, id, metadata, created_at, updated_at) \
             SELECT '{}', 'cus_stats_' || g, '{{}}', 0, 0 FROM generate_series(1, {rows}) g",
            m.id
        ))
        .await
        .expect("insert");
    assert_eq!(inserted, u64::try_from(rows).expect("rows"));
    // Autovacuum may, rarely, get there first within the wait (`last_autoanalyze`); on its own
    // it would take up to a minute, longer than this bounded wait.
    let analyzed = "SELECT 1 FROM pg_stat_user_tables WHERE schemaname = current_schema() \
                    AND relname = 'customers' AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)";
    // The insert's counts reach the statistics views within about a second; bounded wait.
    let mut done = false;
    for _ in 0..100 {
        settle_server::jobs::try_execute_upkeep(app.state())
            .await
            .expect("upkeep");
        if app.try_exec(analyzed).await.expect("stats") == 1 {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(done, "customers analyzed after {rows} rows");
    // Tables that stayed small are left to autovacuum.
    let small = "SELECT 1 FROM pg_stat_user_tables WHERE schemaname = current_schema() \
                 AND relname = 'refunds' AND last_analyze IS NOT NULL";
    assert_eq!(app.try_exec(small).await.expect("stats"), 0);
}

/// A write transaction dropped without a commit leaves nothing behind, and the next writer
/// gets the connection (on SQLite the one writer connection, which lives outside any pool).
async fn a_write_transaction_dropped_uncommitted_leaves_nothing(app: TestApp) {
    use settle_store::{Mode, Scope};
    let write = |value: &'static str, commit: bool| {
        let store = app.store.clone();
        async move {
            let mut tx = store.begin(Scope::System, Mode::Write).await.expect("begin");
            tx.put_setting("dropped_or_not", value).await.expect("put");
            if commit {
                tx.commit().await.expect("commit");
            }
        }
    };
    let read = || async {
        let mut tx = app.store.begin(Scope::System, Mode::Read).await.expect("begin");
        tx.get_setting("dropped_or_not").await.expect("get")
    };
    write("dropped", false).await;
    assert_eq!(read().await, None);
    // Dropped by a task that fails halfway, while another writer waits for the connection.
    let failing = tokio::spawn({
        let store = app.store.clone();
        async move {
            let mut tx = store.begin(Scope::System, Mode::Write).await.expect("begin");
            tx.put_setting("dropped_or_not", "also dropped").await.expect("put");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    write("kept", true).await;
    failing.await.expect("join");
    assert_eq!(read().await.as_deref(), Some("kept"));
}

conformance!(
    a_write_transaction_dropped_uncommitted_leaves_nothing,
    health_readiness_metrics_and_request_ids,
    every_mutating_call_leaves_an_audit_row,
    verify_catches_a_tampered_balance,
    the_database_refuses_what_the_code_must_never_write,
);
