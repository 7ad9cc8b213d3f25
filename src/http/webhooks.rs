//! Graph's webhook endpoints on the public listener: the validation handshake, change
//! notifications (`/webhooks/graph`) and lifecycle notifications (`/webhooks/graph/lifecycle`).
//!
//! Owns no tables. Invariants: a handshake answers 200, `text/plain`, `nosniff` and the decoded
//! token, and nothing else happens; a notification item is queued only when its subscription
//! is known (its id matched without regard to case: Graph's ids are GUIDs), its clientState
//! matches (compared in constant time) and its tenant is the subscription's (an item without
//! `tenantId`, as OneDrive and older Outlook payloads send, takes its subscription's tenant:
//! the clientState match is the proof); an item with resource data (rich) is queued only when
//! a valid validation token of its tenant and app covers it and its `dataSignature` matches
//! (it is then queued decrypted), and one failing validation token drops the whole delivery;
//! 202 goes out only after the accepted items are committed. A body that is not a
//! notification collection gets a 4xx; a collection whose items fail the checks gets the same
//! 202 as a good one and queues nothing for them, as Microsoft asks (docs/decisions/
//! 0011-webhook-answers.md); a store that cannot check or commit within 1 s
//! ([`ANSWER_DEADLINE`]) gets a 503 with `Retry-After` so Graph redelivers, well inside its 3 s. Refusals are counted exactly and logged at most once per reason per minute,
//! with the count; nothing secret is logged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

use crate::intake::Intake;
use crate::jobs::{self, graph_lifecycle, graph_notification};
use crate::metrics::names;
use crate::queue::EncodedJob;
use crate::rich_notifications::EncryptedContent;
use crate::subscriptions;
use crate::validation_tokens::{TokenValidator, ValidToken, ValidationTokenError};

/// Largest notification body accepted. Graph batches notifications; a batch of basic
/// notifications is a few KiB per item.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the webhook handlers need.
#[derive(Clone)]
pub struct WebhookState {
    /// The subscriptions' checks (clientStates, tenants).
    pub checks: Arc<subscriptions::CheckCache>,
    /// Where accepted notifications go.
    pub intake: Intake,
    /// Items counted by endpoint and outcome.
    pub counters: Arc<ItemCounters>,
    /// Checks rich notifications' validation tokens.
    pub tokens: Arc<TokenValidator>,
    /// Refusals logged at most once per reason per interval.
    pub refusals: Arc<RefusalLog>,
}

/// `tenantd_webhook_items_total` by endpoint and outcome, registered once: looking a labelled
/// counter up in the registry on every item costs more than the increment.
pub struct ItemCounters {
    counters: HashMap<(&'static str, &'static str), metrics::Counter>,
}

/// Every outcome an item can have (registered up front, so each series exists from start).
const OUTCOMES: [&str; 9] = [
    "accepted",
    "malformed",
    "unknown_subscription",
    "client_state_mismatch",
    "tenant_mismatch",
    "validation_token_missing",
    "validation_token_invalid",
    "data_signature_invalid",
    "data_key_invalid",
];

impl Default for ItemCounters {
    fn default() -> Self {
        let mut counters = HashMap::new();
        for endpoint in [Endpoint::Notifications, Endpoint::Lifecycle] {
            for outcome in OUTCOMES {
                counters.insert(
                    (endpoint.label(), outcome),
                    metrics::counter!(names::WEBHOOK_ITEMS, "endpoint" => endpoint.label(), "outcome" => outcome),
                );
            }
        }
        Self { counters }
    }
}

impl ItemCounters {
    fn item(&self, endpoint: Endpoint, outcome: &'static str) -> metrics::Counter {
        self.counters
            .get(&(endpoint.label(), outcome))
            .cloned()
            .unwrap_or_else(|| {
                metrics::counter!(names::WEBHOOK_ITEMS, "endpoint" => endpoint.label(), "outcome" => outcome)
            })
    }
}

/// The longest a notification POST waits for the database before the answer is a 503: Graph
/// gives an endpoint 3 s, and counts answers after 2.9 s as slow
/// (concepts/change-notifications-delivery-webhooks.md, "Throttling").
pub const ANSWER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// `Retry-After` on a 503 (Graph retries on its own schedule; other senders may read it).
const RETRY_AFTER_SECONDS: &str = "10";

/// How often a refusal reason is logged at most (every refusal is counted in the metrics).
pub const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Logs refused items at most once per reason per interval, with how many the interval
/// refused: a flood of forged posts is one line a minute, not one a post.
#[derive(Default)]
pub struct RefusalLog {
    reasons: std::sync::Mutex<HashMap<&'static str, (tokio::time::Instant, u64)>>,
}

impl RefusalLog {
    /// Notes one refusal for `reason`; returns how many were refused for it since the last
    /// logged one (this one included) when it is time to log, else `None`.
    pub fn note(&self, reason: &'static str) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut reasons = self.reasons.lock().expect("refusal log lock");
        match reasons.get_mut(reason) {
            Some((logged_at, pending)) if now.duration_since(*logged_at) < REFUSAL_LOG_INTERVAL => {
                *pending += 1;
                None
            }
            Some((logged_at, pending)) => {
                let refused = *pending + 1;
                *logged_at = now;
                *pending = 0;
                Some(refused)
            }
            None => {
                reasons.insert(reason, (now, 0));
                Some(1)
            }
        }
    }
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
        // One reference count per request instead of one per field.
        .with_state(Arc::new(state))
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

async fn handshake_only(uri: Uri) -> Response {
    match validation_token(&uri) {
        Some(token) => handshake(&token),
        None => plain(StatusCode::METHOD_NOT_ALLOWED, "POST notifications here.\n"),
    }
}

/// The `validationToken` of a handshake, decoded. Most requests have no query at all, and
/// are not parsed for one.
fn validation_token(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "validationToken")
        .map(|(_, token)| token.into_owned())
}

async fn change_notifications(
    State(state): State<Arc<WebhookState>>,
    request: Request,
) -> Response {
    answer(&state, Endpoint::Notifications, request).await
}

async fn lifecycle_notifications(
    State(state): State<Arc<WebhookState>>,
    request: Request,
) -> Response {
    answer(&state, Endpoint::Lifecycle, request).await
}

/// A POST to a webhook endpoint: the handshake when it carries a validation token, else a
/// delivery. The request is read in place (the listener has already read its body whole).
async fn answer(state: &WebhookState, endpoint: Endpoint, request: Request) -> Response {
    if let Some(token) = validation_token(request.uri()) {
        return handshake(&token);
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The request body is too large.\n",
        );
    };
    receive(state, endpoint, &parts.headers, &body).await
}

/// A `changeNotificationCollection`. Items stay raw until each is read on its own, so one
/// item Graph's schema would not produce is dropped (`malformed`) without refusing the rest.
#[derive(Deserialize)]
struct Collection<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
    /// Rich notifications: one token per application and tenant in `value`.
    #[serde(default, rename = "validationTokens")]
    validation_tokens: Vec<String>,
}

/// The fields of a `changeNotification` tenantd reads (graph-protocol.md §2.1), borrowed from
/// the body where they hold no escapes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subscription_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subscription_expiration_date_time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_state: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    change_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    lifecycle_event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource_data: Option<&'a RawValue>,
    #[serde(default)]
    encrypted_content: Option<EncryptedContent>,
}

/// `resourceData`'s fields tenantd reads.
#[derive(Deserialize, Default)]
struct ResourceData<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "@odata.type")]
    odata_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "@odata.etag")]
    etag: Option<Cow<'a, str>>,
}

async fn receive(
    state: &WebhookState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if !is_json(headers) {
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
    let items: Vec<Option<Notification>> = collection
        .value
        .iter()
        .map(|raw| serde_json::from_str(raw.get()).ok())
        .collect();
    // Graph's subscription ids are GUIDs, in whichever case it writes them; tenantd keeps
    // them lower-cased.
    let ids: Vec<Option<String>> = items
        .iter()
        .map(|item| {
            item.as_ref()
                .and_then(|item| item.subscription_id.as_deref())
                .map(str::to_ascii_lowercase)
        })
        .collect();
    // Graph waits 3 s for an answer: whatever the database does, answer within
    // ANSWER_DEADLINE.
    let deadline = tokio::time::Instant::now() + ANSWER_DEADLINE;
    let checks = match checks_by(state, &ids, deadline).await {
        Ok(checks) => checks,
        Err(answer) => return answer,
    };
    let mut vetted: Vec<Result<(&Notification, &Arc<subscriptions::Check>), &'static str>> = items
        .iter()
        .zip(&ids)
        .map(|(item, id)| vet(item.as_ref(), id.as_deref(), &checks))
        .collect();
    // Rich notifications: the resource travels encrypted and is opened here, once the
    // delivery's validation tokens prove it comes from Graph.
    let mut contents = match open_rich(state, &collection.validation_tokens, &mut vetted).await {
        Ok(contents) => contents,
        Err(answer) => return answer,
    };
    let mut accepted = Vec::with_capacity(items.len());
    for (n, vetted) in vetted.into_iter().enumerate() {
        let outcome = match vetted {
            Ok((item, check)) => {
                accepted.push(to_job(endpoint, item, check, contents.remove(&n)));
                "accepted"
            }
            Err(reason) => {
                if let Some(refused) = state.refusals.note(reason) {
                    tracing::warn!(
                        endpoint = endpoint.label(),
                        reason,
                        refused,
                        subscription = ids[n].as_deref().unwrap_or("-"),
                        "notification items dropped (logged at most once a minute per reason; `refused` counts them since the last line)"
                    );
                }
                reason
            }
        };
        state.counters.item(endpoint, outcome).increment(1);
    }
    // Items that failed the checks get the same 202: a retry cannot make them pass, and the
    // sender learns nothing about which check failed (docs/decisions/0011-webhook-answers.md).
    if accepted.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    commit(state, accepted, deadline).await
}

/// Whether the request says its body is JSON (`application/json`, any parameters).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// The checks for the items' subscription ids, or the 503 to answer when the store cannot
/// give them by `deadline`. The lookup runs as a task of its own, so a late one still
/// completes (and fills the cache for the redelivery) instead of being cut off mid-query.
async fn checks_by(
    state: &WebhookState,
    ids: &[Option<String>],
    deadline: tokio::time::Instant,
) -> Result<HashMap<String, Arc<subscriptions::Check>>, Response> {
    // Known subscriptions are answered from the cache without a task or a timer.
    if let Some(checks) = state
        .checks
        .cached(ids.iter().flatten().map(String::as_str))
    {
        return Ok(checks);
    }
    let lookup: Vec<String> = ids.iter().flatten().cloned().collect();
    let cache = Arc::clone(&state.checks);
    let read = tokio::spawn(async move {
        let lookup: Vec<&str> = lookup.iter().map(String::as_str).collect();
        cache.get(&lookup).await
    });
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(Ok(checks))) => Ok(checks),
        Ok(Ok(Err(err))) => {
            if let Some(times) = state.refusals.note(err.reason_code()) {
                tracing::error!(error = %err, reason = err.reason_code(), times, "cannot check notifications; asking Graph to redeliver (logged at most once a minute)");
            }
            Err(unavailable())
        }
        Ok(Err(_)) | Err(_) => {
            if let Some(times) = state.refusals.note("check_deadline") {
                tracing::error!(reason = "database_slow", times, "checking notifications took longer than {ANSWER_DEADLINE:?}; asking Graph to redeliver (logged at most once a minute)");
            }
            Err(unavailable())
        }
    }
}

/// The vetted items with resource data, opened: each item's decrypted resource by position.
/// An item no validation token covers, or whose content does not open, is refused in
/// `vetted`; one failing token refuses the whole delivery; keys that cannot be fetched are a
/// 503 (Graph delivers again).
async fn open_rich(
    state: &WebhookState,
    validation_tokens: &[String],
    vetted: &mut [Result<(&Notification<'_>, &Arc<subscriptions::Check>), &'static str>],
) -> Result<HashMap<usize, serde_json::Value>, Response> {
    let mut contents: HashMap<usize, serde_json::Value> = HashMap::new();
    let rich: Vec<usize> = vetted
        .iter()
        .enumerate()
        .filter_map(|(n, vetted)| match vetted {
            Ok((item, check)) if check.rich.is_some() && item.encrypted_content.is_some() => {
                Some(n)
            }
            _ => None,
        })
        .collect();
    if !rich.is_empty() {
        let vouched = match vouched_for(state, validation_tokens).await {
            Ok(vouched) => vouched,
            Err(TokenRefusal::Unavailable) => return Err(unavailable()),
            // One failing token makes the whole delivery suspect: nothing of it is queued.
            Err(TokenRefusal::Suspicious) => {
                for vetted in vetted.iter_mut() {
                    if vetted.is_ok() {
                        *vetted = Err("validation_token_invalid");
                    }
                }
                Vec::new()
            }
        };
        let mut to_open = Vec::new();
        for n in rich {
            let Ok((item, check)) = vetted[n] else {
                continue;
            };
            let rich_check = check.rich.as_ref().expect("rich checked above");
            let covered = vouched.iter().any(|token| {
                token.tenant_id.eq_ignore_ascii_case(&check.tenant_id)
                    && rich_check.app_ids.contains(&token.audience)
            });
            if covered {
                let content = item.encrypted_content.clone().expect("rich checked above");
                to_open.push((n, Arc::clone(check), content));
            } else {
                vetted[n] = Err("validation_token_missing");
            }
        }
        // RSA decryption takes about a millisecond an item: off the async threads.
        let opened = tokio::task::spawn_blocking(move || {
            to_open
                .into_iter()
                .map(|(n, check, content)| {
                    let key = &check.rich.as_ref().expect("rich checked above").key;
                    (n, key.open(&content))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (n, result) in opened {
            match result {
                Ok(content) => {
                    contents.insert(n, content);
                }
                Err(err) => vetted[n] = Err(err.reason_code()),
            }
        }
    }
    Ok(contents)
}

/// Commits the accepted items and answers: 202 once they are durable, 503 (with
/// `Retry-After`) when the write failed or missed `deadline`.
async fn commit(
    state: &WebhookState,
    accepted: Vec<EncodedJob>,
    deadline: tokio::time::Instant,
) -> Response {
    // 202 only after the commit; past the deadline a 503 (a commit that still lands makes
    // Graph's redelivery a duplicate, which the dedupe key absorbs).
    match tokio::time::timeout_at(deadline, state.intake.submit(accepted)).await {
        Ok(Ok(())) => StatusCode::ACCEPTED.into_response(),
        Ok(Err(err)) => {
            if let Some(times) = state.refusals.note("intake_failed") {
                tracing::error!(error = %err, times, "accepted notifications were not committed; asking Graph to redeliver (logged at most once a minute)");
            }
            unavailable()
        }
        Err(_) => {
            if let Some(times) = state.refusals.note("intake_deadline") {
                tracing::error!(reason = "database_slow", times, "committing notifications took longer than {ANSWER_DEADLINE:?}; asking Graph to redeliver (logged at most once a minute)");
            }
            unavailable()
        }
    }
}

/// 503 with `Retry-After`: the notification was not committed, Graph should send it again.
fn unavailable() -> Response {
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, "Try again later.\n");
    response.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
}

/// Why a delivery's validation tokens vouch for nothing.
enum TokenRefusal {
    /// The signing keys could not be fetched: Graph should deliver again (503).
    Unavailable,
    /// A token failed: the whole delivery is suspect and dropped.
    Suspicious,
}

/// What a delivery's validation tokens vouch for.
async fn vouched_for(
    state: &WebhookState,
    tokens: &[String],
) -> Result<Vec<ValidToken>, TokenRefusal> {
    let now = crate::clock::now_unix();
    let mut vouched = Vec::with_capacity(tokens.len());
    for token in tokens {
        match state.tokens.validate(token, now).await {
            Ok(valid) => vouched.push(valid),
            Err(err @ ValidationTokenError::KeysUnavailable(_)) => {
                tracing::error!(reason = err.reason_code(), error = %err, "cannot check validation tokens; asking Graph to redeliver");
                return Err(TokenRefusal::Unavailable);
            }
            Err(err) => {
                if let Some(refused) = state.refusals.note(err.reason_code()) {
                    tracing::warn!(
                        reason = err.reason_code(),
                        refused,
                        "a validation token failed; the delivery is dropped (logged at most once a minute per reason)"
                    );
                }
                return Err(TokenRefusal::Suspicious);
            }
        }
    }
    Ok(vouched)
}

/// Equal secrets, compared without an early exit.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    // `subtle` compares in time that depends on the lengths only (a clientState's length is
    // public: 43 characters).
    bool::from(subtle::ConstantTimeEq::ct_eq(given, expected))
}

/// The item and the subscription it belongs to, or why it is dropped. `id` is the item's
/// subscription id, lower-cased.
fn vet<'i, 'a, 'c>(
    item: Option<&'i Notification<'a>>,
    id: Option<&str>,
    checks: &'c HashMap<String, Arc<subscriptions::Check>>,
) -> Result<(&'i Notification<'a>, &'c Arc<subscriptions::Check>), &'static str> {
    let (Some(item), Some(id)) = (item, id) else {
        return Err("malformed");
    };
    let Some(check) = checks.get(id) else {
        return Err("unknown_subscription");
    };
    let given = item.client_state.as_deref().unwrap_or_default();
    if !same_secret(given.as_bytes(), check.client_state.as_bytes()) {
        return Err("client_state_mismatch");
    }
    // No `tenantId` (OneDrive, older Outlook payloads): the subscription's tenant, which the
    // clientState just proved. A different one is refused.
    match item.tenant_id.as_deref().map(str::trim) {
        Some(tenant) if !tenant.is_empty() && !tenant.eq_ignore_ascii_case(&check.tenant_id) => {
            Err("tenant_mismatch")
        }
        _ => Ok((item, check)),
    }
}

/// A queued job for an accepted item. The dedupe key makes Graph's redeliveries of the same
/// change one job: subscription, resource, change type (lower-cased: Microsoft writes
/// `Created` in places) and the etag, or without one a hash of the item's fields but its
/// clientState. When the item names its change (an etag, or a notification `id`), the key
/// holds for Graph's whole redelivery window, also after the first job finished. Without
/// either, a redelivery cannot be told from a second change of the same resource, so the key
/// holds only while the first job is unfinished: merging two real changes would lose one,
/// and such jobs only read the resource's current state again.
fn to_job(
    endpoint: Endpoint,
    item: &Notification,
    check: &subscriptions::Check,
    content: Option<serde_json::Value>,
) -> EncodedJob {
    let lifecycle = item.lifecycle_event.as_deref();
    if matches!(endpoint, Endpoint::Lifecycle) || lifecycle.is_some() {
        // Lifecycle events repeat legitimately (a reauthorization challenge every 15 minutes
        // with the same expiry): one job while unfinished, never longer.
        let event = lifecycle.unwrap_or("unknown").to_string();
        let dedupe = format!(
            "{}|{event}|{}",
            check.id,
            item.subscription_expiration_date_time
                .as_deref()
                .unwrap_or_default()
        );
        let job = graph_lifecycle::GraphLifecycle {
            subscription_id: check.id.clone(),
            tenant_id: check.tenant_id.clone(),
            event,
        };
        return jobs::encode(&job, Some(&dedupe));
    }
    let resource = item.resource.as_deref().unwrap_or_default();
    let change_type = item
        .change_type
        .as_deref()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let data: ResourceData = item
        .resource_data
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    let named = data.etag.is_some() || item.id.as_deref().is_some_and(|id| !id.is_empty());
    let dedupe = match data.etag.as_deref() {
        Some(etag) => format!("{}|{resource}|{change_type}|{etag}", check.id),
        None => format!(
            "{}|{resource}|{change_type}|{}",
            check.id,
            content_hash(item, &change_type)
        ),
    };
    let job = graph_notification::GraphNotification {
        subscription_id: check.id.clone(),
        tenant_id: check.tenant_id.clone(),
        change_type,
        resource: resource.to_string(),
        resource_id: data.id.map(Cow::into_owned),
        odata_type: data.odata_type.map(Cow::into_owned),
        etag: data.etag.map(Cow::into_owned),
        content,
    };
    let encoded = jobs::encode(&job, Some(&dedupe));
    if named {
        encoded.within_window()
    } else {
        encoded
    }
}

/// A hash of what identifies a notification without an etag: every field tenantd reads but
/// the clientState, so no secret feeds the stored key.
fn content_hash(item: &Notification, change_type: &str) -> String {
    let mut hash = Sha256::new();
    for field in [
        item.id.as_deref(),
        item.subscription_expiration_date_time.as_deref(),
        item.tenant_id.as_deref(),
        Some(change_type),
        item.resource.as_deref(),
        item.resource_data.map(RawValue::get),
    ] {
        let field = field.unwrap_or_default();
        hash.update((field.len() as u64).to_le_bytes());
        hash.update(field.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 500 refusals in a minute are one line (with 1), the first after the minute says how
    /// many came since; reasons are limited apart.
    #[tokio::test(start_paused = true)]
    async fn refusals_are_logged_once_per_reason_per_interval_with_their_count() {
        let log = RefusalLog::default();
        let logged: Vec<u64> = (0..500)
            .filter_map(|_| log.note("unknown_subscription"))
            .collect();
        assert_eq!(logged, [1]);
        assert_eq!(
            log.note("client_state_mismatch"),
            Some(1),
            "another reason is its own"
        );
        tokio::time::advance(REFUSAL_LOG_INTERVAL - std::time::Duration::from_millis(1)).await;
        assert_eq!(log.note("unknown_subscription"), None);
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        assert_eq!(
            log.note("unknown_subscription"),
            Some(501),
            "the 499 held back, the one before the minute was up, and this one"
        );
        assert_eq!(log.note("unknown_subscription"), None);
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}

/// Fuzzing with a fixed budget (stable Rust: proptest, no cargo-fuzz): whatever arrives, the
/// parsing, checking and encoding of a delivery and the handshake never panic. Known nasty
/// inputs (the corpus) run every time; proptest keeps any failing case it finds in
/// `proptest-regressions/` to replay.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const CORPUS: &[&str] = &[
        "",
        "{",
        "null",
        "[]",
        r#"{"value": null}"#,
        r#"{"value": [null, 1, "x", [], {}]}"#,
        r#"{"value": [{"subscriptionId": 1}]}"#,
        r#"{"value": [{"subscriptionId": "0F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9", "clientState": "s", "resource": "Users('\u0000')/messages('%ZZ')", "changeType": "\ud83d\ude00", "resourceData": {"@odata.etag": null}}]}"#,
        r#"{"value": [{"subscriptionId": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "clientState": "s", "lifecycleEvent": "", "tenantId": ""}], "validationTokens": [""]}"#,
        r#"{"value": [{"subscriptionId": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "clientState": "s", "encryptedContent": {"data": "", "dataKey": "", "dataSignature": ""}}]}"#,
    ];

    fn check() -> HashMap<String, Arc<subscriptions::Check>> {
        let mut checks = HashMap::new();
        checks.insert(
            "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9".to_string(),
            Arc::new(subscriptions::Check {
                id: "s1".into(),
                tenant_id: "84bd8158-6d4d-4958-8b9f-9d6445542f95".into(),
                client_state: zeroize::Zeroizing::new("s".into()),
                rich: None,
            }),
        );
        checks
    }

    /// Everything `receive` does with a body before the store: parse, vet, encode.
    fn digest(body: &[u8]) {
        let Ok(collection) = serde_json::from_slice::<Collection>(body) else {
            return;
        };
        let checks = check();
        for raw in &collection.value {
            let item: Option<Notification> = serde_json::from_str(raw.get()).ok();
            let id = item
                .as_ref()
                .and_then(|item| item.subscription_id.as_deref())
                .map(str::to_ascii_lowercase);
            if let Ok((item, check)) = vet(item.as_ref(), id.as_deref(), &checks) {
                for endpoint in [Endpoint::Notifications, Endpoint::Lifecycle] {
                    let _ = to_job(endpoint, item, check, None);
                }
                if let Some(resource) = item.resource.as_deref() {
                    let _ = crate::graph::resources::GraphResource::parse(resource);
                }
            }
        }
    }

    #[test]
    fn the_corpus_never_panics() {
        for body in CORPUS {
            digest(body.as_bytes());
        }
    }

    /// Items shaped like Graph's, with arbitrary values in every field.
    fn item() -> impl Strategy<Value = serde_json::Value> {
        let text = proptest::option::of(any::<String>());
        (
            proptest::option::of(prop_oneof![
                Just("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9".to_string()),
                Just("0F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9".to_string()),
                any::<String>(),
            ]),
            proptest::option::of(prop_oneof![Just("s".to_string()), any::<String>()]),
            text.clone(),
            text.clone(),
            text.clone(),
            text,
        )
            .prop_map(|(id, state, change, resource, tenant, etag)| {
                serde_json::json!({
                    "subscriptionId": id, "clientState": state, "changeType": change,
                    "resource": resource, "tenantId": tenant,
                    "resourceData": {"@odata.etag": etag, "id": "x"},
                })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            digest(&body);
        }

        #[test]
        fn graph_shaped_deliveries_never_panic(items in proptest::collection::vec(item(), 0..8)) {
            let body = serde_json::json!({ "value": items }).to_string();
            digest(body.as_bytes());
        }

        #[test]
        fn the_handshake_echoes_any_token(token in any::<String>()) {
            let response = handshake(&token);
            prop_assert_eq!(response.status(), StatusCode::OK);
        }

        #[test]
        fn any_resource_path_parses_or_not_without_panic(path in any::<String>()) {
            let _ = crate::graph::resources::GraphResource::parse(&path);
        }
    }
}
