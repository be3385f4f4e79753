//! The webhook dispatcher: fans events out of the outbox into deliveries, and delivers them.
//!
//! Two rounds, both safe with several `settle` processes on one database:
//! - **fan-out** ([`try_execute_outbox`]): one transaction takes the oldest outbox entries
//!   (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so processes take disjoint entries), creates one
//!   pending delivery per endpoint that wants each event, and deletes the entries. An event is
//!   fanned out once: the entries and the deliveries commit together.
//! - **delivery** ([`try_execute_deliveries`]): one short transaction leases due deliveries
//!   (`lease_until` = now + [`LEASE_SECONDS`], longer than a request may take), the requests go
//!   out with no transaction open, and one transaction records each attempt and the delivery's
//!   next state — only if the lease is still the one taken. A process that dies mid-round
//!   leaves leases that expire; the deliveries are then attempted again (at least once). Two
//!   dispatchers never send the same attempt at the same time: a delivery is leased by one at a
//!   time, and its attempt numbers are unique.
//!
//! One merchant's slow receivers must not hold up the others' webhooks. A round waits for its
//! requests only `Config::webhook_round_wait`; one still out then records its own attempt when
//! it ends, and the next round starts meanwhile. The requests in flight are bounded per process
//! ([`IN_FLIGHT_MAX`]; no round leases when there is no room), per merchant
//! ([`MERCHANT_IN_FLIGHT_MAX`], so one merchant's slow receivers leave the others three quarters)
//! and per endpoint ([`ENDPOINT_IN_FLIGHT_MAX`], half its merchant's): a request
//! waits for its permits while it could still end within its lease, else its delivery goes back
//! untried, due again at once. A delivery to an endpoint, or a merchant, whose share is taken by
//! requests that outlasted their round's wait (slow receivers) goes back untried at once and is
//! due again only in [`HELD_BACK_SECONDS`], behind the deliveries due before it, so that the next
//! rounds lease other deliveries instead.
//!
//! Requests: `POST` of the event's JSON, `Settle-Signature: t=<unix>,v1=<hex>` with one `v1`
//! per signing secret (HMAC-SHA256 of `"<t>.<body>"`, Stripe's scheme), `Settle-Event-Id`, a
//! 10 s timeout; endpoints made through `/stripe/v1` get the Stripe-shaped event and the same
//! signature in `Stripe-Signature`, so Stripe's SDKs verify it. No redirects are followed and
//! no proxy is used. 2xx is delivered; anything else is retried (see `settle_domain::webhook`).
//! When private targets are refused, the client's resolver drops loopback and private
//! addresses, so a public name that resolves into the operator's network is refused too.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use rand::Rng;
use settle_domain::{
    event::Event,
    ledger::Key,
    webhook::{self, Api, Delivery, DeliveryAttempt, DeliveryStatus, Endpoint},
    Timestamp,
};
use settle_store::{Mode, Scope};
use sha2::Sha256;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::{error::ApiError, events::event_json, stripe::shapes, webhooks::secrets, AppState};

/// How long a delivery round owns the deliveries it leased.
pub const LEASE_SECONDS: i64 = 60;
/// What a request must leave of its lease when it starts, beyond its timeout: the time to
/// record it. (The webhook timeout is at most half the lease.)
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Most outbox entries one fan-out round takes.
pub const OUTBOX_BATCH_MAX: u32 = 1_000;
/// Most deliveries one delivery round leases.
pub const DELIVERY_BATCH_MAX: u32 = 500;
/// Most requests in flight at once per process.
pub const IN_FLIGHT_MAX: usize = 256;
/// Most requests in flight at once to one merchant's endpoints per process: a quarter of
/// [`IN_FLIGHT_MAX`], so one merchant's slow receivers leave the others three quarters.
pub const MERCHANT_IN_FLIGHT_MAX: usize = IN_FLIGHT_MAX / 4;
/// Most requests in flight at once to one endpoint per process: half its merchant's, so one
/// slow endpoint leaves the merchant's others half.
pub const ENDPOINT_IN_FLIGHT_MAX: usize = MERCHANT_IN_FLIGHT_MAX / 2;
/// How long a delivery to an endpoint whose requests fill its limit from earlier rounds (a slow
/// receiver) is left alone.
pub const HELD_BACK_SECONDS: i64 = 2;
/// How much of a response body an attempt keeps.
pub const RESPONSE_KEPT_BYTES: usize = 1_024;
pub const SIGNATURE_HEADER: &str = "Settle-Signature";
/// The signature header of deliveries to endpoints made through `/stripe/v1`.
pub const STRIPE_SIGNATURE_HEADER: &str = "Stripe-Signature";
pub const EVENT_ID_HEADER: &str = "Settle-Event-Id";

/// The HTTP client webhooks go out with (an error when it cannot be built as asked: no
/// client without the private-target policy).
pub fn client(timeout: Duration, private_targets: bool) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .user_agent(concat!("Settle/", env!("CARGO_PKG_VERSION"), " (webhooks)"))
        .pool_max_idle_per_host(IN_FLIGHT_MAX);
    crate::outbound::restrict(builder, private_targets).build()
}

/// `t=<unix>,v1=<hex>,…`: one signature per secret, over `"<t>.<body>"`.
pub fn signature_header(secrets: &[String], t: i64, body: &str) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&sign(secret, t, body));
    }
    header
}

pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A new pending delivery of `event_id` to `endpoint`, due now.
pub fn delivery(state: &AppState, endpoint: &Endpoint, event_id: &str, now: Timestamp) -> Delivery {
    Delivery {
        merchant_id: endpoint.merchant_id.clone(),
        id: state.ids.make("wd"),
        endpoint_id: endpoint.id.clone(),
        event_id: event_id.to_owned(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at: now,
        lease_until: None,
        last_status_code: None,
        last_error: None,
        created_at: now,
        updated_at: now,
    }
}

/// Fans the oldest outbox entries out into deliveries; returns how many events it took.
pub async fn try_execute_outbox(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now();
    if !state
        .store
        .begin(Scope::System, Mode::Read)
        .await?
        .outbox_waiting()
        .await?
    {
        return Ok(0);
    }
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    let taken = tx.take_outbox(OUTBOX_BATCH_MAX).await?;
    if taken.is_empty() {
        return Ok(0);
    }
    // The keys are in merchant order: one endpoint lookup per merchant, and a merchant without
    // endpoints costs no read of its events.
    let mut endpoints: HashMap<String, Vec<Endpoint>> = HashMap::new();
    for (merchant, _) in &taken {
        if !endpoints.contains_key(merchant) {
            let found = tx.enabled_endpoints(merchant).await?;
            endpoints.insert(merchant.clone(), found);
        }
    }
    let wanted: Vec<Key> = taken
        .iter()
        .filter(|(merchant, _)| endpoints.get(merchant).is_some_and(|e| !e.is_empty()))
        .cloned()
        .collect();
    let mut events = tx.get_events(&wanted).await?;
    events.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let mut queued = Vec::new();
    for event in &events {
        for endpoint in endpoints.get(&event.merchant_id).into_iter().flatten() {
            if endpoint.wants(&event.kind) {
                queued.push(delivery(state, endpoint, &event.id, now));
            }
        }
    }
    tx.insert_deliveries(&queued).await?;
    tx.commit().await?;
    state.metrics.job_changes("webhook_fanout", queued.len() as u64);
    Ok(taken.len())
}

/// The body an endpoint gets for an event, and the header its signature goes in: Settle's
/// event, or the Stripe-shaped event for an endpoint made through `/stripe/v1` (`None` when the
/// event has no Stripe counterpart).
fn payload(endpoint: &Endpoint, event: &Event) -> Option<(String, &'static str)> {
    match endpoint.api {
        Api::Settle => Some((event_json(event).to_string(), SIGNATURE_HEADER)),
        Api::Stripe => shapes::event(event).map(|e| (e.to_string(), STRIPE_SIGNATURE_HEADER)),
    }
}

/// What one attempt produced, before it is recorded.
struct Sent {
    delivery: Delivery,
    attempt: DeliveryAttempt,
}

/// The webhook requests in flight in this process: each holds one of [`IN_FLIGHT_MAX`] permits,
/// one of its merchant's [`MERCHANT_IN_FLIGHT_MAX`] and one of its endpoint's
/// [`ENDPOINT_IN_FLIGHT_MAX`].
pub struct Flights {
    permits: Arc<Semaphore>,
    /// Per endpoint (merchant id, endpoint id) and per merchant (merchant id, "").
    shares: Mutex<HashMap<Key, Share>>,
}

/// A share of the requests, and how many of its requests outlasted their round's wait and have
/// not ended yet (briefly below zero when one ends before its round counted it).
struct Share {
    permits: Arc<Semaphore>,
    late: i64,
}

impl Default for Flights {
    fn default() -> Self {
        Flights {
            permits: Arc::new(Semaphore::new(IN_FLIGHT_MAX)),
            shares: Mutex::default(),
        }
    }
}

/// A request's permits (endpoint, merchant, process), given back when dropped.
type Slot = [OwnedSemaphorePermit; 3];

/// The key of `endpoint`'s merchant's share.
fn merchant_of(endpoint: &Key) -> Key {
    (endpoint.0.clone(), String::new())
}

/// How many requests a share holds: a merchant's or an endpoint's.
fn share_size(key: &Key) -> usize {
    if key.1.is_empty() {
        MERCHANT_IN_FLIGHT_MAX
    } else {
        ENDPOINT_IN_FLIGHT_MAX
    }
}

impl Flights {
    /// How many more requests the process may send now.
    fn room(&self) -> usize {
        self.permits.available_permits()
    }

    /// The slow receivers: endpoints and merchants whose share is taken and some of whose
    /// requests outlasted their round's wait. Forgets the shares nothing holds, waits for or
    /// counts.
    fn slow(&self) -> HashSet<Key> {
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        shares.retain(|k, s| {
            Arc::strong_count(&s.permits) > 1 || s.permits.available_permits() < share_size(k) || s.late != 0
        });
        shares
            .iter()
            .filter(|(_, s)| s.late > 0 && s.permits.available_permits() == 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Runs `f` on the share of `key`, made if there is none.
    fn with_share<T>(&self, key: &Key, f: impl FnOnce(&mut Share) -> T) -> T {
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        f(shares.entry(key.clone()).or_insert_with(|| Share {
            permits: Arc::new(Semaphore::new(share_size(key))),
            late: 0,
        }))
    }

    /// The shares a request to `endpoint` takes from: its endpoint's and its merchant's.
    fn shares(&self, endpoint: &Key) -> [Arc<Semaphore>; 2] {
        [endpoint.clone(), merchant_of(endpoint)].map(|k| self.with_share(&k, |s| s.permits.clone()))
    }

    /// Counts `n` more (or, negative, fewer) of `endpoint`'s requests as late.
    fn late(&self, endpoint: &Key, n: i64) {
        for key in [endpoint.clone(), merchant_of(endpoint)] {
            self.with_share(&key, |s| s.late += n);
        }
    }

    /// Waits, until `start_by` at most, until a request may go out from `shares` and the process.
    async fn take(&self, [endpoint, merchant]: [Arc<Semaphore>; 2], start_by: tokio::time::Instant) -> Option<Slot> {
        let process = self.permits.clone();
        let all = async move {
            Some([
                endpoint.acquire_owned().await.ok()?,
                merchant.acquire_owned().await.ok()?,
                process.acquire_owned().await.ok()?,
            ])
        };
        tokio::time::timeout_at(start_by, all).await.ok().flatten()
    }
}

/// Leases due deliveries, sends them, records the attempts; returns how many it took on.
pub async fn try_execute_deliveries(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now();
    let until = now
        .checked_add_seconds(LEASE_SECONDS)
        .ok_or_else(|| ApiError::Internal("lease time overflows".into()))?;
    // Measured from before the lease is taken: a request starts only while it could still end
    // within its lease, however long the round took to get it going.
    let start_by = tokio::time::Instant::now()
        + Duration::from_secs(LEASE_SECONDS.unsigned_abs()).saturating_sub(state.config.webhook_timeout + LEASE_MARGIN);
    if state.webhook_flights.room() == 0
        || !state
            .store
            .begin(Scope::System, Mode::Read)
            .await?
            .deliveries_due(now)
            .await?
    {
        return Ok(0);
    }
    let leased = {
        let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
        let leased = tx.lease_deliveries(now, until, DELIVERY_BATCH_MAX).await?;
        tx.commit().await?;
        leased
    };
    if leased.is_empty() {
        return Ok(0);
    }
    let (events, endpoints) = {
        let event_keys: BTreeSet<Key> = leased
            .iter()
            .map(|d| (d.merchant_id.clone(), d.event_id.clone()))
            .collect();
        let endpoint_keys: BTreeSet<Key> = leased
            .iter()
            .map(|d| (d.merchant_id.clone(), d.endpoint_id.clone()))
            .collect();
        let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
        let events = tx.get_events(&event_keys.into_iter().collect::<Vec<_>>()).await?;
        let endpoints = tx.get_endpoints(&endpoint_keys.into_iter().collect::<Vec<_>>()).await?;
        (
            events
                .into_iter()
                .map(|e| ((e.merchant_id.clone(), e.id.clone()), e))
                .collect::<HashMap<Key, Event>>(),
            endpoints
                .into_iter()
                .map(|e| ((e.merchant_id.clone(), e.id.clone()), e))
                .collect::<HashMap<Key, Endpoint>>(),
        )
    };
    let slow = state.webhook_flights.slow();
    // Per endpoint, the requests this round sent out and has not heard back from.
    let mut out: HashMap<Key, i64> = HashMap::new();
    let (done, mut arrived) = mpsc::unbounded_channel::<Flown>();
    let mut flying = 0;
    let mut dropped = Vec::new();
    let mut held_back = Vec::new();
    // Each endpoint's secrets, opened once per round.
    let mut opened: HashMap<Key, Arc<Vec<String>>> = HashMap::new();
    for delivery in leased {
        let event = events.get(&(delivery.merchant_id.clone(), delivery.event_id.clone()));
        let endpoint = endpoints.get(&(delivery.merchant_id.clone(), delivery.endpoint_id.clone()));
        let (Some(event), Some(endpoint)) = (event, endpoint.filter(|e| e.enabled)) else {
            let why = if endpoint.is_none() {
                "endpoint_deleted"
            } else if event.is_none() {
                "event_missing"
            } else {
                "endpoint_disabled"
            };
            dropped.push((delivery, why));
            continue;
        };
        let key = (endpoint.merchant_id.clone(), endpoint.id.clone());
        if slow.contains(&key) || slow.contains(&merchant_of(&key)) {
            held_back.push((delivery, true));
            continue;
        }
        let secrets = match opened.get(&key) {
            Some(secrets) => secrets.clone(),
            None => match secrets(state, endpoint, now) {
                Ok(found) => opened.entry(key.clone()).or_insert(Arc::new(found)).clone(),
                Err(e) => {
                    // One endpoint's broken secret must not stall the others: its delivery
                    // waits for its lease to expire and is tried again.
                    tracing::error!(endpoint = %endpoint.id, error = ?e, "webhook secret unreadable; delivery skipped");
                    continue;
                }
            },
        };
        let Some((body, header)) = payload(endpoint, event) else {
            dropped.push((delivery, "event_not_in_api"));
            continue;
        };
        flying += 1;
        *out.entry(key.clone()).or_insert(0) += 1;
        let shares = state.webhook_flights.shares(&key);
        tokio::spawn(fly(
            state.clone(),
            shares,
            start_by,
            delivery,
            endpoint.clone(),
            (body, header, secrets),
            done.clone(),
            until,
        ));
    }
    drop(done);
    let mut sent = Vec::new();
    let mut heard = |flown: Flown, sent: &mut Vec<Sent>, held_back: &mut Vec<(Delivery, bool)>| {
        let delivery = match &flown {
            Ok(s) => &s.delivery,
            Err(untried) => untried,
        };
        if let Some(n) = out.get_mut(&(delivery.merchant_id.clone(), delivery.endpoint_id.clone())) {
            *n -= 1;
        }
        match flown {
            Ok(s) => sent.push(s),
            Err(untried) => held_back.push((untried, false)),
        }
    };
    let wait_until = tokio::time::Instant::now() + state.config.webhook_round_wait;
    for _ in 0..flying {
        match tokio::time::timeout_at(wait_until, arrived.recv()).await {
            Ok(Some(flown)) => heard(flown, &mut sent, &mut held_back),
            Ok(None) | Err(_) => break,
        }
    }
    // From here a request still out is late: it records its own attempt when it ends.
    arrived.close();
    while let Ok(flown) = arrived.try_recv() {
        heard(flown, &mut sent, &mut held_back);
    }
    for (endpoint, n) in out.into_iter().filter(|(_, n)| *n > 0) {
        state.webhook_flights.late(&endpoint, n);
    }
    record(state, sent, dropped, held_back, &endpoints, until).await?;
    state.metrics.job_changes("webhook_delivery", flying as u64);
    Ok(flying)
}

/// A request's outcome: its attempt, or its delivery untried (no permit came in time).
type Flown = Result<Sent, Delivery>;

/// One request, in a task of its own, once its endpoint and the process have room for it: its
/// outcome goes to the round that sent it, or, once that round stopped waiting, is recorded on
/// its own. At shutdown it has the request timeout to finish, then is abandoned (its lease
/// expires and the delivery is tried again).
#[allow(clippy::too_many_arguments)]
async fn fly(
    state: AppState,
    shares: [Arc<Semaphore>; 2],
    start_by: tokio::time::Instant,
    delivery: Delivery,
    endpoint: Endpoint,
    (body, header, secrets): (String, &'static str, Arc<Vec<String>>),
    round: mpsc::UnboundedSender<Flown>,
    until: Timestamp,
) {
    let mut stopping = state.stopping.clone();
    let grace = state.config.request_timeout;
    let flight = async {
        let _slot = state.webhook_flights.take(shares, start_by).await?;
        Some(send(&state, &delivery, &endpoint.url, header, &secrets, body).await)
    };
    let flown = tokio::select! {
        attempt = flight => match attempt {
            Some(attempt) => Ok(Sent { delivery, attempt }),
            None => Err(delivery),
        },
        _ = async {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => return,
    };
    if let Err(mpsc::error::SendError(late)) = round.send(flown) {
        let key = (endpoint.merchant_id.clone(), endpoint.id.clone());
        state.webhook_flights.late(&key, -1);
        let (sent, held_back) = match late {
            Ok(s) => (vec![s], Vec::new()),
            Err(untried) => (Vec::new(), vec![(untried, false)]),
        };
        let endpoints = HashMap::from([(key, endpoint)]);
        if let Err(e) = record(&state, sent, Vec::new(), held_back, &endpoints, until).await {
            tracing::warn!(error = ?e, "a late webhook attempt was not recorded; its lease will expire");
        }
    }
}

/// One attempt: the request, and what came back (status, latency, the first KiB of the body).
async fn send(
    state: &AppState,
    delivery: &Delivery,
    url: &str,
    signature: &'static str,
    secrets: &[String],
    body: String,
) -> DeliveryAttempt {
    let t = state.clock.now().unix_seconds();
    let started = Instant::now();
    // An endpoint made while private targets were allowed is refused once they are not.
    let refused = !crate::outbound::url_allowed(url, state.config.webhook_private_targets);
    let request = state
        .webhook_client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(signature, signature_header(secrets, t, &body))
        .header(EVENT_ID_HEADER, delivery.event_id.as_str())
        .body(body);
    let outcome = if refused {
        Err(None)
    } else {
        request.send().await.map_err(Some)
    };
    let (status_code, response_body, error) = match outcome {
        Ok(mut response) => {
            let code = i64::from(response.status().as_u16());
            let mut kept = Vec::new();
            while kept.len() < RESPONSE_KEPT_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                    Ok(None) | Err(_) => break,
                }
            }
            kept.truncate(RESPONSE_KEPT_BYTES);
            // Kept as text: bytes that are not UTF-8 become U+FFFD, and so does a NUL, which no
            // text column of PostgreSQL takes.
            let text = String::from_utf8_lossy(&kept).replace('\0', "\u{FFFD}");
            let error = (!(200..300).contains(&code)).then(|| "status".to_owned());
            (Some(code), Some(text), error)
        }
        Err(Some(e)) => (None, None, Some(transport_error(&e))),
        Err(None) => (None, None, Some("private_address_refused".to_owned())),
    };
    DeliveryAttempt {
        merchant_id: delivery.merchant_id.clone(),
        id: state.ids.make("wa"),
        delivery_id: delivery.id.clone(),
        endpoint_id: delivery.endpoint_id.clone(),
        event_id: delivery.event_id.clone(),
        attempt: delivery.attempts + 1,
        status_code,
        latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        response_body,
        error,
        created_at: state.clock.now(),
    }
}

fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        // The resolver's refusal of private addresses surfaces as a connect error too.
        let detail = std::error::Error::source(e)
            .map(ToString::to_string)
            .unwrap_or_default();
        if detail.contains("no public address") {
            "private_address_refused".into()
        } else {
            "connect".into()
        }
    } else {
        "request".into()
    }
}

/// Records the round's attempts and the deliveries' next states under their lease, the
/// endpoints' health, and the disabling of endpoints that have failed for the whole window;
/// gives the deliveries `held_back` untried back (with `true`: due again in
/// [`HELD_BACK_SECONDS`]; otherwise at once).
async fn record(
    state: &AppState,
    sent: Vec<Sent>,
    dropped: Vec<(Delivery, &'static str)>,
    held_back: Vec<(Delivery, bool)>,
    endpoints: &HashMap<Key, Endpoint>,
    leased_until: Timestamp,
) -> Result<(), ApiError> {
    let now = state.clock.now();
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    let left_until = now
        .checked_add_seconds(HELD_BACK_SECONDS)
        .ok_or_else(|| ApiError::Internal("lease time overflows".into()))?;
    for (delivery, wait) in held_back {
        // Left alone: due again only then, so that it moves behind the deliveries due before
        // (rounds lease the earliest due first), instead of heading every round's lease.
        let next_attempt_at = if wait { left_until } else { delivery.next_attempt_at };
        let next = Delivery {
            lease_until: None,
            next_attempt_at,
            ..delivery
        };
        tx.update_delivery(&next, leased_until).await?;
    }
    let mut attempts = Vec::with_capacity(sent.len());
    // Per endpoint: whether any attempt succeeded, and the oldest delivery that died.
    let mut health: HashMap<Key, (bool, Option<Timestamp>)> = HashMap::new();
    for Sent { delivery, attempt } in sent {
        let jitter = rand::thread_rng().gen_range(0..=1000);
        let next = webhook::after_attempt(&delivery, &attempt, now, jitter);
        if tx.update_delivery(&next, leased_until).await? {
            let entry = health
                .entry((delivery.merchant_id.clone(), delivery.endpoint_id.clone()))
                .or_insert((false, None));
            entry.0 |= attempt.succeeded();
            if next.status == DeliveryStatus::Dead {
                entry.1 = Some(entry.1.map_or(delivery.created_at, |t| t.min(delivery.created_at)));
            }
            attempts.push(attempt);
        } else {
            tracing::warn!(delivery = %delivery.id, "a delivery's lease expired before its attempt was recorded");
        }
    }
    for (delivery, why) in dropped {
        let mut next = delivery.clone();
        next.status = DeliveryStatus::Dead;
        next.lease_until = None;
        next.last_error = Some(why.to_owned());
        next.updated_at = now;
        tx.update_delivery(&next, leased_until).await?;
    }
    tx.insert_delivery_attempts(&attempts).await?;
    let mut disabled = Vec::new();
    for (key, (ok, died)) in health {
        let Some(endpoint) = endpoints.get(&key) else {
            continue;
        };
        let (next, disable) = webhook::endpoint_after(endpoint, ok, died, now);
        if next.failing_since != endpoint.failing_since || disable {
            let stored = tx.update_endpoint_health(&next, endpoint.failing_since).await?;
            if stored && disable {
                disabled.push(next);
            }
        }
    }
    let events: Vec<_> = disabled
        .iter()
        .map(|e| {
            tracing::warn!(endpoint = %e.id, merchant = %e.merchant_id, "webhook endpoint disabled after failing for 3 days");
            crate::events::new_event(
                state,
                &e.merchant_id,
                "webhook_endpoint.disabled",
                "webhook_endpoint",
                &e.id,
                super::endpoint_json(e),
            )
        })
        .collect();
    tx.insert_events(&events).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_stripe_scheme() {
        let header = signature_header(&["whsec_a".into(), "whsec_b".into()], 1_700_000_000, "{}");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts.len(), 3);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_b").expect("key");
        mac.update(b"1700000000.{}");
        assert_eq!(parts[2], format!("v1={}", hex::encode(mac.finalize().into_bytes())));
    }
}
