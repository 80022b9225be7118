//! The accept loop, written out instead of `axum::serve` because that one sets no timer on hyper's
//! HTTP/1 connections, and without a timer hyper enforces no header-read timeout: a client that
//! connects and sends nothing (or one header byte a minute) would hold its connection, its task and
//! a graceful shutdown forever. Here every connection gets tokio's timer and a header deadline, like
//! nginx's `client_header_timeout`; bodies have their own deadline in the routes.

use std::future::Future;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for the
/// connections to finish what they are answering (idle ones close at once).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors or a connection reset before accept: the listener is
                // still good, so wait a moment (EMFILE would otherwise spin) and go on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that times out, resets or sends garbage ends only its own connection.
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
