//! Throttling, fault injection and the request log, applied to every Graph and Developer Portal
//! request before its handler runs.
//!
//! Throttling follows https://learn.microsoft.com/graph/throttling and
//! .../throttling-limits: a request budget per app per tenant and service (identity, Outlook,
//! files, Teams, subscriptions: each Graph service keeps its own limits) answered with `429`, a
//! `Retry-After` header and the `TooManyRequests` body (published sample 13); Outlook allows 4
//! concurrent requests per app per mailbox (`ApplicationThrottled`, MailboxConcurrency). The
//! requests of a `$batch` are throttled one by one, the batch itself is not.
//!
//! A budget refills in one of two ways: a fixed window (all of it back when the window ends), or
//! a token bucket, as Graph's identity limits ("resource units per 10 seconds") behave: it holds
//! `requestsPerWindow` tokens and refills continuously at `requestsPerWindow / windowSeconds`
//! per second; a throttled request costs a token too ("throttled requests still count"), down to
//! 0.8 of the bucket in debt, so a client that ignores `Retry-After` waits longer. In bucket mode
//! identity answers carry the documented headers: `x-ms-resource-unit` on every answer,
//! `x-ms-throttle-limit-percentage` (0.8 to 1.8) once more than 0.8 of the bucket is used, and
//! `x-ms-throttle-scope` and `x-ms-throttle-information` on a 429.
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

/// How a budget comes back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Refill {
    /// All of it when the window ends.
    #[default]
    FixedWindow,
    /// Continuously: a bucket of `requests_per_window` tokens refilled at
    /// `requests_per_window / window_seconds` per second.
    TokenBucket,
}

/// Request budgets, changeable at run time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Budgets {
    /// Requests one app may make against one tenant and service per window (the bucket's size
    /// in token-bucket mode).
    pub requests_per_window: u32,
    /// The window length.
    pub window_seconds: u64,
    /// Concurrent requests per app per mailbox (Outlook: 4).
    pub mailbox_concurrency: u32,
    /// Fixed windows or a token bucket.
    pub refill: Refill,
}

impl Default for Budgets {
    fn default() -> Self {
        // Graph's identity limit for a small tenant is 3,500 resource units per 10 s; most
        // calls cost 1-3 units.
        Self {
            requests_per_window: 2_000,
            window_seconds: 10,
            mailbox_concurrency: 4,
            refill: Refill::FixedWindow,
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

#[derive(Debug)]
struct Bucket {
    /// Tokens left; below zero when throttled requests ran it into debt.
    level: f64,
    at: Instant,
}

/// The (tenant, app, service) a budget belongs to.
type BudgetKey = (String, String, &'static str);

/// What spending one request of a budget came to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Spent {
    /// Allowed; in token-bucket mode, the share of the bucket now used.
    Allowed { used: Option<f64> },
    /// Over budget: wait this long; in token-bucket mode, the share used.
    Throttled { wait: Duration, used: Option<f64> },
}

/// How far a bucket may run into debt, as a share of its size: Graph's
/// `x-ms-throttle-limit-percentage` tops out at 1.8.
const MAX_DEBT: f64 = 0.8;

/// Budgets, faults, mailbox semaphores and the request log.
#[derive(Debug)]
pub struct Throttle {
    budgets: Mutex<Budgets>,
    faults: Mutex<Faults>,
    generator: Mutex<Generator>,
    windows: Mutex<HashMap<BudgetKey, Window>>,
    buckets: Mutex<HashMap<BudgetKey, Bucket>>,
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
            buckets: Mutex::new(HashMap::new()),
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
        lock(&self.buckets).clear();
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

    /// Spends one request of the (tenant, app, service) budget.
    fn spend(&self, key: BudgetKey) -> Spent {
        let budgets = self.budgets();
        let window = Duration::from_secs(budgets.window_seconds.max(1));
        match budgets.refill {
            Refill::FixedWindow => {
                let mut windows = lock(&self.windows);
                let entry = windows.entry(key).or_insert(Window {
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
                    return Spent::Throttled {
                        wait: window.saturating_sub(entry.started.elapsed()),
                        used: None,
                    };
                }
                entry.used += 1;
                Spent::Allowed { used: None }
            }
            Refill::TokenBucket => {
                let size = f64::from(budgets.requests_per_window.max(1));
                let per_second = size / window.as_secs_f64();
                let now = Instant::now();
                let mut buckets = lock(&self.buckets);
                let bucket = buckets.entry(key).or_insert(Bucket {
                    level: size,
                    at: now,
                });
                bucket.level = (bucket.level
                    + now.duration_since(bucket.at).as_secs_f64() * per_second)
                    .min(size);
                bucket.at = now;
                let allowed = bucket.level >= 1.0;
                // A throttled request costs a token too, down to the largest debt.
                bucket.level = (bucket.level - 1.0).max(-MAX_DEBT * size);
                let used = Some((size - bucket.level) / size);
                if allowed {
                    Spent::Allowed { used }
                } else {
                    Spent::Throttled {
                        wait: Duration::from_secs_f64((1.0 - bucket.level) / per_second),
                        used,
                    }
                }
            }
        }
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

/// The Graph service whose limits a `/v1.0` path counts against
/// (learn.microsoft.com/graph/throttling-limits): Outlook (a mailbox's mail, calendar and
/// contacts), files (OneDrive and SharePoint), Teams, the subscription API, identity and access
/// (users, groups, applications, licenses, the directory), or any other.
pub fn service_of(path: &str) -> &'static str {
    let rest = path.trim_start_matches("/v1.0").trim_start_matches('/');
    let mut segments = rest.split('/');
    let first = segments.next().unwrap_or_default();
    // `/users/{id}/...` and `/me/...` name the service by the segment after the user.
    let owned = match first {
        "users" => {
            segments.next();
            segments.next()
        }
        "me" => segments.next(),
        _ => None,
    };
    if let Some(workload) = owned {
        let lower = workload.to_ascii_lowercase();
        return match lower.as_str() {
            "messages" | "mailfolders" | "sendmail" | "events" | "calendar" | "calendars"
            | "calendarview" | "contacts" | "contactfolders" | "mailboxsettings" => "outlook",
            "drive" | "drives" => "files",
            "chats" | "joinedteams" | "teamwork" => "teams",
            _ => "identity",
        };
    }
    match first {
        "users" | "me" | "groups" | "applications" | "servicePrincipals" | "subscribedSkus"
        | "organization" | "directoryObjects" | "domains" | "directoryRoles" | "devices" => {
            "identity"
        }
        "drives" | "sites" | "shares" => "files",
        "chats" | "teams" | "appCatalogs" | "teamwork" => "teams",
        "subscriptions" => "subscriptions",
        _ => "other",
    }
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
    let mut identity_use = None;
    if path.starts_with("/v1.0") {
        if let (Some(tenant), Some(app)) = (tenant, client_id) {
            let service = service_of(path);
            let spent = state
                .throttle
                .spend((tenant.to_string(), app.to_string(), service));
            let identity = service == "identity";
            match spent {
                Spent::Throttled { wait, used } => {
                    let mut response = too_many_requests(wait);
                    if let (true, Some(used)) = (identity, used) {
                        identity_headers(&mut response, used);
                        // The documented scope format: <Scope>/<Limit>/<ApplicationId>/<TenantId>.
                        let headers = response.headers_mut();
                        if let Ok(scope) = HeaderValue::from_str(&format!(
                            "Tenant_Application/ReadWrite/{app}/{tenant}"
                        )) {
                            headers.insert("x-ms-throttle-scope", scope);
                        }
                        headers.insert(
                            "x-ms-throttle-information",
                            HeaderValue::from_static("ResourceUnitLimitExceeded"),
                        );
                    }
                    return response;
                }
                Spent::Allowed { used } => {
                    if identity {
                        identity_use = used;
                    }
                }
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
    let mut response = next.run(request).await;
    if let Some(used) = identity_use {
        identity_headers(&mut response, used);
    }
    response
}

/// The identity service's load headers (throttling-limits, "Identity and access"): the
/// request's cost in resource units (the emulator charges 1), and the share of the limit used
/// once it passes 0.8.
fn identity_headers(response: &mut Response, used: f64) {
    let headers = response.headers_mut();
    headers.insert("x-ms-resource-unit", HeaderValue::from(1u32));
    if used > 0.8 {
        if let Ok(value) = HeaderValue::from_str(&format!("{:.2}", used.min(1.0 + MAX_DEBT))) {
            headers.insert("x-ms-throttle-limit-percentage", value);
        }
    }
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
            refill: Refill::FixedWindow,
        });
        let key = |app: &str, service| ("t".to_string(), app.to_string(), service);
        let allowed = Spent::Allowed { used: None };
        assert_eq!(throttle.spend(key("a", "identity")), allowed);
        assert_eq!(throttle.spend(key("a", "identity")), allowed);
        let Spent::Throttled { wait, .. } = throttle.spend(key("a", "identity")) else {
            panic!("over budget")
        };
        assert!(wait > Duration::from_secs(58) && wait <= Duration::from_secs(60));
        assert_eq!(
            throttle.spend(key("other-app", "identity")),
            allowed,
            "budgets are per app"
        );
        assert_eq!(
            throttle.spend(key("a", "outlook")),
            allowed,
            "and per service"
        );
    }

    #[test]
    fn a_token_bucket_refills_continuously_and_throttled_requests_cost_too() {
        let throttle = Throttle::default();
        throttle.set_budgets(Budgets {
            requests_per_window: 10,
            window_seconds: 10,
            mailbox_concurrency: 4,
            refill: Refill::TokenBucket,
        });
        let key = || ("t".to_string(), "a".to_string(), "identity");
        for n in 1..=10 {
            let Spent::Allowed { used: Some(used) } = throttle.spend(key()) else {
                panic!("the full bucket allows 10")
            };
            // Refill of a few microseconds aside, n of 10 tokens are used.
            assert!((used - f64::from(n) / 10.0).abs() < 0.01, "{n}: {used}");
        }
        let Spent::Throttled { wait, used } = throttle.spend(key()) else {
            panic!("empty")
        };
        // The 429 cost a token: one in debt, so two seconds (at 1 per second) until one is back.
        assert!(
            wait > Duration::from_millis(1_900) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert!((used.unwrap() - 1.1).abs() < 0.01);
        for _ in 0..100 {
            throttle.spend(key());
        }
        let Spent::Throttled { wait, used } = throttle.spend(key()) else {
            panic!("empty")
        };
        assert!((used.unwrap() - 1.8).abs() < 0.01, "debt stops at 0.8");
        assert!(wait > Duration::from_millis(8_900), "{wait:?}");
        // Time refills it continuously, not at a window's end.
        let mut buckets = lock(&throttle.buckets);
        let bucket = buckets.get_mut(&key()).expect("bucket");
        bucket.level = 0.0;
        bucket.at -= Duration::from_millis(2_500);
        drop(buckets);
        assert!(matches!(throttle.spend(key()), Spent::Allowed { .. }));
        assert!(matches!(throttle.spend(key()), Spent::Allowed { .. }));
        assert!(
            matches!(throttle.spend(key()), Spent::Throttled { .. }),
            "2.5 s gave 2 tokens"
        );
    }

    #[test]
    fn paths_count_against_their_graph_service() {
        for (path, service) in [
            ("/v1.0/users", "identity"),
            ("/v1.0/users/u@x", "identity"),
            ("/v1.0/users/u@x/assignLicense", "identity"),
            ("/v1.0/subscribedSkus", "identity"),
            ("/v1.0/applications/a/addPassword", "identity"),
            ("/v1.0/users/u@x/messages/m", "outlook"),
            ("/v1.0/me/mailFolders/inbox/messages", "outlook"),
            ("/v1.0/users/u@x/events", "outlook"),
            ("/v1.0/users/u@x/drive/root:/a.txt:/content", "files"),
            ("/v1.0/drives/d/items/i", "files"),
            ("/v1.0/chats/c/messages", "teams"),
            ("/v1.0/users/u@x/chats", "teams"),
            ("/v1.0/subscriptions/s", "subscriptions"),
            ("/v1.0/reports/x", "other"),
        ] {
            assert_eq!(service_of(path), service, "{path}");
        }
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
