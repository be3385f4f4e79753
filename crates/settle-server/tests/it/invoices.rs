//! Invoices paid by payment events: the lifecycle over HTTP, payments applied by the worker
//! (partial, full, overpaid, rejected), the ledger postings, replays of the same events many
//! times in any order with several workers racing, bad input, and tenancy.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::http::{Method, StatusCode};
use rand::{seq::SliceRandom, Rng};
use serde_json::{json, Value};
use settle_domain::invoice::{InvoiceStatus, Rejection};
use settle_server::clock::Clock;
use settle_server::{invoices::try_execute_invoice_payments, App, AppState, Config};
use settle_store::{Engine, Mode, PostgresStore, Scope, StoreOptions};

use crate::harness::{call, pg_options, DbGuard, Merchant, Resp, TestApp, ADMIN_TOKEN};

fn uuid() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn payment(event_id: &str, invoice: &str, amount: i64) -> Value {
    json!({ "event_id": event_id, "type": "payment", "invoice_id": invoice, "amount_cents": amount })
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().expect("type")).collect()
}

fn sequences(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["sequence"].as_i64().expect("sequence"))
        .collect()
}

impl TestApp {
    /// A new `draft` invoice for `amount_due` USD minor units.
    async fn invoice(&self, m: &Merchant, amount_due: i64) -> String {
        let r = self
            .post(
                "/v1/invoices",
                &m.key,
                json!({ "customer": { "email": "Ann@Example.test", "name": "Ann" }, "amount_due": amount_due,
                        "currency": "USD" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json["id"].as_str().expect("id").to_owned()
    }

    /// A new `sent` invoice.
    async fn sent_invoice(&self, m: &Merchant, amount_due: i64) -> String {
        let id = self.invoice(m, amount_due).await;
        let r = self.post(&format!("/v1/invoices/{id}/send"), &m.key, json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        id
    }

    async fn pay_invoice(&self, m: &Merchant, invoice: &str, amount: i64) -> Resp {
        let r = self
            .post("/v1/invoice_payments", &m.key, payment(&uuid(), invoice, amount))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        r
    }

    async fn get_invoice(&self, m: &Merchant, id: &str) -> Value {
        let r = self.get(&format!("/v1/invoices/{id}"), &m.key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json
    }

    /// Runs worker rounds until one concludes nothing.
    async fn drain_invoice_payments(&self) -> usize {
        let mut total = 0;
        for _ in 0..100 {
            let n = try_execute_invoice_payments(self.state()).await.expect("round");
            if n == 0 {
                return total;
            }
            total += n;
        }
        panic!("the invoice payment inbox does not drain");
    }

    /// Every payment event received for an invoice, oldest first (walks the pages).
    async fn invoice_payments(&self, m: &Merchant, invoice: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let r = self
                .get(&format!("/v1/invoices/{invoice}/payments?limit=7{cursor}"), &m.key)
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let page = r.json["data"].as_array().expect("data").clone();
            if let Some(last) = page.last() {
                cursor = format!("&starting_after={}", last["id"].as_str().expect("id"));
            }
            all.extend(page);
            if r.json["has_more"] != true {
                break;
            }
        }
        all.reverse();
        all
    }

    /// The balance of a ledger account, 0 when it was never created.
    async fn balance_or_zero(&self, m: &Merchant, account: &str) -> i64 {
        let r = self.get(&format!("/v1/ledger/accounts/{account}"), &m.key).await;
        match r.status {
            StatusCode::NOT_FOUND => 0,
            StatusCode::OK => r.json["balance"].as_i64().expect("balance"),
            other => panic!("{other}: {}", r.text),
        }
    }

    /// A second app on the same PostgreSQL schema (a second `settle` process), or none on SQLite.
    async fn second_app(&self) -> Option<App> {
        let DbGuard::Postgres { schema } = &self.db else {
            return None;
        };
        let store = PostgresStore::connect_with(pg_options(schema), &StoreOptions::default())
            .await
            .expect("connect pg");
        let mut config = Config::for_engine(Engine::Postgres);
        config.run_jobs = false;
        config.vault_key = self.state().config.vault_key.clone();
        Some(
            App::build(Arc::new(store), Arc::new(self.clock.clone()), config)
                .await
                .expect("build"),
        )
    }
}

async fn an_invoice_is_created_sent_listed_and_voided(app: TestApp) {
    let m = app.merchant("shop").await;
    let r = app
        .post(
            "/v1/invoices",
            &m.key,
            json!({ "customer": { "email": " Ann@Example.TEST " }, "amount_due": 10_000, "currency": "usd",
                    "due_date": "2030-01-31T00:00:00Z", "description": "Order 42",
                    "metadata": { "order": "42" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let inv = r.json["id"].as_str().expect("id").to_owned();
    assert!(inv.starts_with("inv_"), "{inv}");
    for (field, value) in [
        ("object", json!("invoice")),
        ("status", json!("draft")),
        ("currency", json!("USD")),
        ("amount_due", json!(10_000)),
        ("amount_paid", json!(0)),
        ("amount_remaining", json!(10_000)),
        ("amount_overpaid", json!(0)),
        ("customer", json!({ "email": "ann@example.test", "name": null })),
        ("due_date", json!("2030-01-31T00:00:00.000000Z")),
        ("description", json!("Order 42")),
        ("metadata", json!({ "order": "42" })),
        ("sent_at", json!(null)),
    ] {
        assert_eq!(r.json[field], value, "{field}: {}", r.text);
    }
    assert_eq!(app.get_invoice(&m, &inv).await, r.json);

    let sent = app.post(&format!("/v1/invoices/{inv}/send"), &m.key, json!({})).await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.text);
    assert_eq!(sent.json["status"], "sent");
    assert!(sent.json["sent_at"].is_string(), "{}", sent.text);
    let again = app.post(&format!("/v1/invoices/{inv}/send"), &m.key, json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert_eq!(again.code(), "invoice_unexpected_state");

    // A draft and a sent invoice can be voided; a void one can be neither sent nor voided again.
    let draft = app.invoice(&m, 500).await;
    let voided = app.post(&format!("/v1/invoices/{draft}/void"), &m.key, json!({})).await;
    assert_eq!(voided.status, StatusCode::OK, "{}", voided.text);
    assert_eq!(voided.json["status"], "void");
    assert!(voided.json["voided_at"].is_string());
    for action in ["send", "void"] {
        let r = app
            .post(&format!("/v1/invoices/{draft}/{action}"), &m.key, json!({}))
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{action}: {}", r.text);
        assert_eq!(r.code(), "invoice_unexpected_state");
    }
    let sent_then_void = app.sent_invoice(&m, 700).await;
    let r = app
        .post(&format!("/v1/invoices/{sent_then_void}/void"), &m.key, json!({}))
        .await;
    assert_eq!(r.json["status"], "void", "{}", r.text);

    // Lists: newest first, filtered by status or customer, paginated.
    let all = app.get("/v1/invoices", &m.key).await;
    let ids: Vec<&str> = all.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [sent_then_void.as_str(), draft.as_str(), inv.as_str()]);
    let sent_only = app.get("/v1/invoices?status=sent", &m.key).await;
    assert_eq!(sent_only.json["data"].as_array().expect("data").len(), 1);
    assert_eq!(sent_only.json["data"][0]["id"], inv.as_str());
    let void_only = app.get("/v1/invoices?status=void&limit=1", &m.key).await;
    assert_eq!(void_only.json["has_more"], true, "{}", void_only.text);
    let next = app
        .get(
            &format!("/v1/invoices?status=void&limit=1&starting_after={sent_then_void}"),
            &m.key,
        )
        .await;
    assert_eq!(next.json["data"][0]["id"], draft.as_str(), "{}", next.text);
    assert_eq!(next.json["has_more"], false);
    let by_customer = app.get("/v1/invoices?customer_email=ANN@example.test", &m.key).await;
    assert_eq!(by_customer.json["data"].as_array().expect("data").len(), 3);

    // Every change is an event, numbered without gaps, carrying the invoice after the change.
    let events = app.events_of(&m, &inv).await;
    assert_eq!(types(&events), ["invoice.created", "invoice.sent"]);
    assert_eq!(sequences(&events), [1, 2]);
    assert_eq!(events[1]["data"]["object"], sent.json);
    assert_eq!(events[1]["aggregate"], json!({ "type": "invoice", "id": inv }));
    let events = app.events_of(&m, &sent_then_void).await;
    assert_eq!(types(&events), ["invoice.created", "invoice.sent", "invoice.voided"]);
    assert_eq!(sequences(&events), [1, 2, 3]);
    // And every call is audited.
    let audit = app.get("/v1/audit_logs?limit=100", &m.key).await;
    let actions: Vec<&str> = audit.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|a| a["action"].as_str().expect("action"))
        .collect();
    assert!(
        actions.contains(&"invoice.create") && actions.contains(&"invoice.void"),
        "{actions:?}"
    );
}

async fn payments_make_an_invoice_partially_paid_then_paid_and_move_money(app: TestApp) {
    let m = app.merchant("shop").await;
    let inv = app.sent_invoice(&m, 10_000).await;
    let first = app.pay_invoice(&m, &inv, 3_000).await;
    assert_eq!(first.json["status"], "received", "{}", first.text);
    assert_eq!(first.json["duplicate"], false);
    assert_eq!(app.drain_invoice_payments().await, 1);
    let after_first = app.get_invoice(&m, &inv).await;
    assert_eq!(after_first["status"], "partially_paid");
    assert_eq!(
        (&after_first["amount_paid"], &after_first["amount_remaining"]),
        (&json!(3_000), &json!(7_000))
    );
    // A partly paid invoice cannot be voided: it has received money.
    let void = app.post(&format!("/v1/invoices/{inv}/void"), &m.key, json!({})).await;
    assert_eq!(void.status, StatusCode::CONFLICT, "{}", void.text);
    assert_eq!(void.code(), "invoice_unexpected_state");

    let second = app.pay_invoice(&m, &inv, 7_000).await;
    // The same event delivered again is acknowledged and not applied twice.
    let replay = app
        .post(
            "/v1/invoice_payments",
            &m.key,
            payment(second.json["event_id"].as_str().expect("event id"), &inv, 7_000),
        )
        .await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.text);
    assert_eq!(replay.json["duplicate"], true);
    assert_eq!(replay.json["id"], second.json["id"]);
    // The same event id with another amount or invoice is not a redelivery: refused, naming it.
    let event_id = second.json["event_id"].as_str().expect("event id").to_uppercase();
    let other = app.sent_invoice(&m, 500).await;
    for (invoice, amount) in [(&inv, 6_999), (&other, 7_000)] {
        let reused = app
            .post("/v1/invoice_payments", &m.key, payment(&event_id, invoice, amount))
            .await;
        assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reused.text);
        assert_eq!((reused.code(), reused.param()), ("event_id_reused", "event_id"));
    }
    assert_eq!(app.drain_invoice_payments().await, 1);
    let paid = app.get_invoice(&m, &inv).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(
        (
            &paid["amount_paid"],
            &paid["amount_remaining"],
            &paid["amount_overpaid"]
        ),
        (&json!(10_000), &json!(0), &json!(0))
    );
    assert!(paid["paid_at"].is_string());
    let void = app.post(&format!("/v1/invoices/{inv}/void"), &m.key, json!({})).await;
    assert_eq!(
        void.status,
        StatusCode::CONFLICT,
        "a paid invoice is final: {}",
        void.text
    );

    // One payment beyond the amount due pays and records the excess.
    let over = app.sent_invoice(&m, 1_000).await;
    app.pay_invoice(&m, &over, 1_250).await;
    assert_eq!(app.drain_invoice_payments().await, 1);
    let overpaid = app.get_invoice(&m, &over).await;
    assert_eq!(overpaid["status"], "paid");
    assert_eq!(
        (&overpaid["amount_paid"], &overpaid["amount_overpaid"]),
        (&json!(1_250), &json!(250))
    );

    // Each applied payment is one ledger transfer named after its event.
    let received = app.invoice_payments(&m, &inv).await;
    assert_eq!(received.len(), 2);
    for p in &received {
        assert_eq!(p["status"], "applied", "{p}");
        assert_eq!(p["reason"], Value::Null);
        let transfer = p["transfer_id"].as_str().expect("transfer id");
        assert_eq!(
            transfer,
            format!("settle:invoice_payment:{}", p["event_id"].as_str().expect("id"))
        );
        let t = app.get(&format!("/v1/ledger/transfers/{transfer}"), &m.key).await;
        assert_eq!(t.status, StatusCode::OK, "{}", t.text);
        assert_eq!(t.json["amount"], p["amount"]);
        assert_eq!(t.json["debit_account_id"], "settle:invoice_receipts:USD");
        assert_eq!(t.json["credit_account_id"], "settle:merchant_pending:USD");
    }
    assert_eq!(app.balance_or_zero(&m, "settle:invoice_receipts:USD").await, 11_250);
    assert_eq!(app.balance_or_zero(&m, "settle:merchant_pending:USD").await, 11_250);
    let receipts = app.balance(&m, "settle:invoice_receipts:USD").await;
    assert_eq!(receipts["normal_balance"], "debit", "{receipts}");

    let events = app.events_of(&m, &inv).await;
    assert_eq!(
        types(&events),
        [
            "invoice.created",
            "invoice.sent",
            "invoice.payment_applied",
            "invoice.payment_applied",
            "invoice.paid"
        ]
    );
    assert_eq!(sequences(&events), [1, 2, 3, 4, 5]);
    assert_eq!(events[2]["data"]["object"]["status"], "partially_paid");
    assert_eq!(events[4]["data"]["object"], paid);
    app.verify_ok().await;
}

async fn payments_to_draft_and_void_invoices_are_rejected_and_recorded(app: TestApp) {
    let m = app.merchant("shop").await;
    let draft = app.invoice(&m, 5_000).await;
    let void = app.sent_invoice(&m, 5_000).await;
    let r = app.post(&format!("/v1/invoices/{void}/void"), &m.key, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.pay_invoice(&m, &draft, 1_000).await;
    app.pay_invoice(&m, &void, 2_000).await;
    assert_eq!(app.drain_invoice_payments().await, 2);

    for (inv, reason, status) in [(&draft, "invoice_draft", "draft"), (&void, "invoice_void", "void")] {
        let received = app.invoice_payments(&m, inv).await;
        assert_eq!(received.len(), 1);
        assert_eq!(received[0]["status"], "rejected", "{}", received[0]);
        assert_eq!(received[0]["reason"], reason);
        assert!(received[0]["reason_message"].is_string());
        assert_eq!(received[0]["transfer_id"], Value::Null);
        let invoice = app.get_invoice(&m, inv).await;
        assert_eq!(
            (&invoice["status"], &invoice["amount_paid"]),
            (&json!(status), &json!(0))
        );
        let events = app.events_of(&m, inv).await;
        assert_eq!(types(&events).last(), Some(&"invoice.payment_rejected"));
        let expected: Vec<i64> = (1..=i64::try_from(events.len()).expect("len")).collect();
        assert_eq!(sequences(&events), expected);
    }
    // A rejected event stays rejected: sending the draft afterwards does not apply it, nor does
    // delivering it again.
    let r = app.post(&format!("/v1/invoices/{draft}/send"), &m.key, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let rejected = app.invoice_payments(&m, &draft).await;
    let again = app
        .post(
            "/v1/invoice_payments",
            &m.key,
            payment(rejected[0]["event_id"].as_str().expect("event id"), &draft, 1_000),
        )
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
    assert_eq!(
        (&again.json["duplicate"], &again.json["status"]),
        (&json!(true), &json!("rejected"))
    );
    assert_eq!(app.drain_invoice_payments().await, 0);
    assert_eq!(app.get_invoice(&m, &draft).await["amount_paid"], 0);
    // No money moved.
    assert_eq!(app.balance_or_zero(&m, "settle:invoice_receipts:USD").await, 0);
    assert_eq!(app.balance_or_zero(&m, "settle:merchant_pending:USD").await, 0);
    app.verify_ok().await;
}

/// An event whose transfer the ledger refuses (the receipts account's debits would pass
/// 2^63 - 1) is rejected with `ledger_refused`, once: it is not retried forever, and it does not
/// hold back the events before it, after it, or of other merchants.
async fn a_payment_the_ledger_refuses_is_rejected_not_retried_forever(app: TestApp) {
    let big = app
        .merchant_with(
            "big",
            json!({ "amount_limits": { "USD": { "min": 1, "max": i64::MAX } } }),
        )
        .await;
    let huge = app.sent_invoice(&big, i64::MAX - 1).await;
    app.pay_invoice(&big, &huge, i64::MAX - 1).await;
    assert_eq!(app.drain_invoice_payments().await, 1);
    assert_eq!(app.get_invoice(&big, &huge).await["status"], "paid");

    // The receipts account now holds i64::MAX - 1 of debits: one more unit fits, then nothing.
    let next = app.sent_invoice(&big, 1_000).await;
    app.pay_invoice(&big, &next, 1).await;
    app.pay_invoice(&big, &next, 2).await;
    let other = app.merchant("other").await;
    let theirs = app.sent_invoice(&other, 1_000).await;
    app.pay_invoice(&other, &theirs, 250).await;
    assert_eq!(app.drain_invoice_payments().await, 3, "every event concluded");
    assert_eq!(app.drain_invoice_payments().await, 0);

    let received = app.invoice_payments(&big, &next).await;
    let outcomes: Vec<(&Value, &Value)> = received.iter().map(|e| (&e["status"], &e["reason"])).collect();
    let applied = (&json!("applied"), &Value::Null);
    let refused = (&json!("rejected"), &json!("ledger_refused"));
    assert_eq!(outcomes, [applied, refused], "the one before is applied: {received:?}");
    assert!(received[1]["reason_message"].is_string());
    let invoice = app.get_invoice(&big, &next).await;
    assert_eq!(
        (&invoice["status"], &invoice["amount_paid"]),
        (&json!("partially_paid"), &json!(1))
    );
    let events = app.events_of(&big, &next).await;
    assert_eq!(
        types(&events),
        [
            "invoice.created",
            "invoice.sent",
            "invoice.payment_applied",
            "invoice.payment_rejected"
        ]
    );
    assert_eq!(sequences(&events), [1, 2, 3, 4]);
    let theirs = app.get_invoice(&other, &theirs).await;
    assert_eq!(
        (&theirs["status"], &theirs["amount_paid"]),
        (&json!("partially_paid"), &json!(250))
    );
    app.verify_ok().await;
}

/// The same 50 events posted 3 times each (one copy with its event id in upper case), shuffled
/// and concurrently, while several workers run rounds at once (on PostgreSQL half of them in a
/// second process): each event is applied exactly once and the invoice ends in the one state
/// their sum gives.
async fn replayed_shuffled_concurrent_events_settle_to_one_state(app: TestApp) {
    const EVENTS: i64 = 50;
    const COPIES: usize = 3;
    const WORKERS: usize = 4;
    let m = app.merchant("shop").await;
    let inv = app.sent_invoice(&m, 100_000).await;
    let events: Vec<(String, i64)> = (1..=EVENTS).map(|i| (uuid(), 100 * i)).collect();
    let total: i64 = events.iter().map(|(_, a)| a).sum();
    assert_eq!(total, 127_500);
    let mut deliveries: Vec<Value> = Vec::new();
    for (id, amount) in &events {
        for copy in 0..COPIES {
            let id = if copy == 1 { id.to_uppercase() } else { id.clone() };
            deliveries.push(payment(&id, &inv, *amount));
        }
    }
    deliveries.shuffle(&mut rand::thread_rng());

    let second = app.second_app().await;
    let states: Vec<AppState> = (0..WORKERS)
        .map(|i| match (&second, i % 2) {
            (Some(other), 1) => other.state.clone(),
            _ => app.state().clone(),
        })
        .collect();
    let posting = Arc::new(AtomicBool::new(true));
    let mut workers = Vec::new();
    for state in states {
        let posting = posting.clone();
        workers.push(tokio::spawn(async move {
            let mut concluded = 0;
            let mut rounds = 0;
            // Rounds while the events arrive, then until a round finds nothing left to do.
            while rounds < 10_000 {
                let still_posting = posting.load(Ordering::SeqCst);
                let n = try_execute_invoice_payments(&state).await.expect("round");
                concluded += n;
                rounds += 1;
                if n == 0 && !still_posting {
                    break;
                }
                tokio::task::yield_now().await;
            }
            concluded
        }));
    }
    let mut posts = Vec::new();
    for body in deliveries {
        let router = app.router.clone();
        let key = m.key.clone();
        let pause = std::time::Duration::from_millis(rand::thread_rng().gen_range(0..100));
        posts.push(tokio::spawn(async move {
            // Arrivals spread over a tenth of a second, so rounds interleave with them.
            tokio::time::sleep(pause).await;
            call(
                &router,
                Method::POST,
                "/v1/invoice_payments",
                &key,
                Some(&body.to_string()),
                &[],
            )
            .await
        }));
    }
    let mut fresh = 0;
    for post in posts {
        let r = post.await.expect("post");
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        fresh += usize::from(r.json["duplicate"] == false);
    }
    assert_eq!(fresh, 50, "each event id is received once");
    posting.store(false, Ordering::SeqCst);
    let mut concluded = 0;
    for w in workers {
        concluded += w.await.expect("worker");
    }
    concluded += app.drain_invoice_payments().await;
    assert_eq!(concluded, 50, "every event concluded once, across all workers");

    let invoice = app.get_invoice(&m, &inv).await;
    assert_eq!(invoice["status"], "paid", "{invoice}");
    assert_eq!(invoice["amount_paid"], total);
    assert_eq!(invoice["amount_overpaid"], total - 100_000);
    assert_eq!(invoice["amount_remaining"], 0);
    let received = app.invoice_payments(&m, &inv).await;
    assert_eq!(received.len(), 50);
    assert!(received.iter().all(|p| p["status"] == "applied"), "all applied");
    let mut seen: Vec<&str> = received.iter().map(|p| p["event_id"].as_str().expect("id")).collect();
    seen.sort_unstable();
    let mut sent: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
    sent.sort_unstable();
    assert_eq!(seen, sent, "event ids are stored in lower case, once each");

    let recorded = app.events_of(&m, &inv).await;
    let kinds = types(&recorded);
    assert_eq!(kinds.iter().filter(|k| **k == "invoice.payment_applied").count(), 50);
    assert_eq!(kinds.iter().filter(|k| **k == "invoice.paid").count(), 1);
    assert_eq!(recorded.len(), 53);
    let expected: Vec<i64> = (1..=53).collect();
    assert_eq!(sequences(&recorded), expected, "gap-free");
    assert_eq!(recorded.last().map(|e| &e["data"]["object"]), Some(&invoice));

    assert_eq!(app.balance_or_zero(&m, "settle:invoice_receipts:USD").await, total);
    assert_eq!(app.balance_or_zero(&m, "settle:merchant_pending:USD").await, total);
    let entries = app
        .get(
            "/v1/ledger/accounts/settle:invoice_receipts:USD/entries?limit=100",
            &m.key,
        )
        .await;
    assert_eq!(
        entries.json["data"].as_array().expect("data").len(),
        50,
        "one transfer per event"
    );
    app.verify_ok().await;
    if let Some(second) = second {
        second.shutdown().await;
    }
}

/// The two compare-and-sets the worker relies on, and the database's own checks: an invoice is
/// stored only at the version its writer read, an event is concluded only while `received`,
/// an event id is received once, and a status that disagrees with the amount paid is refused.
async fn stale_writers_of_an_invoice_or_its_events_write_nothing(app: TestApp) {
    let m = app.merchant("shop").await;
    let inv = app.sent_invoice(&m, 1_000).await;
    app.pay_invoice(&m, &inv, 100).await;
    let now = app.clock.now();
    let mut tx = app.store.begin(Scope::System, Mode::Write).await.expect("begin");
    let invoice = tx.get_invoice(&m.id, &inv).await.expect("get").expect("invoice");
    let mut next = invoice.clone();
    next.version += 1;
    next.description = Some("changed".into());
    assert_eq!(
        tx.update_invoices(&[(next.clone(), invoice.version)])
            .await
            .expect("update"),
        1
    );
    next.description = Some("stale".into());
    assert_eq!(
        tx.update_invoices(&[(next.clone(), invoice.version)])
            .await
            .expect("update"),
        0,
        "a writer that read an older version stores nothing"
    );
    let received = tx.received_payment_events(10).await.expect("received");
    assert_eq!(received.len(), 1);
    let event = &received[0];
    assert_eq!(
        tx.conclude_payment_events(&[event.rejected(Rejection::InvoiceVoid, now)])
            .await
            .expect("conclude"),
        1
    );
    assert_eq!(
        tx.conclude_payment_events(&[event.applied(now)])
            .await
            .expect("conclude"),
        0,
        "an event is concluded once"
    );
    let mut again = event.clone();
    again.id = format!("{}_again", event.id);
    assert!(
        !tx.insert_payment_event(&again).await.expect("insert"),
        "an event id is received once"
    );
    drop(tx);

    let mut tx = app.store.begin(Scope::System, Mode::Write).await.expect("begin");
    let mut lying = invoice.clone();
    lying.version += 1;
    lying.status = InvoiceStatus::Paid;
    assert!(
        tx.update_invoices(&[(lying, invoice.version)]).await.is_err(),
        "paid with nothing paid is refused by the database"
    );
    drop(tx);
    assert_eq!(
        app.get_invoice(&m, &inv).await["status"],
        "sent",
        "nothing was committed"
    );
}

async fn bad_invoice_input_names_the_field(app: TestApp) {
    let m = app.merchant("shop").await;
    let ok = json!({ "customer": { "email": "ann@example.test", "name": "Ann" }, "amount_due": 5_000,
                     "currency": "USD", "due_date": 1_900_000_000, "description": "Order 42",
                     "metadata": { "order": "42" } });
    let with = |path: &[&str], value: Value| {
        let mut b = ok.clone();
        match path {
            [field] => b[*field] = value,
            [outer, inner] => b[*outer][*inner] = value,
            _ => unreachable!(),
        }
        b
    };
    let without = |path: &[&str]| {
        let mut b = ok.clone();
        match path {
            [field] => b.as_object_mut().expect("object").remove(*field),
            [outer, inner] => b[*outer].as_object_mut().expect("object").remove(*inner),
            _ => unreachable!(),
        };
        b
    };
    let cases = vec![
        (without(&["customer"]), "customer"),
        (with(&["customer"], json!(null)), "customer"),
        (with(&["customer"], json!("ann@example.test")), "customer"),
        (without(&["customer", "email"]), "customer.email"),
        (with(&["customer", "email"], json!("nope")), "customer.email"),
        (
            with(&["customer", "email"], json!("a b@example.test")),
            "customer.email",
        ),
        (with(&["customer", "email"], json!(5)), "customer.email"),
        (with(&["customer", "name"], json!("")), "customer.name"),
        (with(&["customer", "name"], json!("x".repeat(201))), "customer.name"),
        (with(&["customer", "phone"], json!("123")), "customer.phone"),
        (without(&["amount_due"]), "amount_due"),
        (with(&["amount_due"], json!(0)), "amount_due"),
        (with(&["amount_due"], json!(-5)), "amount_due"),
        (with(&["amount_due"], json!(1.5)), "amount_due"),
        (with(&["amount_due"], json!("5000")), "amount_due"),
        (
            with(&["amount_due"], json!(9_223_372_036_854_775_808_u64)),
            "amount_due",
        ),
        (without(&["currency"]), "currency"),
        (with(&["currency"], json!("XXX")), "currency"),
        (with(&["currency"], json!(840)), "currency"),
        (with(&["due_date"], json!("tomorrow")), "due_date"),
        (with(&["due_date"], json!("2030-02-30T00:00:00Z")), "due_date"),
        (with(&["due_date"], json!(-5)), "due_date"),
        (with(&["due_date"], json!(253_402_300_800_i64)), "due_date"),
        (with(&["due_date"], json!(1.5)), "due_date"),
        (with(&["due_date"], json!(true)), "due_date"),
        (with(&["description"], json!("x".repeat(1_001))), "description"),
        (with(&["description"], json!(5)), "description"),
        (with(&["metadata"], json!([1])), "metadata"),
        (with(&["metadata"], json!({ "k": 1 })), "metadata.k"),
        (with(&["status"], json!("paid")), "status"),
        (json!([ok.clone()]), "body"),
    ];
    for (body, param) in cases {
        let r = app.post("/v1/invoices", &m.key, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.param(), param, "{body}: {}", r.text);
    }
    // Beyond the merchant's limits: a business rule (422), as for a payment's amount.
    let r = app
        .post("/v1/invoices", &m.key, with(&["amount_due"], json!(10_000_001)))
        .await;
    assert_eq!(
        (r.status, r.code(), r.param()),
        (StatusCode::UNPROCESSABLE_ENTITY, "amount_out_of_range", "amount_due"),
        "{}",
        r.text
    );
    let listed = app.get("/v1/invoices", &m.key).await;
    assert_eq!(listed.json["data"], json!([]), "nothing was created: {}", listed.text);
    let r = app.post("/v1/invoices", &m.key, ok.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "the base case is valid: {}", r.text);
    let inv = r.json["id"].as_str().expect("id").to_owned();
    assert_eq!(r.json["due_date"], "2030-03-17T17:46:40.000000Z");

    let ok = payment(&uuid(), &inv, 100);
    let with = |field: &str, value: Value| {
        let mut b = ok.clone();
        b[field] = value;
        b
    };
    let without = |field: &str| {
        let mut b = ok.clone();
        b.as_object_mut().expect("object").remove(field);
        b
    };
    let cases = vec![
        (without("event_id"), "event_id"),
        (with("event_id", json!("not-a-uuid")), "event_id"),
        (with("event_id", json!("")), "event_id"),
        (with("event_id", json!(123)), "event_id"),
        (with("event_id", json!(uuid().replace('-', ""))), "event_id"),
        (with("event_id", json!(format!("{{{}}}", uuid()))), "event_id"),
        (without("type"), "type"),
        (with("type", json!("refund")), "type"),
        (with("type", json!("Payment")), "type"),
        (with("type", json!("")), "type"),
        (with("type", json!(null)), "type"),
        (without("invoice_id"), "invoice_id"),
        (with("invoice_id", json!("")), "invoice_id"),
        (with("invoice_id", json!("inv 1")), "invoice_id"),
        (with("invoice_id", json!(5)), "invoice_id"),
        (without("amount_cents"), "amount_cents"),
        (with("amount_cents", json!(0)), "amount_cents"),
        (with("amount_cents", json!(-100)), "amount_cents"),
        (with("amount_cents", json!(1.5)), "amount_cents"),
        (with("amount_cents", json!("100")), "amount_cents"),
        (
            with("amount_cents", json!(9_223_372_036_854_775_808_u64)),
            "amount_cents",
        ),
        (with("currency", json!("USD")), "currency"),
        (json!("payment"), "body"),
    ];
    for (body, param) in cases {
        let r = app.post("/v1/invoice_payments", &m.key, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.param(), param, "{body}: {}", r.text);
    }
    let r = app
        .post("/v1/invoice_payments", &m.key, with("amount_cents", json!(10_000_001)))
        .await;
    assert_eq!(
        (r.status, r.code(), r.param()),
        (StatusCode::UNPROCESSABLE_ENTITY, "amount_out_of_range", "amount_cents"),
        "{}",
        r.text
    );
    assert_eq!(
        app.invoice_payments(&m, &inv).await,
        Vec::<Value>::new(),
        "nothing was received"
    );
    let r = app.post("/v1/invoice_payments", &m.key, ok.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "the base case is valid: {}", r.text);

    // Unknown invoices answer 404; so do well-formed unknown ids on every invoice route.
    let r = app
        .post("/v1/invoice_payments", &m.key, payment(&uuid(), "inv_nope", 100))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.code(), "resource_missing");
    for (method, path) in [
        (Method::GET, "/v1/invoices/inv_nope"),
        (Method::GET, "/v1/invoices/inv_nope/payments"),
        (Method::POST, "/v1/invoices/inv_nope/send"),
        (Method::POST, "/v1/invoices/inv_nope/void"),
    ] {
        let r = app.call(method, path, &m.key, Some("{}"), &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
    }
    for (query, param) in [
        ("status=open", "status"),
        ("limit=0", "limit"),
        ("starting_after=inv_nope", "starting_after"),
        ("colour=blue", "colour"),
    ] {
        let r = app.get(&format!("/v1/invoices?{query}"), &m.key).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        assert_eq!(r.param(), param, "{query}: {}", r.text);
    }
    let r = app
        .get(&format!("/v1/invoices/{inv}/payments?ending_before=ipe_nope"), &m.key)
        .await;
    assert_eq!(
        (r.status, r.param()),
        (StatusCode::BAD_REQUEST, "ending_before"),
        "{}",
        r.text
    );

    // Receiving payment events writes: a read-only key may not.
    let k = app
        .post(
            &format!("/admin/v1/merchants/{}/api_keys", m.id),
            ADMIN_TOKEN,
            json!({ "scopes": ["read"] }),
        )
        .await;
    let read_only = k.json["secret"].as_str().expect("secret");
    let r = app
        .post("/v1/invoice_payments", read_only, payment(&uuid(), &inv, 100))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
}

async fn another_merchants_invoices_answer_404(app: TestApp) {
    let owner = app.merchant("owner").await;
    let other = app.merchant("other").await;
    let inv = app.sent_invoice(&owner, 1_000).await;
    app.pay_invoice(&owner, &inv, 400).await;
    for (method, path) in [
        (Method::GET, format!("/v1/invoices/{inv}")),
        (Method::GET, format!("/v1/invoices/{inv}/payments")),
        (Method::POST, format!("/v1/invoices/{inv}/send")),
        (Method::POST, format!("/v1/invoices/{inv}/void")),
    ] {
        let theirs = app.call(method.clone(), &path, &other.key, Some("{}"), &[]).await;
        let unknown = app
            .call(method, &path.replace(&inv, "inv_nope"), &other.key, Some("{}"), &[])
            .await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{path}: {}", theirs.text);
        assert_eq!(
            (theirs.status, theirs.code()),
            (unknown.status, unknown.code()),
            "{path}: same answer as unknown"
        );
    }
    let r = app
        .post("/v1/invoice_payments", &other.key, payment(&uuid(), &inv, 100))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let listed = app.get("/v1/invoices", &other.key).await;
    assert_eq!(listed.json["data"], json!([]), "{}", listed.text);
    let cursor = app.get(&format!("/v1/invoices?starting_after={inv}"), &other.key).await;
    assert_eq!(
        cursor.status,
        StatusCode::BAD_REQUEST,
        "another merchant's id is no cursor"
    );
    let events = app.get(&format!("/v1/events?aggregate_id={inv}"), &other.key).await;
    assert_eq!(events.json["data"], json!([]), "{}", events.text);

    // The same event id is another event for another merchant.
    let theirs = app.sent_invoice(&other, 1_000).await;
    let shared = app.invoice_payments(&owner, &inv).await[0]["event_id"]
        .as_str()
        .expect("event id")
        .to_owned();
    let r = app
        .post("/v1/invoice_payments", &other.key, payment(&shared, &theirs, 1_000))
        .await;
    assert_eq!(r.json["duplicate"], false, "{}", r.text);
    assert_eq!(app.drain_invoice_payments().await, 2);
    assert_eq!(app.get_invoice(&owner, &inv).await["amount_paid"], 400);
    assert_eq!(app.get_invoice(&other, &theirs).await["status"], "paid");
    assert_eq!(app.balance_or_zero(&owner, "settle:merchant_pending:USD").await, 400);
    assert_eq!(app.balance_or_zero(&other, "settle:merchant_pending:USD").await, 1_000);
    app.verify_ok().await;
}

crate::conformance!(
    a_payment_the_ledger_refuses_is_rejected_not_retried_forever,
    an_invoice_is_created_sent_listed_and_voided,
    payments_make_an_invoice_partially_paid_then_paid_and_move_money,
    payments_to_draft_and_void_invoices_are_rejected_and_recorded,
    replayed_shuffled_concurrent_events_settle_to_one_state,
    stale_writers_of_an_invoice_or_its_events_write_nothing,
    bad_invoice_input_names_the_field,
    another_merchants_invoices_answer_404,
);
