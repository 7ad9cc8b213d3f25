//! The Graph client: the only path from tenantd to Microsoft Graph. Tokens come from the vault
//! ([`crate::vault::tokens`]); every request passes the client-side limits ([`limits`]); 429, 503, 504
//! and connection errors are retried honouring `Retry-After` (seconds or HTTP date) or with
//! exponential backoff and full jitter, a few times within a time budget, after which the error
//! carries the wait so the job goes back to the queue instead of a worker sleeping on it.
//! `$batch` sends up to 20 requests and retries throttled items; `@odata.nextLink` pages are
//! followed.
//!
//! Owns no tables. Invariants: feature code never builds Graph URLs or calls reqwest itself
//! (it uses [`requests`]); errors and metrics carry no tokens, secrets or bodies.

pub mod errors;
pub mod limits;
pub mod requests;
pub mod resources;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use url::Url;

pub use errors::GraphError;

use crate::config::GraphConfig;
use crate::metrics::names;
use crate::retry::RetryPolicy;
use crate::vault::connections::Connection;
use crate::vault::tokens::TokenService;
use limits::Limits;

/// Most requests in one `$batch` (Graph's limit).
pub const BATCH_LIMIT: usize = 20;
/// Retries within one request (and the wait a transient failure hands the queue).
const IN_REQUEST_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(30));

/// One request, relative to the Graph base URL.
#[derive(Debug, Clone)]
pub struct GraphRequest {
    /// Method.
    pub method: Method,
    /// Path such as `/users` or `/users/{id}/sendMail`.
    pub path: String,
    /// Query parameters.
    pub query: Vec<(String, String)>,
    /// JSON body.
    pub body: Option<Value>,
    /// Raw body and its content type (file uploads).
    pub bytes: Option<(Vec<u8>, &'static str)>,
    /// Endpoint family for metrics (`users`, `mail`, `drive`, ...).
    pub family: &'static str,
    /// The mailbox the request touches (Outlook's per-mailbox concurrency).
    pub mailbox: Option<String>,
    /// `Content-Range` of an upload-session fragment.
    pub content_range: Option<String>,
    /// Sent without `Authorization`: upload URLs are pre-authenticated and may answer 401 to
    /// a bearer token (and must not receive one, being on another host).
    pub anonymous: bool,
    /// The API the path is relative to.
    pub api: Api,
    /// A `Prefer` header (e.g. `create-if-missing` for an upsert).
    pub prefer: Option<&'static str>,
}

/// The APIs the client reaches: Microsoft Graph, and the Teams Developer Portal that bot
/// provisioning needs (its own base URL and token audience; the same limits, retries and
/// metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Microsoft Graph (`graph.base_url`).
    Graph,
    /// The Teams Developer Portal (`graph.developer_portal_url`), paths under `/api`.
    DeveloperPortal,
}

impl GraphRequest {
    /// A request without query, body or mailbox.
    pub fn new(method: Method, path: impl Into<String>, family: &'static str) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            bytes: None,
            family,
            mailbox: None,
            content_range: None,
            anonymous: false,
            api: Api::Graph,
            prefer: None,
        }
    }

    /// A request to the Teams Developer Portal (`path` under its `/api`), counted under the
    /// `devportal` family.
    pub fn developer_portal(method: Method, path: impl Into<String>) -> Self {
        Self {
            api: Api::DeveloperPortal,
            ..Self::new(method, path, "devportal")
        }
    }

    /// With a JSON body.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// With a raw body of `content_type`.
    pub fn bytes(mut self, body: Vec<u8>, content_type: &'static str) -> Self {
        self.bytes = Some((body, content_type));
        self
    }

    /// With a query parameter.
    pub fn query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_string(), value.into()));
        self
    }

    /// To a pre-authenticated upload URL: no token.
    pub fn pre_authenticated(mut self) -> Self {
        self.anonymous = true;
        self
    }

    /// An upload-session fragment: `Content-Range`, no token.
    pub fn fragment(mut self, content_range: String) -> Self {
        self.content_range = Some(content_range);
        self.pre_authenticated()
    }

    /// With a `Prefer` header.
    pub fn prefer(mut self, preference: &'static str) -> Self {
        self.prefer = Some(preference);
        self
    }

    /// Touching a mailbox.
    pub fn mailbox(mut self, mailbox: impl Into<String>) -> Self {
        self.mailbox = Some(mailbox.into());
        self
    }
}

/// The client.
pub struct GraphClient {
    http: reqwest::Client,
    base: Url,
    portal: Url,
    tokens: Arc<TokenService>,
    limits: Limits,
    max_retries: u32,
    retry_budget: Duration,
}

fn graph_code(body: &Value) -> String {
    body["error"]["code"]
        .as_str()
        .unwrap_or("unknown")
        .chars()
        .take(64)
        .collect()
}

impl GraphClient {
    /// A client for `config`, taking tokens from `tokens`.
    pub fn new(config: &GraphConfig, tokens: Arc<TokenService>) -> Self {
        let http = crate::tls::client_builder()
            .timeout(Duration::from_secs(config.request_timeout_seconds.max(1)))
            .user_agent(concat!(
                "NONISV|tenantd|tenantd/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .expect("a TLS client builds");
        Self {
            http,
            base: config.base_url.clone(),
            portal: config.developer_portal_url.clone(),
            tokens,
            limits: Limits::new(
                config.requests_per_second,
                config.mailbox_concurrency,
                config.max_concurrency,
            ),
            max_retries: config.max_retries,
            retry_budget: Duration::from_secs(config.retry_budget_seconds),
        }
    }

    /// The audience of Graph tokens, which is also Graph's service root in this cloud.
    pub fn graph_resource(&self) -> &str {
        self.tokens.graph_resource()
    }

    /// The client-side limits (for inspection).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn url(&self, api: Api, path: &str) -> Url {
        let base = match api {
            Api::Graph => self.base.as_str().trim_end_matches('/').to_string(),
            Api::DeveloperPortal => format!("{}/api", self.portal.as_str().trim_end_matches('/')),
        };
        Url::parse(&format!("{base}{path}")).expect("paths are built by the typed requests")
    }

    /// Sends a request and returns its JSON body (`Value::Null` for an empty answer).
    ///
    /// # Errors
    /// [`GraphError`], after the in-request retries.
    pub async fn send(
        &self,
        connection: &Connection,
        request: &GraphRequest,
    ) -> Result<Value, GraphError> {
        let mut url = self.url(request.api, &request.path);
        if !request.query.is_empty() {
            url.query_pairs_mut().extend_pairs(request.query.iter());
        }
        self.send_url(connection, request, url).await
    }

    async fn send_url(
        &self,
        connection: &Connection,
        request: &GraphRequest,
        url: Url,
    ) -> Result<Value, GraphError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = self.attempt(connection, request, url.clone()).await;
            let wait = match &outcome {
                Err(
                    GraphError::Throttled { retry_after, .. }
                    | GraphError::Transient { retry_after, .. },
                ) => *retry_after,
                _ => return outcome,
            };
            let within_budget = started.elapsed() + wait <= self.retry_budget;
            if attempt > self.max_retries || !within_budget {
                return outcome;
            }
            metrics::counter!(names::GRAPH_RETRIES, "family" => request.family).increment(1);
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        connection: &Connection,
        request: &GraphRequest,
        url: Url,
    ) -> Result<Value, GraphError> {
        let token = if request.anonymous {
            None
        } else {
            let resource = match request.api {
                Api::Graph => self.tokens.graph_resource(),
                Api::DeveloperPortal => crate::vault::identity::DEV_PORTAL_RESOURCE,
            };
            Some(self.tokens.access_token(connection, resource).await?)
        };
        let service = limits::service_of(request.family);
        let permit = self
            .limits
            .acquire(&connection.tenant_id, service, request.mailbox.as_deref())
            .await;
        let held_back = permit.held_back;
        metrics::histogram!(names::GRAPH_LIMITER_WAIT, "family" => request.family)
            .record(permit.waited.as_secs_f64());
        // A fresh id per request: Graph echoes it and logs it with its own `request-id`, the
        // pair Microsoft support asks for (learn.microsoft.com/graph/best-practices-concept).
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let builder = self.http_request(request, url, token.as_ref(), &client_request_id);
        let pace = self.limits.pace(&connection.tenant_id, service);
        let response = match builder.send().await {
            Ok(response) => response,
            Err(err) => {
                let detail = if err.is_timeout() {
                    "timeout"
                } else {
                    "connection_error"
                };
                metrics::counter!(names::GRAPH_REQUESTS, "family" => request.family, "status" => detail).increment(1);
                tracing::info!(
                    family = request.family,
                    status = detail,
                    client_request_id,
                    "Graph request failed before an answer"
                );
                return Err(GraphError::Transient {
                    detail: detail.into(),
                    retry_after: IN_REQUEST_RETRY.delay(1),
                });
            }
        };
        drop(permit);
        let status = response.status();
        metrics::counter!(names::GRAPH_REQUESTS, "family" => request.family, "status" => status.as_u16().to_string()).increment(1);
        let signals = AnswerSignals::of(response.headers());
        let bytes = response.bytes().await.map_err(|_| GraphError::Transient {
            detail: "body_read".into(),
            retry_after: IN_REQUEST_RETRY.delay(1),
        })?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            pace.succeeded(signals.load, held_back);
            return Ok(body);
        }
        let code = graph_code(&body);
        let request_id = signals.request_id.as_deref().unwrap_or("-");
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::CONFLICT) {
            // Usually an answer the caller expects (gone, exists already).
            tracing::debug!(
                family = request.family,
                status = status.as_u16(),
                code,
                client_request_id,
                request_id,
                "Graph answered"
            );
        } else {
            tracing::info!(
                family = request.family,
                status = status.as_u16(),
                code,
                client_request_id,
                request_id,
                "Graph request failed"
            );
        }
        // Exchange application access policies and RBAC for Applications deny with their own
        // message (graph-protocol.md §5, auth-limit-mailbox-access.md); the same code with
        // "Access is denied" is a missing permission, a different fix.
        let access_policy = body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("Access to OData is disabled"));
        Err(failure(
            status,
            code,
            signals.retry_after,
            request,
            &pace,
            access_policy,
        ))
    }

    /// The HTTP request for `request` at `url`: its `client-request-id`, the token, the body.
    fn http_request(
        &self,
        request: &GraphRequest,
        url: Url,
        token: Option<&crate::secret::Secret<String>>,
        client_request_id: &str,
    ) -> reqwest::RequestBuilder {
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .header("client-request-id", client_request_id);
        if let Some(token) = token {
            builder = builder.bearer_auth(token.expose());
        }
        if let Some(range) = &request.content_range {
            builder = builder.header(reqwest::header::CONTENT_RANGE, range);
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        if let Some(preference) = request.prefer {
            builder = builder.header("Prefer", preference);
        }
        if let Some((body, content_type)) = &request.bytes {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, *content_type)
                .body(body.clone());
        }
        builder
    }

    /// `link` as a URL when it stays on the configured Graph host (pages and delta links are
    /// followed only there, so an answer cannot send the token elsewhere).
    fn own_link(&self, link: &str) -> Result<Url, GraphError> {
        let foreign = || GraphError::Permanent {
            status: 0,
            code: "foreign_next_link".into(),
        };
        let url = Url::parse(link).map_err(|_| foreign())?;
        if !self.on_graph_host(&url) {
            return Err(foreign());
        }
        Ok(url)
    }

    /// Whether `url` is on the configured Graph host and port.
    fn on_graph_host(&self, url: &Url) -> bool {
        url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    /// A delta query: every change since `delta_link` (or, without one, the whole
    /// collection), following `@odata.nextLink` up to `max_pages` pages. Returns the items
    /// (removed ones carry `@removed`) and the `@odata.deltaLink` to start from next time
    /// (`None` when the pages ran out first). A delta link Graph no longer knows (410 Gone)
    /// starts over with the whole collection.
    ///
    /// # Errors
    /// [`GraphError`] of any page.
    pub async fn delta(
        &self,
        connection: &Connection,
        request: &GraphRequest,
        delta_link: Option<&str>,
        max_pages: usize,
    ) -> Result<(Vec<Value>, Option<String>), GraphError> {
        let mut page = match delta_link {
            Some(link) => {
                let url = self.own_link(link)?;
                match self.send_url(connection, request, url).await {
                    Err(GraphError::Permanent { status: 410, .. }) => {
                        self.send(connection, request).await?
                    }
                    other => other?,
                }
            }
            None => self.send(connection, request).await?,
        };
        let mut items = Vec::new();
        for _ in 0..max_pages.max(1) {
            items.extend(page["value"].as_array().cloned().unwrap_or_default());
            if let Some(done) = page["@odata.deltaLink"].as_str() {
                return Ok((items, Some(done.to_string())));
            }
            let Some(next) = page["@odata.nextLink"].as_str() else {
                return Ok((items, None));
            };
            let next = self.own_link(next)?;
            page = self.send_url(connection, request, next).await?;
        }
        Ok((items, None))
    }

    /// Every item of a collection, following `@odata.nextLink` up to `max_pages` pages.
    ///
    /// # Errors
    /// [`GraphError`] of any page.
    pub async fn collect(
        &self,
        connection: &Connection,
        request: &GraphRequest,
        max_pages: usize,
    ) -> Result<Vec<Value>, GraphError> {
        let mut items = Vec::new();
        let mut page = self.send(connection, request).await?;
        for _ in 1..max_pages.max(1) {
            items.extend(page["value"].as_array().cloned().unwrap_or_default());
            let Some(next) = page["@odata.nextLink"].as_str() else {
                return Ok(items);
            };
            let next = self.own_link(next)?;
            page = self.send_url(connection, request, next).await?;
        }
        items.extend(page["value"].as_array().cloned().unwrap_or_default());
        Ok(items)
    }

    /// Sends requests through `$batch`, 20 at a time; items answered 429 (or 503/504) are sent
    /// again in a later batch after the longest `Retry-After`, within the retry limits. Returns
    /// one `(status, body)` per request, in order.
    ///
    /// # Errors
    /// [`GraphError`] when a whole batch fails.
    pub async fn batch(
        &self,
        connection: &Connection,
        requests: &[GraphRequest],
    ) -> Result<Vec<(u16, Value)>, GraphError> {
        let mut results: Vec<Option<(u16, Value)>> = vec![None; requests.len()];
        for chunk_start in (0..requests.len()).step_by(BATCH_LIMIT) {
            let mut pending: Vec<usize> =
                (chunk_start..(chunk_start + BATCH_LIMIT).min(requests.len())).collect();
            let mut round = 0;
            while !pending.is_empty() {
                round += 1;
                let body = json!({"requests": pending.iter().map(|&i| {
                    let r = &requests[i];
                    let mut path = r.path.clone();
                    if !r.query.is_empty() {
                        path.push('?');
                        path.push_str(&serde_urlencoded::to_string(&r.query).unwrap_or_default());
                    }
                    let mut item = json!({"id": i.to_string(), "method": r.method.as_str(), "url": path});
                    if let Some(b) = &r.body {
                        item["body"] = b.clone();
                        item["headers"] = json!({"Content-Type": "application/json"});
                    }
                    item
                }).collect::<Vec<_>>()});
                let answer = self
                    .send(
                        connection,
                        &GraphRequest::new(Method::POST, "/$batch", "batch").json(body),
                    )
                    .await?;
                let mut retry = Vec::new();
                let mut longest = Duration::ZERO;
                for response in answer["responses"].as_array().cloned().unwrap_or_default() {
                    let Some(index) = response["id"]
                        .as_str()
                        .and_then(|id| id.parse::<usize>().ok())
                        .filter(|i| pending.contains(i))
                    else {
                        continue;
                    };
                    let status =
                        u16::try_from(response["status"].as_u64().unwrap_or(0)).unwrap_or(0);
                    if matches!(status, 429 | 503 | 504) && round <= self.max_retries {
                        let wait = response["headers"]["Retry-After"]
                            .as_str()
                            .and_then(|v| errors::parse_retry_after(v, SystemTime::now()))
                            .unwrap_or_else(|| IN_REQUEST_RETRY.delay(round));
                        longest = longest.max(wait);
                        retry.push(index);
                        if status == 429 {
                            self.limits
                                .pace(
                                    &connection.tenant_id,
                                    limits::service_of(requests[index].family),
                                )
                                .throttled(wait);
                        }
                    } else {
                        results[index] = Some((status, response["body"].clone()));
                    }
                }
                // Items the answer did not mention are retried too.
                for &index in &pending {
                    if results[index].is_none() && !retry.contains(&index) {
                        retry.push(index);
                    }
                }
                if retry.is_empty() {
                    break;
                }
                if round > self.max_retries {
                    for index in retry {
                        results[index].get_or_insert((429, Value::Null));
                    }
                    break;
                }
                metrics::counter!(names::GRAPH_RETRIES, "family" => "batch").increment(1);
                tokio::time::sleep(longest).await;
                pending = retry;
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or((0, Value::Null)))
            .collect())
    }
}

/// What Graph's answer says besides its status and body: its `request-id`, `Retry-After`, and
/// (identity answers, once past 0.8) how much of the limit is used.
struct AnswerSignals {
    request_id: Option<String>,
    retry_after: Option<Duration>,
    load: Option<f64>,
}

impl AnswerSignals {
    fn of(headers: &reqwest::header::HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Self {
            request_id: text("request-id").map(str::to_string),
            retry_after: text(reqwest::header::RETRY_AFTER.as_str())
                .and_then(|v| errors::parse_retry_after(v, SystemTime::now())),
            load: text("x-ms-throttle-limit-percentage")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|load| load.is_finite()),
        }
    }
}

/// The error an unsuccessful answer is: throttled (and the pace told), transient, or one the
/// caller handles (unauthorized, forbidden, not found, conflict, permanent).
fn failure(
    status: StatusCode,
    code: String,
    retry_after: Option<Duration>,
    request: &GraphRequest,
    pace: &limits::TenantRate,
    access_policy: bool,
) -> GraphError {
    match status {
        StatusCode::TOO_MANY_REQUESTS => {
            let retry_after = retry_after.unwrap_or_else(|| IN_REQUEST_RETRY.delay(2));
            pace.throttled(retry_after);
            metrics::counter!(names::GRAPH_THROTTLED, "family" => request.family).increment(1);
            GraphError::Throttled { retry_after, code }
        }
        StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT
        | StatusCode::BAD_GATEWAY
        | StatusCode::INTERNAL_SERVER_ERROR => GraphError::Transient {
            detail: status.as_u16().to_string(),
            retry_after: retry_after.unwrap_or_else(|| IN_REQUEST_RETRY.delay(1)),
        },
        StatusCode::UNAUTHORIZED => GraphError::Unauthorized { code },
        StatusCode::FORBIDDEN => GraphError::Forbidden {
            access_policy: access_policy && code == "ErrorAccessDenied",
            code,
        },
        StatusCode::NOT_FOUND => GraphError::NotFound { code },
        StatusCode::CONFLICT => GraphError::Conflict { code },
        other => GraphError::Permanent {
            status: other.as_u16(),
            code,
        },
    }
}
