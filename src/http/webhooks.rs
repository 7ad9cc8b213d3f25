//! Graph's webhook endpoints on the public listener: the validation handshake, change
//! notifications (`/webhooks/graph`) and lifecycle notifications (`/webhooks/graph/lifecycle`).
//!
//! Owns no tables. Invariants: a handshake answers 200, `text/plain`, `nosniff` and the decoded
//! token, and nothing else happens; a notification item is queued only when its subscription
//! is known, its clientState matches (compared in constant time) and its tenant is the
//! subscription's; 202 goes out only after the accepted items are committed; a request with
//! nothing acceptable gets a 4xx and queues nothing; answers never say which check failed and
//! nothing secret is logged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::intake::Intake;
use crate::jobs::{graph_lifecycle, graph_notification, Job};
use crate::metrics::names;
use crate::queue::NewJob;
use crate::store::Store;
use crate::subscriptions;
use crate::vault::Keyring;

/// Largest notification body accepted. Graph batches notifications; a batch of basic
/// notifications is a few KiB per item.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the webhook handlers need.
#[derive(Clone)]
pub struct WebhookState {
    /// The database (subscriptions).
    pub store: Store,
    /// The vault keys (clientStates).
    pub keys: Arc<Keyring>,
    /// Where accepted notifications go.
    pub intake: Intake,
}

/// The webhook routes, for merging into the public router.
pub fn router<S: Clone + Send + Sync + 'static>(state: WebhookState) -> Router<S> {
    Router::new()
        .route(
            "/webhooks/graph",
            post(change_notifications).get(handshake_only),
        )
        .route(
            "/webhooks/graph/lifecycle",
            post(lifecycle_notifications).get(handshake_only),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[derive(Clone, Copy)]
enum Endpoint {
    Notifications,
    Lifecycle,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::Notifications => "notifications",
            Endpoint::Lifecycle => "lifecycle",
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

/// The handshake: the decoded token back as text, so a browser never renders it as markup.
fn handshake(token: &str) -> Response {
    metrics::counter!(names::WEBHOOK_HANDSHAKES).increment(1);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        token.to_string(),
    )
        .into_response()
}

async fn handshake_only(Query(query): Query<HashMap<String, String>>) -> Response {
    match query.get("validationToken") {
        Some(token) => handshake(token),
        None => plain(StatusCode::METHOD_NOT_ALLOWED, "POST notifications here.\n"),
    }
}

async fn change_notifications(
    State(state): State<WebhookState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = query.get("validationToken") {
        return handshake(token);
    }
    receive(&state, Endpoint::Notifications, &headers, &body).await
}

async fn lifecycle_notifications(
    State(state): State<WebhookState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = query.get("validationToken") {
        return handshake(token);
    }
    receive(&state, Endpoint::Lifecycle, &headers, &body).await
}

#[derive(Deserialize)]
struct Collection {
    value: Vec<Value>,
}

/// The same answer for every refusal: which check failed is logged, not told.
const REJECTED: &str = "Notification rejected.\n";

async fn receive(
    state: &WebhookState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Send notifications as application/json.\n",
        );
    }
    let Ok(collection) = serde_json::from_slice::<Collection>(body) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "The body is not a notification collection.\n",
        );
    };
    let ids: Vec<&str> = collection
        .value
        .iter()
        .filter_map(|item| item["subscriptionId"].as_str())
        .collect();
    let checks = match subscriptions::checks_for(&state.store, &state.keys, &ids).await {
        Ok(checks) => checks,
        Err(err) => {
            tracing::error!(error = %err, reason = err.reason_code(), "cannot check notifications; asking Graph to redeliver");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "Try again later.\n");
        }
    };
    let mut accepted = Vec::new();
    for item in &collection.value {
        let outcome = match vet(item, &checks) {
            Ok(check) => {
                accepted.push(to_job(endpoint, item, check));
                "accepted"
            }
            Err(reason) => {
                tracing::warn!(
                    endpoint = endpoint.label(),
                    reason,
                    subscription = item["subscriptionId"].as_str().unwrap_or("-"),
                    "notification item dropped"
                );
                reason
            }
        };
        metrics::counter!(names::WEBHOOK_ITEMS, "endpoint" => endpoint.label(), "outcome" => outcome)
            .increment(1);
    }
    if accepted.is_empty() {
        return plain(StatusCode::FORBIDDEN, REJECTED);
    }
    match state.intake.submit(accepted).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(err) => {
            tracing::error!(error = %err, "accepted notifications were not committed; asking Graph to redeliver");
            plain(StatusCode::SERVICE_UNAVAILABLE, "Try again later.\n")
        }
    }
}

/// Equal secrets, compared without an early exit.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let difference = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
}

/// The subscription an item belongs to, or why it is dropped.
fn vet<'a>(
    item: &Value,
    checks: &'a HashMap<String, subscriptions::Check>,
) -> Result<&'a subscriptions::Check, &'static str> {
    let Some(subscription) = item["subscriptionId"].as_str() else {
        return Err("malformed");
    };
    let Some(check) = checks.get(subscription) else {
        return Err("unknown_subscription");
    };
    let given = item["clientState"].as_str().unwrap_or_default();
    if !same_secret(given.as_bytes(), check.client_state.as_bytes()) {
        return Err("client_state_mismatch");
    }
    let tenant = item["tenantId"].as_str().unwrap_or_default();
    if !tenant.eq_ignore_ascii_case(&check.tenant_id) {
        return Err("tenant_mismatch");
    }
    Ok(check)
}

/// A queued job for an accepted item. The dedupe key makes Graph's redeliveries of the same
/// change one job: subscription, resource, change type and the etag (or, without one, a hash
/// of the item).
fn to_job(endpoint: Endpoint, item: &Value, check: &subscriptions::Check) -> NewJob {
    let lifecycle = item["lifecycleEvent"].as_str();
    if matches!(endpoint, Endpoint::Lifecycle) || lifecycle.is_some() {
        let event = lifecycle.unwrap_or("unknown").to_string();
        let job = graph_lifecycle::GraphLifecycle {
            subscription_id: check.id.clone(),
            tenant_id: check.tenant_id.clone(),
            event: event.clone(),
        };
        let dedupe = format!(
            "{}|{event}|{}",
            check.id,
            item["subscriptionExpirationDateTime"]
                .as_str()
                .unwrap_or_default()
        );
        return new_job(&job, check, dedupe);
    }
    let resource = item["resource"].as_str().unwrap_or_default().to_string();
    let change_type = item["changeType"].as_str().unwrap_or_default().to_string();
    let data = &item["resourceData"];
    let etag = data["@odata.etag"].as_str().map(str::to_string);
    let version = etag.clone().unwrap_or_else(|| {
        // The item without its clientState, so no secret feeds the stored key.
        let mut item = item.clone();
        if let Some(fields) = item.as_object_mut() {
            fields.remove("clientState");
        }
        let digest = Sha256::digest(item.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    });
    let dedupe = format!("{}|{resource}|{change_type}|{version}", check.id);
    let job = graph_notification::GraphNotification {
        subscription_id: check.id.clone(),
        tenant_id: check.tenant_id.clone(),
        change_type,
        resource,
        resource_id: data["id"].as_str().map(str::to_string),
        odata_type: data["@odata.type"].as_str().map(str::to_string),
        etag,
    };
    new_job(&job, check, dedupe)
}

fn new_job<J: Job>(job: &J, check: &subscriptions::Check, dedupe: String) -> NewJob {
    NewJob {
        kind: J::KIND.into(),
        payload: serde_json::to_value(job).unwrap_or_else(|_| json!({})),
        tenant_id: check.tenant_id.clone(),
        dedupe_key: Some(dedupe),
        priority: 0,
        run_at: None,
        max_attempts: J::MAX_ATTEMPTS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
