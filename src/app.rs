//! The composition root: the only place that wires config, store, listeners and background
//! tasks together. [`Application::build`] opens and migrates the database and binds both
//! listeners (port 0 works, tests read the real ports); [`Application::run_until_stopped`] runs
//! everything until [`Shutdown`] says stop, then drains within the grace period.
//!
//! Owns no tables. Invariants: nothing is announced ready (`READY=1`) before both listeners
//! accept; on shutdown the public listener and background work stop first, the admin listener
//! last, so `/readyz` reports `shutting_down` while work drains; the grace period bounds the
//! whole drain and a second signal cuts it short.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::graph::GraphClient;
use crate::health::TaskHealth;
use crate::http::{self, admin::AdminState};
use crate::instance::{self, Instance};
use crate::intake::Intake;
use crate::jobs::{JobContext, Registry};
use crate::queue::Queue;
use crate::scheduler::Scheduler;
use crate::store::{Store, StoreError};
use crate::systemd::Notifier;
use crate::vault::identity::IdentityClient;
use crate::vault::tokens::TokenService;
use crate::vault::Keyring;
use crate::worker::WorkerPool;

/// How long a second stop signal waits for in-flight jobs to be handed back (released without
/// counting their attempt), which takes one database write each.
const FORCED_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long closing the database may take after the drain.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells a running application to stop; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    force: CancellationToken,
}

impl Shutdown {
    /// A fresh, untriggered shutdown signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Begin a graceful stop.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stop waiting for in-flight work (a second SIGTERM/SIGINT).
    pub fn force(&self) {
        self.force.cancel();
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// Why the application could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener address could not be bound.
    #[error("cannot listen on {address}: {reason}; choose another address with {flag} (or {key} in the configuration, TENANTD_{env})", env = key.to_ascii_uppercase().replace('.', "__"))]
    Bind {
        /// The config key naming the address.
        key: &'static str,
        /// The command-line flag that overrides it.
        flag: &'static str,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        reason: String,
    },
    /// The vault's key file is missing or malformed.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    /// The vault's keys do not open the stored secrets.
    #[error(transparent)]
    KeyCheck(#[from] crate::key_check::KeyCheckError),
    /// The configured subscriptions could not be recorded.
    #[error("subscriptions: {0}")]
    Subscriptions(#[from] crate::subscriptions::SubscriptionError),
    /// A background task stayed silent past `shutdown.stall_exit_seconds`.
    #[error("the {task} task has been stuck for more than {limit:?} past its promise; exiting so the supervisor restarts tenantd (shutdown.stall_exit_seconds)")]
    Stalled {
        /// The task's name.
        task: &'static str,
        /// How long past its promise it was silent.
        limit: Duration,
    },
    /// A listener stopped accepting connections on its own.
    #[error("the {listener} listener failed: {reason}")]
    Listener {
        /// `admin` or `public`.
        listener: &'static str,
        /// The I/O error.
        reason: String,
    },
}

/// A built, not yet running daemon.
pub struct Application {
    config: Config,
    store: Store,
    instance: Instance,
    admin: TcpListener,
    public: TcpListener,
    notifier: Notifier,
    tasks: TaskHealth,
    metrics: PrometheusHandle,
    keys: Arc<Keyring>,
    tokens: Arc<TokenService>,
}

async fn bind(
    key: &'static str,
    flag: &'static str,
    address: SocketAddr,
) -> Result<TcpListener, AppError> {
    TcpListener::bind(address)
        .await
        .map_err(|err| AppError::Bind {
            key,
            flag,
            address,
            reason: err.to_string(),
        })
}

impl Application {
    /// Opens and migrates the database, registers this instance and binds both listeners.
    ///
    /// # Errors
    /// [`AppError`] when the database or a listener address is unusable.
    pub async fn build(config: Config, notifier: Notifier) -> Result<Self, AppError> {
        let metrics = crate::metrics::recorder();
        let store = Store::connect(&config.database).await?;
        let applied = store.migrate().await?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "applied database migrations");
        }
        let admin = bind("admin.bind", "--admin-bind", config.admin.bind).await?;
        let public = bind("listener.bind", "--listener-bind", config.listener.bind).await?;
        let (keys, created) = Keyring::open_configured(&config.secrets.key_file)?;
        if created {
            tracing::warn!(
                secrets.key_file = %config.secrets.key_file.display(),
                "created a vault key file next to the data; in production keep keys apart (secrets.key_file)"
            );
        }
        // A key file that does not open the stored secrets must not look ready.
        crate::key_check::prove(&store, &keys).await?;
        let keys = Arc::new(keys);
        let tokens = Arc::new(TokenService::new(
            store.clone(),
            keys.clone(),
            IdentityClient::configured(&config),
        ));
        let configured =
            crate::subscriptions::sync_configured(&store, &keys, &config.subscriptions).await?;
        if configured > 0 && config.listener.public_url.is_none() {
            tracing::warn!(
                subscriptions = configured,
                "subscriptions are configured but listener.public_url is not: Graph has nowhere to post, so none can be created"
            );
        }
        let instance = Instance::register(&store).await?;
        Ok(Self {
            keys,
            tokens,
            config,
            store,
            instance,
            admin,
            public,
            notifier,
            tasks: TaskHealth::default(),
            metrics,
        })
    }

    /// Sets `listener.public_url` when the configuration has none (the demo: the public
    /// listener's own loopback address, known once it is bound). Must come before
    /// [`Application::run_until_stopped`], which hands it to the reconciles.
    pub fn default_public_url(&mut self, url: url::Url) {
        if self.config.listener.public_url.is_none() {
            self.config.listener.public_url = Some(url);
        }
    }

    /// `listener.public_url` as the reconciles use it (a reconcile queued from outside must
    /// name the same URL as the scheduled ones).
    pub fn reconcile_url(&self) -> Option<String> {
        reconcile_url(&self.config)
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The public listener's bound address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The vault keys.
    pub fn keys(&self) -> &Arc<Keyring> {
        &self.keys
    }

    /// The token service.
    pub fn tokens(&self) -> &Arc<TokenService> {
        &self.tokens
    }

    /// This process's instance id.
    pub fn instance_id(&self) -> &str {
        self.instance.id()
    }

    /// A worker pool like the one [`Application::run_until_stopped`] starts, owned by
    /// `owner`: for running the queue from outside the daemon's loop (tests, one-shot runs).
    pub fn worker_pool(&self, owner: &str) -> WorkerPool {
        let parts = Parts {
            config: &self.config,
            store: &self.store,
            keys: &self.keys,
            tokens: &self.tokens,
            instance: &self.instance,
            tasks: &self.tasks,
        };
        let queue = Queue::new(self.store.clone());
        worker_pool(&parts, queue, owner, CancellationToken::new())
    }

    /// Runs until `shutdown` stops it or a listener fails, then drains.
    ///
    /// # Errors
    /// [`AppError::Listener`] when a listener failed on its own; a requested stop is `Ok`.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), AppError> {
        let (admin_addr, public_addr) = (self.admin_addr(), self.public_addr());
        let Self {
            config,
            store,
            instance,
            admin,
            public,
            notifier,
            tasks,
            metrics,
            keys,
            tokens,
        } = self;
        let stopping = Arc::new(AtomicBool::new(false));
        let work_stop = CancellationToken::new();
        let admin_stop = CancellationToken::new();
        let (failed_tx, mut failed_rx) = mpsc::channel::<AppError>(2);

        let admin_state = AdminState {
            store: store.clone(),
            tasks: tasks.clone(),
            metrics: metrics.clone(),
            stopping: stopping.clone(),
        };
        // Both listeners admit connections under the same limits (`start_work` serves the
        // public one).
        let admin_task = tokio::spawn(serve_listener(
            "admin",
            admin,
            http::admin::router(admin_state),
            serve_limits(&config),
            admin_stop.clone(),
            failed_tx.clone(),
        ));
        let parts = Parts {
            config: &config,
            store: &store,
            keys: &keys,
            tokens: &tokens,
            instance: &instance,
            tasks: &tasks,
        };
        let work = start_work(
            &parts,
            public,
            metrics,
            &work_stop,
            failed_tx,
            shutdown.force.clone(),
        )
        .await;
        let notifier = Arc::new(notifier);
        let watchdog = start_watchdog(&notifier, &tasks, &admin_stop);

        tracing::info!(
            admin.addr = %admin_addr,
            public.addr = %public_addr,
            database.backend = store.backend().name(),
            instance.id = instance.id(),
            version = env!("CARGO_PKG_VERSION"),
            "tenantd is running"
        );
        notifier.ready(&format!(
            "listening: public {public_addr}, admin {admin_addr}"
        ));

        let outcome = tokio::select! {
            () = shutdown.stop.cancelled() => Ok(()),
            Some(err) = failed_rx.recv() => Err(err),
        };

        let grace = config.shutdown.grace();
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: no new work, draining"
        );
        stopping.store(true, Ordering::Relaxed);
        notifier.stopping("draining in-flight work");
        work_stop.cancel();
        drain(&work, grace, &shutdown.force).await;

        admin_stop.cancel();
        // The admin listener has nothing long-running; give it a moment, not the whole grace.
        let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        record_stop(&instance, &store).await;
        outcome
    }
}

/// Borrowed parts of a built daemon that the running tasks are made from.
struct Parts<'a> {
    config: &'a Config,
    store: &'a Store,
    keys: &'a Arc<Keyring>,
    tokens: &'a Arc<TokenService>,
    instance: &'a Instance,
    tasks: &'a TaskHealth,
}

/// Starts the work that `stop` ends and the drain waits for: the public listener and its
/// intake writer, the upkeep tasks, the scheduler (after the start-up jobs are queued), the
/// workers (`release_now` hands their running jobs back), the instance presence and the stall
/// guard. A listener that fails, or a stall past the limit, is sent on `failed`.
async fn start_work(
    parts: &Parts<'_>,
    public: TcpListener,
    metrics: PrometheusHandle,
    stop: &CancellationToken,
    failed: mpsc::Sender<AppError>,
    release_now: CancellationToken,
) -> TaskTracker {
    let work = TaskTracker::new();
    let queue = Queue::new(parts.store.clone());
    let (intake, intake_writer) = Intake::new(queue.clone());
    // Ends once the public listener (holding the intake) has stopped and its last
    // accepted notifications are written.
    work.spawn(intake_writer);
    work.spawn(serve_listener(
        "public",
        public,
        public_router(parts.config, parts.store, parts.keys, intake),
        serve_limits(parts.config),
        stop.clone(),
        failed.clone(),
    ));
    work.spawn(metrics_upkeep(metrics, parts.tasks.clone(), stop.clone()));
    work.spawn(queue_upkeep(
        parts.store.clone(),
        queue.clone(),
        parts.tasks.clone(),
        stop.clone(),
    ));
    let scheduler = Scheduler::new(parts.store.clone(), queue.clone(), schedules(parts.config));
    work.spawn(run_scheduler(scheduler, parts.tasks.clone(), stop.clone()));
    enqueue_start_up_jobs(&queue, parts.config).await;
    if parts.config.queue.workers > 0 {
        let pool = worker_pool(parts, queue, parts.instance.id(), release_now);
        let liveness = parts
            .tasks
            .register("workers", (pool.poll * 20).max(Duration::from_secs(30)));
        work.spawn(pool.run(stop.clone(), liveness));
    }
    work.spawn(instance_presence(
        parts.instance.clone(),
        parts.tasks.clone(),
        stop.clone(),
    ));
    if parts.config.shutdown.stall_exit_seconds > 0 {
        work.spawn(stall_guard(
            parts.tasks.clone(),
            Duration::from_secs(parts.config.shutdown.stall_exit_seconds),
            failed,
            stop.clone(),
        ));
    }
    work
}

/// Pings systemd's watchdog while every task is healthy, when systemd asked for it.
fn start_watchdog(
    notifier: &Arc<Notifier>,
    tasks: &TaskHealth,
    stop: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let interval = notifier.watchdog_interval()?;
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(watchdog_pings(
        notifier.clone(),
        tasks.clone(),
        interval,
        stop.clone(),
    )))
}

/// The instance's stop recorded and the database closed, each within its own bound.
async fn record_stop(instance: &Instance, store: &Store) {
    if let Err(err) = instance.mark_stopped().await {
        tracing::warn!(error = %err, reason = err.reason_code(), "could not record the stop");
    }
    if tokio::time::timeout(CLOSE_TIMEOUT, store.close())
        .await
        .is_err()
    {
        tracing::warn!("database connections did not close in time");
    }
    tracing::info!("stopped");
}

/// Waits for the spawned work to end: at most `grace`, or, after a second stop signal
/// (`force`), only as long as the workers take to hand their jobs back.
async fn drain(work: &TaskTracker, grace: Duration, force: &CancellationToken) {
    work.close();
    tokio::select! {
        () = work.wait() => tracing::info!("in-flight work finished"),
        () = tokio::time::sleep(grace) => tracing::warn!(
            tasks.left = work.len(),
            "grace period over; exiting with work still running"
        ),
        () = force.cancelled() => {
            // The workers hand their jobs back at once; wait for that, not for the jobs.
            tracing::warn!(tasks.left = work.len(), "second stop signal; handing in-flight jobs back and exiting");
            if tokio::time::timeout(FORCED_RELEASE_TIMEOUT, work.wait()).await.is_err() {
                tracing::warn!(tasks.left = work.len(), "exiting with work still running; its leases expire and the reaper retries it");
            }
        }
    }
}

/// The limits both listeners admit connections and read bodies under.
fn serve_limits(config: &Config) -> http::ServeLimits {
    http::ServeLimits {
        header_read_timeout: Duration::from_millis(config.listener.header_read_timeout_ms.max(1)),
        body_read_timeout: Duration::from_millis(config.listener.body_read_timeout_ms.max(1)),
        body_min_bytes_per_second: config.listener.body_min_bytes_per_second,
        max_body_bytes: http::webhooks::MAX_BODY_BYTES,
        max_connections: usize::try_from(config.listener.max_connections).unwrap_or(usize::MAX),
        max_connections_per_peer: usize::try_from(config.listener.max_connections_per_peer)
            .unwrap_or(usize::MAX),
    }
}

/// The public listener's routes: Graph's webhooks (checked against the subscriptions,
/// committed through `intake`) and the sign-in redirect.
fn public_router(
    config: &Config,
    store: &Store,
    keys: &Arc<Keyring>,
    intake: Intake,
) -> axum::Router {
    let webhooks = http::webhooks::WebhookState {
        checks: Arc::new(crate::subscriptions::CheckCache::new(
            store.clone(),
            keys.clone(),
        )),
        intake,
        counters: Arc::default(),
        tokens: Arc::new(crate::validation_tokens::TokenValidator::new(
            &config.identity.authority,
        )),
        refusals: Arc::default(),
    };
    http::public::router(
        webhooks,
        http::public::PublicState {
            store: store.clone(),
            keys: keys.clone(),
            identity: IdentityClient::configured(config),
            authority: config
                .identity
                .authority
                .as_str()
                .trim_end_matches('/')
                .to_string(),
            scope: config.identity.delegated_scopes.join(" "),
        },
    )
}

/// The public URL the subscription reconciles create subscriptions for, the same for the
/// start-up run and the scheduled ones.
fn reconcile_url(config: &Config) -> Option<String> {
    config
        .listener
        .public_url
        .as_ref()
        .map(|url| url.to_string())
}

/// The built-in schedules and the configured heartbeats.
fn schedules(config: &Config) -> Vec<crate::scheduler::Schedule> {
    let mut schedules =
        crate::scheduler::builtin(config.queue.retention_hours, reconcile_url(config));
    schedules.extend(crate::scheduler::heartbeats(&config.heartbeat));
    schedules
}

/// Subscriptions are reconciled at start, not only at the next minute, and orphans a crash
/// left at Graph are swept at start, not hours later. A failure is logged; the schedules
/// enqueue them again.
async fn enqueue_start_up_jobs(queue: &Queue, config: &Config) {
    let reconcile = crate::jobs::reconcile_subscriptions::ReconcileSubscriptions {
        public_url: reconcile_url(config),
    };
    if let Err(err) = crate::jobs::enqueue(queue, &reconcile).await {
        tracing::warn!(error = %err, reason = err.reason_code(), "could not enqueue the first subscription reconcile; the schedule will");
    }
    if let Err(err) = crate::jobs::enqueue(
        queue,
        &crate::jobs::sweep_subscriptions::SweepSubscriptions {},
    )
    .await
    {
        tracing::warn!(error = %err, reason = err.reason_code(), "could not enqueue the first orphan sweep; the schedule will");
    }
}

/// The worker pool the configuration asks for, its leases held by `owner`; `release_now`
/// hands running jobs back (a second stop signal).
fn worker_pool(
    parts: &Parts<'_>,
    queue: Queue,
    owner: &str,
    release_now: CancellationToken,
) -> WorkerPool {
    let config = parts.config;
    WorkerPool {
        queue: queue.clone(),
        registry: Arc::new(Registry::standard()),
        context: JobContext {
            attempt: 1,
            public_url: config
                .listener
                .public_url
                .as_ref()
                .map(|url| url.as_str().trim_end_matches('/').to_string()),
            store: parts.store.clone(),
            queue,
            tokens: parts.tokens.clone(),
            keys: parts.keys.clone(),
            graph: Arc::new(GraphClient::new(&config.graph, parts.tokens.clone())),
        },
        owner: owner.to_string(),
        concurrency: usize::try_from(config.queue.workers).unwrap_or(1),
        lease: Duration::from_secs(config.queue.lease_seconds.max(3)),
        poll: Duration::from_millis(config.queue.poll_interval_ms.max(10)),
        // Leave the app a moment to record releases before its own grace ends.
        grace: config
            .shutdown
            .grace()
            .saturating_sub(Duration::from_secs(1)),
        release_now,
    }
}

async fn serve_listener(
    listener_name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    limits: http::ServeLimits,
    stop: CancellationToken,
    failed: mpsc::Sender<AppError>,
) {
    if let Err(err) = http::serve(listener_name, listener, router, stop, limits).await {
        let _ = failed
            .send(AppError::Listener {
                listener: listener_name,
                reason: err.to_string(),
            })
            .await;
    }
}

/// Compacts histograms on a timer, as the Prometheus exporter requires.
async fn metrics_upkeep(handle: PrometheusHandle, tasks: TaskHealth, stop: CancellationToken) {
    let interval = crate::metrics::UPKEEP_INTERVAL;
    let liveness = tasks.register("metrics_upkeep", interval * 3);
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {
                handle.run_upkeep();
                liveness.beat();
            }
        }
    }
}

/// Keeps this instance's `last_seen_at` fresh. A failed write is logged, not fatal: the
/// database problem shows in `/readyz` on its own.
async fn instance_presence(instance: Instance, tasks: TaskHealth, stop: CancellationToken) {
    let interval = instance::HEARTBEAT_INTERVAL;
    let liveness = tasks.register("instance_presence", interval * 3);
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {
                if let Err(err) = instance.touch().await {
                    tracing::warn!(error = %err, reason = err.reason_code(), "recording this instance as present failed");
                }
                liveness.beat();
            }
        }
    }
}

/// How often the reaper looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_secs(15);
/// Rescues jobs whose lease expired, ends operation runs whose job ended unrecorded, and
/// updates the queue gauges.
async fn queue_upkeep(store: Store, queue: Queue, tasks: TaskHealth, stop: CancellationToken) {
    let liveness = tasks.register("queue_upkeep", REAP_INTERVAL * 3);
    let mut ticker = tokio::time::interval(REAP_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {
                match queue.reap().await {
                    Ok(reaped) if reaped.rescued + reaped.dead > 0 => tracing::warn!(rescued = reaped.rescued, dead = reaped.dead, "expired job leases reaped"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, reason = err.reason_code(), "reaping expired leases failed"),
                }
                match crate::runs::settle(&store, &queue).await {
                    Ok(0) => {}
                    Ok(settled) => tracing::warn!(settled, "operation runs ended with their jobs"),
                    Err(err) => tracing::warn!(error = %err, "settling operation runs failed"),
                }
                if let Ok(stats) = queue.stats().await {
                    for state in ["available", "running", "succeeded", "failed", "dead", "cancelled"] {
                        let count = stats.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                        #[allow(clippy::cast_precision_loss)]
                        metrics::gauge!(crate::metrics::names::QUEUE_JOBS, "state" => state).set(count as f64);
                    }
                }
                liveness.beat();
            }
        }
    }
}

/// Enqueues scheduled jobs when their time comes (token sweep, pruning, ...).
async fn run_scheduler(scheduler: Scheduler, tasks: TaskHealth, stop: CancellationToken) {
    const MAX_SLEEP: Duration = Duration::from_secs(30);
    let liveness = tasks.register("scheduler", MAX_SLEEP * 3);
    loop {
        let now = chrono::Utc::now();
        match scheduler.tick(now).await {
            Ok(0) => {}
            Ok(enqueued) => tracing::debug!(enqueued, "scheduled jobs enqueued"),
            Err(err) => tracing::warn!(error = %err, "scheduler tick failed"),
        }
        liveness.beat();
        let wait = scheduler.sleep_until_next(chrono::Utc::now(), MAX_SLEEP);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
        }
    }
}

/// How often the stall guard looks.
const STALL_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Ends the daemon with an error (exit 1, so the supervisor restarts it) when a background
/// task stays silent `limit` past what it promised: `/readyz` has said `task_stalled` all that
/// time, and a stuck task does not come back by itself.
async fn stall_guard(
    tasks: TaskHealth,
    limit: Duration,
    failed: mpsc::Sender<AppError>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(STALL_CHECK_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {
                if let Some(task) = tasks.stalled_past(limit) {
                    let _ = failed.send(AppError::Stalled { task, limit }).await;
                    break;
                }
            }
        }
    }
}

/// Pings the systemd watchdog while every background task is alive. A database outage does not
/// stop the pings (a restart would not fix it; `/readyz` reports it); a stalled or dead task
/// does, so systemd restarts a daemon that is stuck.
async fn watchdog_pings(
    notifier: Arc<Notifier>,
    tasks: TaskHealth,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {
                let problems = tasks.problems();
                if problems.is_empty() {
                    notifier.watchdog_ping();
                } else {
                    tracing::error!(problems = ?problems, "background tasks unhealthy; withholding watchdog ping");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn drain(socket: &UnixDatagram) -> usize {
        let mut buf = [0u8; 64];
        let mut pings = 0;
        while let Ok(n) = socket.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1");
            pings += 1;
        }
        pings
    }

    /// Moves paused time forward in 100 ms steps, letting the watchdog task run at each.
    async fn advance(by: Duration) {
        let step = Duration::from_millis(100);
        let mut left = by;
        while !left.is_zero() {
            tokio::task::yield_now().await;
            let now = step.min(left);
            tokio::time::advance(now).await;
            left -= now;
        }
        tokio::task::yield_now().await;
    }

    /// A task stuck past the limit ends the daemon with `Stalled`, which the CLI turns into
    /// exit 1 (the supervisor restarts); while it beats, nothing happens.
    #[tokio::test(start_paused = true)]
    async fn a_task_stuck_past_the_limit_ends_the_daemon() {
        let tasks = TaskHealth::default();
        let liveness = tasks.register("workers", Duration::from_secs(30));
        let (failed_tx, mut failed_rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let guard = tokio::spawn(stall_guard(
            tasks.clone(),
            Duration::from_secs(60),
            failed_tx,
            stop.clone(),
        ));
        for _ in 0..30 {
            tokio::time::advance(Duration::from_secs(10)).await;
            liveness.beat();
            tokio::task::yield_now().await;
        }
        assert!(
            failed_rx.try_recv().is_err(),
            "a beating task is left alone"
        );
        tokio::time::advance(Duration::from_secs(100)).await;
        let failed = tokio::time::timeout(Duration::from_secs(10), failed_rx.recv())
            .await
            .expect("the guard reports")
            .expect("an error");
        assert!(
            matches!(
                failed,
                AppError::Stalled {
                    task: "workers",
                    ..
                }
            ),
            "{failed}"
        );
        guard.await.unwrap();
        drop(liveness);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_pings_while_tasks_are_alive_and_stops_when_one_stalls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        let notifier = Arc::new(Notifier::for_socket(&path, Some(Duration::from_secs(1))));
        let tasks = TaskHealth::default();
        let beat = tasks.register("worker", Duration::from_secs(2));
        let stop = CancellationToken::new();
        let interval = notifier.watchdog_interval().unwrap();
        assert_eq!(interval, Duration::from_millis(500));
        tokio::spawn(watchdog_pings(
            notifier,
            tasks.clone(),
            interval,
            stop.clone(),
        ));

        advance(Duration::from_millis(1600)).await;
        assert!(drain(&socket) >= 3, "pings while healthy");

        // The task stops beating: once it is past its promise, pings stop.
        advance(Duration::from_secs(3)).await;
        drain(&socket);
        advance(Duration::from_secs(3)).await;
        assert_eq!(drain(&socket), 0, "no pings while a task is stalled");

        // It recovers: pings resume.
        beat.beat();
        advance(Duration::from_millis(1100)).await;
        assert!(drain(&socket) >= 1, "pings resume after recovery");
        stop.cancel();
    }
}
