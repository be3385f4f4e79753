//! Bad input gets a 400 naming the offending field; nothing panics and nothing is written.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::{
    conformance,
    harness::{TestApp, ADMIN_TOKEN},
};

pub async fn bad_transfers_name_the_field(app: TestApp) {
    let m = app.merchant_with_ab("acme").await;
    let ok = json!({ "id": "t", "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "currency": "USD" });
    let with = |field: &str, value: serde_json::Value| {
        let mut b = ok.clone();
        b[field] = value;
        b
    };
    let without = |field: &str| {
        let mut b = ok.clone();
        b.as_object_mut().expect("object").remove(field);
        b
    };
    let long_id = "x".repeat(65);
    let cases = vec![
        (with("amount", json!(0)), "amount"),
        (with("amount", json!(-5)), "amount"),
        (with("amount", json!(1.5)), "amount"),
        (with("amount", json!("5")), "amount"),
        (with("amount", json!(9_223_372_036_854_775_808_u64)), "amount"),
        (with("currency", json!("XXX")), "currency"),
        (with("currency", json!(840)), "currency"),
        (with("id", json!(long_id)), "id"),
        (with("id", json!("has space")), "id"),
        (with("id", json!("")), "id"),
        (with("debit_account_id", json!("a/b")), "debit_account_id"),
        (with("credit_account_id", json!(null)), "credit_account_id"),
        (with("pending", json!("yes")), "pending"),
        (with("timeout_seconds", json!(10)), "timeout_seconds"),
        (with("metadata", json!([1])), "metadata"),
        (with("metadata", json!({ "k": 1 })), "metadata.k"),
        (with("unexpected", json!(1)), "unexpected"),
        (without("id"), "id"),
        (without("amount"), "amount"),
        (without("currency"), "currency"),
        (without("debit_account_id"), "debit_account_id"),
        (
            json!({ "id": "p", "post_pending_id": "h", "void_pending_id": "h" }),
            "void_pending_id",
        ),
        (json!({ "id": "p", "post_pending_id": "h", "pending": true }), "pending"),
        (
            json!({ "id": "p", "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "currency": "USD",
                 "pending": true, "timeout_seconds": 0 }),
            "timeout_seconds",
        ),
        (json!({ "transfers": [] }), "transfers"),
        (
            json!({ "transfers": [ok.clone(), with("amount", json!(-1))] }),
            "transfers[1].amount",
        ),
        (json!({ "transfers": [with("zzz", json!(1))] }), "transfers[0].zzz"),
        (json!({ "transfers": [ok.clone()], "atomic": "yes" }), "atomic"),
        (json!({ "transfers": [ok.clone()], "extra": 1 }), "extra"),
        (json!([1, 2]), "body"),
        (json!({ "transfers": [[1]] }), "transfers[0]"),
    ];
    for (body, param) in cases {
        let r = app.transfer(&m, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.param(), param, "{body}: {}", r.text);
        assert_eq!(r.json["error"]["type"], "invalid_request_error");
    }
    let too_many: Vec<_> = (0..1_001).map(|i| with("id", json!(format!("t{i}")))).collect();
    let r = app.transfer(&m, json!({ "transfers": too_many })).await;
    assert_eq!(r.param(), "transfers");
    assert_eq!(app.balance(&m, "a").await["debits_posted"], 0, "nothing was written");
}

pub async fn malformed_and_oversized_bodies_are_400(app: TestApp) {
    let m = app.merchant("acme").await;
    for raw in ["{", "not json", r#"{"id": "t", }"#, "\u{0}"] {
        let r = app
            .call(Method::POST, "/v1/ledger/transfers", &m.key, Some(raw), &[])
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_json"),
            "{raw:?}"
        );
    }
    let huge = format!(r#"{{"currency": "USD", "name": "{}"}}"#, "x".repeat(1 << 20));
    let r = app
        .call(Method::POST, "/v1/ledger/accounts", &m.key, Some(&huge), &[])
        .await;
    assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, "body"));
    // The rest of the body is never read, so the connection cannot serve another request.
    assert_eq!(r.headers.get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    let r = app
        .call(
            Method::POST,
            "/v1/ledger/accounts",
            &m.key,
            Some(&huge),
            &[("idempotency-key", "big")],
        )
        .await;
    assert_eq!(
        (r.status, r.param()),
        (StatusCode::BAD_REQUEST, "body"),
        "also through the idempotency layer"
    );
    // A key given twice is refused (serde_json would keep the last, where a proxy may have read
    // the first), and so is a query parameter given twice or to a route that takes none.
    let twice = r#"{"amount": 100, "currency": "USD", "amount": 20000}"#;
    let r = app.call(Method::POST, "/v1/payments", &m.key, Some(twice), &[]).await;
    assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, "amount"), "{}", r.text);
    let nested = r#"{"transfers": [{"id": "a", "metadata": {"k": "1", "k": "2"}}]}"#;
    let r = app
        .call(Method::POST, "/v1/ledger/transfers", &m.key, Some(nested), &[])
        .await;
    assert_eq!(
        (r.status, r.param()),
        (StatusCode::BAD_REQUEST, "transfers[0].metadata.k"),
        "{}",
        r.text
    );
    for (path, param) in [
        ("/v1/payments?limit=1&limit=3", "limit"),
        ("/v1/connector_accounts?limit=abc", "limit"),
        ("/v1/routing?created[gte]=x", "created[gte]"),
        // A single object takes no parameter either.
        ("/v1/payments/pay_x?expand=refunds", "expand"),
        ("/v1/currencies?code=USD", "code"),
    ] {
        let r = app.call(Method::GET, path, &m.key, None, &[]).await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, param),
            "{path}: {}",
            r.text
        );
    }
    // A write takes its fields in the body: a query parameter is refused before anything runs
    // (a capture's `?amount=` must not capture the whole amount because it went unread).
    for (method, path, param) in [
        (Method::POST, "/v1/payments/pay_x/capture?amount=500", "amount"),
        (Method::POST, "/v1/payments?amount=100&currency=USD", "amount"),
        (Method::DELETE, "/v1/webhook_endpoints/we_x?force=1", "force"),
    ] {
        let r = app.call(method.clone(), path, &m.key, Some("{}"), &[]).await;
        assert_eq!(
            (r.status, r.code(), r.param()),
            (StatusCode::BAD_REQUEST, "parameter_unknown", param),
            "{method} {path}: {}",
            r.text
        );
    }
    // So does the Stripe-compatible API, whose POSTs take their fields in the form body, and a
    // Stripe GET that takes no parameter.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    for (method, path, param) in [
        (Method::POST, "/stripe/v1/customers?email=ann@example.test", "email"),
        (Method::GET, "/stripe/v1/balance?currency=usd", "currency"),
    ] {
        let body = (method == Method::POST).then_some("name=Ann");
        let r = app.call(method.clone(), path, &m.key, body, &form).await;
        assert_eq!(
            (r.status, r.param(), r.json["error"]["type"].as_str()),
            (StatusCode::BAD_REQUEST, param, Some("invalid_request_error")),
            "{method} {path}: {}",
            r.text
        );
    }
    // An action that takes no field refuses a body that has one, or is not JSON, rather than
    // acting and ignoring it; nothing, or `{}`, is its body.
    for (method, path) in [
        (Method::POST, "/v1/invoices/inv_x/send"),
        (Method::POST, "/v1/invoices/inv_x/void"),
        (Method::POST, "/v1/payment_methods/pm_x/detach"),
        (Method::DELETE, "/v1/customers/cus_x"),
        (Method::DELETE, "/v1/webhook_endpoints/we_x"),
    ] {
        for (body, param) in [(r#"{"x": 1}"#, "x"), ("garbage", "body")] {
            let r = app.call(method.clone(), path, &m.key, Some(body), &[]).await;
            assert_eq!(
                (r.status, r.param()),
                (StatusCode::BAD_REQUEST, param),
                "{method} {path} {body}: {}",
                r.text
            );
        }
        let r = app.call(method.clone(), path, &m.key, None, &[]).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {path} without a body: {}",
            r.text
        );
    }
    // A route that exists, with a method it does not take: a JSON 405, not an empty body.
    for (method, path) in [(Method::DELETE, "/v1/payments"), (Method::POST, "/stripe/v1/charges")] {
        let r = app.call(method.clone(), path, &m.key, Some("{}"), &[]).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            "{method} {path}: {}",
            r.text
        );
    }
}

pub async fn bad_accounts_and_merchants_name_the_field(app: TestApp) {
    let m = app.merchant("acme").await;
    let cases = vec![
        (json!({}), "currency"),
        (json!({ "currency": "usdollar" }), "currency"),
        (json!({ "currency": "USD", "id": "x".repeat(65) }), "id"),
        (json!({ "currency": "USD", "code": -1 }), "code"),
        (json!({ "currency": "USD", "code": 70_000 }), "code"),
        (json!({ "currency": "USD", "name": "" }), "name"),
        (
            json!({ "currency": "USD", "flags": { "debits_must_not_exceed_credits": true, "credits_must_not_exceed_debits": true } }),
            "flags",
        ),
        (json!({ "currency": "USD", "flags": { "bogus": true } }), "flags.bogus"),
        (
            json!({ "currency": "USD", "metadata": { "k": "v".repeat(501) } }),
            "metadata.k",
        ),
        (json!({ "currency": "USD", "balance": 5 }), "balance"),
    ];
    for (body, param) in cases {
        let r = app.post("/v1/ledger/accounts", &m.key, body.clone()).await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, param),
            "{body}: {}",
            r.text
        );
    }
    let merchants = vec![
        (json!({ "name": "x" }), "email"),
        (json!({ "name": "x", "email": "not-an-email" }), "email"),
        (json!({ "email": "a@b.test" }), "name"),
        (
            json!({ "name": "x", "email": "a@b.test", "default_currency": "ABC" }),
            "default_currency",
        ),
        (
            json!({ "name": "x", "email": "a@b.test", "amount_limits": { "USD": { "min": 0, "max": 5 } } }),
            "amount_limits.USD",
        ),
        (
            json!({ "name": "x", "email": "a@b.test", "amount_limits": { "QQQ": { "min": 1, "max": 5 } } }),
            "amount_limits.QQQ",
        ),
        (json!({ "name": "x", "email": "a@b.test", "role": "root" }), "role"),
    ];
    for (body, param) in merchants {
        let r = app.post("/admin/v1/merchants", ADMIN_TOKEN, body.clone()).await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, param),
            "{body}: {}",
            r.text
        );
    }
    let key = app
        .post(
            &format!("/admin/v1/merchants/{}/api_keys", m.id),
            ADMIN_TOKEN,
            json!({ "scopes": ["admin"] }),
        )
        .await;
    assert_eq!((key.status, key.param()), (StatusCode::BAD_REQUEST, "scopes"));
    for q in [
        "limit=0",
        "limit=101",
        "limit=x",
        "starting_after=a&ending_before=b",
        "sort=asc",
    ] {
        let r = app.get(&format!("/v1/ledger/accounts?{q}"), &m.key).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
        assert!(!r.param().is_empty(), "{q}");
    }
    // An empty filter is no filter silently dropped: refused, naming it.
    for (path, param) in [
        ("/v1/refunds?payment_id=", "payment_id"),
        ("/v1/payments?status=", "status"),
        ("/v1/events?type=", "type"),
    ] {
        let r = app.get(path, &m.key).await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, param),
            "{path}: {}",
            r.text
        );
    }
}

/// A NUL character (no text column holds one; PostgreSQL refuses it) or bytes that are not
/// UTF-8, in a path, a query, a JSON body, a Stripe form or a provider event: a JSON 400
/// naming the parameter, on both engines, and never a 500.
pub async fn nul_characters_and_bad_utf8_are_refused_naming_the_parameter(app: TestApp) {
    let m = app.merchant("acme").await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    // Method, path, token, body, headers, the parameter named.
    type Case<'a> = (
        Method,
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (Method::GET, "/v1/payments/%00", &m.key, None, &[], "id"),
        (Method::GET, "/v1/payments/pay_%ff", &m.key, None, &[], "id"),
        (Method::POST, "/v1/payments/%00/capture", &m.key, Some("{}"), &[], "id"),
        (
            Method::GET,
            "/v1/payments?customer_email=a%00",
            &m.key,
            None,
            &[],
            "customer_email",
        ),
        (
            Method::GET,
            "/v1/refunds?starting_after=%00",
            &m.key,
            None,
            &[],
            "starting_after",
        ),
        (Method::GET, "/v1/ledger/accounts/%00/entries", &m.key, None, &[], "id"),
        (
            Method::POST,
            "/v1/ledger/accounts",
            &m.key,
            Some(r#"{"id": "a\u0000", "currency": "USD"}"#),
            &[],
            "id",
        ),
        (Method::GET, "/admin/v1/merchants/%00", ADMIN_TOKEN, None, &[], "id"),
        (
            Method::GET,
            "/stripe/v1/payment_intents/pi_%00",
            &m.key,
            None,
            &[],
            "id",
        ),
        (
            Method::GET,
            "/stripe/v1/customers?email=%00",
            &m.key,
            None,
            &[],
            "email",
        ),
        (
            Method::POST,
            "/stripe/v1/payment_intents",
            &m.key,
            Some("amount=100&currency=usd&metadata[a]=%00"),
            &form,
            "metadata[a]",
        ),
        (Method::POST, "/webhooks/sandbox/%00", "", Some("{}"), &[], "account_id"),
    ];
    for (method, path, token, body, headers, param) in cases {
        let r = crate::harness::call(&app.router, method.clone(), path, token, body, headers).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {path}: {}", r.text);
        assert_eq!(r.param(), param, "{method} {path}: {}", r.text);
    }
    app.verify_ok().await;
}

/// An unknown id given in a field is a 404 naming that field; an unknown route names none.
pub async fn unknown_ids_name_the_field_that_gave_them(app: TestApp) {
    let m = app.merchant("acme").await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let body = r#"{"event_id": "0c4f5b5e-4d6b-4c8e-9a53-1a2b3c4d5e6f", "type": "payment", "invoice_id": "inv_01abc", "amount_cents": 100}"#;
    // Method, path, body, headers, the status, the parameter named.
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        StatusCode,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/invoice_payments",
            Some(body),
            &[],
            StatusCode::NOT_FOUND,
            Some("invoice_id"),
        ),
        (
            Method::POST,
            "/stripe/v1/refunds",
            Some("charge=ch_01abc"),
            &form,
            StatusCode::BAD_REQUEST,
            Some("charge"),
        ),
        (
            Method::POST,
            "/stripe/v1/refunds",
            Some("payment_intent=pi_01abc"),
            &form,
            StatusCode::BAD_REQUEST,
            Some("payment_intent"),
        ),
        (
            Method::GET,
            "/stripe/v1/charges?payment_intent=pi_01abc",
            None,
            &[],
            StatusCode::NOT_FOUND,
            Some("payment_intent"),
        ),
        (
            Method::GET,
            "/stripe/v1/refunds?charge=ch_01abc",
            None,
            &[],
            StatusCode::NOT_FOUND,
            Some("charge"),
        ),
        (
            Method::GET,
            "/stripe/v1/refunds?payment_intent=ch_01abc",
            None,
            &[],
            StatusCode::NOT_FOUND,
            Some("payment_intent"),
        ),
        (
            Method::GET,
            "/stripe/v1/payment_methods?customer=cus_01abc",
            None,
            &[],
            StatusCode::NOT_FOUND,
            Some("customer"),
        ),
        (Method::GET, "/v1/nope", None, &[], StatusCode::NOT_FOUND, None),
    ];
    for (method, path, body, headers, status, param) in cases {
        let r = crate::harness::call(&app.router, method.clone(), path, &m.key, body, headers).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
        assert_eq!(r.json["error"]["param"].as_str(), param, "{method} {path}: {}", r.text);
        // A Stripe request hears of the id it sent, never of Settle's payment behind it.
        if path.starts_with("/stripe/") {
            let message = r.json["error"]["message"].as_str().unwrap_or("");
            assert!(!message.contains("pay_"), "{method} {path}: {}", r.text);
        }
    }
}

/// Ambiguous or missing parts of the request itself: credentials or an idempotency key given
/// twice, a Stripe form that is not UTF-8, a body that never finishes arriving.
pub async fn ambiguous_or_unfinished_requests_are_refused(app: TestApp) {
    let mut app = app;
    let m = app.merchant("acme").await;
    let other = app.merchant("other").await;
    let body = Some(r#"{"name": "Ann", "email": "ann@example.test"}"#);
    let two_keys = [("authorization", format!("Bearer {}", other.key))];
    let two_keys: Vec<(&str, &str)> = two_keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = app.call(Method::POST, "/v1/customers", &m.key, body, &two_keys).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "which key? {}", r.text);
    let keys = [("idempotency-key", "k1"), ("idempotency-key", "k2")];
    let r = app.call(Method::POST, "/v1/customers", &m.key, body, &keys).await;
    assert_eq!(
        (r.status, r.param()),
        (StatusCode::BAD_REQUEST, "Idempotency-Key"),
        "{}",
        r.text
    );

    let form = |bytes: &'static [u8]| {
        axum::http::Request::builder()
            .method(Method::POST)
            .uri("/stripe/v1/customers")
            .header("authorization", format!("Bearer {}", m.key))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(bytes))
            .expect("request")
    };
    let r = crate::harness::send(&app.router, form(b"name=\xff")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(
        r.json["error"]["type"], "invalid_request_error",
        "JSON, in Stripe's shape: {}",
        r.text
    );
    let r = crate::harness::send(&app.router, form(b"name=%ff")).await;
    assert_eq!((r.status, r.param()), (StatusCode::BAD_REQUEST, "name"), "{}", r.text);

    // A body that never finishes: the client's timeout (408), and its connection is closed.
    app.restart_with(|c| c.request_timeout = std::time::Duration::from_millis(300))
        .await;
    let never = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/v1/customers")
        .header("authorization", format!("Bearer {}", m.key))
        .body(axum::body::Body::new(Unfinished))
        .expect("request");
    let r = crate::harness::send(&app.router, never).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
        "{}",
        r.text
    );
    assert_eq!(r.headers.get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
}

/// A request body whose first bytes never arrive.
struct Unfinished;

impl axum::body::HttpBody for Unfinished {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// serde's derived structs also read an array of their fields in order: a nested object given as
/// an array is refused naming the field, and a value of the wrong type is told plainly.
pub async fn nested_objects_are_objects_and_wrong_types_are_told_plainly(app: TestApp) {
    let m = app.merchant("acme").await;
    let cases = [
        (
            "/v1/payment_methods",
            json!({ "type": "card", "card": ["4242424242424242", 12, 2030, "123"] }),
            "card",
            "`card` must be an object",
        ),
        (
            "/v1/payments",
            json!({ "amount": 100, "currency": "USD", "customer": ["arr@y.co", "Arr", "123"] }),
            "customer",
            "`customer` must be a customer id or an object",
        ),
        (
            "/v1/payments",
            json!({ "amount": 100, "currency": "USD", "customer": 5 }),
            "customer",
            "`customer` must be a customer id or an object",
        ),
        (
            "/v1/invoices",
            json!({ "customer": ["arr@y.co", "Arr"], "amount_due": 100, "currency": "USD" }),
            "customer",
            "`customer` must be an object",
        ),
        (
            "/v1/payments",
            json!({ "amount": "100", "currency": "USD" }),
            "amount",
            "`amount` must be an integer",
        ),
        (
            "/v1/payments",
            json!({ "amount": 100, "currency": "USD", "splits": [["acct", 5]] }),
            "splits[0]",
            "`splits[0]` must be an object",
        ),
        (
            "/v1/payments",
            json!({ "amount": 100, "currency": "USD", "confirm": "yes" }),
            "confirm",
            "`confirm` must be true or false",
        ),
        (
            "/v1/payments",
            json!({ "amount": 100, "currency": 840 }),
            "currency",
            "`currency` must be a string",
        ),
        (
            "/v1/payments",
            json!({ "amount": 100, "currency": "USD", "payment_method": { "type": "card", "card": ["4242424242424242", 12, 2030] } }),
            "payment_method.card",
            "`payment_method.card` must be an object",
        ),
        (
            "/v1/payments",
            json!({ "amount": 100, "currency": "USD", "customer": { "email": "a@b.co", "name": 5 } }),
            "customer.name",
            "`customer.name` must be a string",
        ),
        (
            "/v1/ledger/transfers",
            json!({ "transfers": [{ "id": "t", "debit_account_id": "a", "credit_account_id": "b", "amount": 1.5, "currency": "USD" }] }),
            "transfers[0].amount",
            "`transfers[0].amount` must be an integer",
        ),
    ];
    for (path, body, param, message) in cases {
        let r = app.post(path, &m.key, body.clone()).await;
        assert_eq!(
            (r.status, r.param()),
            (StatusCode::BAD_REQUEST, param),
            "{body}: {}",
            r.text
        );
        assert_eq!(r.json["error"]["message"], message, "{body}");
    }
    let r = app.get("/v1/payments", &m.key).await;
    assert_eq!(r.json["data"], json!([]), "nothing was written");
}

conformance!(
    bad_transfers_name_the_field,
    malformed_and_oversized_bodies_are_400,
    bad_accounts_and_merchants_name_the_field,
    nul_characters_and_bad_utf8_are_refused_naming_the_parameter,
    unknown_ids_name_the_field_that_gave_them,
    ambiguous_or_unfinished_requests_are_refused,
    nested_objects_are_objects_and_wrong_types_are_told_plainly,
);
