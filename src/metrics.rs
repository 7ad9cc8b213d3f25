//! Prometheus metrics: the process-wide recorder, the list of metric names dashboards rely on,
//! build info, process metrics read from `/proc`, and per-request HTTP metrics.
//!
//! Owns no tables. Invariants: metric names live only in [`names`]; labels are bounded (routes
//! are the matched pattern or `unmatched`, never a raw path); no secret or personal data is
//! ever a label value.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names, one list for code and dashboards.
pub mod names {
    /// Gauge, always 1, labelled with `version` and `commit`.
    pub const BUILD_INFO: &str = "tenantd_build_info";
    /// Counter of HTTP requests by `listener`, `route`, `method`, `status`.
    pub const HTTP_REQUESTS: &str = "tenantd_http_requests_total";
    /// Histogram of HTTP request durations by `listener` and `route`.
    pub const HTTP_REQUEST_DURATION: &str = "tenantd_http_request_duration_seconds";
    /// Counter of connections closed to admit a new one because a listener (or one peer
    /// address) was at its connection cap, by `listener`: the one that made no progress for
    /// longest goes.
    pub const HTTP_CONNECTIONS_SHED: &str = "tenantd_http_connections_shed_total";
    /// Counter of request bodies cut off for coming too slowly (408).
    pub const HTTP_SLOW_BODIES: &str = "tenantd_http_slow_bodies_total";
    /// Gauge: 1 while `/readyz` would answer 200.
    pub const READY: &str = "tenantd_ready";
    /// Counter of token requests by `grant` and `result`.
    pub const TOKEN_REQUESTS: &str = "tenantd_token_requests_total";
    /// Counter of failed token requests by `reason`.
    pub const TOKEN_FAILURES: &str = "tenantd_token_failures_total";
    /// Gauge of connections by `status`.
    pub const CONNECTIONS: &str = "tenantd_connections";
    /// Gauge: seconds until the soonest cached access token of an active connection expires.
    pub const TOKEN_EXPIRY: &str = "tenantd_token_soonest_expiry_seconds";
    /// Counter of finished job attempts by `kind` and `outcome`.
    pub const JOBS: &str = "tenantd_jobs_total";
    /// Histogram of job attempt durations by `kind`.
    pub const JOB_DURATION: &str = "tenantd_job_duration_seconds";
    /// Gauge of jobs by `state`.
    pub const QUEUE_JOBS: &str = "tenantd_queue_jobs";
    /// Counter of Graph requests by endpoint `family` and `status`.
    pub const GRAPH_REQUESTS: &str = "tenantd_graph_requests_total";
    /// Counter of in-request Graph retries by `family`.
    pub const GRAPH_RETRIES: &str = "tenantd_graph_retries_total";
    /// Counter of 429 answers by `family`.
    pub const GRAPH_THROTTLED: &str = "tenantd_graph_throttled_total";
    /// Histogram of time spent waiting in the client-side limits by `family`.
    pub const GRAPH_LIMITER_WAIT: &str = "tenantd_graph_limiter_wait_seconds";
    /// Counter of notification items received by `endpoint` (`notifications`, `lifecycle`)
    /// and `outcome` (`accepted`, `unknown_subscription`, `client_state_mismatch`,
    /// `tenant_mismatch`, `malformed`, and for rich items `validation_token_missing`,
    /// `validation_token_invalid` (a token of the delivery failed), `data_signature_invalid`,
    /// `data_key_invalid` and the other decryption failures). Every item is counted once.
    pub const WEBHOOK_ITEMS: &str = "tenantd_webhook_items_total";
    /// Counter of change notifications the worker processed, by resource `type` (`message`,
    /// `event`, `chat_message`, ..., `unknown`) and `outcome`: `stored`, `deleted` (mail),
    /// `fetched` (confirmed at Graph), `gone` (deleted since), `ignored` (a type tenantd does
    /// not store), `unrecognized_resource` (dead-lettered).
    pub const NOTIFICATIONS_PROCESSED: &str = "tenantd_notifications_processed_total";
    /// Counter of subscription reconcile actions by `result` (`created`, `adopted` (made by
    /// an interrupted attempt, found at Graph), `orphan_deleted` (a duplicate such attempts
    /// left), `renewed`, `recreated`, `deleted`,
    /// `create_failed`, `renew_failed`, `delete_failed`).
    pub const SUBSCRIPTION_RENEWALS: &str = "tenantd_subscription_renewals_total";
    /// Counter of resource resyncs after missed notifications by `result` (`resynced`,
    /// `nothing_stored`).
    pub const SUBSCRIPTION_RESYNCS: &str = "tenantd_subscription_resyncs_total";
    /// Gauge of subscriptions by `status`.
    pub const SUBSCRIPTIONS: &str = "tenantd_subscriptions";
    /// Gauge: seconds until the soonest expiry of an active subscription.
    pub const SUBSCRIPTION_EXPIRY: &str = "tenantd_subscription_soonest_expiry_seconds";
    /// Counter of webhook validation handshakes answered.
    pub const WEBHOOK_HANDSHAKES: &str = "tenantd_webhook_handshakes_total";
    /// Counter of bot provisioning attempts by `result` (`succeeded`, `retried`, `failed`) and
    /// the `step` they ended at (`scopes`, `sideloading`, `app_registration`, `secret`,
    /// `package`, `bot_registration`).
    pub const BOT_PROVISIONING_RUNS: &str = "tenantd_bot_provisioning_runs_total";
    /// Counter of heartbeat run attempts by `result` (`succeeded`, `retried`, `failed`).
    pub const HEARTBEAT_RUNS: &str = "tenantd_heartbeat_runs_total";
    /// Counter of objects heartbeat runs created, by `kind`.
    pub const HEARTBEAT_OBJECTS: &str = "tenantd_heartbeat_objects_created_total";
    /// Counter of failed heartbeat runs by `reason` (`license_seats_exhausted`, ...).
    pub const HEARTBEAT_FAILURES: &str = "tenantd_heartbeat_failures_total";
    /// Counter of activities skipped by `kind` and `reason` (`delegated_access_required`).
    pub const HEARTBEAT_SKIPPED: &str = "tenantd_heartbeat_skipped_total";
    /// Counter of inbound replies linked to delegated actions, by `matched_by`.
    pub const ATTRIBUTION_LINKS: &str = "tenantd_attribution_links_total";
    /// Counter of delegated actions by `kind` (`send_mail`, `event_create`, ...) and `result`.
    pub const DELEGATED_ACTIONS: &str = "tenantd_delegated_actions_total";
    /// Counter of objects cleanup handled, by `kind` and `result` (`removed`, `gone`, `failed`).
    pub const HEARTBEAT_CLEANUP: &str = "tenantd_heartbeat_cleanup_total";
}

/// How often histogram buckets are compacted; the exporter needs this on a timer.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Buckets for request durations: webhook answers must stay far below Graph's 3 s limit.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder's handle, installing it on first use. Several in-process daemons
/// (tests) share it: a process has one global recorder.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
                .expect("static buckets are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            describe();
            metrics::gauge!(
                names::BUILD_INFO,
                "version" => env!("CARGO_PKG_VERSION"),
                "commit" => env!("BUILD_GIT_COMMIT"),
            )
            .set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        names::ATTRIBUTION_LINKS,
        "Inbound replies linked to mail tenantd sent as a user, by how they matched."
    );
    metrics::describe_counter!(
        names::DELEGATED_ACTIONS,
        "Delegated actions (as a signed-in user), by kind and result."
    );
    metrics::describe_gauge!(names::CONNECTIONS, "Tenant connections, by status.");
    metrics::describe_histogram!(
        names::GRAPH_LIMITER_WAIT,
        metrics::Unit::Seconds,
        "Time Graph requests waited in the client-side limits, by endpoint family."
    );
    metrics::describe_counter!(
        names::GRAPH_REQUESTS,
        "Graph requests answered (or failed before an answer), by endpoint family and status."
    );
    metrics::describe_counter!(
        names::GRAPH_RETRIES,
        "Graph requests retried inside one call, by endpoint family."
    );
    metrics::describe_counter!(
        names::GRAPH_THROTTLED,
        "Graph answers 429 (throttled), by endpoint family."
    );
    metrics::describe_counter!(names::JOBS, "Finished job attempts, by kind and outcome.");
    metrics::describe_histogram!(
        names::JOB_DURATION,
        metrics::Unit::Seconds,
        "Job attempt durations, by kind."
    );
    metrics::describe_gauge!(names::QUEUE_JOBS, "Jobs in the queue, by state.");
    metrics::describe_gauge!(names::SUBSCRIPTIONS, "Graph subscriptions, by status.");
    metrics::describe_gauge!(
        names::SUBSCRIPTION_EXPIRY,
        metrics::Unit::Seconds,
        "Seconds until the soonest expiry of an active subscription."
    );
    metrics::describe_counter!(
        names::SUBSCRIPTION_RENEWALS,
        "Subscription reconcile actions, by result."
    );
    metrics::describe_counter!(
        names::SUBSCRIPTION_RESYNCS,
        "Resource resyncs after missed notifications, by result."
    );
    metrics::describe_gauge!(
        names::TOKEN_EXPIRY,
        metrics::Unit::Seconds,
        "Seconds until the soonest cached access token of an active connection expires."
    );
    metrics::describe_counter!(names::HEARTBEAT_RUNS, "Heartbeat run attempts, by result.");
    metrics::describe_counter!(
        names::BOT_PROVISIONING_RUNS,
        "Teams bot provisioning attempts, by result and the step they ended at."
    );
    metrics::describe_counter!(
        names::HEARTBEAT_OBJECTS,
        "Objects heartbeat runs created in tenants, by kind."
    );
    metrics::describe_counter!(
        names::HEARTBEAT_FAILURES,
        "Heartbeat runs that failed, by reason."
    );
    metrics::describe_counter!(
        names::HEARTBEAT_SKIPPED,
        "Heartbeat activities skipped, by kind and reason."
    );
    metrics::describe_counter!(
        names::HEARTBEAT_CLEANUP,
        "Provisioned objects heartbeat cleanup handled, by kind and result."
    );
    metrics::describe_counter!(
        names::WEBHOOK_ITEMS,
        "Notification items received, by endpoint and outcome (only accepted ones are queued)."
    );
    metrics::describe_counter!(
        names::NOTIFICATIONS_PROCESSED,
        "Change notifications processed by the worker, by resource type and outcome."
    );
    metrics::describe_counter!(names::WEBHOOK_HANDSHAKES, "Validation handshakes answered.");
    metrics::describe_gauge!(names::BUILD_INFO, "tenantd version and commit; always 1.");
    metrics::describe_counter!(names::HTTP_REQUESTS, "HTTP requests answered.");
    metrics::describe_histogram!(
        names::HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from request to response."
    );
    metrics::describe_gauge!(names::READY, "1 while /readyz answers 200.");
    metrics::describe_counter!(
        names::HTTP_SLOW_BODIES,
        "Request bodies cut off with 408 for coming too slowly."
    );
    metrics::describe_counter!(
        names::HTTP_CONNECTIONS_SHED,
        "Connections closed to make room at a connection cap (the stalest one goes)."
    );
    metrics::describe_counter!(
        names::TOKEN_REQUESTS,
        "Token requests to the identity platform by grant and result."
    );
    metrics::describe_counter!(
        names::TOKEN_FAILURES,
        "Failed token requests by reason code."
    );
}

/// The full scrape: recorded metrics followed by process metrics.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    process::render_into(&mut text);
    text
}

/// The request counter and duration histogram of one route, method and status.
#[derive(Clone)]
struct RouteHandles {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// A listener's HTTP metrics with their handles kept per route, method and status: a
/// registry lookup builds and hashes four labels, which on the webhook path cost more than the
/// rest of the bookkeeping. Routes are matched patterns (a bounded set), so the map is too.
pub struct HttpMetrics {
    listener: &'static str,
    handles: std::sync::RwLock<HashMap<String, ByMethodAndStatus>>,
}

type ByMethodAndStatus = HashMap<(Method, u16), RouteHandles>;

impl HttpMetrics {
    /// Metrics for the listener named `listener` (`admin` or `public`).
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            handles: std::sync::RwLock::default(),
        }
    }

    fn handles(&self, route: &str, method: &Method, status: u16) -> RouteHandles {
        if let Some(found) = self
            .handles
            .read()
            .expect("http metrics lock")
            .get(route)
            .and_then(|statuses| statuses.get(&(method.clone(), status)))
        {
            return found.clone();
        }
        let created = RouteHandles {
            requests: metrics::counter!(
                names::HTTP_REQUESTS,
                "listener" => self.listener,
                "route" => route.to_string(),
                "method" => method.as_str().to_string(),
                "status" => status.to_string(),
            ),
            duration: metrics::histogram!(
                names::HTTP_REQUEST_DURATION,
                "listener" => self.listener,
                "route" => route.to_string()
            ),
        };
        self.handles
            .write()
            .expect("http metrics lock")
            .entry(route.to_string())
            .or_default()
            .insert((method.clone(), status), created.clone());
        created
    }
}

/// Records one HTTP request in `metrics`.
pub async fn track_http(metrics: Arc<HttpMetrics>, request: Request, next: Next) -> Response {
    // The matched pattern is shared, not copied.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    tracing::debug!(
        http.listener = metrics.listener,
        http.route = %route,
        http.method = %method,
        http.status = status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request served"
    );
    let handles = metrics.handles(route, &method, status);
    handles.requests.increment(1);
    handles.duration.record(elapsed.as_secs_f64());
    response
}

/// The standard `process_*` metrics (as the Prometheus client libraries name them), read from
/// `/proc/self` at scrape time. Outside Linux nothing is added.
mod process {
    use std::fmt::Write as _;

    /// `/proc/[pid]/stat` times are in USER_HZ, which the Linux ABI fixes at 100.
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) fn render_into(text: &mut String) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return;
        };
        // Fields after the parenthesised command name, which may itself contain spaces.
        let Some(fields) = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>())
        else {
            return;
        };
        // Indexes are field numbers from proc(5) minus 3 (pid and comm precede `rest`).
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let mut metric = |name: &str, kind: &str, help: &str, value: Option<f64>| {
            if let Some(value) = value {
                let _ = writeln!(
                    text,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
        };
        let cpu = field(14)
            .zip(field(15))
            .map(|(user, system)| (user + system) / TICKS_PER_SECOND);
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        );
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        let start = field(22)
            .zip(boot_time)
            .map(|(ticks, boot)| boot + ticks / TICKS_PER_SECOND);
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
        metric(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            field(20),
        );
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            field(23),
        );
        let rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|line| line.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            });
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss_kib.map(|k| k * 1024.0),
        );
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as f64);
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open_fds,
        );
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|line| line.starts_with("Max open files"))
                    .and_then(|line| line.split_whitespace().nth(3))
                    .and_then(|v| v.parse::<f64>().ok())
            });
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max_fds,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_are_read_from_proc() {
        let mut text = String::new();
        process::render_into(&mut text);
        for name in [
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
        ] {
            let line = text
                .lines()
                .find(|line| line.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
            let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(value >= 0.0, "{line}");
        }
        let rss = text
            .lines()
            .find(|l| l.starts_with("process_resident_memory_bytes "))
            .unwrap();
        assert!(
            rss.rsplit(' ').next().unwrap().parse::<f64>().unwrap() > 1_000_000.0,
            "{rss}"
        );
    }
}
