//! Domain events: written with each change, numbered per aggregate without gaps, listed and
//! filtered over HTTP, isolated per merchant.

use axum::http::StatusCode;
use serde_json::{json, Value};
use settle_domain::event::NewEvent;
use settle_store::{Mode, Scope};

use crate::harness::{Merchant, TestApp};

const VISA: &str = "4242424242424242";

impl TestApp {
    /// Every event of `aggregate_id`, oldest first (walks the pages).
    pub async fn events_of(&self, m: &Merchant, aggregate_id: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let r = self
                .get(
                    &format!("/v1/events?aggregate_id={aggregate_id}&limit=2{cursor}"),
                    &m.key,
                )
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

async fn a_payments_changes_are_events_numbered_without_gaps(app: TestApp) {
    let m = app.merchant("shop").await;
    let r = app
        .post(
            "/v1/payments",
            &m.key,
            json!({ "amount": 1200, "currency": "USD", "confirm": true,
                    "payment_method": { "type": "card", "card": { "number": VISA, "exp_month": 12,
                                        "exp_year": 2099, "cvc": "123" } } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let pay = r.json["id"].as_str().expect("id").to_owned();
    let events = app.events_of(&m, &pay).await;
    assert_eq!(
        types(&events),
        [
            "payment.created",
            "payment.processing",
            "payment.authorized",
            "payment.captured"
        ]
    );
    assert_eq!(sequences(&events), [1, 2, 3, 4]);
    let statuses: Vec<&str> = events
        .iter()
        .map(|e| e["data"]["object"]["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        ["requires_confirmation", "processing", "requires_capture", "succeeded"]
    );
    for e in &events {
        assert_eq!(e["aggregate"], json!({ "type": "payment", "id": pay }));
        assert_eq!(e["merchant_id"], m.id.as_str());
        assert!(e["id"].as_str().expect("id").starts_with("evt_"));
    }

    let refund = app
        .post("/v1/refunds", &m.key, json!({ "payment_id": pay, "amount": 200 }))
        .await;
    assert_eq!(refund.status, StatusCode::CREATED, "{}", refund.text);
    let re = refund.json["id"].as_str().expect("id");
    let refund_events = app.events_of(&m, re).await;
    assert_eq!(types(&refund_events), ["refund.created", "refund.succeeded"]);
    assert_eq!(sequences(&refund_events), [1, 2]);
    assert_eq!(refund_events[1]["data"]["object"]["status"], "succeeded");

    // One event by id; another merchant sees neither it nor the list's rows.
    let id = events[2]["id"].as_str().expect("id");
    let one = app.get(&format!("/v1/events/{id}"), &m.key).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.json, events[2]);
    let other = app.merchant("other").await;
    let hidden = app.get(&format!("/v1/events/{id}"), &other.key).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND, "{}", hidden.text);
    let none = app.get(&format!("/v1/events?aggregate_id={pay}"), &other.key).await;
    assert_eq!(none.json["data"], json!([]), "{}", none.text);
}

async fn transfer_batches_and_settings_are_events(app: TestApp) {
    let m = app.merchant_with_ab("ledger").await;
    let batch = app
        .transfer(
            &m,
            json!({ "transfers": [
                { "id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "currency": "USD" },
                { "id": "t2", "debit_account_id": "a", "credit_account_id": "b", "amount": 7, "currency": "USD" }
            ] }),
        )
        .await;
    assert!(batch.status.is_success(), "{}", batch.text);
    // A request that creates nothing (the same transfer again) records nothing.
    let again = app
        .transfer(
            &m,
            json!({ "id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "currency": "USD" }),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    let listed = app.get("/v1/events?type=transfer_batch.created", &m.key).await;
    let data = listed.json["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "{}", listed.text);
    let object = &data[0]["data"]["object"];
    assert_eq!(object["object"], "transfer_batch");
    assert_eq!(object["id"], data[0]["aggregate"]["id"]);
    let ids: Vec<&str> = object["transfers"]
        .as_array()
        .expect("transfers")
        .iter()
        .map(|t| t["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["t1", "t2"]);
    // Each transfer in the event is the transfer as the API shows it.
    let t1 = app.get("/v1/ledger/transfers/t1", &m.key).await;
    assert_eq!(object["transfers"][0], t1.json, "{}", t1.text);
    assert_eq!(data[0]["sequence"], 1);

    let account = app
        .post(
            "/v1/connector_accounts",
            &m.key,
            json!({ "connector": "sandbox", "credentials": {} }),
        )
        .await;
    assert_eq!(account.status, StatusCode::CREATED, "{}", account.text);
    let ca = account.json["id"].as_str().expect("id");
    let off = app
        .post(
            &format!("/v1/connector_accounts/{ca}"),
            &m.key,
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(off.status, StatusCode::OK, "{}", off.text);
    let events = app.events_of(&m, ca).await;
    assert_eq!(
        types(&events),
        ["connector_account.created", "connector_account.updated"]
    );
    assert_eq!(events[1]["data"]["object"]["enabled"], false);

    // Created range: everything so far is at or after a minute ago, nothing before.
    let now = app.clock_seconds();
    let recent = app
        .get(&format!("/v1/events?created[gte]={}&limit=100", now - 60), &m.key)
        .await;
    assert_eq!(
        recent.json["data"].as_array().expect("data").len(),
        3,
        "{}",
        recent.text
    );
    let old = app.get(&format!("/v1/events?created[lt]={}", now - 60), &m.key).await;
    assert_eq!(old.json["data"], json!([]), "{}", old.text);
}

async fn bad_event_queries_name_the_parameter(app: TestApp) {
    let m = app.merchant("shop").await;
    for (query, param) in [
        ("type=payment.nope", "type"),
        ("type=", "type"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("created[gte]=yesterday", "created[gte]"),
        ("created[lt]=1e9", "created[lt]"),
        ("aggregate_id=%00", "aggregate_id"),
        ("starting_after=evt_unknown", "starting_after"),
        ("colour=blue", "colour"),
    ] {
        let r = app.get(&format!("/v1/events?{query}"), &m.key).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        assert_eq!(r.param(), param, "{query}: {}", r.text);
    }
    let r = app.get("/v1/events/evt_nope", &m.key).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
}

fn event(m: &str, id: &str, aggregate: &str) -> NewEvent {
    NewEvent {
        merchant_id: m.into(),
        id: id.into(),
        kind: "invoice.created".into(),
        aggregate_type: "invoice",
        aggregate_id: aggregate.into(),
        data: "{}".into(),
        created_at: settle_domain::Timestamp(1),
    }
}

/// Two transactions racing to number the same aggregate: the second either waits and takes
/// the next number (SQLite's single writer) or is refused by the unique key (PostgreSQL);
/// never a duplicate, never a gap.
async fn racing_writers_never_duplicate_or_skip_a_sequence(app: TestApp) {
    let m = app.merchant("shop").await;
    let mut tx = app.store.begin(Scope::System, Mode::Write).await.expect("begin");
    tx.insert_events(&[
        event(&m.id, "evt_1", "inv_1"),
        event(&m.id, "evt_2", "inv_1"),
        event(&m.id, "evt_3", "inv_2"),
    ])
    .await
    .expect("insert");
    tx.commit().await.expect("commit");

    let mut first = app.store.begin(Scope::System, Mode::Write).await.expect("begin");
    first
        .insert_events(&[event(&m.id, "evt_4", "inv_1")])
        .await
        .expect("insert");
    let store = app.store.clone();
    let merchant = m.id.clone();
    let second = tokio::spawn(async move {
        let mut tx = store.begin(Scope::System, Mode::Write).await?;
        tx.insert_events(&[event(&merchant, "evt_5", "inv_1")]).await?;
        tx.commit().await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    first.commit().await.expect("commit first");
    let raced = second.await.expect("join");
    if let Err(e) = &raced {
        assert!(e.is_conflict_on("events"), "{e}");
    }
    let listed = app.events_of(&m, "inv_1").await;
    let expected: Vec<i64> = if raced.is_ok() { vec![1, 2, 3, 4] } else { vec![1, 2, 3] };
    assert_eq!(sequences(&listed), expected);
    assert_eq!(sequences(&app.events_of(&m, "inv_2").await), [1]);
}

impl TestApp {
    fn clock_seconds(&self) -> i64 {
        settle_server::clock::Clock::now(&self.clock).unix_seconds()
    }
}

crate::conformance!(
    a_payments_changes_are_events_numbered_without_gaps,
    transfer_batches_and_settings_are_events,
    bad_event_queries_name_the_parameter,
    racing_writers_never_duplicate_or_skip_a_sequence,
);
