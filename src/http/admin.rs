//! The admin listener: `/healthz` (the process answers), `/readyz` (database reachable and
//! migrated, background tasks alive, not shutting down) and `/metrics` (Prometheus text).
//!
//! Owns no tables. Invariants: `/readyz` answers within a few seconds even when the database
//! hangs; its 503 body names each problem with a stable reason code and carries no secret.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::health::TaskHealth;
use crate::metrics::names;
use crate::store::Store;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The database, probed by `/readyz`.
    pub store: Store,
    /// Background task liveness.
    pub tasks: TaskHealth,
    /// The metrics recorder.
    pub metrics: PrometheusHandle,
    /// Set once shutdown begins, so load balancers stop routing here.
    pub stopping: Arc<AtomicBool>,
}

/// One reason the daemon is not ready.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// `database`, `shutdown` or `task:<name>`.
    pub component: String,
    /// Stable reason code, e.g. `database_unreachable`, `task_stalled`.
    pub reason: String,
    /// Short sanitized detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Everything `/readyz` checks, in one pass.
pub async fn readiness_problems(state: &AdminState) -> Vec<Problem> {
    let mut problems = Vec::new();
    if state.stopping.load(Ordering::Relaxed) {
        problems.push(Problem {
            component: "shutdown".into(),
            reason: "shutting_down".into(),
            detail: None,
        });
    }
    if let Err(err) = state.store.check_ready().await {
        problems.push(Problem {
            component: "database".into(),
            reason: err.reason_code().into(),
            detail: Some(err.to_string()),
        });
    }
    problems.extend(state.tasks.problems().into_iter().map(|p| Problem {
        component: format!("task:{}", p.task),
        reason: p.reason.into(),
        detail: None,
    }));
    problems
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "alive" }))
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let problems = readiness_problems(&state).await;
    let ready = problems.is_empty();
    metrics::gauge!(names::READY).set(if ready { 1.0 } else { 0.0 });
    if ready {
        let body =
            serde_json::json!({ "status": "ready", "database": state.store.backend().name() });
        (StatusCode::OK, Json(body)).into_response()
    } else {
        tracing::debug!(problems = ?problems, "not ready");
        let body = serde_json::json!({ "status": "not_ready", "problems": problems });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state.metrics),
    )
        .into_response()
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(super::not_found)
        .layer(axum::middleware::from_fn({
            let metrics = std::sync::Arc::new(crate::metrics::HttpMetrics::new("admin"));
            move |request, next| crate::metrics::track_http(metrics.clone(), request, next)
        }))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatabaseConfig, DatabaseUrl};
    use std::time::Duration;

    #[tokio::test]
    async fn a_stopped_task_and_shutdown_are_named_as_problems() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&DatabaseConfig {
            url: DatabaseUrl::new(format!("sqlite://{}/t.db", dir.path().display())),
            ..DatabaseConfig::default()
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let state = AdminState {
            store,
            tasks: TaskHealth::default(),
            metrics: crate::metrics::recorder(),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        let liveness = state
            .tasks
            .register("instance_presence", Duration::from_secs(60));
        assert!(readiness_problems(&state).await.is_empty());

        drop(liveness);
        state.stopping.store(true, Ordering::Relaxed);
        let problems = readiness_problems(&state).await;
        let named: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.component.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("shutdown", "shutting_down"),
                ("task:instance_presence", "task_stopped")
            ]
        );
    }
}
