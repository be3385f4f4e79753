//! The outermost middleware: a request id (echoed as `X-Request-Id`), one JSON log line per
//! request, the request metrics, and the request timeout (503 when it passes; the request
//! itself runs on).

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::HeaderValue,
    middleware::Next,
    response::{IntoResponse, Response},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{context::RequestId, error::ApiError, AppState};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

pub async fn middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| state.ids.make("req"));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let body = crate::extract::BodyPending::default();
    req.extensions_mut().insert(body.clone());
    // The request runs as a task of its own: the timeout below, or a client that goes away,
    // ends the wait for its answer, not the request. A payment step in the middle of its
    // connector call (an authorization may exist) still records its outcome, where dropping it
    // would leave its claim to expire and the recovery job to find out what happened.
    let entered = state.requests.enter();
    let mut running = tokio::spawn(async move {
        let response = next.run(req).await;
        drop(entered);
        response
    });
    let mut response = match tokio::time::timeout(state.config.request_timeout, &mut running).await {
        Ok(Ok(response)) => response,
        Ok(Err(failed)) => {
            tracing::error!(request_id = %request_id, error = %failed, "a request's task panicked");
            ApiError::Internal("the request's task failed".into()).into_response()
        }
        // The client did not send its body in time: its fault (408), and its connection holds
        // the rest, so it is closed.
        Err(_) if body.waiting() => {
            running.abort();
            let mut response = ApiError::RequestTimeout.into_response();
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        Err(_) => ApiError::Unavailable.into_response(),
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.request(&route, &method, status, elapsed.as_secs_f64());
    tracing::info!(
        request_id = %request_id,
        method = %method,
        route = %route,
        status,
        latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The requests running in this process, for shutdown to wait for: one that nobody waits for
/// any more (timed out, or its client gone) still runs on to its end.
pub struct Requests(Arc<Semaphore>);

/// More requests than a process ever runs at once; one beyond it runs untracked.
const REQUESTS_MAX: u32 = 1 << 20;

impl Default for Requests {
    fn default() -> Self {
        Requests(Arc::new(Semaphore::new(REQUESTS_MAX as usize)))
    }
}

impl Requests {
    fn enter(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }

    /// Resolves when every request that entered has ended.
    pub async fn all_ended(&self) {
        let _ = self.0.acquire_many(REQUESTS_MAX).await;
    }
}
