//! Many clients posting conflicting transfers at once, on both engines (and on PostgreSQL from
//! two processes at once): no limit is ever exceeded, the invariants hold, and every
//! acknowledged transfer is stored exactly once — and nothing unacknowledged is.

use std::{collections::HashMap, sync::Arc};

use axum::{
    http::{Method, StatusCode},
    Router,
};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{
    conformance,
    harness::{call, Merchant, TestApp},
};

const WALLETS: usize = 4;
const TASKS: usize = 24;
const TRANSFERS_PER_TASK: usize = 25;
const FUNDING: i64 = 500;

async fn storm(app: &TestApp, routers: Vec<Router>, m: &Merchant) {
    app.account(m, "bank", json!({})).await;
    for w in 0..WALLETS {
        app.account(m, &format!("w{w}"), json!({ "debits_must_not_exceed_credits": true }))
            .await;
        let fund = json!({ "id": format!("fund{w}"), "debit_account_id": "bank", "credit_account_id": format!("w{w}"),
            "amount": FUNDING, "currency": "USD" });
        assert_eq!(app.transfer(m, fund).await.status, StatusCode::CREATED);
    }
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let router = routers[task % routers.len()].clone();
        let key = m.key.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(task as u64);
            let mut acknowledged = Vec::new();
            for i in 0..TRANSFERS_PER_TASK {
                let from = rng.gen_range(0..WALLETS);
                let to = (from + rng.gen_range(1..WALLETS)) % WALLETS;
                let amount: i64 = rng.gen_range(1..120);
                // Every third transfer id is shared between two tasks: at most one effect.
                let id = if i % 3 == 0 {
                    format!("shared{}-{i}", task / 2)
                } else {
                    format!("t{task}-{i}")
                };
                let amount = if i % 3 == 0 { 7 } else { amount };
                let (from, to) = if i % 3 == 0 {
                    (task / 2 % WALLETS, (task / 2 + 1) % WALLETS)
                } else {
                    (from, to)
                };
                let body =
                    json!({ "id": id, "debit_account_id": format!("w{from}"), "credit_account_id": format!("w{to}"),
                    "amount": amount, "currency": "USD" })
                    .to_string();
                let r = call(&router, Method::POST, "/v1/ledger/transfers", &key, Some(&body), &[]).await;
                match r.status {
                    StatusCode::CREATED => acknowledged.push((id, from, to, amount)),
                    StatusCode::OK => {}
                    StatusCode::UNPROCESSABLE_ENTITY => assert_eq!(r.code(), "exceeds_credits", "{}", r.text),
                    other => panic!("unexpected {other}: {}", r.text),
                }
            }
            acknowledged
        }));
    }
    // `verify` on the live database while the storm runs: its snapshot never sees half a group.
    let store = app.store.clone();
    let verifier = tokio::spawn(async move {
        for _ in 0..5 {
            let report = settle_server::verify::verify(store.as_ref()).await.expect("verify");
            assert!(report.ok(), "verify during the storm: {:?}", report.violations);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let mut expected = [FUNDING; WALLETS];
    let mut seen = HashMap::new();
    let mut created = 0;
    for t in tasks {
        for (id, from, to, amount) in t.await.expect("task") {
            assert!(
                seen.insert(id.clone(), ()).is_none(),
                "{id} acknowledged as created twice"
            );
            expected[from] -= amount;
            expected[to] += amount;
            created += 1;
        }
    }
    verifier.await.expect("verifier");
    assert!(created > TASKS, "the storm moved money ({created} transfers)");
    for (w, want) in expected.iter().enumerate() {
        let b = app.balance(m, &format!("w{w}")).await;
        assert_eq!(
            b["balance"].as_i64(),
            Some(*want),
            "w{w}: acknowledged transfers and balance agree"
        );
        assert!(*want >= 0, "w{w} went below zero");
    }
    for id in seen.keys() {
        assert_eq!(
            app.get(&format!("/v1/ledger/transfers/{id}"), &m.key).await.status,
            StatusCode::OK,
            "{id} stored"
        );
    }
    app.verify_ok().await;
}

pub async fn concurrent_conflicting_transfers_never_break_a_limit(app: TestApp) {
    let m = app.merchant("storm").await;
    let routers = vec![app.router.clone()];
    storm(&app, routers, &m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_share_the_ledger_safely() {
    let Some(app) = TestApp::spawn(settle_store::Engine::Postgres).await else {
        return;
    };
    let second = app.second_process().await.expect("postgres");
    let m = app.merchant("two").await;
    storm(&app, vec![app.router.clone(), second], &m).await;
}

pub async fn concurrent_posts_of_one_hold_resolve_it_once(app: TestApp) {
    let m = app.merchant_with_ab("holds").await;
    let hold = json!({ "id": "h", "debit_account_id": "a", "credit_account_id": "b", "amount": 100, "currency": "USD", "pending": true });
    app.transfer(&m, hold).await;
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let app = app.clone();
        let key = m.key.clone();
        tasks.push(tokio::spawn(async move {
            let body = if i % 2 == 0 {
                json!({ "id": format!("r{i}"), "post_pending_id": "h", "amount": 10 + i })
            } else {
                json!({ "id": format!("r{i}"), "void_pending_id": "h" })
            };
            app.call(Method::POST, "/v1/ledger/transfers", &key, Some(&body.to_string()), &[])
                .await
                .status
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("task") == StatusCode::CREATED {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one post or void wins");
    let a = app.balance(&m, "a").await;
    assert_eq!(a["debits_pending"], 0);
    app.verify_ok().await;
}

conformance!(
    concurrent_conflicting_transfers_never_break_a_limit,
    concurrent_posts_of_one_hold_resolve_it_once
);
