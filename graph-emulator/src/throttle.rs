//! Throttling, fault injection and the request log, applied to every Graph and Developer Portal
//! request before its handler runs.
//!
//! Throttling follows https://learn.microsoft.com/graph/throttling and
//! .../throttling-limits: a request budget per app per tenant answered with `429`, a
//! `Retry-After` header and the `TooManyRequests` body (published sample 13); Outlook allows 4
//! concurrent requests per app per mailbox (`ApplicationThrottled`, MailboxConcurrency). The
//! requests of a `$batch` are throttled one by one, the batch itself is not.
//!
//! Invariants: faults come from a seeded generator, so a seed replays the same sequence; the
//! request log is bounded; control API calls are neither throttled, faulted nor logged.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::graph::GraphError;
use crate::{clock, jwt, AppState};

/// Request budgets, changeable at run time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Budgets {
    /// Requests one app may make against one tenant per window.
    pub requests_per_window: u32,
    /// The window length.
    pub window_seconds: u64,
    /// Concurrent requests per app per mailbox (Outlook: 4).
    pub mailbox_concurrency: u32,
}

impl Default for Budgets {
    fn default() -> Self {
        // Graph's identity limit for a small tenant is 3,500 resource units per 10 s; most
        // calls cost 1-3 units.
        Self {
            requests_per_window: 2_000,
            window_seconds: 10,
            mailbox_concurrency: 4,
        }
    }
}

/// Injected faults, changeable at run time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// Seed of the fault generator; setting faults restarts the sequence.
    pub seed: u64,
    /// Share of requests (0-1) answered with one of `error_statuses`.
    pub error_rate: f64,
    /// Statuses to answer with.
    pub error_statuses: Vec<u16>,
    /// Latency added to every request.
    pub latency_ms: u64,
    /// Share of requests (0-1) whose connection is dropped without an answer.
    pub drop_rate: f64,
    /// Delay before each notification delivery.
    pub notification_delay_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            seed: 1,
            error_rate: 0.0,
            error_statuses: vec![500, 503, 504],
            latency_ms: 0,
            drop_rate: 0.0,
            notification_delay_ms: 0,
        }
    }
}

/// SplitMix64: small, seedable, good enough to pick faults reproducibly.
#[derive(Debug)]
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    #[allow(clippy::cast_precision_loss)]
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One logged request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// When it arrived.
    pub at: String,
    /// HTTP method.
    pub method: String,
    /// Path (no query: queries may carry codes).
    pub path: String,
    /// Answer status (0 for a dropped connection).
    pub status: u16,
    /// Time to answer.
    pub duration_ms: u64,
    /// Tenant from the token, if any.
    pub tenant: Option<String>,
    /// Client id from the token, if any.
    pub client_id: Option<String>,
    /// The caller's `client-request-id`, if it sent one.
    pub client_request_id: Option<String>,
    /// The `request-id` the answer carried.
    pub request_id: String,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    used: u32,
}

/// Budgets, faults, mailbox semaphores and the request log.
#[derive(Debug)]
pub struct Throttle {
    budgets: Mutex<Budgets>,
    faults: Mutex<Faults>,
    generator: Mutex<Generator>,
    windows: Mutex<HashMap<(String, String), Window>>,
    mailboxes: Mutex<HashMap<(String, String, String), Arc<Semaphore>>>,
    log: Mutex<VecDeque<RequestRecord>>,
}

impl Default for Throttle {
    fn default() -> Self {
        let faults = Faults::default();
        Self {
            generator: Mutex::new(Generator(faults.seed)),
            budgets: Mutex::new(Budgets::default()),
            faults: Mutex::new(faults),
            windows: Mutex::new(HashMap::new()),
            mailboxes: Mutex::new(HashMap::new()),
            log: Mutex::new(VecDeque::new()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

const LOG_CAPACITY: usize = 10_000;

impl Throttle {
    /// Current budgets.
    pub fn budgets(&self) -> Budgets {
        lock(&self.budgets).clone()
    }

    /// Replaces budgets and forgets spent windows and mailbox permits.
    pub fn set_budgets(&self, budgets: Budgets) {
        *lock(&self.budgets) = budgets;
        lock(&self.windows).clear();
        lock(&self.mailboxes).clear();
    }

    /// Current faults.
    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    /// Replaces faults and restarts the generator from their seed.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.generator) = Generator(faults.seed);
        *lock(&self.faults) = faults;
    }

    /// The request log, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.log).iter().cloned().collect()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        lock(&self.log).clear();
    }

    fn record(&self, record: RequestRecord) {
        let mut log = lock(&self.log);
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// Spends one request of the (tenant, app) budget; `Some(wait)` when none is left.
    fn spend(&self, tenant: &str, app: &str) -> Option<Duration> {
        let budgets = self.budgets();
        let window = Duration::from_secs(budgets.window_seconds.max(1));
        let mut windows = lock(&self.windows);
        let entry = windows
            .entry((tenant.to_string(), app.to_string()))
            .or_insert(Window {
                started: Instant::now(),
                used: 0,
            });
        if entry.started.elapsed() >= window {
            *entry = Window {
                started: Instant::now(),
                used: 0,
            };
        }
        if entry.used >= budgets.requests_per_window {
            return Some(window.saturating_sub(entry.started.elapsed()));
        }
        entry.used += 1;
        None
    }

    fn mailbox(&self, key: (String, String, String)) -> Arc<Semaphore> {
        let permits = usize::try_from(self.budgets().mailbox_concurrency.max(1)).unwrap_or(4);
        lock(&self.mailboxes)
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(permits)))
            .clone()
    }

    fn roll(&self) -> (f64, f64, u64) {
        let mut generator = lock(&self.generator);
        (generator.unit(), generator.unit(), generator.next())
    }
}

/// Graph's 429, exactly as published (sample 13), with `Retry-After` in whole seconds.
pub fn too_many_requests(wait: Duration) -> Response {
    let request_id = crate::world::guid();
    let body = json!({
        "error": {
            "code": "TooManyRequests",
            "innerError": {
                "code": "429",
                "date": clock::graph_inner(clock::now()),
                "message": "Please retry after",
                "request-id": request_id,
                "status": "429"
            },
            "message": "Please retry again later."
        }
    });
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert("retry-after", HeaderValue::from(seconds.max(1)));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert("request-id", value);
    }
    response
}

/// A body that fails at once, which makes hyper drop the connection without a complete answer.
struct Dropped;

impl http_body::Body for Dropped {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other(
            "connection dropped by fault injection",
        ))))
    }
}

/// The mailbox a path addresses: `/v1.0/users/{user}/{messages|mailFolders|sendMail|events|calendar...}`.
fn mailbox_of(path: &str) -> Option<String> {
    let mut segments = path.trim_start_matches('/').split('/');
    if segments.next()? != "v1.0" || segments.next()? != "users" {
        return None;
    }
    let user = segments.next()?;
    let workload = segments.next()?;
    [
        "messages",
        "mailFolders",
        "sendMail",
        "events",
        "calendar",
        "calendars",
    ]
    .iter()
    .any(|w| w.eq_ignore_ascii_case(workload))
    .then(|| user.to_ascii_lowercase())
}

/// Applies faults, budgets and mailbox concurrency, and logs the request.
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if path.starts_with("/_emulator") {
        return next.run(request).await;
    }
    let started = Instant::now();
    let method = request.method().to_string();
    let claims = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(jwt::decode_claims);
    let claim = |key: &str| {
        claims
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (tenant, client_id) = (claim("tid"), claim("appid"));
    let client_request_id = request
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut response = guarded(
        &state,
        request,
        next,
        &path,
        tenant.as_deref(),
        client_id.as_deref(),
        claim("oid"),
    )
    .await;
    let status = if response.extensions().get::<DroppedMarker>().is_some() {
        0
    } else {
        response.status().as_u16()
    };
    if status == 429 {
        state.count("throttled");
    }
    // Every Graph answer carries `request-id` and echoes the caller's `client-request-id`
    // (learn.microsoft.com/graph/best-practices-concept#reliability-and-support).
    let headers = response.headers_mut();
    let request_id = match headers.get("request-id").and_then(|v| v.to_str().ok()) {
        Some(id) => id.to_string(),
        None => {
            let id = crate::world::guid();
            if let Ok(value) = HeaderValue::from_str(&id) {
                headers.insert("request-id", value);
            }
            id
        }
    };
    if let Some(value) = client_request_id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert("client-request-id", value);
    }
    state.throttle.record(RequestRecord {
        at: clock::graph(clock::now()),
        method,
        path,
        status,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        tenant,
        client_id,
        client_request_id,
        request_id,
    });
    response
}

#[derive(Clone, Copy)]
struct DroppedMarker;

async fn guarded(
    state: &AppState,
    request: Request,
    next: Next,
    path: &str,
    tenant: Option<&str>,
    client_id: Option<&str>,
    oid: Option<String>,
) -> Response {
    let faultable =
        path.starts_with("/v1.0") || path.starts_with("/devportal") || path.starts_with("/_upload");
    let is_batch = path == "/v1.0/$batch";
    if !faultable || is_batch {
        return next.run(request).await;
    }
    let faults = state.throttle.faults();
    let (drop_roll, error_roll, pick) = state.throttle.roll();
    if drop_roll < faults.drop_rate {
        state.count("faults_dropped");
        let mut response = Response::new(Body::new(Dropped));
        response.extensions_mut().insert(DroppedMarker);
        return response;
    }
    if error_roll < faults.error_rate && !faults.error_statuses.is_empty() {
        state.count("faults_errors");
        return injected_error(&faults, pick);
    }
    let mut _permit = None;
    if path.starts_with("/v1.0") {
        if let (Some(tenant), Some(app)) = (tenant, client_id) {
            if let Some(wait) = state.throttle.spend(tenant, app) {
                return too_many_requests(wait);
            }
            if let Some(mailbox) = mailbox_of(path) {
                let mailbox = if mailbox == "me" {
                    oid.unwrap_or(mailbox)
                } else {
                    mailbox
                };
                let semaphore =
                    state
                        .throttle
                        .mailbox((tenant.to_string(), app.to_string(), mailbox));
                match semaphore.try_acquire_owned() {
                    Ok(permit) => _permit = Some(permit),
                    Err(_) => {
                        let mut response = GraphError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "ApplicationThrottled",
                            "Application is over its MailboxConcurrency limit.",
                        )
                        .into_response();
                        response
                            .headers_mut()
                            .insert("retry-after", HeaderValue::from(1u32));
                        return response;
                    }
                }
            }
        }
    }
    // Added latency counts as time in flight, so it holds the mailbox permit.
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    next.run(request).await
}

fn injected_error(faults: &Faults, pick: u64) -> Response {
    let index = usize::try_from(pick % faults.error_statuses.len() as u64).unwrap_or(0);
    let status = StatusCode::from_u16(faults.error_statuses[index])
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let (code, message) = match status.as_u16() {
        503 => (
            "serviceNotAvailable",
            "The service is temporarily unavailable. Please retry later.",
        ),
        504 => ("UnknownError", "Gateway timeout."),
        _ => ("generalException", "An unspecified error has occurred."),
    };
    let mut response = GraphError::new(status, code, message).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(1u32));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_replays_from_its_seed() {
        let mut a = Generator(7);
        let mut b = Generator(7);
        let first: Vec<u64> = (0..5).map(|_| a.next()).collect();
        let second: Vec<u64> = (0..5).map(|_| b.next()).collect();
        assert_eq!(first, second);
        let unit = Generator(3).unit();
        assert!((0.0..1.0).contains(&unit));
    }

    #[test]
    fn budgets_run_out_and_report_the_wait() {
        let throttle = Throttle::default();
        throttle.set_budgets(Budgets {
            requests_per_window: 2,
            window_seconds: 60,
            mailbox_concurrency: 4,
        });
        assert!(throttle.spend("t", "a").is_none());
        assert!(throttle.spend("t", "a").is_none());
        let wait = throttle.spend("t", "a").expect("over budget");
        assert!(wait > Duration::from_secs(58) && wait <= Duration::from_secs(60));
        assert!(
            throttle.spend("t", "other-app").is_none(),
            "budgets are per app"
        );
    }

    #[test]
    fn mailbox_paths_are_recognised() {
        assert_eq!(
            mailbox_of("/v1.0/users/Adele@x/messages"),
            Some("adele@x".into())
        );
        assert_eq!(mailbox_of("/v1.0/users/me/sendMail"), Some("me".into()));
        assert_eq!(mailbox_of("/v1.0/users/u/drive/root"), None);
        assert_eq!(mailbox_of("/v1.0/subscriptions"), None);
    }
}
