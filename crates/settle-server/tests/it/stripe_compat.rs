//! The Stripe-compatible API's lists and form reading: the charge list pages over charges
//! only, metadata keys may be all digits, a JSON body is refused in plain words, integers are
//! read one way only, and a list filtered by a customer the merchant does not have is a 404.

use axum::http::{Method, StatusCode};
use serde_json::Value;

use crate::harness::{Merchant, Resp, TestApp};

const FORM: &[(&str, &str)] = &[("content-type", "application/x-www-form-urlencoded")];

async fn form(app: &TestApp, m: &Merchant, path: &str, body: &str) -> Resp {
    app.call(Method::POST, path, &m.key, Some(body), FORM).await
}

fn ids(r: &Resp) -> Vec<String> {
    r.json["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {}", r.text))
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn stripe_charge_list_pages_over_charges_only(app: TestApp) {
    let m = app.merchant("shop").await;
    // Oldest first: payments with a charge (C) among payments without one (N).
    let kinds = [
        ("C", "amount=101&currency=usd&confirm=true&payment_method=pm_card_visa"),
        ("N", "amount=102&currency=usd"),
        ("N", "amount=103&currency=usd"),
        (
            "C",
            "amount=104&currency=usd&confirm=true&capture_method=manual&payment_method=pm_card_visa",
        ),
        (
            "N",
            "amount=105&currency=usd&confirm=true&payment_method=pm_card_chargeDeclined",
        ),
        (
            "C",
            "amount=106&currency=usd&confirm=true&payment_method=pm_card_mastercard",
        ),
        ("N", "amount=107&currency=usd"),
        ("N", "amount=108&currency=usd"),
    ];
    let mut charges = Vec::new();
    let mut uncharged = Vec::new();
    for (kind, body) in kinds {
        let r = form(&app, &m, "/stripe/v1/payment_intents", body).await;
        let intent = if r.status == StatusCode::PAYMENT_REQUIRED {
            &r.json["error"]["payment_intent"]
        } else {
            assert_eq!(r.status, StatusCode::OK, "{body}: {}", r.text);
            &r.json
        };
        let ch = intent["id"].as_str().expect("id").replacen("pi_", "ch_", 1);
        if kind == "C" {
            charges.push(ch);
        } else {
            uncharged.push(ch);
        }
    }
    charges.reverse(); // newest first, as lists are
    let all = app.get("/stripe/v1/charges?limit=100", &m.key).await;
    assert_eq!(ids(&all), charges, "{}", all.text);
    assert_eq!(all.json["has_more"], false, "{}", all.text);

    // Forward, one charge a page: never an empty page, `has_more` only while charges remain.
    let mut seen = Vec::new();
    let mut path = "/stripe/v1/charges?limit=1".to_owned();
    loop {
        let r = app.get(&path, &m.key).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        let page = ids(&r);
        assert_eq!(page.len(), 1, "{path}: {}", r.text);
        seen.extend(page.clone());
        assert!(seen.len() <= charges.len(), "{path}: {}", r.text);
        if r.json["has_more"] == false {
            break;
        }
        path = format!("/stripe/v1/charges?limit=1&starting_after={}", page[0]);
    }
    assert_eq!(seen, charges);
    let after_last = app
        .get(
            &format!("/stripe/v1/charges?limit=1&starting_after={}", charges[2]),
            &m.key,
        )
        .await;
    assert_eq!(
        (ids(&after_last).len(), &after_last.json["has_more"]),
        (0, &Value::Bool(false)),
        "{}",
        after_last.text
    );

    // Backward from the oldest, one charge a page.
    let mut back = Vec::new();
    let mut cursor = charges[2].clone();
    loop {
        let path = format!("/stripe/v1/charges?limit=1&ending_before={cursor}");
        let r = app.get(&path, &m.key).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        let page = ids(&r);
        assert_eq!(page.len(), 1, "{path}: {}", r.text);
        back.extend(page.clone());
        assert!(back.len() < charges.len(), "{path}: {}", r.text);
        if r.json["has_more"] == false {
            break;
        }
        cursor = page[0].clone();
    }
    assert_eq!(back, [charges[1].clone(), charges[0].clone()]);
    // Two a page, backward from the oldest: both newer charges, nothing more.
    let r = app
        .get(
            &format!("/stripe/v1/charges?limit=2&ending_before={}", charges[2]),
            &m.key,
        )
        .await;
    assert_eq!(ids(&r), charges[..2], "{}", r.text);
    assert_eq!(r.json["has_more"], false, "{}", r.text);

    // A cursor naming a payment without a charge (one declined, or canceled uncaptured since it
    // was listed) still has its place: the page goes on from there, with charges only. An id the
    // merchant does not have is refused, naming the cursor parameter.
    for ch in &uncharged {
        for param in ["starting_after", "ending_before"] {
            let r = app.get(&format!("/stripe/v1/charges?{param}={ch}"), &m.key).await;
            assert_eq!(r.status, StatusCode::OK, "{param}={ch}: {}", r.text);
            assert!(
                ids(&r).iter().all(|id| charges.contains(id)),
                "{param}={ch}: {}",
                r.text
            );
        }
    }
    for param in ["starting_after", "ending_before"] {
        let r = app.get(&format!("/stripe/v1/charges?{param}=ch_nope"), &m.key).await;
        assert_eq!(
            (r.status, r.param(), r.json["error"]["type"].as_str()),
            (StatusCode::BAD_REQUEST, param, Some("invalid_request_error")),
            "{param}: {}",
            r.text
        );
    }
    // The intent list still shows every payment.
    let intents = app.get("/stripe/v1/payment_intents?limit=100", &m.key).await;
    assert_eq!(ids(&intents).len(), kinds.len(), "{}", intents.text);
    // The charges of one intent: its charge, or none.
    let pi = |ch: &str| ch.replacen("ch_", "pi_", 1);
    let r = app
        .get(
            &format!("/stripe/v1/charges?payment_intent={}", pi(&charges[0])),
            &m.key,
        )
        .await;
    assert_eq!(ids(&r), [charges[0].clone()], "{}", r.text);
    let r = app
        .get(
            &format!("/stripe/v1/charges?payment_intent={}", pi(&uncharged[0])),
            &m.key,
        )
        .await;
    assert_eq!(ids(&r).len(), 0, "{}", r.text);
    assert_eq!(r.json["has_more"], false, "{}", r.text);
    app.verify_ok().await;
}

async fn stripe_metadata_keys_may_be_numeric(app: TestApp) {
    let m = app.merchant("shop").await;
    let r = form(&app, &m, "/stripe/v1/customers", "metadata[0]=a&metadata[1]=b").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json["metadata"],
        serde_json::json!({ "0": "a", "1": "b" }),
        "{}",
        r.text
    );
    let cus = r.json["id"].as_str().expect("id").to_owned();
    let r = form(&app, &m, &format!("/stripe/v1/customers/{cus}"), "metadata[2024]=x").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json["metadata"],
        serde_json::json!({ "0": "a", "1": "b", "2024": "x" }),
        "{}",
        r.text
    );
    let r = form(&app, &m, "/stripe/v1/customers", "metadata[2024]=x").await;
    assert_eq!(r.json["metadata"], serde_json::json!({ "2024": "x" }), "{}", r.text);

    let r = form(
        &app,
        &m,
        "/stripe/v1/payment_intents",
        "amount=100&currency=usd&metadata[0]=a&metadata[1]=b",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json["metadata"],
        serde_json::json!({ "0": "a", "1": "b" }),
        "{}",
        r.text
    );
    let pi = r.json["id"].as_str().expect("id").to_owned();
    let r = form(&app, &m, &format!("/stripe/v1/payment_intents/{pi}"), "metadata[7]=z").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["metadata"]["7"], "z", "{}", r.text);
    let r = app.get(&format!("/stripe/v1/payment_intents/{pi}"), &m.key).await;
    assert_eq!(
        r.json["metadata"],
        serde_json::json!({ "0": "a", "1": "b", "7": "z" }),
        "{}",
        r.text
    );

    // A refused key is named as sent, a dot in it included.
    let long = "k".repeat(41);
    let long_key = format!("metadata[{long}.x]");
    for (path, body, param) in [
        (
            "/stripe/v1/payment_intents",
            format!("amount=100&currency=usd&{long_key}=v"),
            long_key.as_str(),
        ),
        ("/stripe/v1/customers", format!("{long_key}=v"), long_key.as_str()),
        (
            "/stripe/v1/payment_intents",
            "amount=100&currency=usd&metadata[a.b][c]=v".to_owned(),
            "metadata[a.b]",
        ),
        ("/stripe/v1/customers", "metadata[a.b][c]=v".to_owned(), "metadata[a.b]"),
        ("/stripe/v1/customers", "metadata[]=v".to_owned(), "metadata[]"),
    ] {
        let r = form(&app, &m, path, &body).await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, param),
            "{path} {body}: {}",
            r.text
        );
    }
    app.verify_ok().await;
}

async fn stripe_json_bodies_are_refused_clearly(app: TestApp) {
    let m = app.merchant("shop").await;
    let json = r#"{"email":"x@y.test"}"#;
    for (content_type, body) in [
        ("application/json", json),
        ("application/json; charset=utf-8", json),
        ("application/x-www-form-urlencoded", json),
        ("application/json", "email=x%40y.test"),
        ("application/x-www-form-urlencoded", "  [1, 2]"),
    ] {
        let r = app
            .call(
                Method::POST,
                "/stripe/v1/customers",
                &m.key,
                Some(body),
                &[("content-type", content_type)],
            )
            .await;
        assert_eq!(
            (r.status, r.param(), r.json["error"]["type"].as_str()),
            (StatusCode::BAD_REQUEST, "body", Some("invalid_request_error")),
            "{content_type} {body}: {}",
            r.text
        );
        let message = r.json["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains("application/x-www-form-urlencoded") && !message.contains("x@y"),
            "{}",
            r.text
        );
    }
    // Nothing was made.
    let listed = app.get("/stripe/v1/customers", &m.key).await;
    assert_eq!(ids(&listed).len(), 0, "{}", listed.text);
    // A GET with a JSON content type and no body is an ordinary GET; a form still works.
    let r = app
        .call(
            Method::GET,
            "/stripe/v1/customers",
            &m.key,
            None,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = form(&app, &m, "/stripe/v1/customers", "email=x%40y.test").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.verify_ok().await;
}

async fn stripe_integers_are_strict_and_customer_filters_must_exist(app: TestApp) {
    let m = app.merchant("shop").await;
    for (body, param) in [
        ("amount=%2B500&currency=usd", "amount"),
        ("amount=0500&currency=usd", "amount"),
        (
            "amount=500&currency=usd&application_fee_amount=010",
            "application_fee_amount",
        ),
    ] {
        let r = form(&app, &m, "/stripe/v1/payment_intents", body).await;
        assert_eq!(
            (r.status, r.param(), r.code()),
            (StatusCode::BAD_REQUEST, param, "parameter_invalid_integer"),
            "{body}: {}",
            r.text
        );
    }
    let r = app.get("/stripe/v1/payment_intents?limit=01", &m.key).await;
    assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, "limit"), "{}", r.text);
    let r = form(
        &app,
        &m,
        "/stripe/v1/payment_intents",
        "amount=500&currency=usd&confirm=true&capture_method=manual&payment_method=pm_card_visa",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let pi = r.json["id"].as_str().expect("id").to_owned();
    let r = form(
        &app,
        &m,
        &format!("/stripe/v1/payment_intents/{pi}/capture"),
        "amount_to_capture=%2B100",
    )
    .await;
    assert_eq!(
        (r.status, r.param()),
        (StatusCode::BAD_REQUEST, "amount_to_capture"),
        "{}",
        r.text
    );
    let r = form(
        &app,
        &m,
        "/stripe/v1/refunds",
        &format!("payment_intent={pi}&amount=01"),
    )
    .await;
    assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, "amount"), "{}", r.text);
    let r = form(&app, &m, "/stripe/v1/payment_intents", "amount=0&currency=usd").await;
    assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, "amount"), "{}", r.text);
    assert_ne!(r.code(), "parameter_invalid_integer", "0 is an integer: {}", r.text);

    // A list filtered by a customer this merchant does not have: 404 naming `customer`.
    let other = app.merchant("other").await;
    let theirs = form(&app, &other, "/stripe/v1/customers", "name=Bo").await;
    let theirs = theirs.json["id"].as_str().expect("id").to_owned();
    for list in ["payment_intents", "charges", "payment_methods"] {
        for customer in [theirs.as_str(), "cus_nope"] {
            let path = format!("/stripe/v1/{list}?customer={customer}");
            let r = app.get(&path, &m.key).await;
            assert_eq!(
                (r.status, r.param(), r.code()),
                (StatusCode::NOT_FOUND, "customer", "resource_missing"),
                "{path}: {}",
                r.text
            );
        }
    }
    // Its own customer: the list, even when empty.
    let mine = form(&app, &m, "/stripe/v1/customers", "name=Ann").await;
    let mine = mine.json["id"].as_str().expect("id").to_owned();
    for list in ["payment_intents", "charges"] {
        let r = app.get(&format!("/stripe/v1/{list}?customer={mine}"), &m.key).await;
        assert_eq!(r.status, StatusCode::OK, "{list}: {}", r.text);
        assert_eq!(ids(&r).len(), 0, "{list}: {}", r.text);
    }
    app.verify_ok().await;
}

crate::conformance!(
    stripe_charge_list_pages_over_charges_only,
    stripe_metadata_keys_may_be_numeric,
    stripe_json_bodies_are_refused_clearly,
    stripe_integers_are_strict_and_customer_filters_must_exist,
);
