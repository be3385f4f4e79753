//! Customers and the Stripe-compatible layer's edges: the native `/v1/customers` resource,
//! payments and saved cards that name a customer, payment updates before confirmation, and
//! `/stripe/v1` answering hostile or foreign input in Stripe's error shape.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::harness::TestApp;

const FORM: &[(&str, &str)] = &[("content-type", "application/x-www-form-urlencoded")];

async fn customers_own_payments_and_cards(app: TestApp) {
    let m = app.merchant("shop").await;
    let c = app
        .post(
            "/v1/customers",
            &m.key,
            json!({ "email": "Ann@Example.test", "name": "Ann", "metadata": { "tier": "gold" } }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
    let cus = c.json["id"].as_str().expect("id").to_owned();
    assert!(cus.starts_with("cus_"));
    assert_eq!(c.json["email"], "ann@example.test");

    let pm = app
        .post(
            "/v1/payment_methods",
            &m.key,
            json!({ "type": "card", "card": { "number": "4242424242424242", "exp_month": 12, "exp_year": 2099 } }),
        )
        .await;
    let pm = pm.json["id"].as_str().expect("pm").to_owned();
    let attached = app
        .post(
            &format!("/v1/payment_methods/{pm}/attach"),
            &m.key,
            json!({ "customer": cus }),
        )
        .await;
    assert_eq!(attached.json["customer"], cus.as_str(), "{}", attached.text);
    let listed = app.get(&format!("/v1/customers/{cus}/payment_methods"), &m.key).await;
    assert_eq!(listed.json["data"][0]["id"], pm.as_str(), "{}", listed.text);

    // A payment for the customer keeps its id and a copy of its contact details.
    let p = app
        .post(
            "/v1/payments",
            &m.key,
            json!({ "amount": 500, "currency": "USD", "customer": cus, "payment_method": pm }),
        )
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
    assert_eq!(p.json["customer_id"], cus.as_str());
    assert_eq!(p.json["customer"]["email"], "ann@example.test");
    let unknown = app
        .post(
            "/v1/payments",
            &m.key,
            json!({ "amount": 500, "currency": "USD", "customer": "cus_nope" }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.json["error"]["param"], "customer");

    // Updates before confirmation: amount, description, metadata merged (empty value removes).
    let id = p.json["id"].as_str().expect("id");
    let u = app
        .post(
            &format!("/v1/payments/{id}"),
            &m.key,
            json!({ "amount": 700, "description": "two tickets", "metadata": { "order": "42" } }),
        )
        .await;
    assert_eq!(u.status, StatusCode::OK, "{}", u.text);
    assert_eq!(
        (u.json["amount"].as_i64(), u.json["metadata"]["order"].as_str()),
        (Some(700), Some("42"))
    );
    let u = app
        .post(
            &format!("/v1/payments/{id}"),
            &m.key,
            json!({ "metadata": { "order": "" } }),
        )
        .await;
    assert_eq!(u.json["metadata"], json!({}), "{}", u.text);
    let confirmed = app.post(&format!("/v1/payments/{id}/confirm"), &m.key, json!({})).await;
    assert_eq!(confirmed.json["status"], "succeeded", "{}", confirmed.text);
    assert_eq!(confirmed.json["amount_captured"], 700);
    let late = app
        .post(&format!("/v1/payments/{id}"), &m.key, json!({ "amount": 900 }))
        .await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.text);

    // The same payment through the Stripe-compatible API.
    let pi = id.replacen("pay_", "pi_", 1);
    let s = app.get(&format!("/stripe/v1/payment_intents/{pi}"), &m.key).await;
    assert_eq!(s.json["amount_received"], 700, "{}", s.text);
    assert_eq!(s.json["customer"], cus.as_str());

    // Deleting the customer detaches its cards; the payment keeps what it was made with.
    let d = app
        .call(Method::DELETE, &format!("/v1/customers/{cus}"), &m.key, None, &[])
        .await;
    assert_eq!(d.json["deleted"], true, "{}", d.text);
    assert_eq!(
        app.get(&format!("/v1/customers/{cus}"), &m.key).await.status,
        StatusCode::NOT_FOUND
    );
    let method = app.get(&format!("/v1/payment_methods/{pm}"), &m.key).await;
    assert_eq!(method.json["customer"], serde_json::Value::Null);
    let kept = app.get(&format!("/v1/payments/{id}"), &m.key).await;
    assert_eq!(kept.json["customer"]["email"], "ann@example.test");

    // Another merchant sees none of it.
    let other = app.merchant("other").await;
    let c2 = app.post("/v1/customers", &m.key, json!({ "name": "Bo" })).await;
    let c2 = c2.json["id"].as_str().expect("id");
    assert_eq!(
        app.get(&format!("/v1/customers/{c2}"), &other.key).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/stripe/v1/customers/{c2}"), &other.key).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/stripe/v1/payment_intents/{pi}"), &other.key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    app.verify_ok().await;
}

/// A card attached to one customer is neither moved to another by an attach nor used for
/// another's payment (Stripe refuses both); attaching to the same customer again is harmless.
/// Attaching while the customer is deleted never leaves the card on a deleted customer.
async fn a_customers_card_stays_with_that_customer(app: TestApp) {
    let m = app.merchant("shop").await;
    let customer = |name: &'static str| {
        let app = &app;
        let key = m.key.clone();
        async move {
            let c = app.post("/v1/customers", &key, json!({ "name": name })).await;
            assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
            c.json["id"].as_str().expect("id").to_owned()
        }
    };
    let card =
        || json!({ "type": "card", "card": { "number": "4242424242424242", "exp_month": 12, "exp_year": 2099 } });
    let (ann, bo) = (customer("Ann").await, customer("Bo").await);
    let pm = app.post("/v1/payment_methods", &m.key, card()).await;
    let pm = pm.json["id"].as_str().expect("pm").to_owned();
    let attach = |pm: String, customer: String| {
        let app = &app;
        let key = m.key.clone();
        async move {
            app.post(
                &format!("/v1/payment_methods/{pm}/attach"),
                &key,
                json!({ "customer": customer }),
            )
            .await
        }
    };
    assert_eq!(attach(pm.clone(), ann.clone()).await.status, StatusCode::OK);
    assert_eq!(
        attach(pm.clone(), ann.clone()).await.status,
        StatusCode::OK,
        "again: harmless"
    );
    let moved = attach(pm.clone(), bo.clone()).await;
    assert_eq!(
        (moved.status, moved.code(), moved.param()),
        (StatusCode::CONFLICT, "payment_method_unexpected_state", "customer"),
        "{}",
        moved.text
    );
    let stripe = app
        .call(
            Method::POST,
            &format!("/stripe/v1/payment_methods/{pm}/attach"),
            &m.key,
            Some(&format!("customer={bo}")),
            FORM,
        )
        .await;
    assert_eq!(stripe.status, StatusCode::BAD_REQUEST, "{}", stripe.text);
    assert_eq!(
        app.get(&format!("/v1/payment_methods/{pm}"), &m.key).await.json["customer"],
        ann.as_str()
    );
    for confirm in [false, true] {
        let paid = app
            .post(
                "/v1/payments",
                &m.key,
                json!({ "amount": 500, "currency": "USD", "customer": bo, "payment_method": pm, "confirm": confirm }),
            )
            .await;
        assert_eq!(
            (paid.status, paid.param()),
            (StatusCode::BAD_REQUEST, "payment_method"),
            "{}",
            paid.text
        );
    }
    // Nor without naming its customer (anyone could charge a saved card by leaving it out).
    let anonymous = app
        .post(
            "/v1/payments",
            &m.key,
            json!({ "amount": 500, "currency": "USD", "payment_method": pm, "confirm": true }),
        )
        .await;
    assert_eq!(
        (anonymous.status, anonymous.param()),
        (StatusCode::BAD_REQUEST, "payment_method"),
        "{}",
        anonymous.text
    );
    let stripe = app
        .call(
            Method::POST,
            "/stripe/v1/payment_intents",
            &m.key,
            Some(&format!("amount=500&currency=usd&confirm=true&payment_method={pm}")),
            FORM,
        )
        .await;
    assert_eq!(stripe.status, StatusCode::BAD_REQUEST, "{}", stripe.text);
    // Confirmed later with the other customer's card: refused before any authorization.
    let p = app
        .post(
            "/v1/payments",
            &m.key,
            json!({ "amount": 500, "currency": "USD", "customer": bo }),
        )
        .await;
    let id = p.json["id"].as_str().expect("id").to_owned();
    let confirmed = app
        .post(
            &format!("/v1/payments/{id}/confirm"),
            &m.key,
            json!({ "payment_method": pm }),
        )
        .await;
    assert_eq!(
        (confirmed.status, confirmed.param()),
        (StatusCode::BAD_REQUEST, "payment_method"),
        "{}",
        confirmed.text
    );
    let own = app
        .post(
            "/v1/payments",
            &m.key,
            json!({ "amount": 500, "currency": "USD", "customer": ann, "payment_method": pm, "confirm": true }),
        )
        .await;
    assert_eq!(own.json["status"], "succeeded", "{}", own.text);

    // Two attaches of one card at once: one wins, the other is told.
    for _ in 0..12 {
        let (c1, c2) = (customer("Di").await, customer("Ed").await);
        let pm = app.post("/v1/payment_methods", &m.key, card()).await;
        let pm = pm.json["id"].as_str().expect("pm").to_owned();
        let (a1, a2) = tokio::join!(attach(pm.clone(), c1.clone()), attach(pm.clone(), c2.clone()));
        let won: Vec<&String> = [(&a1, &c1), (&a2, &c2)]
            .into_iter()
            .filter(|(r, _)| r.status == StatusCode::OK)
            .map(|(_, c)| c)
            .collect();
        assert_eq!(won.len(), 1, "{} / {}", a1.text, a2.text);
        let now = app.get(&format!("/v1/payment_methods/{pm}"), &m.key).await;
        assert_eq!(now.json["customer"], won[0].as_str());
    }

    // Attach racing the customer's deletion.
    for _ in 0..12 {
        let doomed = customer("Cy").await;
        let pm = app.post("/v1/payment_methods", &m.key, card()).await;
        let pm = pm.json["id"].as_str().expect("pm").to_owned();
        let path = format!("/v1/customers/{doomed}");
        let delete = app.call(Method::DELETE, &path, &m.key, None, &[]);
        let (attached, deleted) = tokio::join!(attach(pm.clone(), doomed.clone()), delete);
        assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
        assert!(
            matches!(attached.status, StatusCode::OK | StatusCode::BAD_REQUEST),
            "{}",
            attached.text
        );
        let now = app.get(&format!("/v1/payment_methods/{pm}"), &m.key).await;
        assert_eq!(
            now.json["customer"],
            serde_json::Value::Null,
            "left on a deleted customer"
        );
    }
    app.verify_ok().await;
}

async fn the_stripe_layer_answers_bad_input_in_stripes_shape(app: TestApp) {
    let m = app.merchant("shop").await;
    let post = |path: &'static str, body: &'static str| {
        let app = &app;
        let key = m.key.clone();
        async move { app.call(Method::POST, path, &key, Some(body), FORM).await }
    };
    for (body, param) in [
        ("currency=usd", "amount"),
        ("amount=12x&currency=usd", "amount"),
        ("amount=100&currency=zzz", "currency"),
        (
            "amount=100&currency=usd&transfer_data[destination]=acct_1",
            "transfer_data",
        ),
        ("amount=100&currency=usd&capture_method=later", "capture_method"),
        ("amount=100&currency=usd&confirm=yes", "confirm"),
        ("amount=100&currency=usd&metadata[k]=1&metadata[k]=2", "metadata[k]"),
        ("amount=100&currency=usd&payment_method=pm_card_nope", "payment_method"),
        (
            "amount=100&currency=usd&payment_method_types[]=sepa_debit",
            "payment_method_types",
        ),
        ("amount=-5&currency=usd", "amount"),
        ("amount=100&currency=usd&a[b][c][d][e][f]=1", "a[b][c][d][e][f]"),
    ] {
        let r = post("/stripe/v1/payment_intents", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.json["error"]["type"], "invalid_request_error", "{body}: {}", r.text);
        assert_eq!(r.json["error"]["param"], param, "{body}: {}", r.text);
    }
    let r = post(
        "/stripe/v1/payment_methods",
        "type=card&card[number]=4242424242424241&card[exp_month]=12&card[exp_year]=2099",
    )
    .await;
    assert_eq!(r.json["error"]["param"], "card[number]", "{}", r.text);
    for (body, param) in [
        ("enabled_events[]=*", "url"),
        ("url=https%3A%2F%2Fexample.com%2Fh", "enabled_events"),
        ("url=https%3A%2F%2Fexample.com%2Fh&enabled_events=*", "enabled_events"),
        (
            "url=https%3A%2F%2Fexample.com%2Fh&enabled_events[]=payment.captured",
            "enabled_events[0]",
        ),
        (
            "url=https%3A%2F%2Fexample.com%2Fh&enabled_events[0][x]=*",
            "enabled_events",
        ),
        ("url=javascript%3Aalert(1)&enabled_events[]=*", "url"),
        (
            "url=https%3A%2F%2Fexample.com%2Fh&enabled_events[]=*&metadata[a]=b",
            "metadata",
        ),
    ] {
        let r = post("/stripe/v1/webhook_endpoints", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.json["error"]["param"], param, "{body}: {}", r.text);
    }
    let r = post("/stripe/v1/webhook_endpoints/we_missing", "disabled=maybe").await;
    assert_eq!(r.json["error"]["param"], "disabled", "{}", r.text);
    let r = post("/stripe/v1/payment_intents/pi_missing/confirm", "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = app.get("/stripe/v1/payment_intents?limit=500", &m.key).await;
    assert_eq!(
        (r.status, r.json["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("limit"))
    );
    let r = app.get("/stripe/v1/payment_intents?expand[]=nothing", &m.key).await;
    assert_eq!(r.json["error"]["param"], "expand", "{}", r.text);
    let r = app.get("/stripe/v1/payment_intents", "sk_test_wrong").await;
    assert_eq!(
        (r.status, r.json["error"]["type"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("authentication_error"))
    );

    // A capture of a payment that is not authorized: Stripe's unexpected-state error.
    let created = post("/stripe/v1/payment_intents", "amount=100&currency=usd").await;
    let pi = created.json["id"].as_str().expect("id").to_owned();
    let r = app
        .call(
            Method::POST,
            &format!("/stripe/v1/payment_intents/{pi}/capture"),
            &m.key,
            Some(""),
            FORM,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.json["error"]["code"], "payment_intent_unexpected_state");
    // An intent that does not exist is named as sent, never as Settle's payment.
    for (method, path) in [
        (Method::GET, "/stripe/v1/payment_intents/pi_nope"),
        (Method::POST, "/stripe/v1/payment_intents/pi_nope/confirm"),
        (Method::POST, "/stripe/v1/payment_intents/pi_nope/capture"),
    ] {
        let r = app.call(method.clone(), path, &m.key, Some(""), FORM).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}: {}", r.text);
        let message = r.json["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains("pi_nope") && !message.contains("pay_"),
            "{method} {path}: {}",
            r.text
        );
    }
    // A call that takes no parameter (but `expand`) refuses any other, in its query string or
    // its body, and does nothing.
    let customer = post("/stripe/v1/customers", "name=Ann").await;
    let cus = customer.json["id"].as_str().expect("id").to_owned();
    let path = format!("/stripe/v1/customers/{cus}");
    for (method, query, body) in [
        (Method::GET, "?x=1", ""),
        (Method::DELETE, "?x=1", ""),
        (Method::DELETE, "", "x=1"),
    ] {
        let r = app
            .call(method.clone(), &format!("{path}{query}"), &m.key, Some(body), FORM)
            .await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, "x"),
            "{method} {query} {body}: {}",
            r.text
        );
    }
    let r = app.get(&format!("{path}?expand[]=nothing_here"), &m.key).await;
    assert_eq!(r.param(), "expand", "expand is still read: {}", r.text);
    assert_eq!(app.get(&path, &m.key).await.status, StatusCode::OK, "not deleted");
    // A refund of it names the field the request gave it by, not Settle's own; a charge id is
    // no intent id, nor the reverse.
    let ch = pi.replacen("pi_", "ch_", 1);
    for (field, id) in [
        ("payment_intent", &pi),
        ("charge", &ch),
        ("payment_intent", &ch),
        ("charge", &pi),
    ] {
        let r = app
            .call(
                Method::POST,
                "/stripe/v1/refunds",
                &m.key,
                Some(&format!("{field}={id}")),
                FORM,
            )
            .await;
        assert_eq!(
            (r.status.is_client_error(), r.json["error"]["param"].as_str()),
            (true, Some(field)),
            "{}",
            r.text
        );
    }

    // A decline is a 402 card error, and a retry with the same key replays it.
    let body = "amount=100&currency=usd&confirm=true&payment_method=pm_card_chargeDeclined";
    let mut headers = FORM.to_vec();
    headers.push(("idempotency-key", "decline-1"));
    let first = app
        .call(Method::POST, "/stripe/v1/payment_intents", &m.key, Some(body), &headers)
        .await;
    assert_eq!(first.status, StatusCode::PAYMENT_REQUIRED, "{}", first.text);
    assert_eq!(first.json["error"]["type"], "card_error");
    assert_eq!(first.json["error"]["decline_code"], "generic_decline");
    let again = app
        .call(Method::POST, "/stripe/v1/payment_intents", &m.key, Some(body), &headers)
        .await;
    assert_eq!((again.status, &again.text), (first.status, &first.text));
    let listed = app.get("/stripe/v1/payment_intents?limit=100", &m.key).await;
    assert_eq!(listed.json["data"].as_array().map(Vec::len), Some(2), "{}", listed.text);
    app.verify_ok().await;
}

/// A card number is never kept outside the vault: a phone, name, description or metadata key or
/// value holding one is refused without echoing it; a phone is a phone's shape (at most 15 digits).
async fn card_numbers_in_contact_fields_are_refused_and_phones_are_phones(app: TestApp) {
    let m = app.merchant("shop").await;
    let cases = [
        ("/v1/customers", json!({ "phone": "4242424242424242" }), "phone"),
        ("/v1/customers", json!({ "phone": "+1 (415) 555-2671 ext 2" }), "phone"),
        ("/v1/customers", json!({ "phone": "1234567890123456" }), "phone"),
        // An Amex test number (15 digits) in free text.
        (
            "/v1/customers",
            json!({ "description": "amex 378282246310005" }),
            "description",
        ),
        ("/v1/customers", json!({ "name": "Ann 4242 4242 4242 4242" }), "name"),
        (
            "/v1/customers",
            json!({ "description": "card 4242-4242-4242-4242" }),
            "description",
        ),
        (
            "/v1/payments",
            json!({ "amount": 100, "currency": "USD", "customer": { "email": "a@b.co", "phone": "4242424242424242" } }),
            "customer.phone",
        ),
        (
            "/v1/payments",
            json!({ "amount": 100, "currency": "USD", "description": "4242424242424242" }),
            "description",
        ),
        (
            "/v1/payments",
            json!({ "amount": 100, "currency": "USD", "metadata": { "card": "4242 4242 4242 4242" } }),
            "metadata.card",
        ),
        (
            "/v1/customers",
            json!({ "metadata": { "4242424242424242": "x" } }),
            "metadata.[redacted]",
        ),
        (
            "/v1/ledger/accounts",
            json!({ "id": "acct_card", "currency": "USD", "metadata": { "n": "378282246310005" } }),
            "metadata.n",
        ),
        (
            "/v1/webhook_endpoints",
            json!({ "url": "https://example.com/hook", "enabled_events": ["*"], "description": "4242424242424242" }),
            "description",
        ),
        (
            "/v1/webhook_endpoints",
            json!({ "url": "https://example.com/hook?c=4242424242424242", "enabled_events": ["*"] }),
            "url",
        ),
        (
            "/v1/customers",
            json!({ "email": "4242424242424242@example.com" }),
            "email",
        ),
    ];
    for (path, body, param) in cases {
        let r = app.post(path, &m.key, body.clone()).await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, param),
            "{body}: {}",
            r.text
        );
        assert!(!r.text.contains("4242") && !r.text.contains("3782"), "{}", r.text);
    }
    let ok = app
        .post(
            "/v1/customers",
            &m.key,
            json!({ "phone": "+1 (415) 555-2671", "name": "Ann", "description": "order 12345, at 1764594000002",
                    "metadata": { "at": "1764594000002" } }),
        )
        .await;
    assert_eq!(
        ok.status,
        StatusCode::CREATED,
        "a Luhn-valid timestamp is no card: {}",
        ok.text
    );
    // A phone is not Luhn-checked: one long phone number in ten would fail it.
    let long = app
        .post("/v1/customers", &m.key, json!({ "phone": "+49 378282246310005" }))
        .await;
    assert_eq!(
        long.status,
        StatusCode::BAD_REQUEST,
        "17 digits is no phone: {}",
        long.text
    );
    let long = app
        .post("/v1/customers", &m.key, json!({ "phone": "+378282246310005" }))
        .await;
    assert_eq!(long.status, StatusCode::CREATED, "15 digits: {}", long.text);
    let id = ok.json["id"].as_str().expect("id");
    let r = app
        .post(
            &format!("/v1/customers/{id}"),
            &m.key,
            json!({ "phone": "4242424242424242" }),
        )
        .await;
    assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, "phone"), "{}", r.text);
    assert_eq!(
        app.get(&format!("/v1/customers/{id}"), &m.key).await.json["phone"],
        "+1 (415) 555-2671"
    );
}

crate::conformance!(
    a_customers_card_stays_with_that_customer,
    customers_own_payments_and_cards,
    the_stripe_layer_answers_bad_input_in_stripes_shape,
    card_numbers_in_contact_fields_are_refused_and_phones_are_phones,
);
