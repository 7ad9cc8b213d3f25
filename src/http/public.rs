//! The public listener: the address Microsoft Graph posts change and lifecycle notifications
//! to. Routes arrive with the webhook work; until then every path is a 404.
//!
//! Owns no tables. Invariant: handlers here only validate and enqueue; they never call Graph.

use axum::Router;

/// The public router.
pub fn router() -> Router {
    Router::new()
        .fallback(super::not_found)
        .layer(axum::middleware::from_fn(|request, next| {
            crate::metrics::track_http("public", request, next)
        }))
}
