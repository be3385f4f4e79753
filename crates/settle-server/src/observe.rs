//! The outermost middleware: a request id (echoed as `X-Request-Id`), one JSON log line per
//! request, the request metrics, and the request timeout (503 when it passes; the request
//! itself runs on).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::{AbortHandle, JoinHandle},
};

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
    // ends the wait for a write's answer, not the write. A payment step in the middle of its
    // connector call (an authorization may exist) still records its outcome, where dropping it
    // would leave its claim to expire and the recovery job to find out what happened. A read
    // has nothing to record: it stops with the wait.
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    let given_up = Arc::new(AtomicBool::new(false));
    let entered = state.requests.enter();
    let key = entered.key;
    let mut running = tokio::spawn({
        let given_up = given_up.clone();
        let request_id = request_id.clone();
        async move {
            let response = next.run(req).await;
            if given_up.load(Ordering::Relaxed) {
                tracing::info!(
                    request_id = %request_id,
                    status = response.status().as_u16(),
                    latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "request ended after its answer was given up"
                );
            }
            drop(entered);
            response
        }
    });
    state.requests.track(key, &running);
    let mut waiter = Waiter {
        given_up,
        read: read_only.then(|| running.abort_handle()),
        done: false,
    };
    let answered = tokio::time::timeout(state.config.request_timeout, &mut running).await;
    if answered.is_ok() {
        // Its task has ended (its own forgetting may have run before `track`).
        state.requests.forget(key);
        waiter.done = true;
    }
    let mut response = match answered {
        Ok(Ok(response)) => response,
        Ok(Err(failed)) => {
            tracing::error!(request_id = %request_id, error = %failed, "a request's task panicked");
            ApiError::Internal("the request's task failed".into()).into_response()
        }
        // The client did not send its body in time: its fault (408), and its connection holds
        // the rest, so it is closed.
        Err(_) if body.waiting() => {
            running.abort();
            crate::extract::closing(ApiError::RequestTimeout.into_response())
        }
        // The connection may hold a body the request has not read yet: it is closed.
        Err(_) => crate::extract::closing(ApiError::TimedOut { write: !read_only }.into_response()),
    };
    drop(waiter);
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

/// The wait for a request's answer. Given up (the timeout, or the client gone, which drops
/// it): a read is stopped, and a write is marked so that its late outcome is logged.
struct Waiter {
    given_up: Arc<AtomicBool>,
    read: Option<AbortHandle>,
    done: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.done {
            self.given_up.store(true, Ordering::Relaxed);
            if let Some(read) = &self.read {
                read.abort();
            }
        }
    }
}

/// The requests running in this process, for shutdown: it waits for them for a while (one
/// that nobody waits for any more still runs on to its end), then stops those left.
pub struct Requests {
    permits: Arc<Semaphore>,
    running: Arc<Mutex<HashMap<u64, AbortHandle>>>,
    next: AtomicU64,
}

/// More requests than a process ever runs at once.
const REQUESTS_MAX: u32 = 1 << 20;

/// A running request's place among [`Requests`]; dropped when it ends.
struct Entered {
    key: u64,
    _permit: Option<OwnedSemaphorePermit>,
    running: Arc<Mutex<HashMap<u64, AbortHandle>>>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            permits: Arc::new(Semaphore::new(REQUESTS_MAX as usize)),
            running: Arc::default(),
            next: AtomicU64::new(0),
        }
    }
}

impl Requests {
    fn enter(&self) -> Entered {
        Entered {
            key: self.next.fetch_add(1, Ordering::Relaxed),
            _permit: self.permits.clone().try_acquire_owned().ok(),
            running: self.running.clone(),
        }
    }

    /// Keeps the way to stop the request `key` while it runs.
    fn track(&self, key: u64, task: &JoinHandle<Response>) {
        let mut running = lock(&self.running);
        // One that already ended has removed its key (or never will be stopped).
        if !task.is_finished() {
            running.insert(key, task.abort_handle());
        }
    }

    fn forget(&self, key: u64) {
        lock(&self.running).remove(&key);
    }

    /// Resolves when every request that entered has ended.
    pub async fn all_ended(&self) {
        let _ = self.permits.acquire_many(REQUESTS_MAX).await;
    }

    /// Stops every request still running; returns how many there were.
    pub fn stop_all(&self) -> usize {
        let running = std::mem::take(&mut *lock(&self.running));
        for task in running.values() {
            task.abort();
        }
        running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shutdown's view of the running requests: it can wait for them, and stop those left.
    #[tokio::test]
    async fn requests_left_running_can_be_stopped() {
        let requests = Requests::default();
        let entered = requests.enter();
        let key = entered.key;
        let task = tokio::spawn(async move {
            let _entered = entered;
            std::future::pending::<()>().await;
            Response::default()
        });
        requests.track(key, &task);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), requests.all_ended()).await;
        assert!(waited.is_err(), "a running request was not waited for");
        assert_eq!(requests.stop_all(), 1);
        tokio::time::timeout(std::time::Duration::from_secs(30), requests.all_ended())
            .await
            .expect("a stopped request still counted as running");
        assert!(task.await.expect_err("stopped").is_cancelled());
        assert_eq!(requests.stop_all(), 0, "nothing left to stop");
    }
}
