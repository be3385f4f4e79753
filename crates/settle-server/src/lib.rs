//! Settle's services, HTTP API and background jobs.
//!
//! [`App::build`] wires a store, a clock and the configuration into a router plus the
//! background tasks (the ledger writer, the jobs). Tests build an `App` on a fresh database and
//! call its router directly; `settle serve` binds it to a socket.
//!
//! Architecture invariant: handlers parse at the edge, let `settle_domain` decide, and persist
//! through the `settle_store` port. No SQL here.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod context;
pub mod customers;
pub mod error;
pub mod events;
pub mod extract;
pub mod fields;
pub mod idempotency;
pub mod inbound;
pub mod invoices;
pub mod jobs;
pub mod ledger;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod payments;
pub mod startup;
pub(crate) mod strict_json;
pub mod stripe;
pub mod vault;
pub mod verify;
pub mod webhooks;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    middleware::from_fn_with_state,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;
use settle_connectors::ConnectorSettings;
use settle_domain::{breaker::BreakerPolicy, Secret};
use settle_store::{Engine, Mode, Scope, Store};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    auth::AuthCache,
    clock::{Clock, Ids},
    error::ApiError,
    idempotency::InFlight,
    ledger::writer::LedgerWriter,
    metrics::Metrics,
};

/// Server settings (the binary maps flags and `SETTLE_*` variables onto these).
#[derive(Clone, Debug)]
pub struct Config {
    /// How long idempotency keys are kept.
    pub idempotency_retention: Duration,
    /// How often the pending-transfer expiry job runs.
    pub expiry_interval: Duration,
    /// How often old idempotency keys are pruned and `last_used_at` is written.
    pub housekeeping_interval: Duration,
    /// How long a verified API key is trusted without a database read.
    pub auth_cache_ttl: Duration,
    /// How long a merchant's connector accounts and routing rules are trusted without a
    /// database read (changes made through this process are seen at once).
    pub settings_cache_ttl: Duration,
    /// Ledger writer tasks (group committers) in this process.
    pub ledger_writers: usize,
    /// Longest time one request may take.
    pub request_timeout: Duration,
    /// Whether the background jobs run in this process.
    pub run_jobs: bool,
    /// The card vault's master key (see `vault`).
    pub vault_key: Secret<[u8; vault::KEY_LEN]>,
    /// Longest wait for one connector call.
    pub connector_timeout: Duration,
    /// Uncaptured authorizations are canceled (and voided) after this long.
    pub authorization_ttl: Duration,
    /// How often the payment jobs run; also the first backoff of a stuck payment's sync.
    pub payment_sync_interval: Duration,
    /// How often the webhook dispatcher looks for events to fan out and deliveries due.
    pub webhook_interval: Duration,
    /// Longest wait for a webhook receiver's answer.
    pub webhook_timeout: Duration,
    /// How long a delivery round waits for its requests before the next round may start; a
    /// request still out then records its own attempt (see `webhooks::dispatch`).
    pub webhook_round_wait: Duration,
    /// Whether webhook endpoints may be loopback or private addresses (refuse them in
    /// production so that an endpoint URL cannot reach into the operator's network).
    pub webhook_private_targets: bool,
    /// Whether a connector account's `base_url` may be a loopback or private address (refuse
    /// them in production: card data goes there).
    pub connector_private_targets: bool,
    /// How often the webhook inbox worker runs when it found nothing to do.
    pub webhook_inbox_interval: Duration,
    /// Settle's own base URL (`http://127.0.0.1:8080`): the sandbox posts its delayed outcomes
    /// there as webhooks. `None`: it posts none (the sync job resolves them; tests post them).
    pub public_url: Option<String>,
}

impl Config {
    pub fn for_engine(engine: Engine) -> Self {
        Config {
            idempotency_retention: Duration::from_secs(24 * 3600),
            expiry_interval: Duration::from_secs(1),
            housekeeping_interval: Duration::from_secs(10),
            auth_cache_ttl: Duration::from_secs(2),
            settings_cache_ttl: Duration::from_secs(2),
            ledger_writers: match engine {
                Engine::Sqlite => 1,
                Engine::Postgres => 1,
            },
            request_timeout: Duration::from_secs(30),
            run_jobs: true,
            vault_key: Secret::new(vault::Vault::generate_key()),
            connector_timeout: Duration::from_secs(10),
            authorization_ttl: Duration::from_secs(7 * 24 * 3600),
            payment_sync_interval: Duration::from_secs(5),
            webhook_interval: Duration::from_millis(200),
            webhook_timeout: Duration::from_secs(10),
            webhook_round_wait: Duration::from_secs(1),
            // The embedded default is for a laptop, where the receiver is on loopback;
            // PostgreSQL means production, where it is refused unless the operator says so.
            webhook_private_targets: engine == Engine::Sqlite,
            connector_private_targets: engine == Engine::Sqlite,
            webhook_inbox_interval: Duration::from_millis(200),
            public_url: None,
        }
    }
}

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub ids: Ids,
    pub config: Config,
    pub auth: AuthCache,
    pub inflight: InFlight,
    /// Requests running in this process (shutdown waits for them, for a while).
    pub requests: observe::Requests,
    pub writer: LedgerWriter,
    pub metrics: Arc<Metrics>,
    /// SHA-256 (hex) of the admin token, as last read from the database (it is read again
    /// after `auth_cache_ttl`, as another process sharing the database may have replaced it).
    pub admin_token_digest: cache::TtlCache<(), Option<String>>,
    pub vault: vault::Vault,
    pub connectors: payments::connectors::Connectors,
    pub cvcs: payments::methods::CvcCache,
    pub recent: payments::service::Recent,
    /// `merchant/connector/currency` whose system ledger accounts are known to exist.
    pub charts: Mutex<HashSet<String>>,
    /// The client webhooks go out with (see `webhooks::dispatch`).
    pub webhook_client: reqwest::Client,
    /// The webhook requests in flight in this process.
    pub webhook_flights: webhooks::dispatch::Flights,
    /// Inbound webhooks: the inbox writer, the endpoint cache, the sandbox's sender.
    pub inbound: inbound::Inbound,
    /// Becomes `true` when shutdown begins: a task that may wait long (a sandbox webhook due
    /// in an hour) ends then, so that it does not hold the state the writers drain behind.
    pub stopping: watch::Receiver<bool>,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// A built application: its router, and the tasks to wait for on shutdown.
pub struct App {
    pub state: AppState,
    pub router: Router,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// Builds the app on a migrated store. Loads the admin token's digest from the settings.
    pub async fn build(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Config) -> Result<App, ApiError> {
        // The outbound clients first: without them (and their private-target policy) nothing
        // starts.
        let client_error = |e: reqwest::Error| ApiError::Internal(format!("cannot build an HTTP client: {e}"));
        let webhook_client =
            webhooks::dispatch::client(config.webhook_timeout, config.webhook_private_targets).map_err(client_error)?;
        let connectors = payments::connectors::Connectors::new(
            ConnectorSettings {
                timeout: config.connector_timeout,
            },
            BreakerPolicy::default(),
            config.settings_cache_ttl,
            config.connector_private_targets,
        )
        .map_err(client_error)?;
        let metrics = Arc::new(Metrics::default());
        let (writer, mut tasks) =
            LedgerWriter::start(store.clone(), clock.clone(), metrics.clone(), config.ledger_writers);
        let digest = {
            let mut tx = store.begin(Scope::System, Mode::Read).await?;
            tx.get_setting(auth::ADMIN_TOKEN_SETTING).await?
        };
        let admin_token_digest = cache::TtlCache::default();
        admin_token_digest.put((), digest);
        let (inbox_writer, inbox_tasks) = inbound::writer::InboxWriter::start(store.clone());
        tasks.extend(inbox_tasks);
        let vault = vault::Vault::new(config.vault_key.expose());
        let (shutdown, stop) = watch::channel(false);
        let state = AppState(Arc::new(Inner {
            ids: Ids::new(clock.clone()),
            store,
            clock,
            config,
            auth: AuthCache::default(),
            inflight: InFlight::default(),
            requests: observe::Requests::default(),
            writer,
            metrics,
            admin_token_digest,
            vault,
            connectors,
            cvcs: payments::methods::CvcCache::default(),
            recent: payments::service::Recent::default(),
            charts: Mutex::new(HashSet::new()),
            webhook_client,
            webhook_flights: webhooks::dispatch::Flights::default(),
            inbound: inbound::Inbound::new(inbox_writer),
            stopping: stop.clone(),
        }));
        if state.config.run_jobs {
            tasks.extend(jobs::spawn(state.clone(), stop));
        }
        Ok(App {
            router: router(state.clone()),
            state,
            shutdown,
            tasks,
        })
    }

    /// Stops the jobs, lets the ledger writer drain its queue, and waits for all of them and
    /// for every write still in flight. Call after the HTTP server has finished its in-flight
    /// requests.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let App {
            state, router, tasks, ..
        } = self;
        // A write whose client is gone may still be in its connector call: it has the request
        // timeout to finish (beside the jobs' last rounds), then is stopped, as a crash would
        // stop it (its claim is the recovery job's), so that the writer can wind down.
        if tokio::time::timeout(state.config.request_timeout, state.requests.all_ended())
            .await
            .is_err()
        {
            let stopped = state.requests.stop_all();
            tracing::warn!(
                stopped,
                "requests still running at shutdown were stopped; the recovery job finishes their payments"
            );
        }
        let drained = state.writer.drained();
        drop(router);
        drop(state);
        for task in tasks {
            let _ = task.await;
        }
        drained.wait().await;
    }
}

impl AppState {
    /// A read transaction scoped to one merchant.
    pub async fn reader(&self, merchant_id: &str) -> Result<Box<dyn settle_store::Tx>, ApiError> {
        Ok(self
            .store
            .begin(Scope::Merchant(merchant_id.to_owned()), Mode::Read)
            .await?)
    }

    /// A read transaction in `merchant_id`'s scope, begun on first use.
    pub fn lazy_reader<'a>(&'a self, merchant_id: &'a str) -> LazyReader<'a> {
        LazyReader(Source::Later {
            state: self,
            merchant_id,
            tx: None,
        })
    }

    /// A write transaction in `merchant_id`'s scope.
    pub async fn begin_write(&self, merchant_id: &str) -> Result<Box<dyn settle_store::Tx>, ApiError> {
        Ok(self
            .store
            .begin(Scope::Merchant(merchant_id.to_owned()), Mode::Write)
            .await?)
    }
}

/// A read transaction that costs nothing until a statement needs it (or one already open).
pub struct LazyReader<'a>(Source<'a>);

enum Source<'a> {
    Later {
        state: &'a AppState,
        merchant_id: &'a str,
        tx: Option<Box<dyn settle_store::Tx>>,
    },
    Open(&'a mut dyn settle_store::Tx),
}

impl<'a> LazyReader<'a> {
    /// Reads through a transaction the caller already holds.
    pub fn over(tx: &'a mut dyn settle_store::Tx) -> Self {
        LazyReader(Source::Open(tx))
    }

    pub async fn tx(&mut self) -> Result<&mut (dyn settle_store::Tx + 'a), ApiError> {
        match &mut self.0 {
            Source::Open(tx) => Ok(&mut **tx),
            Source::Later { state, merchant_id, tx } => {
                let open = match tx.take() {
                    Some(open) => open,
                    None => state.reader(merchant_id).await?,
                };
                Ok(tx.insert(open).as_mut())
            }
        }
    }
}

/// Sets the admin token (stores its digest, replacing any other) and makes it effective in
/// this process at once (in the others sharing the database within `auth_cache_ttl`). Returns
/// the digest it replaced.
pub async fn set_admin_token(state: &AppState, token: &str) -> Result<Option<String>, ApiError> {
    let digest = auth::sha256_hex(token);
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    let previous = tx.get_setting(auth::ADMIN_TOKEN_SETTING).await?;
    tx.put_setting(auth::ADMIN_TOKEN_SETTING, &digest).await?;
    tx.commit().await?;
    state.admin_token_digest.put((), Some(digest));
    Ok(previous)
}

pub fn router(state: AppState) -> Router {
    let merchant = Router::new()
        .merge(ledger::router())
        .merge(payments::router())
        .merge(customers::router())
        .merge(audit::router())
        .merge(events::router())
        .merge(webhooks::router())
        .merge(invoices::router())
        .layer(from_fn_with_state(state.clone(), idempotency::middleware))
        .layer(axum::middleware::from_fn(extract::no_query_on_posts))
        .layer(axum::middleware::from_fn(extract::buffered_body))
        .layer(from_fn_with_state(state.clone(), auth::require_merchant));
    let admin = admin::router()
        .merge(inbound::admin_router())
        .layer(from_fn_with_state(state.clone(), idempotency::middleware))
        .layer(axum::middleware::from_fn(extract::no_query_on_posts))
        .layer(axum::middleware::from_fn(extract::buffered_body))
        .layer(from_fn_with_state(state.clone(), auth::require_admin));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(inbound::router())
        .merge(stripe::router(state.clone()))
        .merge(merchant)
        .merge(admin)
        .route_layer(axum::middleware::from_fn(extract::storable_uri))
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed.into_response() })
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::NotFound {
                what: "route",
                id: error::shown_id(uri.path().to_owned()),
                param: None,
            }
            .into_response()
        })
        .layer(from_fn_with_state(state.clone(), observe::middleware))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ready", "engine": state.store.engine().as_str() })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable" })),
            )
                .into_response()
        }
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(state.store.connections_in_use());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
