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
/// headers within `timeout` is closed; so is one still busy `timeout` after the stop (a handler
/// is bounded by the request timeout, but a client that does not read its answer is not), so
/// that a stop always ends.
pub async fn serve(listener: TcpListener, router: Router, timeout: Duration, stopped: watch::Receiver<bool>) {
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
            builder.timer(TokioTimer::new()).header_read_timeout(timeout);
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
                    if tokio::time::timeout(timeout, conn).await.is_err() {
                        tracing::warn!(%remote, "a connection still busy at shutdown was closed");
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that asks for a large answer and never reads it cannot hold a stop forever.
    #[tokio::test]
    async fn a_stop_ends_even_when_a_client_never_reads_its_answer() {
        let big = "x".repeat(64 << 20);
        let router = Router::new().route("/big", axum::routing::get(move || async move { big }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, router, Duration::from_secs(1), stopped));
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        // The answer has begun (so it is in flight), and the client reads no more of it.
        let mut first = [0u8; 12];
        client.read_exact(&mut first).await.expect("status line");
        assert_eq!(&first, b"HTTP/1.1 200");
        stop.send(true).expect("stop");
        let ended = tokio::time::timeout(Duration::from_secs(60), server).await;
        assert!(
            ended.is_ok(),
            "the server was still waiting on the client 60 s after the stop"
        );
        drop(client);
    }
}
