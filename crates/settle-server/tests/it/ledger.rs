//! The ledger's API behaviour, identical on both engines.

use axum::http::StatusCode;
use serde_json::json;

use crate::{
    conformance,
    harness::{call, TestApp},
};

fn t(id: &str, debit: &str, credit: &str, amount: i64) -> serde_json::Value {
    json!({ "id": id, "debit_account_id": debit, "credit_account_id": credit, "amount": amount, "currency": "USD" })
}

pub async fn a_transfer_moves_money_and_retrying_its_id_has_no_second_effect(app: TestApp) {
    let m = app.merchant("acme").await;
    app.account(&m, "bank", json!({ "credits_must_not_exceed_debits": true }))
        .await;
    app.account(&m, "wallet", json!({ "debits_must_not_exceed_credits": true }))
        .await;

    let r = app.transfer(&m, t("t1", "bank", "wallet", 1_050)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["type"], "single");
    let again = app.transfer(&m, t("t1", "bank", "wallet", 1_050)).await;
    assert_eq!(again.status, StatusCode::OK, "same id, same fields: exists");
    let different = app.transfer(&m, t("t1", "bank", "wallet", 1_051)).await;
    assert_eq!(different.status, StatusCode::CONFLICT);
    assert_eq!(different.code(), "exists_with_different_fields");
    assert_eq!(different.param(), "amount");

    let wallet = app.balance(&m, "wallet").await;
    assert_eq!(wallet["credits_posted"], 1_050);
    assert_eq!(wallet["balance"], 1_050);
    assert_eq!(wallet["normal_balance"], "credit");
    let bank = app.balance(&m, "bank").await;
    assert_eq!(bank["debits_posted"], 1_050);
    assert_eq!(bank["balance"], 1_050, "debit-normal account");
    let fetched = app.get("/v1/ledger/transfers/t1", &m.key).await;
    assert_eq!(fetched.json["amount"], 1_050);
    app.verify_ok().await;
}

pub async fn limits_refuse_overdrafts_and_count_pending_amounts(app: TestApp) {
    let m = app.merchant("acme").await;
    app.account(&m, "bank", json!({})).await;
    app.account(&m, "wallet", json!({ "debits_must_not_exceed_credits": true }))
        .await;
    app.transfer(&m, t("fund", "bank", "wallet", 100)).await;
    let hold = app
        .transfer(
            &m,
            json!({ "id": "h", "debit_account_id": "wallet", "credit_account_id": "bank",
        "amount": 80, "currency": "USD", "pending": true }),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{}", hold.text);
    let over = app.transfer(&m, t("spend", "wallet", "bank", 21)).await;
    assert_eq!(over.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(over.code(), "exceeds_credits");
    let fits = app.transfer(&m, t("spend2", "wallet", "bank", 20)).await;
    assert_eq!(fits.status, StatusCode::CREATED);
    let wallet = app.balance(&m, "wallet").await;
    assert_eq!(wallet["available"], 0);
    assert_eq!(wallet["balance"], 80);

    app.account(&m, "clearing", json!({ "credits_must_not_exceed_debits": true }))
        .await;
    let credit_over = app.transfer(&m, t("c1", "bank", "clearing", 1)).await;
    assert_eq!(credit_over.code(), "exceeds_debits");
    app.verify_ok().await;
}

pub async fn pending_transfers_post_partially_void_and_refuse_a_second_resolution(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let hold = json!({ "id": "h1", "debit_account_id": "a", "credit_account_id": "b", "amount": 1_000,
        "currency": "USD", "pending": true });
    assert_eq!(app.transfer(&m, hold).await.status, StatusCode::CREATED);
    assert_eq!(app.balance(&m, "a").await["debits_pending"], 1_000);

    let too_much = app
        .transfer(&m, json!({ "id": "p0", "post_pending_id": "h1", "amount": 1_001 }))
        .await;
    assert_eq!(too_much.code(), "exceeds_pending_transfer_amount");
    let post = app
        .transfer(&m, json!({ "id": "p1", "post_pending_id": "h1", "amount": 600 }))
        .await;
    assert_eq!(post.status, StatusCode::CREATED, "{}", post.text);
    assert_eq!(post.json["pending_id"], "h1");
    let a = app.balance(&m, "a").await;
    assert_eq!(
        (a["debits_pending"].as_i64(), a["debits_posted"].as_i64()),
        (Some(0), Some(600)),
        "rest released"
    );

    let void = app.transfer(&m, json!({ "id": "v1", "void_pending_id": "h1" })).await;
    assert_eq!(void.status, StatusCode::CONFLICT);
    assert_eq!(void.code(), "pending_transfer_already_posted");
    let status = app.get("/v1/ledger/transfers/h1", &m.key).await;
    assert_eq!(status.json["pending_status"], "posted");

    let hold2 = json!({ "id": "h2", "debit_account_id": "a", "credit_account_id": "b", "amount": 50,
        "currency": "USD", "pending": true });
    app.transfer(&m, hold2).await;
    let void2 = app.transfer(&m, json!({ "id": "v2", "void_pending_id": "h2" })).await;
    assert_eq!(void2.status, StatusCode::CREATED);
    assert_eq!(void2.json["type"], "void_pending");
    let post2 = app.transfer(&m, json!({ "id": "p2", "post_pending_id": "h2" })).await;
    assert_eq!(post2.code(), "pending_transfer_already_voided");
    let not_pending = app.transfer(&m, json!({ "id": "p3", "post_pending_id": "p1" })).await;
    assert_eq!(not_pending.code(), "pending_transfer_not_pending");
    let missing = app.transfer(&m, json!({ "id": "p4", "post_pending_id": "nope" })).await;
    assert_eq!(missing.code(), "pending_transfer_not_found");
    assert_eq!(app.balance(&m, "b").await["credits_pending"], 0);
    app.verify_ok().await;
}

pub async fn expiry_is_exact_before_the_job_runs_and_the_job_releases_the_hold(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let hold = json!({ "id": "h", "debit_account_id": "a", "credit_account_id": "b", "amount": 70,
        "currency": "USD", "pending": true, "timeout_seconds": 30 });
    assert_eq!(app.transfer(&m, hold).await.status, StatusCode::CREATED);
    app.clock.advance_seconds(29);
    assert_eq!(
        settle_server::jobs::try_execute_expiry(app.state()).await.expect("job"),
        0,
        "not yet due"
    );
    app.clock.advance_seconds(1);
    let late = app.transfer(&m, json!({ "id": "p", "post_pending_id": "h" })).await;
    assert_eq!(
        late.code(),
        "pending_transfer_expired",
        "expired although the job has not run"
    );
    assert_eq!(
        app.balance(&m, "a").await["debits_pending"],
        70,
        "held until the job runs"
    );
    assert_eq!(
        settle_server::jobs::try_execute_expiry(app.state()).await.expect("job"),
        1
    );
    assert_eq!(
        settle_server::jobs::try_execute_expiry(app.state()).await.expect("job"),
        0,
        "idempotent"
    );
    let a = app.balance(&m, "a").await;
    assert_eq!(
        (a["debits_pending"].as_i64(), a["debits_posted"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        app.get("/v1/ledger/transfers/h", &m.key).await.json["pending_status"],
        "expired"
    );
    let void = app.transfer(&m, json!({ "id": "v", "void_pending_id": "h" })).await;
    assert_eq!(void.code(), "pending_transfer_expired");
    app.verify_ok().await;
}

pub async fn atomic_batches_are_all_or_nothing_and_independent_batches_are_not(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    app.account(&m, "capped", json!({ "debits_must_not_exceed_credits": true }))
        .await;
    let atomic = app
        .transfer(&m, json!({ "atomic": true, "transfers": [t("x1", "a", "b", 5), t("x2", "capped", "b", 1), t("x3", "a", "b", 7)] }))
        .await;
    assert_eq!(atomic.status, StatusCode::OK, "{}", atomic.text);
    let results: Vec<&str> = atomic.json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        results,
        ["linked_event_failed", "exceeds_credits", "linked_event_failed"]
    );
    assert_eq!(
        app.get("/v1/ledger/transfers/x1", &m.key).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.balance(&m, "a").await["debits_posted"], 0);

    let independent = app
        .transfer(&m, json!({ "atomic": false, "transfers": [t("y1", "a", "b", 5), t("y2", "capped", "b", 1), t("y3", "a", "b", 7)] }))
        .await;
    let results: Vec<&str> = independent.json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(results, ["created", "exceeds_credits", "created"]);
    assert_eq!(app.balance(&m, "a").await["debits_posted"], 12);

    let retried = app
        .transfer(
            &m,
            json!({ "atomic": true, "transfers": [t("y1", "a", "b", 5), t("y3", "a", "b", 7)] }),
        )
        .await;
    let results: Vec<&str> = retried.json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(results, ["exists", "exists"], "a retried batch has no second effect");
    app.verify_ok().await;
}

pub async fn transfer_rules_name_their_reasons(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let eur = app
        .post("/v1/ledger/accounts", &m.key, json!({ "id": "e", "currency": "EUR" }))
        .await;
    assert_eq!(eur.status, StatusCode::CREATED);
    assert_eq!(
        app.transfer(&m, t("1", "a", "a", 1)).await.code(),
        "accounts_must_differ"
    );
    let nf = app.transfer(&m, t("2", "a", "zz", 1)).await;
    assert_eq!((nf.code(), nf.param()), ("account_not_found", "credit_account_id"));
    let mismatch = app.transfer(&m, t("3", "a", "e", 1)).await;
    assert_eq!(
        (mismatch.code(), mismatch.param()),
        ("currency_mismatch", "credit_account_id")
    );
    assert_eq!(
        app.transfer(&m, t("4", "a", "b", i64::MAX)).await.status,
        StatusCode::CREATED
    );
    let overflow = app.transfer(&m, t("5", "a", "b", 1)).await;
    assert_eq!(overflow.code(), "overflows_debits");
    app.verify_ok().await;
}

pub async fn accounts_are_idempotent_by_id_and_conflict_on_different_fields(app: TestApp) {
    let m = app.merchant("acme").await;
    let body = json!({ "id": "acct:1", "currency": "usd", "code": 7, "name": "Cash", "metadata": { "k": "v" } });
    let first = app.post("/v1/ledger/accounts", &m.key, body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.json["currency"], "USD");
    let same = app.post("/v1/ledger/accounts", &m.key, body).await;
    assert_eq!(same.status, StatusCode::OK);
    let different = app
        .post(
            "/v1/ledger/accounts",
            &m.key,
            json!({ "id": "acct:1", "currency": "USD", "code": 8, "name": "Cash", "metadata": { "k": "v" } }),
        )
        .await;
    assert_eq!(different.status, StatusCode::CONFLICT);
    assert_eq!(different.param(), "code");
    let generated = app
        .post("/v1/ledger/accounts", &m.key, json!({ "currency": "JPY" }))
        .await;
    assert!(
        generated.json["id"].as_str().is_some_and(|id| id.starts_with("la_")),
        "{}",
        generated.text
    );
}

pub async fn lists_paginate_with_cursors_in_both_directions(app: TestApp) {
    let m = app.merchant("acme").await;
    for i in 0..7 {
        app.account(&m, &format!("acct{i}"), json!({})).await;
    }
    let first = app.get("/v1/ledger/accounts?limit=3", &m.key).await;
    let ids = |r: &crate::harness::Resp| -> Vec<String> {
        r.json["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|a| a["id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(ids(&first), ["acct6", "acct5", "acct4"]);
    assert_eq!(first.json["has_more"], true);
    let second = app
        .get("/v1/ledger/accounts?limit=3&starting_after=acct4", &m.key)
        .await;
    assert_eq!(ids(&second), ["acct3", "acct2", "acct1"]);
    let last = app
        .get("/v1/ledger/accounts?limit=3&starting_after=acct1", &m.key)
        .await;
    assert_eq!(
        (ids(&last), last.json["has_more"].clone()),
        (vec!["acct0".to_owned()], json!(false))
    );
    let back = app.get("/v1/ledger/accounts?limit=2&ending_before=acct3", &m.key).await;
    assert_eq!(ids(&back), ["acct5", "acct4"]);
    let bad = app.get("/v1/ledger/accounts?starting_after=nope", &m.key).await;
    assert_eq!((bad.status, bad.param()), (StatusCode::BAD_REQUEST, "starting_after"));
}

pub async fn entries_show_each_transfer_with_the_balance_after_it(app: TestApp) {
    let m = app.merchant("acme").await;
    app.account(&m, "a", json!({})).await;
    app.account(&m, "w", json!({})).await;
    app.transfer(&m, t("e1", "a", "w", 100)).await;
    app.transfer(&m, t("e2", "w", "a", 30)).await;
    app.transfer(&m, t("e3", "a", "w", 5)).await;
    let entries = app.get("/v1/ledger/accounts/w/entries", &m.key).await;
    let rows: Vec<(String, String, i64)> = entries.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or("").to_owned(),
                e["direction"].as_str().unwrap_or("").to_owned(),
                e["balance_after"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("e3".into(), "credit".into(), 75),
            ("e2".into(), "debit".into(), 70),
            ("e1".into(), "credit".into(), 100)
        ]
    );
    let page = app
        .get("/v1/ledger/accounts/w/entries?limit=1&starting_after=e3", &m.key)
        .await;
    assert_eq!(page.json["data"][0]["id"], "e2");
}

pub async fn a_retried_transfer_answers_exists_even_when_it_could_not_run_again(app: TestApp) {
    let m = app.merchant("acme").await;
    app.account(&m, "bank", json!({})).await;
    app.account(&m, "w", json!({ "debits_must_not_exceed_credits": true }))
        .await;
    app.transfer(&m, t("fund", "bank", "w", 10)).await;
    assert_eq!(
        app.transfer(&m, t("spend", "w", "bank", 10)).await.status,
        StatusCode::CREATED
    );
    // w is empty now: run again, `spend` would exceed w's credits, but it already happened.
    let retry = app.transfer(&m, t("spend", "w", "bank", 10)).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    let batch = app
        .transfer(
            &m,
            json!({ "atomic": true, "transfers": [t("spend", "w", "bank", 10)] }),
        )
        .await;
    assert_eq!(batch.json["results"][0]["result"], "exists", "{}", batch.text);
    let changed = app.transfer(&m, t("spend", "w", "bank", 11)).await;
    assert_eq!(changed.code(), "exists_with_different_fields");
    app.verify_ok().await;
}

/// The writer decides a group on its copies of the accounts and pending transfers it last
/// wrote, storing each account only at the balances it copied: a change made behind its back
/// (by another process) must never let a limit be exceeded or a pending transfer be resolved
/// twice.
pub async fn the_writers_copies_gone_stale_decide_nothing(app: TestApp) {
    let m = app.merchant("acme").await;
    app.account(&m, "bank", json!({})).await;
    app.account(&m, "wallet", json!({ "debits_must_not_exceed_credits": true }))
        .await;
    app.transfer(&m, t("fund", "bank", "wallet", 100)).await;

    // Behind the writer's back: 80 leaves the wallet.
    app.exec("UPDATE ledger_accounts SET debits_posted = debits_posted + 80 WHERE id = 'wallet'")
        .await;
    app.exec("UPDATE ledger_accounts SET credits_posted = credits_posted + 80 WHERE id = 'bank'")
        .await;
    let over = app.transfer(&m, t("spend", "wallet", "bank", 50)).await;
    assert_eq!(over.code(), "exceeds_credits", "{}", over.text);
    let fits = app.transfer(&m, t("spend2", "wallet", "bank", 20)).await;
    assert_eq!(fits.status, StatusCode::CREATED, "{}", fits.text);
    assert_eq!(app.balance(&m, "wallet").await["available"], 0);

    // Behind its back again: a hold it made is resolved (the balances stay as they were).
    let hold = json!({ "id": "h", "debit_account_id": "bank", "credit_account_id": "wallet", "amount": 5,
        "currency": "USD", "pending": true });
    assert_eq!(app.transfer(&m, hold).await.status, StatusCode::CREATED);
    app.exec("UPDATE ledger_pending SET status = 'voided' WHERE transfer_id = 'h'")
        .await;
    let post = app.transfer(&m, json!({ "id": "p", "post_pending_id": "h" })).await;
    assert_eq!(post.code(), "pending_transfer_already_voided", "{}", post.text);

    // On PostgreSQL, a second process moves the accounts this app's writer last wrote.
    let Some(other) = app.second_process().await else {
        return;
    };
    app.account(&m, "w2", json!({ "debits_must_not_exceed_credits": true }))
        .await;
    app.transfer(&m, t("fund2", "bank", "w2", 100)).await;
    let hold = json!({ "id": "h2", "debit_account_id": "w2", "credit_account_id": "bank", "amount": 30,
        "currency": "USD", "pending": true });
    assert_eq!(app.transfer(&m, hold).await.status, StatusCode::CREATED);
    let post = |id: &str| json!({ "id": id, "post_pending_id": "h2" }).to_string();
    let elsewhere = call(
        &other,
        axum::http::Method::POST,
        "/v1/ledger/transfers",
        &m.key,
        Some(&post("p2")),
        &[],
    )
    .await;
    assert_eq!(elsewhere.status, StatusCode::CREATED, "{}", elsewhere.text);
    let spend = t("spend3", "w2", "bank", 60).to_string();
    let elsewhere = call(
        &other,
        axum::http::Method::POST,
        "/v1/ledger/transfers",
        &m.key,
        Some(&spend),
        &[],
    )
    .await;
    assert_eq!(elsewhere.status, StatusCode::CREATED, "{}", elsewhere.text);
    let again = app.transfer(&m, json!({ "id": "p3", "post_pending_id": "h2" })).await;
    assert_eq!(again.code(), "pending_transfer_already_posted", "{}", again.text);
    let over = app.transfer(&m, t("spend4", "w2", "bank", 11)).await;
    assert_eq!(over.code(), "exceeds_credits", "{}", over.text);
    let fits = app.transfer(&m, t("spend5", "w2", "bank", 10)).await;
    assert_eq!(fits.status, StatusCode::CREATED, "{}", fits.text);
    assert_eq!(app.balance(&m, "w2").await["available"], 0);
}

/// A write whose client has gone still commits before shutdown returns and the store closes
/// (a lane with nothing queued writes at once, in a task of its own, which the writer tasks do
/// not wait for). On PostgreSQL, where a row lock holds the write back where the test can see it.
pub async fn shutdown_waits_for_a_write_whose_client_has_gone(app: TestApp) {
    let mut app = app;
    let m = app.merchant("acme").await;
    app.account(&m, "bank", json!({})).await;
    app.account(&m, "wallet", json!({})).await;
    app.transfer(&m, t("warm", "bank", "wallet", 1)).await;
    let Some(mut blocker) = app
        .blocker(&["SELECT 1 FROM ledger_accounts FOR UPDATE".to_owned()])
        .await
    else {
        return;
    };
    let router = app.router.clone();
    let key = m.key.clone();
    let body = t("late", "bank", "wallet", 5).to_string();
    let request = tokio::spawn(async move {
        call(
            &router,
            axum::http::Method::POST,
            "/v1/ledger/transfers",
            &key,
            Some(&body),
            &[],
        )
        .await
    });
    app.await_lock_wait().await;
    request.abort();
    assert!(request.await.is_err(), "the request was to be gone before its reply");

    // The router holds the state: it must go before shutdown can drain the writer.
    app.router = axum::Router::new();
    let shutdown = tokio::spawn(app.app.take().expect("app").shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown returned while a write was still running"
    );
    sqlx::query("COMMIT").execute(&mut blocker).await.expect("unlock");
    tokio::time::timeout(std::time::Duration::from_secs(60), shutdown)
        .await
        .expect("shutdown finishes once the write is done")
        .expect("shutdown");
    assert_eq!(
        app.exec("SELECT 1 FROM ledger_transfers WHERE id = 'late'").await,
        1,
        "the write of the gone request was committed"
    );
}

/// Settle's own accounts and the transfer ids of its payments and refunds are refused to
/// clients, so that no client can move a system account or take the id a payment step needs.
pub async fn settle_s_own_ledger_ids_are_refused_to_clients(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let refused = [
        (
            json!({ "id": "x1", "debit_account_id": "settle:merchant_pending:USD", "credit_account_id": "b",
                 "amount": 5, "currency": "USD" }),
            "debit_account_id",
        ),
        (
            json!({ "id": "x2", "debit_account_id": "a", "credit_account_id": "settle:invoice_receipts:USD",
                 "amount": 5, "currency": "USD" }),
            "credit_account_id",
        ),
        (t("pay_01m8qymg43t2rqpx1b1s4exs0g:capture", "a", "b", 1), "id"),
        (t("re_01m8qymg43t2rqpx1b1s4exs0g:0:post", "a", "b", 1), "id"),
        (t("settle:invoice_payment:e1", "a", "b", 1), "id"),
        (
            json!({ "id": "x3", "post_pending_id": "pay_01m8qymg43t2rqpx1b1s4exs0g:auth" }),
            "post_pending_id",
        ),
        (
            json!({ "id": "x4", "void_pending_id": "pay_01m8qymg43t2rqpx1b1s4exs0g:auth" }),
            "void_pending_id",
        ),
    ];
    for (body, param) in refused {
        let r = app.transfer(&m, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.param(), param, "{}", r.text);
    }
    let batch = json!({ "transfers": [t("ok-1", "a", "b", 1), t("pay_01m8qymg43t2rqpx1b1s4exs0g:void", "a", "b", 1)] });
    let r = app.post("/v1/ledger/transfers", &m.key, batch).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.param(), "transfers[1].id", "{}", r.text);
    let r = app
        .post(
            "/v1/ledger/accounts",
            &m.key,
            json!({ "id": "settle:mine", "currency": "USD" }),
        )
        .await;
    assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, "id"), "{}", r.text);
    // Ids that only look alike are the client's.
    for id in ["pay_01abc", "pay_out:1", "pay_01abc:x", "refund:1"] {
        let r = app.transfer(&m, t(id, "a", "b", 1)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{id}: {}", r.text);
    }
    app.verify_ok().await;
}

/// An error about the pending transfer a post or void names it by the field the client sent:
/// `post_pending_id` or `void_pending_id`.
pub async fn pending_resolution_errors_name_the_field_as_sent(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let hold = json!({ "id": "h1", "debit_account_id": "a", "credit_account_id": "b", "amount": 100,
        "currency": "USD", "pending": true });
    assert_eq!(app.transfer(&m, hold).await.status, StatusCode::CREATED);
    let post = app.transfer(&m, json!({ "id": "p1", "post_pending_id": "h1" })).await;
    assert_eq!(post.status, StatusCode::CREATED, "{}", post.text);
    for (body, code, param) in [
        (
            json!({ "id": "p2", "post_pending_id": "h1" }),
            "pending_transfer_already_posted",
            "post_pending_id",
        ),
        (
            json!({ "id": "v1", "void_pending_id": "h1" }),
            "pending_transfer_already_posted",
            "void_pending_id",
        ),
        (
            json!({ "id": "v2", "void_pending_id": "nope" }),
            "pending_transfer_not_found",
            "void_pending_id",
        ),
        (
            json!({ "id": "v3", "void_pending_id": "p1" }),
            "pending_transfer_not_pending",
            "void_pending_id",
        ),
        (
            json!({ "id": "p1", "debit_account_id": "a", "credit_account_id": "b", "amount": 100, "currency": "USD" }),
            "exists_with_different_fields",
            "post_pending_id",
        ),
    ] {
        let r = app.transfer(&m, body.clone()).await;
        assert_eq!((r.code(), r.param()), (code, param), "{body}: {}", r.text);
    }
    let batch = app
        .transfer(&m, json!({ "transfers": [{ "id": "v4", "void_pending_id": "h1" }] }))
        .await;
    assert_eq!(
        batch.json["results"][0]["error"]["param"], "void_pending_id",
        "{}",
        batch.text
    );
}

conformance!(
    a_retried_transfer_answers_exists_even_when_it_could_not_run_again,
    a_transfer_moves_money_and_retrying_its_id_has_no_second_effect,
    limits_refuse_overdrafts_and_count_pending_amounts,
    pending_transfers_post_partially_void_and_refuse_a_second_resolution,
    expiry_is_exact_before_the_job_runs_and_the_job_releases_the_hold,
    atomic_batches_are_all_or_nothing_and_independent_batches_are_not,
    transfer_rules_name_their_reasons,
    accounts_are_idempotent_by_id_and_conflict_on_different_fields,
    lists_paginate_with_cursors_in_both_directions,
    entries_show_each_transfer_with_the_balance_after_it,
    the_writers_copies_gone_stale_decide_nothing,
    shutdown_waits_for_a_write_whose_client_has_gone,
    settle_s_own_ledger_ids_are_refused_to_clients,
    pending_resolution_errors_name_the_field_as_sent,
);
