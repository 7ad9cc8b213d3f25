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

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and lets
/// in-flight requests finish.
///
/// # Errors
/// The I/O error that ended the accept loop.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The answer for paths no route matches.
async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "not_found" })),
    )
        .into_response()
}
