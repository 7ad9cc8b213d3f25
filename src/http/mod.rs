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

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Limits on a listener's connections, so slow or abusive clients cannot hold it.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A connection that has not sent a request's full headers within this is closed; a
    /// keep-alive connection idle this long is closed too.
    pub header_read_timeout: Duration,
    /// A request body must arrive whole within this (408 and the connection closed).
    pub body_read_timeout: Duration,
    /// ... and, after its first second, at this many bytes per second at least.
    pub body_min_bytes_per_second: u64,
    /// Largest request body read (413 past it, before it is all read).
    pub max_body_bytes: usize,
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections from one peer address at most.
    pub max_connections_per_peer: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(5),
            body_min_bytes_per_second: 4096,
            max_body_bytes: webhooks::MAX_BODY_BYTES,
            max_connections: 1024,
            max_connections_per_peer: 256,
        }
    }
}

/// An open connection, as admission sees it.
struct Tracked {
    peer: IpAddr,
    /// When it last finished a request (or opened): the connection that made no progress for
    /// longest is the one evicted when a cap is reached.
    progress_ms: AtomicU64,
    /// Cancelled to evict it.
    evict: CancellationToken,
}

impl Tracked {
    fn touch(&self, epoch: Instant) {
        self.progress_ms
            .store(millis_since(epoch), Ordering::Relaxed);
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The open connections of a listener, and the admission policy: under the caps every new
/// connection is admitted; at a cap (the listener's, or the peer's) the connection of that
/// scope that made no progress for longest is evicted to make room. A client that opens
/// connections and sends nothing (or dribbles) only ever displaces its own kind, while clients
/// that finish requests keep being served.
struct Admission {
    epoch: Instant,
    limits: ServeLimits,
    open: Mutex<Vec<Arc<Tracked>>>,
}

impl Admission {
    fn admit(&self, peer: IpAddr) -> (Arc<Tracked>, Option<Arc<Tracked>>) {
        let tracked = Arc::new(Tracked {
            peer,
            progress_ms: AtomicU64::new(millis_since(self.epoch)),
            evict: CancellationToken::new(),
        });
        let mut open = self.open.lock().expect("admission lock");
        let from_peer = open.iter().filter(|c| c.peer == peer).count();
        let victim = if from_peer >= self.limits.max_connections_per_peer.max(1) {
            stalest(open.iter().filter(|c| c.peer == peer))
        } else if open.len() >= self.limits.max_connections.max(1) {
            stalest(open.iter())
        } else {
            None
        };
        if let Some(victim) = &victim {
            open.retain(|c| !Arc::ptr_eq(c, victim));
            victim.evict.cancel();
        }
        open.push(Arc::clone(&tracked));
        (tracked, victim)
    }

    fn close(&self, tracked: &Arc<Tracked>) {
        self.open
            .lock()
            .expect("admission lock")
            .retain(|c| !Arc::ptr_eq(c, tracked));
    }
}

fn stalest<'a>(connections: impl Iterator<Item = &'a Arc<Tracked>>) -> Option<Arc<Tracked>> {
    connections
        .min_by_key(|c| c.progress_ms.load(Ordering::Relaxed))
        .cloned()
}

/// Reads the whole request body within the limits before the router sees it: a body that
/// takes longer than `body_read_timeout`, or comes slower than `body_min_bytes_per_second`
/// after its first second, is answered 408 and its connection closed. It runs in front of the
/// router (not as a layer of it), with one timer for the whole body and no copy of a body
/// that arrives in one piece: it is on the path of every notification.
async fn read_body_in_time(
    limits: ServeLimits,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<axum::extract::Request, Response> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > DRAIN_LIMIT) {
        return Err(too_large());
    }
    // Too large: the rest is read and dropped (within the same deadline and rate, and up to
    // DRAIN_LIMIT) before the 413, so the client reads the answer instead of a reset.
    let too_big = declared.is_some_and(|length| length > limits.max_body_bytes);
    let deadline = tokio::time::Instant::now() + limits.body_read_timeout;
    match tokio::time::timeout_at(deadline, collect_body(limits, body, too_big)).await {
        Ok(Ok(bytes)) => Ok(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(bytes),
        )),
        Ok(Err(refusal)) => Err(refusal),
        Err(_) => Err(too_slow()),
    }
}

/// The body's bytes, or the answer refusing it (see [`read_body_in_time`]); the caller bounds
/// the time.
async fn collect_body(
    limits: ServeLimits,
    mut body: hyper::body::Incoming,
    mut too_big: bool,
) -> Result<axum::body::Bytes, Response> {
    use http_body_util::BodyExt;
    let started = Instant::now();
    let mut collected = Collected::Nothing;
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        // The client went away or sent a broken body.
        let Ok(frame) = frame else {
            return Err((
                StatusCode::BAD_REQUEST,
                [(axum::http::header::CONNECTION, "close")],
            )
                .into_response());
        };
        if let Ok(data) = frame.into_data() {
            received += data.len();
            if !too_big {
                collected.push(data);
            }
        }
        if received > limits.max_body_bytes {
            too_big = true;
            collected = Collected::Nothing;
        }
        if received > DRAIN_LIMIT {
            return Err(too_large());
        }
        let elapsed = started.elapsed();
        let floor = limits.body_min_bytes_per_second as f64 * elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        if elapsed > Duration::from_secs(1) && (received as f64) < floor {
            return Err(too_slow());
        }
    }
    if too_big {
        return Err(too_large());
    }
    Ok(collected.into_bytes())
}

/// A body being read: most arrive in one frame, which is kept as it came.
enum Collected {
    Nothing,
    One(axum::body::Bytes),
    Many(Vec<u8>),
}

impl Collected {
    fn push(&mut self, data: axum::body::Bytes) {
        *self = match std::mem::replace(self, Collected::Nothing) {
            Collected::Nothing => Collected::One(data),
            Collected::One(first) => {
                let mut joined = Vec::with_capacity(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                Collected::Many(joined)
            }
            Collected::Many(mut joined) => {
                joined.extend_from_slice(&data);
                Collected::Many(joined)
            }
        };
    }

    fn into_bytes(self) -> axum::body::Bytes {
        match self {
            Collected::Nothing => axum::body::Bytes::new(),
            Collected::One(data) => data,
            Collected::Many(joined) => axum::body::Bytes::from(joined),
        }
    }
}

/// The most of an oversized body read (and dropped) so that its sender sees the 413.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

fn too_large() -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(axum::http::header::CONNECTION, "close")],
        "The request body is too large.\n",
    )
        .into_response()
}

fn too_slow() -> Response {
    metrics::counter!(crate::metrics::names::HTTP_SLOW_BODIES).increment(1);
    (
        StatusCode::REQUEST_TIMEOUT,
        [(axum::http::header::CONNECTION, "close")],
        "The request body came too slowly.\n",
    )
        .into_response()
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
    let admission = Arc::new(Admission {
        epoch: Instant::now(),
        limits,
        open: Mutex::new(Vec::new()),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(listener = name, error = %err, "accepting a connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tracked, evicted) = admission.admit(peer.ip());
        if evicted.is_some() {
            metrics::counter!(crate::metrics::names::HTTP_CONNECTIONS_SHED, "listener" => name)
                .increment(1);
        }
        let _ = stream.set_nodelay(true);
        let service = {
            let router = router.clone();
            let tracked = Arc::clone(&tracked);
            let epoch = admission.epoch;
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let router = router.clone();
                let tracked = Arc::clone(&tracked);
                async move {
                    let response = match read_body_in_time(limits, request).await {
                        Ok(request) => router.oneshot(request).await,
                        Err(refusal) => Ok(refusal),
                    };
                    tracked.touch(epoch);
                    response
                }
            })
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let admission = Arc::clone(&admission);
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, malformed request).
            tokio::select! {
                _ = connection => {}
                () = tracked.evict.cancelled() => {}
            }
            admission.close(&tracked);
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
