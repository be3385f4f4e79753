//! The HTTP/1.1 server loop of `settle serve`: axum's router on hyper connections, with a limit
//! on how long a client may take to send a request's headers (`axum::serve` sets none, so a
//! client that never finishes its headers held its connection open for good).

use std::{net::SocketAddr, time::Duration};

use axum::{body::Body, extract::connect_info::ConnectInfo, Router};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceExt;

/// Serves `router` on `listener` until `stopped` turns `true`, then lets every open connection
/// finish its request in flight and returns. A connection whose client has not sent a request's
/// headers within `header_timeout` is closed.
pub async fn serve(listener: TcpListener, router: Router, header_timeout: Duration, stopped: watch::Receiver<bool>) {
    // Each connection task holds a clone; when all are dropped, every connection has ended.
    let (open, mut all_closed) = watch::channel(());
    let mut stop = stopped.clone();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopping(&mut stop) => break,
        };
        let router = router.clone();
        let mut stop = stopped.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(remote));
                router.clone().oneshot(req.map(Body::new))
            });
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = stopping(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(open);
    let _ = all_closed.changed().await;
}

/// Resolves once `stop` is `true` (or its sender is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
