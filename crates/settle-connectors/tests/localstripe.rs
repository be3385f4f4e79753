//! The Stripe connector against `localstripe`, a stateful fake Stripe server (PyPI package
//! `localstripe`), and against small loopback servers for what `localstripe` cannot show:
//! server errors, silence, Stripe's full decline payloads and paging.
//!
//! Each test that needs `localstripe` starts its own on a free loopback port and kills it when
//! the test ends. When `localstripe` is not installed the tests say so loudly and pass, unless
//! `CI=true`, where they fail.
//!
//! `localstripe` itself always listens on every interface (`::`), so when its Python package can
//! be imported the server is started through a three-line launcher that binds `127.0.0.1` and
//! keeps the store in memory (the stock command writes `/tmp/localstripe.pickle`, shared by
//! every instance); otherwise the `localstripe` command is run as installed.

use std::{
    io::Read,
    net::TcpListener as StdListener,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use settle_connectors::{
    stripe::Stripe, AuthorizeRequest, CardData, Connector, ConnectorError, ConnectorSettings, Decline, ProviderStatus,
    RefundOutcome, RefundStatus, Synced,
};
use settle_domain::{Currency, Secret};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const API_KEY: &str = "sk_test_settle_localstripe";
const CARD_OK: &str = "4242424242424242";
/// The one card `localstripe` declines when a PaymentIntent is confirmed (`card_declined`).
const CARD_DECLINED_ON_CHARGE: &str = "4000000000000341";
/// A card that asks for 3-D Secure, which Settle does not perform.
const CARD_3DS: &str = "4000002500003155";
const READY_WITHIN: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// localstripe as a child process

const LAUNCHER: &str = "\
import sys
from aiohttp import web
from localstripe import resources, server
resources.Store.dump_to_disk = lambda self: None
web.run_app(server.app, host='127.0.0.1', port=int(sys.argv[1]), print=None, access_log=None)
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Launch {
    /// `python3 -c LAUNCHER <port>`: loopback only, store in memory.
    Python,
    /// `localstripe --port <port> --from-scratch`, as installed.
    Command,
    Missing,
}

fn launch() -> Launch {
    static LAUNCH: OnceLock<Launch> = OnceLock::new();
    *LAUNCH.get_or_init(|| {
        let quietly = |command: &mut Command| {
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if quietly(Command::new("python3").args(["-c", "import localstripe.server, aiohttp"])) {
            Launch::Python
        } else if quietly(Command::new("localstripe").arg("--help")) {
            Launch::Command
        } else {
            Launch::Missing
        }
    })
}

fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local address").port()
}

struct LocalStripe {
    child: Child,
    base_url: String,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl LocalStripe {
    /// A fresh, empty `localstripe`; `None` (after a loud message) when it is not installed.
    async fn start() -> Option<LocalStripe> {
        let command = match launch() {
            Launch::Missing if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("localstripe is not installed (pip install localstripe) and CI=true: failing")
            }
            Launch::Missing => {
                eprintln!(
                    "\n**************************************************************\n\
                     SKIPPED: localstripe is not installed (pip install localstripe);\n\
                     the Stripe connector was NOT tested against a Stripe server.\n\
                     **************************************************************\n"
                );
                return None;
            }
            launch => launch,
        };
        let port = free_port();
        let mut cmd = match command {
            Launch::Python => {
                let mut cmd = Command::new("python3");
                cmd.args(["-c", LAUNCHER, &port.to_string()]);
                cmd
            }
            _ => {
                let mut cmd = Command::new("localstripe");
                cmd.args(["--port", &port.to_string(), "--from-scratch"]);
                cmd
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start localstripe");
        // Drain stderr so that a chatty server never blocks on a full pipe; keep the tail.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let tail = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut tail = tail.lock().expect("stderr buffer");
                    tail.extend_from_slice(&buf[..n]);
                    let excess = tail.len().saturating_sub(8192);
                    tail.drain(..excess);
                }
            });
        }
        let mut server = LocalStripe {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            stderr,
        };
        server.wait_until_ready().await;
        Some(server)
    }

    /// Polls until the server answers HTTP at all (any status), bounded by [`READY_WITHIN`].
    async fn wait_until_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll localstripe") {
                panic!("localstripe exited early ({status}):\n{}", self.stderr_tail());
            }
            let probe = client
                .get(format!("{}/v1/balance", self.base_url))
                .bearer_auth(API_KEY)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if probe.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "localstripe did not answer within {READY_WITHIN:?}:\n{}",
                    self.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer")).into_owned()
    }

    fn connector(&self) -> Stripe {
        stripe(&self.base_url, Duration::from_secs(10))
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

macro_rules! localstripe_or_skip {
    () => {
        match LocalStripe::start().await {
            Some(server) => server,
            None => return,
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn stripe(base_url: &str, timeout: Duration) -> Stripe {
    Stripe::from_credentials(
        &json!({"api_key": API_KEY, "base_url": base_url}),
        &ConnectorSettings { timeout },
        reqwest::Client::new(),
    )
    .expect("valid credentials")
}

fn usd() -> Currency {
    Currency::parse("USD").expect("USD")
}

fn request(reference: &str, number: &str, amount: i64) -> AuthorizeRequest {
    AuthorizeRequest {
        reference: reference.into(),
        amount,
        currency: usd(),
        card: CardData {
            number: Secret::new(number.into()),
            exp_month: 12,
            exp_year: 2034,
            cvc: Some(Secret::new("123".into())),
        },
        description: None,
    }
}

/// A URL whose port is held bound but not listening: connections are refused, and no other
/// test's server can take the port while the socket lives.
fn closed_port_url() -> (tokio::net::TcpSocket, String) {
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let url = format!("http://{}", held.local_addr().expect("address"));
    (held, url)
}

// ---------------------------------------------------------------------------------------------
// Against localstripe

#[tokio::test]
async fn authorize_then_capture_part_of_it() {
    let server = localstripe_or_skip!();
    let stripe = server.connector();

    let auth = stripe
        .authorize(&request("att_cap_1", CARD_OK, 1000))
        .await
        .expect("answer");
    assert_eq!(auth.status, ProviderStatus::Authorized);
    assert!(auth.provider_ref.starts_with("pi_"), "{}", auth.provider_ref);
    assert_eq!(
        stripe
            .sync(Some(&auth.provider_ref), "att_cap_1")
            .await
            .map(|s| s.status),
        Ok(ProviderStatus::Authorized)
    );

    stripe.capture(&auth.provider_ref, 600, usd()).await.expect("captured");
    assert_eq!(
        stripe
            .sync(Some(&auth.provider_ref), "att_cap_1")
            .await
            .map(|s| s.status),
        Ok(ProviderStatus::Captured)
    );
    // A second capture is the provider refusing the request, not an outage.
    match stripe.capture(&auth.provider_ref, 600, usd()).await {
        Err(ConnectorError::Rejected(_)) => {}
        other => panic!("second capture: {other:?}"),
    }
}

#[tokio::test]
async fn authorize_then_void() {
    let server = localstripe_or_skip!();
    let stripe = server.connector();

    let auth = stripe
        .authorize(&request("att_void_1", CARD_OK, 2500))
        .await
        .expect("answer");
    assert_eq!(auth.status, ProviderStatus::Authorized);
    stripe.void(&auth.provider_ref).await.expect("voided");
    assert_eq!(
        stripe
            .sync(Some(&auth.provider_ref), "att_void_1")
            .await
            .map(|s| s.status),
        Ok(ProviderStatus::Voided)
    );
    match stripe.void(&auth.provider_ref).await {
        Err(ConnectorError::Rejected(_)) => {}
        other => panic!("second void: {other:?}"),
    }
}

#[tokio::test]
async fn refund_after_capture_succeeds() {
    let server = localstripe_or_skip!();
    let stripe = server.connector();

    let auth = stripe
        .authorize(&request("att_ref_1", CARD_OK, 1000))
        .await
        .expect("answer");
    stripe.capture(&auth.provider_ref, 1000, usd()).await.expect("captured");
    let refund = stripe
        .refund(&auth.provider_ref, "rfd_1", 400, usd())
        .await
        .expect("refunded");
    assert_eq!(refund.status, RefundStatus::Succeeded);
    assert!(refund.provider_ref.starts_with("re_"), "{}", refund.provider_ref);

    match stripe.refund("pi_doesnotexist0000", "rfd_2", 100, usd()).await {
        Err(ConnectorError::Rejected(_)) => {}
        other => panic!("refund of an unknown payment: {other:?}"),
    }
}

#[tokio::test]
async fn declines_are_answers_with_a_code() {
    let server = localstripe_or_skip!();
    let stripe = server.connector();

    let auth = stripe
        .authorize(&request("att_dec_1", CARD_DECLINED_ON_CHARGE, 1000))
        .await
        .expect("answer");
    match &auth.status {
        ProviderStatus::Declined(decline) => {
            assert_eq!(decline.code, "card_declined");
            assert!(!decline.retryable());
        }
        other => panic!("declined card: {other:?}"),
    }
    assert!(!format!("{auth:?}").contains(CARD_DECLINED_ON_CHARGE));
    // localstripe's 402 does not name the PaymentIntent, but the intent exists there, declined:
    // the reference finds it.
    match stripe.sync(None, "att_dec_1").await.map(|s| s.status) {
        Ok(ProviderStatus::Declined(decline)) => assert_eq!(decline.code, "card_declined"),
        other => panic!("sync of the declined attempt: {other:?}"),
    }

    let auth = stripe
        .authorize(&request("att_dec_2", CARD_3DS, 1000))
        .await
        .expect("answer");
    match &auth.status {
        ProviderStatus::Declined(decline) => assert_eq!(decline.code, "authentication_required"),
        other => panic!("3-D Secure card: {other:?}"),
    }
    assert!(auth.provider_ref.starts_with("pi_"), "{}", auth.provider_ref);

    // localstripe insists on a CVC; its refusal must not echo the card.
    let mut without_cvc = request("att_dec_3", CARD_OK, 1000);
    without_cvc.card.cvc = None;
    match stripe.authorize(&without_cvc).await {
        Err(ConnectorError::Rejected(message)) => assert!(!message.contains(CARD_OK), "{message}"),
        other => panic!("card without CVC at localstripe: {other:?}"),
    }
}

#[tokio::test]
async fn sync_without_provider_ref_finds_the_payment_by_reference() {
    let server = localstripe_or_skip!();
    let stripe = server.connector();

    let mut refs = Vec::new();
    for reference in ["att_lost_a", "att_lost_b", "att_lost_c"] {
        let auth = stripe
            .authorize(&request(reference, CARD_OK, 700))
            .await
            .expect("answer");
        refs.push(auth.provider_ref);
    }
    stripe.void(&refs[1]).await.expect("voided");

    assert_eq!(
        stripe.sync(None, "att_lost_b").await.map(|s| s.status),
        Ok(ProviderStatus::Voided)
    );
    assert_eq!(
        stripe.sync(None, "att_lost_c").await.map(|s| s.status),
        Ok(ProviderStatus::Authorized)
    );
    assert_eq!(
        stripe.sync(Some(""), "att_lost_a").await.map(|s| s.status),
        Ok(ProviderStatus::Authorized)
    );
    assert_eq!(
        stripe.sync(None, "att_never_sent").await.map(|s| s.status),
        Ok(ProviderStatus::NotFound)
    );
}

#[tokio::test]
async fn sync_by_reference_answers_the_payment_intent_id() {
    let server = localstripe_or_skip!();
    let stripe = server.connector();

    let kept = stripe
        .authorize(&request("att_adopt_a", CARD_OK, 900))
        .await
        .expect("answer");
    let voided = stripe
        .authorize(&request("att_adopt_b", CARD_OK, 900))
        .await
        .expect("answer");
    stripe.void(&voided.provider_ref).await.expect("voided");

    assert_eq!(
        stripe.sync(None, "att_adopt_a").await,
        Ok(Synced {
            provider_ref: Some(kept.provider_ref.clone()),
            status: ProviderStatus::Authorized,
        })
    );
    assert_eq!(
        stripe.sync(None, "att_adopt_b").await,
        Ok(Synced {
            provider_ref: Some(voided.provider_ref.clone()),
            status: ProviderStatus::Voided,
        })
    );
    // By id, the id comes back too.
    assert_eq!(
        stripe.sync(Some(&kept.provider_ref), "att_adopt_a").await,
        Ok(Synced {
            provider_ref: Some(kept.provider_ref.clone()),
            status: ProviderStatus::Authorized,
        })
    );
    // The payment found by reference can be adopted: captured by the id sync gave.
    let found = stripe.sync(None, "att_adopt_a").await.expect("answer");
    let id = found.provider_ref.expect("the provider knows the payment");
    stripe.capture(&id, 900, usd()).await.expect("captured");
    assert_eq!(
        stripe.sync(None, "att_adopt_a").await.map(|s| s.status),
        Ok(ProviderStatus::Captured)
    );

    // localstripe's decline names no intent; sync by reference does.
    let declined = stripe
        .authorize(&request("att_adopt_dec", CARD_DECLINED_ON_CHARGE, 900))
        .await
        .expect("answer");
    assert!(matches!(declined.status, ProviderStatus::Declined(_)));
    let synced = stripe.sync(None, "att_adopt_dec").await.expect("answer");
    assert!(matches!(synced.status, ProviderStatus::Declined(_)), "{synced:?}");
    assert!(
        synced.provider_ref.as_deref().is_some_and(|id| id.starts_with("pi_")),
        "{synced:?}"
    );

    assert_eq!(
        stripe.sync(None, "att_adopt_never_sent").await,
        Ok(Synced {
            provider_ref: None,
            status: ProviderStatus::NotFound,
        })
    );
}

/// A captured localstripe payment of `amount` cents.
async fn captured(stripe: &Stripe, reference: &str, amount: i64) -> String {
    let auth = stripe
        .authorize(&request(reference, CARD_OK, amount))
        .await
        .expect("answer");
    assert_eq!(auth.status, ProviderStatus::Authorized);
    stripe
        .capture(&auth.provider_ref, amount, usd())
        .await
        .expect("captured");
    auth.provider_ref
}

#[tokio::test]
async fn refund_status_finds_a_succeeded_refund_by_id_and_by_reference() {
    let server = localstripe_or_skip!();
    let stripe = server.connector();

    let payment = captured(&stripe, "att_rs_1", 1000).await;
    let other_payment = captured(&stripe, "att_rs_2", 1000).await;
    let first = stripe.refund(&payment, "rfd_rs_a", 300, usd()).await.expect("refunded");
    let second = stripe.refund(&payment, "rfd_rs_b", 200, usd()).await.expect("refunded");
    let elsewhere = stripe
        .refund(&other_payment, "rfd_rs_c", 100, usd())
        .await
        .expect("refunded");
    assert_eq!(first.status, RefundStatus::Succeeded);

    // By the refund's id.
    assert_eq!(
        stripe
            .refund_status(&payment, Some(&first.provider_ref), "rfd_rs_a")
            .await,
        Ok(Some(first.clone()))
    );
    // By Settle's reference alone, whether it is the newest refund of the payment or not.
    assert_eq!(
        stripe.refund_status(&payment, None, "rfd_rs_a").await,
        Ok(Some(first.clone()))
    );
    assert_eq!(
        stripe.refund_status(&payment, Some(""), "rfd_rs_b").await,
        Ok(Some(second))
    );
    assert_eq!(
        stripe.refund_status(&other_payment, None, "rfd_rs_c").await,
        Ok(Some(elsewhere.clone()))
    );
    // A refund of another payment is not this payment's.
    assert_eq!(stripe.refund_status(&payment, None, "rfd_rs_c").await, Ok(None));
    match stripe
        .refund_status(&payment, Some(&elsewhere.provider_ref), "rfd_rs_c")
        .await
    {
        Err(ConnectorError::Rejected(_)) => {}
        other => panic!("refund of another payment by id: {other:?}"),
    }
}

#[tokio::test]
async fn refund_status_of_an_unknown_refund_is_none() {
    let server = localstripe_or_skip!();
    let stripe = server.connector();

    let payment = captured(&stripe, "att_rs_none", 1000).await;
    // No refund at all, then one with another reference.
    assert_eq!(stripe.refund_status(&payment, None, "rfd_never_sent").await, Ok(None));
    stripe
        .refund(&payment, "rfd_rs_real", 100, usd())
        .await
        .expect("refunded");
    assert_eq!(stripe.refund_status(&payment, None, "rfd_never_sent").await, Ok(None));
    assert_eq!(
        stripe
            .refund_status(&payment, Some("re_doesnotexist0000"), "rfd_never_sent")
            .await,
        Ok(None)
    );
    // The payment itself is unknown: the request is wrong, not the refund absent.
    match stripe
        .refund_status("pi_doesnotexist0000", None, "rfd_never_sent")
        .await
    {
        Err(ConnectorError::Rejected(_)) => {}
        other => panic!("refunds of an unknown payment: {other:?}"),
    }
    match stripe.refund_status(&payment, Some("re_../x"), "rfd_never_sent").await {
        Err(ConnectorError::Rejected(_)) => {}
        other => panic!("malformed refund id: {other:?}"),
    }
}

#[tokio::test]
async fn sync_of_an_unknown_id_is_not_found() {
    let server = localstripe_or_skip!();
    let stripe = server.connector();

    assert_eq!(
        stripe
            .sync(Some("pi_doesnotexist0000"), "att_x")
            .await
            .map(|s| s.status),
        Ok(ProviderStatus::NotFound)
    );
    match stripe.sync(Some("pi_../../v1/balance"), "att_x").await {
        Err(ConnectorError::Rejected(_)) => {}
        other => panic!("malformed id: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Failures, against loopback servers

/// A connection refused, or a name with no address: the request never left (`Unreachable`).
#[tokio::test]
async fn unreachable_providers_were_never_sent_anything() {
    let (_held, url) = closed_port_url();
    for url in [url.as_str(), "http://no-such-host.invalid"] {
        let stripe = stripe(url, Duration::from_secs(5));
        match stripe.authorize(&request("att_down_1", CARD_OK, 1000)).await {
            Err(ConnectorError::Unreachable(message)) => assert!(!message.contains(CARD_OK), "{message}"),
            other => panic!("{url}: {other:?}"),
        }
        assert!(matches!(
            stripe.sync(None, "att_down_1").await.map(|s| s.status),
            Err(ConnectorError::Unreachable(_))
        ));
    }
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("address"));
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // accepted, never read, never answered
        }
    });
    let stripe = stripe(&base_url, Duration::from_millis(300));

    let started = Instant::now();
    assert_eq!(
        stripe.authorize(&request("att_slow_1", CARD_OK, 1000)).await,
        Err(ConnectorError::Timeout)
    );
    assert_eq!(
        stripe.sync(Some("pi_x"), "att_slow_1").await.map(|s| s.status),
        Err(ConnectorError::Timeout)
    );
    assert_eq!(stripe.capture("pi_x", 10, usd()).await, Err(ConnectorError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    holder.abort();
}

/// One request as a loopback fake saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Responder = Arc<dyn Fn(&Seen) -> (u16, Value) + Send + Sync>;

/// A loopback HTTP/1.1 server answering each request with `respond`, one request per
/// connection; returns its base URL and what it saw.
async fn fake_stripe(respond: Responder) -> (String, Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("address"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let respond = Arc::clone(&respond);
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => raw.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let mut start = lines.next().unwrap_or_default().split(' ');
                let method = start.next().unwrap_or_default().to_owned();
                let target = start.next().unwrap_or_default().to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while raw.len() < head_end + length {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => raw.extend_from_slice(&buf[..n]),
                    }
                }
                let seen = Seen {
                    method,
                    target,
                    headers,
                    body: String::from_utf8_lossy(&raw[head_end..head_end + length]).into_owned(),
                };
                let (status, body) = respond(&seen);
                log.lock().expect("log").push(seen);
                let body = body.to_string();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (base_url, seen, task)
}

#[tokio::test]
async fn server_errors_are_unavailable_and_stripe_declines_use_the_specific_code() {
    let (base_url, _, task) = fake_stripe(Arc::new(|_| (503, json!({"error": {"message": "down"}})))).await;
    let down = stripe(&base_url, Duration::from_secs(5));
    match down.authorize(&request("att_5xx", CARD_OK, 1000)).await {
        Err(ConnectorError::Unavailable(message)) => assert!(message.contains("503"), "{message}"),
        other => panic!("503: {other:?}"),
    }
    assert!(matches!(down.void("pi_x").await, Err(ConnectorError::Unavailable(_))));
    task.abort();

    // Stripe's own answer to an insufficient-funds card, echoing the card number for good measure.
    let (base_url, seen, task) = fake_stripe(Arc::new(|seen: &Seen| {
        if seen.target == "/v1/payment_methods" {
            (200, json!({"id": "pm_123", "object": "payment_method"}))
        } else {
            (
                402,
                json!({"error": {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "insufficient_funds",
                    "message": "Your card 4000000000009995 has insufficient funds.",
                    "payment_intent": {"id": "pi_declined1", "status": "requires_payment_method"},
                }}),
            )
        }
    }))
    .await;
    let stripe = stripe(&base_url, Duration::from_secs(5));
    let mut req = request("att_funds_1", "4000000000009995", 1234);
    req.description = Some("Order #7 & more".into());
    let auth = stripe.authorize(&req).await.expect("answer");
    assert_eq!(auth.provider_ref, "pi_declined1");
    match &auth.status {
        ProviderStatus::Declined(decline) => {
            assert_eq!(decline.code, "insufficient_funds");
            assert!(!decline.message.contains("4000000000009995"), "{}", decline.message);
        }
        other => panic!("insufficient funds: {other:?}"),
    }
    task.abort();

    // What went over the wire.
    let seen = seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.header("authorization"), Some(format!("Bearer {API_KEY}").as_str()));
        assert_eq!(s.header("content-type"), Some("application/x-www-form-urlencoded"));
    }
    assert_eq!(seen[0].target, "/v1/payment_methods");
    assert!(
        seen[0].body.contains("card%5Bnumber%5D=4000000000009995"),
        "{}",
        seen[0].body
    );
    assert_ne!(seen[0].header("idempotency-key"), Some("att_funds_1"));
    let intent = &seen[1];
    assert_eq!(intent.target, "/v1/payment_intents");
    assert_eq!(intent.header("idempotency-key"), Some("att_funds_1"));
    for field in [
        "amount=1234",
        "currency=usd",
        "capture_method=manual",
        "confirm=true",
        "payment_method=pm_123",
        "metadata%5Bsettle_reference%5D=att_funds_1",
        "description=Order+%237+%26+more",
    ] {
        assert!(
            intent.body.split('&').any(|pair| pair == field),
            "{field} in {}",
            intent.body
        );
    }
    assert!(!intent.body.contains("4000000000009995"), "{}", intent.body);
}

#[tokio::test]
async fn sync_by_reference_pages_through_the_list_and_gives_up_at_the_limit() {
    // Page 1 holds someone else's payments; page 2, reached with `starting_after`, holds ours.
    let (base_url, seen, task) = fake_stripe(Arc::new(|seen: &Seen| {
        let intent = |id: &str, reference: &str, status: &str| {
            json!({"id": id, "status": status, "metadata": {"settle_reference": reference}})
        };
        if seen.target.contains("starting_after=pi_p1b") {
            (200, json!({"data": [intent("pi_p2a", "att_wanted", "requires_capture")], "has_more": false}))
        } else {
            (
                200,
                json!({"data": [intent("pi_p1a", "att_other", "succeeded"), intent("pi_p1b", "att_other2", "canceled")],
                       "has_more": true}),
            )
        }
    }))
    .await;
    let stripe_paged = stripe(&base_url, Duration::from_secs(5));
    assert_eq!(
        stripe_paged.sync(None, "att_wanted").await.map(|s| s.status),
        Ok(ProviderStatus::Authorized)
    );
    assert_eq!(
        stripe_paged.sync(None, "att_absent").await.map(|s| s.status),
        Ok(ProviderStatus::NotFound)
    );
    let targets: Vec<String> = seen.lock().expect("log").iter().map(|s| s.target.clone()).collect();
    assert_eq!(targets[0], "/v1/payment_intents?limit=100");
    assert_eq!(targets[1], "/v1/payment_intents?limit=100&starting_after=pi_p1b");
    task.abort();

    // A list that never ends: the scan stops at its page limit and says it does not know.
    let pages = AtomicUsize::new(0);
    let (base_url, seen, task) = fake_stripe(Arc::new(move |_: &Seen| {
        let n = pages.fetch_add(1, Ordering::SeqCst);
        let intent = json!({"id": format!("pi_page{n}"), "status": "succeeded", "metadata": {}});
        (200, json!({"data": [intent], "has_more": true}))
    }))
    .await;
    let endless = stripe(&base_url, Duration::from_secs(5));
    match endless.sync(None, "att_wanted").await.map(|s| s.status) {
        Err(ConnectorError::Unavailable(_)) => {}
        other => panic!("endless list: {other:?}"),
    }
    assert_eq!(
        seen.lock().expect("log").len() as u32,
        settle_connectors::stripe::LIST_MAX_PAGES
    );
    task.abort();
}

#[tokio::test]
async fn refund_status_reads_stripe_refund_states_and_pages_the_refund_list() {
    // What localstripe never shows: pending, failed and canceled refunds, and a second page.
    let (base_url, seen, task) = fake_stripe(Arc::new(|seen: &Seen| {
        let refund = |id: &str, reference: &str, status: &str, reason: Value| {
            json!({"id": id, "object": "refund", "payment_intent": "pi_1", "status": status,
                   "failure_reason": reason, "metadata": {"settle_reference": reference}})
        };
        match (seen.method.as_str(), seen.target.as_str()) {
            ("POST", "/v1/refunds") => (200, refund("re_new", "rfd_new", "requires_action", Value::Null)),
            ("GET", "/v1/refunds/re_pending") => (200, refund("re_pending", "rfd_p", "pending", Value::Null)),
            ("GET", "/v1/refunds/re_failed") => (
                200,
                refund("re_failed", "rfd_f", "failed", json!("lost_or_stolen_card")),
            ),
            ("GET", "/v1/refunds/re_gone") => (404, json!({"error": {"message": "No such refund"}})),
            ("GET", target) if target.contains("starting_after=re_p1b") => (
                200,
                json!({"data": [refund("re_p2a", "rfd_wanted", "canceled", Value::Null)], "has_more": false}),
            ),
            ("GET", target) if target.starts_with("/v1/refunds?") => (
                200,
                json!({"data": [refund("re_p1a", "rfd_x", "succeeded", Value::Null),
                                 refund("re_p1b", "rfd_y", "succeeded", Value::Null)],
                       "has_more": true}),
            ),
            _ => (400, json!({"error": {"message": "unexpected"}})),
        }
    }))
    .await;
    let stripe = stripe(&base_url, Duration::from_secs(5));

    let refund = stripe.refund("pi_1", "rfd_new", 100, usd()).await.expect("answer");
    assert_eq!(refund.status, RefundStatus::Pending);
    assert_eq!(
        stripe.refund_status("pi_1", Some("re_pending"), "rfd_p").await,
        Ok(Some(RefundOutcome {
            provider_ref: "re_pending".into(),
            status: RefundStatus::Pending,
        }))
    );
    match stripe.refund_status("pi_1", Some("re_failed"), "rfd_f").await {
        Ok(Some(RefundOutcome {
            status: RefundStatus::Failed(Decline { code, .. }),
            ..
        })) => assert_eq!(code, "lost_or_stolen_card"),
        other => panic!("failed refund: {other:?}"),
    }
    assert_eq!(stripe.refund_status("pi_1", Some("re_gone"), "rfd_g").await, Ok(None));
    match stripe.refund_status("pi_1", None, "rfd_wanted").await {
        Ok(Some(RefundOutcome {
            provider_ref,
            status: RefundStatus::Failed(Decline { code, .. }),
        })) => {
            assert_eq!(provider_ref, "re_p2a");
            assert_eq!(code, "refund_canceled");
        }
        other => panic!("canceled refund on page 2: {other:?}"),
    }
    task.abort();

    let seen = seen.lock().expect("log").clone();
    let post = &seen[0];
    assert_eq!(post.header("idempotency-key"), Some("rfd_new"));
    assert!(
        post.body
            .split('&')
            .any(|pair| pair == "metadata%5Bsettle_reference%5D=rfd_new"),
        "{}",
        post.body
    );
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(
        &targets[4..],
        [
            "/v1/refunds?payment_intent=pi_1&limit=100",
            "/v1/refunds?payment_intent=pi_1&limit=100&starting_after=re_p1b",
        ]
    );
}

#[test]
fn bad_credentials_name_the_field() {
    let settings = ConnectorSettings::default();
    let build = |credentials: Value| Stripe::from_credentials(&credentials, &settings, reqwest::Client::new());
    for (credentials, field) in [
        (json!({}), "credentials.api_key"),
        (json!({"api_key": "pk_test_publishable"}), "credentials.api_key"),
        (
            json!({"api_key": API_KEY, "base_url": "ftp://127.0.0.1"}),
            "credentials.base_url",
        ),
        (
            json!({"api_key": API_KEY, "base_url": "localhost:8420"}),
            "credentials.base_url",
        ),
    ] {
        let (name, message) = build(credentials.clone()).expect_err("refused");
        assert_eq!(name, field, "{credentials}");
        assert!(
            !message.contains("pk_test_publishable") && !message.contains(API_KEY),
            "{message}"
        );
    }
    let ok = build(json!({"api_key": API_KEY})).expect("valid");
    assert!(!format!("{ok:?}").contains(API_KEY));
}
