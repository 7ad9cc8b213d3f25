//! The two HTTP listeners: the public one Microsoft Graph posts to, and the loopback admin one
//! (health, readiness, metrics). Each takes an already bound socket and a shutdown token, so
//! tests bind port 0 and the app decides when to stop.
//!
//! Owns no tables. Invariants: both listeners record request metrics with bounded labels;
//! unknown paths answer 404 with a JSON body; nothing here calls Graph or runs jobs (the
//! listeners only read state or enqueue).

pub mod admin;
pub mod public;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Limits on a listener's connections, so slow or abusive clients cannot hold it.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A connection that has not sent a request's full headers within this is closed.
    pub header_read_timeout: Duration,
    /// Open connections at most; past it new connections are closed at once (Graph retries),
    /// and the ones already open keep being served.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and lets
/// in-flight requests finish (idle keep-alive connections are closed). `name` labels metrics.
///
/// # Errors
/// None today: accept errors (such as running out of file descriptors) are logged and retried.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(listener = name, error = %err, "accepting a connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::names::HTTP_CONNECTIONS_SHED, "listener" => name)
                .increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = graceful.watch(http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        ));
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, malformed request).
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The answer for paths no route matches.
async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "not_found" })),
    )
        .into_response()
}
