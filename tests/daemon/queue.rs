//! The durable queue on both databases: dedupe, leases and their rescue, fencing, retries and
//! dead letter, fairness, two instances sharing one queue, pruning.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use tenantd::queue::{Enqueued, JobState, NewJob, Queue};

use crate::helpers::TestDb;
use crate::on_both_backends;

const LEASE: Duration = Duration::from_secs(30);

fn job(kind: &str, tenant: &str, dedupe: Option<&str>) -> NewJob {
    NewJob {
        kind: kind.into(),
        payload: json!({"n": 1}),
        tenant_id: tenant.into(),
        dedupe_key: dedupe.map(str::to_string),
        priority: 0,
        run_at: None,
        max_attempts: 3,
    }
}

async fn queue(db: &TestDb) -> Queue {
    let store = db.store().await;
    store.migrate().await.unwrap();
    Queue::new(store)
}

async fn dedupe_holds_among_unfinished_jobs_only(db: TestDb) {
    let queue = queue(&db).await;
    let first = queue
        .enqueue(&job("sync", "t1", Some("sync:t1")))
        .await
        .unwrap();
    assert!(matches!(first, Enqueued::Created(_)));
    let again = queue
        .enqueue(&job("sync", "t1", Some("sync:t1")))
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Deduplicated(first.id().to_string()));
    assert!(
        matches!(
            queue
                .enqueue(&job("other", "t1", Some("sync:t1")))
                .await
                .unwrap(),
            Enqueued::Created(_)
        ),
        "keys are per kind"
    );
    let claimed = queue.claim("w1", 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let sync = claimed.iter().find(|j| j.kind == "sync").unwrap();
    assert_eq!(sync.payload, json!({"n": 1}));
    assert_eq!(sync.attempt, 1);
    assert_eq!(
        queue
            .enqueue(&job("sync", "t1", Some("sync:t1")))
            .await
            .unwrap(),
        Enqueued::Deduplicated(first.id().to_string()),
        "running counts as unfinished"
    );
    assert!(queue.complete(sync).await.unwrap());
    assert!(
        matches!(
            queue
                .enqueue(&job("sync", "t1", Some("sync:t1")))
                .await
                .unwrap(),
            Enqueued::Created(_)
        ),
        "a finished job frees its key"
    );
}

async fn expired_leases_are_rescued_and_stale_workers_fenced_off(db: TestDb) {
    let queue = queue(&db).await;
    queue.enqueue(&job("slow", "t1", None)).await.unwrap();
    let stale = queue.claim("w1", 1, LEASE).await.unwrap().remove(0);
    assert!(
        queue.claim("w2", 1, LEASE).await.unwrap().is_empty(),
        "leased jobs are not claimed twice"
    );
    assert_eq!(
        queue.reap().await.unwrap().rescued,
        0,
        "a live lease is left alone"
    );
    // The worker stops renewing: its lease runs out (moved into the past, not waited for).
    db.execute("UPDATE jobs SET lease_expires_at = 0").await;
    let reaped = queue.reap().await.unwrap();
    assert_eq!((reaped.rescued, reaped.dead), (1, 0));
    let fresh = queue.claim("w2", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(fresh.attempt, 2);
    assert!(
        !queue.renew(&stale, LEASE).await.unwrap(),
        "the stale worker lost its lease"
    );
    assert!(
        !queue.complete(&stale).await.unwrap(),
        "the stale worker cannot overwrite the new owner's result"
    );
    assert!(!queue.retry(&stale, "x", "x", Duration::ZERO).await.unwrap());
    assert!(queue.renew(&fresh, LEASE).await.unwrap());
    assert!(queue.complete(&fresh).await.unwrap());
    assert_eq!(
        queue.stats().await.unwrap(),
        vec![("succeeded".to_string(), 1)]
    );
}

async fn retries_back_off_and_dead_letter_after_the_last_attempt(db: TestDb) {
    let queue = queue(&db).await;
    let mut new = job("flaky", "t1", None);
    new.max_attempts = 2;
    let id = queue.enqueue(&new).await.unwrap().id().to_string();
    let first = queue.claim("w", 1, LEASE).await.unwrap().remove(0);
    assert!(queue
        .retry(
            &first,
            "throttled",
            "429 from Graph",
            Duration::from_secs(3600)
        )
        .await
        .unwrap());
    assert!(
        queue.claim("w", 1, LEASE).await.unwrap().is_empty(),
        "not before its backoff"
    );
    db.execute(&format!("UPDATE jobs SET run_at = 0 WHERE id = '{id}'"))
        .await;
    let second = queue.claim("w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(second.attempt, 2);
    assert!(queue
        .retry(&second, "transient", "503", Duration::ZERO)
        .await
        .unwrap());
    let dead = queue.list(JobState::Dead, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].id.as_str(),
            dead[0].last_reason.as_deref(),
            dead[0].attempts
        ),
        (id.as_str(), Some("transient"), 2)
    );
    assert!(
        queue.claim("w", 1, LEASE).await.unwrap().is_empty(),
        "dead jobs are not claimed"
    );
    assert!(queue.retry_now(&id).await.unwrap());
    let again = queue.claim("w", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(again.attempt, 1, "an operator retry starts fresh");
    assert!(queue
        .fail(&again, "permanent", "400 from Graph")
        .await
        .unwrap());
    assert_eq!(queue.list(JobState::Failed, 10).await.unwrap().len(), 1);
    // Out of attempts while leased: the reaper dead-letters it.
    let mut once = job("once", "t1", None);
    once.max_attempts = 1;
    queue.enqueue(&once).await.unwrap();
    queue.claim("w", 1, LEASE).await.unwrap();
    db.execute("UPDATE jobs SET lease_expires_at = 0 WHERE kind = 'once'")
        .await;
    assert_eq!(queue.reap().await.unwrap().dead, 1);
}

async fn a_large_backlog_does_not_starve_a_small_tenant(db: TestDb) {
    let queue = queue(&db).await;
    let bulk = if db.is_postgres() {
        "INSERT INTO jobs (id, kind, payload, tenant_id, priority, run_at, max_attempts, created_at, updated_at) \
         SELECT 'a' || i, 'noop', '{}', 'big', 0, 0, 3, 0, 0 FROM generate_series(1, 100000) AS i"
    } else {
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
         INSERT INTO jobs (id, kind, payload, tenant_id, priority, run_at, max_attempts, created_at, updated_at) \
         SELECT 'a' || i, 'noop', '{}', 'big', 0, 0, 3, 0, 0 FROM n"
    };
    db.execute(bulk).await;
    for _ in 0..10 {
        queue.enqueue(&job("noop", "small", None)).await.unwrap();
    }
    let claimed = queue.claim("w", 20, LEASE).await.unwrap();
    let small = claimed.iter().filter(|j| j.tenant_id == "small").count();
    assert_eq!(
        small, 10,
        "the small tenant's jobs come in the first batch, round-robin with the big one"
    );
}

async fn claims_go_round_the_tenants_and_lanes_with_nothing_ready_block_nobody(db: TestDb) {
    let queue = queue(&db).await;
    // Tenant `a` has a waiting job far in the future only; b, c and d have work now.
    let mut later = job("noop", "a", None);
    later.run_at = Some(i64::MAX / 2);
    queue.enqueue(&later).await.unwrap();
    for tenant in ["b", "c", "d"] {
        for _ in 0..4 {
            queue.enqueue(&job("noop", tenant, None)).await.unwrap();
        }
    }
    // Within a tenant the highest priority goes first, even though it was enqueued last.
    let mut urgent = job("urgent", "c", None);
    urgent.priority = 5;
    queue.enqueue(&urgent).await.unwrap();

    let mut order = Vec::new();
    for _ in 0..6 {
        let claimed = queue.claim("w", 1, LEASE).await.unwrap();
        assert_eq!(
            claimed.len(),
            1,
            "a ready job exists, so a claim of one gets one"
        );
        order.push((claimed[0].tenant_id.clone(), claimed[0].kind.clone()));
    }
    let tenants: Vec<&str> = order.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        tenants,
        ["b", "c", "d", "b", "c", "d"],
        "one at a time, round the tenants"
    );
    assert_eq!(order[1].1, "urgent", "c's first job is its urgent one");

    // Left: b 2, c 3, d 2. A claim of 5 starts after d: a, b, c, d get shares of 2, 1, 1, 1;
    // `a` has nothing ready, so its share goes round again to the lanes that filled theirs.
    let batch = queue.claim("w", 5, LEASE).await.unwrap();
    let count = |tenant: &str| batch.iter().filter(|j| j.tenant_id == tenant).count();
    assert_eq!((count("b"), count("c"), count("d")), (2, 2, 1));
    // What is left (c 1, d 1): a big claim takes all of it and nothing from `a`.
    let rest = queue.claim("w", 50, LEASE).await.unwrap();
    let mut tenants: Vec<&str> = rest.iter().map(|j| j.tenant_id.as_str()).collect();
    tenants.sort_unstable();
    assert_eq!(tenants, ["c", "d"]);
    assert!(queue.claim("w", 50, LEASE).await.unwrap().is_empty());
}

async fn two_instances_share_one_queue_without_running_a_job_twice(db: TestDb) {
    let first = queue(&db).await;
    let second = Queue::new(db.store().await);
    for n in 0..200 {
        first
            .enqueue(&job("noop", &format!("t{}", n % 7), None))
            .await
            .unwrap();
    }
    // Both claim their first batch before either goes on, so both take part however the
    // scheduler orders them.
    let both_started = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let worker = |queue: Queue, owner: &'static str| {
        let both_started = both_started.clone();
        async move {
            let mut seen = Vec::new();
            let mut first = true;
            loop {
                let batch = queue.claim(owner, 7, LEASE).await.unwrap();
                if std::mem::take(&mut first) {
                    both_started.wait().await;
                }
                if batch.is_empty() {
                    break;
                }
                for job in batch {
                    assert!(queue.complete(&job).await.unwrap());
                    seen.push(job.id);
                }
            }
            seen
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(worker(first.clone(), "instance-a")),
        tokio::spawn(worker(second, "instance-b"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let all: HashSet<&String> = a.iter().chain(b.iter()).collect();
    assert_eq!(a.len() + b.len(), 200, "every job ran exactly once");
    assert_eq!(all.len(), 200);
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both instances worked: {} / {}",
        a.len(),
        b.len()
    );
}

async fn finished_jobs_are_pruned_after_retention_and_cancel_only_touches_waiting_jobs(db: TestDb) {
    let queue = queue(&db).await;
    let mut later = job("later", "t", None);
    later.run_at = Some(i64::MAX / 2);
    let waiting = queue.enqueue(&later).await.unwrap().id().to_string();
    queue.enqueue(&job("now", "t", None)).await.unwrap();
    let running = queue.claim("w", 1, LEASE).await.unwrap().remove(0);
    assert!(
        !queue.cancel(&running.id).await.unwrap(),
        "a running job is not cancelled under its worker"
    );
    assert!(queue.cancel(&waiting).await.unwrap());
    assert!(queue.complete(&running).await.unwrap());
    assert_eq!(
        queue.prune(Duration::from_secs(3600)).await.unwrap(),
        0,
        "inside retention"
    );
    db.execute("UPDATE jobs SET finished_at = 1").await;
    assert_eq!(queue.prune(Duration::from_secs(3600)).await.unwrap(), 2);
    assert!(queue.stats().await.unwrap().is_empty());
}

/// One reconcile at a time: the start-up run and the scheduled ones share the kind's dedupe
/// key, so a fire while one is unfinished is that one (two at once raced each other: issue 17);
/// once it finished the next fire runs again.
async fn a_scheduled_reconcile_while_one_is_unfinished_is_that_one(db: TestDb) {
    let store = db.store().await;
    store.migrate().await.unwrap();
    let queue = Queue::new(store.clone());
    let reconcile =
        tenantd::jobs::reconcile_subscriptions::ReconcileSubscriptions { public_url: None };
    tenantd::jobs::enqueue(&queue, &reconcile).await.unwrap();
    let scheduler =
        tenantd::scheduler::Scheduler::new(store, queue, tenantd::scheduler::builtin(168, None));
    let t0 = "2026-12-03T10:00:00Z"
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();
    scheduler.tick(t0).await.unwrap();
    scheduler
        .tick(t0 + chrono::Duration::seconds(61))
        .await
        .unwrap();
    let count = || async {
        db.strings("SELECT CAST(count(*) AS TEXT) FROM jobs WHERE kind = 'reconcile_subscriptions'")
            .await
            .remove(0)
    };
    assert_eq!(
        count().await,
        "1",
        "the scheduled fire is the unfinished start-up run"
    );
    db.execute("UPDATE jobs SET state = 'succeeded', finished_at = 1 WHERE kind = 'reconcile_subscriptions'")
        .await;
    scheduler
        .tick(t0 + chrono::Duration::seconds(121))
        .await
        .unwrap();
    assert_eq!(count().await, "2", "after it finished, the next fire runs");
}

on_both_backends!(
    a_scheduled_reconcile_while_one_is_unfinished_is_that_one,
    dedupe_holds_among_unfinished_jobs_only,
    expired_leases_are_rescued_and_stale_workers_fenced_off,
    retries_back_off_and_dead_letter_after_the_last_attempt,
    a_large_backlog_does_not_starve_a_small_tenant,
    claims_go_round_the_tenants_and_lanes_with_nothing_ready_block_nobody,
    two_instances_share_one_queue_without_running_a_job_twice,
    finished_jobs_are_pruned_after_retention_and_cancel_only_touches_waiting_jobs,
    the_queue_commands_show_retry_and_cancel_jobs,
    bulk_enqueue_and_batched_completion,
    payloads_come_back_exactly_as_enqueued,
    a_batch_writer_commits_whole_batches_or_nothing_and_recovers,
    batches_of_every_size_insert_each_row_once_with_its_own_fields,
);

mod workers {
    use std::sync::Arc;
    use std::time::Duration;

    use serde::{Deserialize, Serialize};
    use tenantd::jobs::{self, Job, JobContext, JobError, Registry};
    use tenantd::queue::{JobState, Queue};
    use tenantd::worker::WorkerPool;
    use tokio_util::sync::CancellationToken;

    use crate::helpers::{spawn_app, TestDb};
    use crate::on_both_backends;

    #[derive(Serialize, Deserialize)]
    struct Throttled;
    impl Job for Throttled {
        const KIND: &'static str = "test_throttled";
        async fn run(self, _: JobContext) -> Result<(), JobError> {
            Err(JobError::Retry {
                reason: "throttled",
                message: "429".into(),
                after: Some(Duration::from_secs(3600)),
            })
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Broken;
    impl Job for Broken {
        const KIND: &'static str = "test_broken";
        async fn run(self, _: JobContext) -> Result<(), JobError> {
            Err(JobError::Permanent {
                reason: "bad_request",
                message: "400".into(),
            })
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Sleepy {
        millis: u64,
    }
    impl Job for Sleepy {
        const KIND: &'static str = "test_sleepy";
        async fn run(self, _: JobContext) -> Result<(), JobError> {
            tokio::time::sleep(Duration::from_millis(self.millis)).await;
            Ok(())
        }
    }

    /// Writes to the store, one short transaction after another, for `millis`: a job that is
    /// inside a transaction at almost any instant (as a reconcile of thousands of
    /// subscriptions is).
    #[derive(Serialize, Deserialize)]
    struct BusyWriter {
        millis: u64,
    }
    impl Job for BusyWriter {
        const KIND: &'static str = "test_busy_writer";
        async fn run(self, context: JobContext) -> Result<(), JobError> {
            let until = tokio::time::Instant::now() + Duration::from_millis(self.millis);
            let mut written = 0_u32;
            while tokio::time::Instant::now() < until {
                context
                    .queue
                    .enqueue(&tenantd::queue::NewJob {
                        kind: "test_written".into(),
                        payload: serde_json::json!({ "n": written }),
                        tenant_id: String::new(),
                        dedupe_key: None,
                        priority: 0,
                        run_at: Some(i64::MAX / 2),
                        max_attempts: 1,
                    })
                    .await
                    .map_err(JobError::database)?;
                written += 1;
            }
            Ok(())
        }
    }

    async fn pool(db: &TestDb, lease: Duration, grace: Duration) -> (Queue, WorkerPool) {
        let store = db.store().await;
        store.migrate().await.unwrap();
        let queue = Queue::new(store.clone());
        let mut registry = Registry::standard();
        registry.register::<Throttled>();
        registry.register::<Broken>();
        registry.register::<Sleepy>();
        registry.register::<BusyWriter>();
        let keys = Arc::new(
            tenantd::vault::Keyring::parse(
                std::path::Path::new("k"),
                &tenantd::vault::Keyring::new_key_line("k1"),
            )
            .unwrap(),
        );
        // No job here asks for tokens; the authority is never reached.
        let identity = tenantd::vault::identity::IdentityClient::new(
            url::Url::parse("http://127.0.0.1:9").unwrap(),
        );
        let tokens = Arc::new(tenantd::vault::tokens::TokenService::new(
            store.clone(),
            keys,
            identity,
        ));
        let pool = WorkerPool {
            queue: queue.clone(),
            registry: Arc::new(registry),
            context: tenantd::jobs::JobContext {
                attempt: 1,
                public_url: None,
                queue: queue.clone(),
                ..crate::helpers::job_context(&store, tokens)
            },
            owner: "test-worker".into(),
            concurrency: 4,
            lease,
            poll: Duration::from_millis(20),
            grace,
            release_now: Default::default(),
        };
        (queue, pool)
    }

    /// Runs `pool` in a task (its heartbeat may stay silent for `silence`); cancel the token to
    /// stop it.
    fn start(
        pool: WorkerPool,
        silence: Duration,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let health = tenantd::health::TaskHealth::default();
        let running = tokio::spawn(pool.run(stop.clone(), health.register("workers", silence)));
        (stop, running)
    }

    async fn wait_for(
        queue: &Queue,
        state: JobState,
        count: usize,
    ) -> Vec<tenantd::queue::JobInfo> {
        for _ in 0..250 {
            let jobs = queue.list(state, 100).await.unwrap();
            if jobs.len() >= count {
                return jobs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no {count} {state:?} jobs in 5 s: {:?}",
            queue.stats().await.unwrap()
        );
    }

    async fn the_daemon_runs_queued_jobs(db: TestDb) {
        let app = spawn_app(&db).await;
        let queue = Queue::new(db.store().await);
        for _ in 0..5 {
            jobs::enqueue(&queue, &jobs::noop::Noop::default())
                .await
                .unwrap();
        }
        queue
            .enqueue(&tenantd::queue::NewJob {
                kind: "nobody_knows".into(),
                payload: serde_json::json!({}),
                tenant_id: String::new(),
                dedupe_key: None,
                priority: 0,
                run_at: None,
                max_attempts: 3,
            })
            .await
            .unwrap();
        wait_for(&queue, JobState::Succeeded, 5).await;
        let failed = wait_for(&queue, JobState::Failed, 1).await;
        assert_eq!(failed[0].last_reason.as_deref(), Some("unknown_job_kind"));
        app.stop().await.unwrap();
    }

    async fn outcomes_are_recorded_without_sleeping_on_throttled_jobs(db: TestDb) {
        let (queue, pool) = pool(&db, Duration::from_secs(30), Duration::from_secs(5)).await;
        jobs::enqueue(&queue, &Throttled).await.unwrap();
        jobs::enqueue(&queue, &Broken).await.unwrap();
        let (stop, running) = start(pool, Duration::from_secs(60));
        let failed = wait_for(&queue, JobState::Failed, 1).await;
        assert_eq!(failed[0].last_reason.as_deref(), Some("bad_request"));
        let throttled = loop {
            let available = queue.list(JobState::Available, 10).await.unwrap();
            if let Some(job) = available.into_iter().find(|j| j.last_reason.is_some()) {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let now_ms = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        assert!(
            throttled.run_at >= now_ms + 3_500_000,
            "Retry-After of an hour is honoured: run_at {}",
            throttled.run_at
        );
        assert_eq!(throttled.last_reason.as_deref(), Some("throttled"));
        stop.cancel();
        running.await.unwrap();
    }

    async fn leases_are_renewed_while_a_job_runs(db: TestDb) {
        let (queue, pool) = pool(&db, Duration::from_millis(1500), Duration::from_secs(5)).await;
        jobs::enqueue(&queue, &Sleepy { millis: 2500 })
            .await
            .unwrap();
        let (stop, running) = start(pool, Duration::from_secs(60));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert_eq!(
                queue.reap().await.unwrap().rescued,
                0,
                "a renewed lease never expires"
            );
        }
        let done = wait_for(&queue, JobState::Succeeded, 1).await;
        assert_eq!(done[0].attempts, 1);
        stop.cancel();
        running.await.unwrap();
    }

    /// The wedge of issue #17: a lease renewal that fired while the job was inside a SQLite
    /// transaction waited for the write turn the job held, while the job (not polled during
    /// the renewal) could never take the acknowledgement of its BEGIN or COMMIT from sqlx's
    /// connection thread: every writer of the process stopped for good. Renewals every 50 ms
    /// over two seconds of continuous writes met that moment within a few ticks.
    async fn a_lease_renewal_never_waits_on_the_job_it_renews(db: TestDb) {
        let (queue, pool) = pool(&db, Duration::from_millis(150), Duration::from_secs(5)).await;
        jobs::enqueue(&queue, &BusyWriter { millis: 2000 })
            .await
            .unwrap();
        let (stop, running) = start(pool, Duration::from_secs(60));
        let done = wait_for(&queue, JobState::Succeeded, 1).await;
        assert_eq!(done[0].kind, "test_busy_writer");
        assert_eq!(done[0].attempts, 1, "the lease was held throughout");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the pool stops")
            .unwrap();
    }

    /// Claimed ahead, a job that waits for a slot past half its lease is handed back (its
    /// attempt not counted) instead of being started with a lease about to lapse: no lease
    /// ever expires, and each job runs once, on its first attempt.
    async fn a_job_claimed_ahead_that_waited_too_long_is_handed_back(db: TestDb) {
        let (queue, mut pool) = pool(&db, Duration::from_millis(900), Duration::from_secs(5)).await;
        pool.concurrency = 1;
        for _ in 0..3 {
            jobs::enqueue(&queue, &Sleepy { millis: 1500 })
                .await
                .unwrap();
        }
        let (stop, running) = start(pool, Duration::from_secs(60));
        // Kept waiting unrenewed behind 1.5 s jobs, a waiting job's lease (900 ms) would lapse
        // and the reaper would take it: it must be handed back before a slot frees.
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            assert_eq!(queue.reap().await.unwrap().rescued, 0, "no lease lapsed");
            if queue.list(JobState::Succeeded, 10).await.unwrap().len() == 3 {
                break;
            }
        }
        let done = wait_for(&queue, JobState::Succeeded, 3).await;
        assert!(
            done.iter().all(|job| job.attempts == 1),
            "each ran once, its hand-back not counted: {done:?}"
        );
        stop.cancel();
        running.await.unwrap();
    }

    async fn on_stop_unfinished_jobs_are_released_after_the_grace_period(db: TestDb) {
        let (queue, pool) = pool(&db, Duration::from_secs(30), Duration::from_millis(200)).await;
        jobs::enqueue(&queue, &Sleepy { millis: 60_000 })
            .await
            .unwrap();
        jobs::enqueue(&queue, &Sleepy { millis: 10 }).await.unwrap();
        let (stop, running) = start(pool, Duration::from_secs(60));
        wait_for(&queue, JobState::Succeeded, 1).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the pool stops within its grace")
            .unwrap();
        let released = queue.list(JobState::Available, 10).await.unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(
            released[0].attempts, 0,
            "a released job does not lose an attempt"
        );
    }

    /// A second SIGTERM/SIGINT (`release_now`) cuts the grace short but still hands every
    /// running job back: released, its attempt not counted, nothing left `running`.
    async fn a_second_stop_signal_hands_running_jobs_back_at_once(db: TestDb) {
        let (queue, pool) = pool(&db, Duration::from_secs(30), Duration::from_secs(600)).await;
        let release_now = pool.release_now.clone();
        jobs::enqueue(&queue, &Sleepy { millis: 60_000 })
            .await
            .unwrap();
        let (stop, running) = start(pool, Duration::from_secs(60));
        wait_for(&queue, JobState::Running, 1).await;
        stop.cancel();
        release_now.cancel();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the pool stops at once, not after its 600 s grace")
            .unwrap();
        assert!(queue.list(JobState::Running, 10).await.unwrap().is_empty());
        let released = queue.list(JobState::Available, 10).await.unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].attempts, 0, "the attempt is not burned");
    }

    async fn an_idle_pool_wakes_for_new_work_without_waiting_for_its_poll(db: TestDb) {
        let (queue, mut pool) = pool(&db, Duration::from_secs(30), Duration::from_secs(5)).await;
        pool.poll = Duration::from_secs(3600);
        let (stop, running) = start(pool, Duration::from_secs(7200));
        // The first job is enqueued in process (the in-process wake-up, both backends).
        jobs::enqueue(&queue, &Sleepy { millis: 1 }).await.unwrap();
        wait_for(&queue, JobState::Succeeded, 1).await;
        // Let the pool go idle (its next claim finds nothing; it waits up to an hour).
        tokio::time::sleep(Duration::from_millis(300)).await;
        if db.is_postgres() {
            // Another system inserts a job in its own transaction: the trigger's NOTIFY wakes
            // the pool.
            db.execute(
                "INSERT INTO jobs (id, kind, payload, tenant_id, run_at, max_attempts, created_at, updated_at) \
                 VALUES ('outside', 'test_sleepy', '{\"millis\": 1}', '', 0, 3, 0, 0)",
            )
            .await;
        } else {
            jobs::enqueue(&queue, &Sleepy { millis: 1 }).await.unwrap();
        }
        wait_for(&queue, JobState::Succeeded, 2).await;
        stop.cancel();
        running.await.unwrap();
    }

    /// `run_until_empty` (the tests' way to wait for work) returns once nothing is due or
    /// running: every due job has its outcome; a retry and a job scheduled later are left.
    async fn run_until_empty_finishes_due_work_and_leaves_later_work(db: TestDb) {
        let (queue, pool) = pool(&db, Duration::from_secs(30), Duration::from_secs(5)).await;
        for n in 0..40 {
            jobs::enqueue(&queue, &Sleepy { millis: n % 7 })
                .await
                .unwrap();
        }
        jobs::enqueue(&queue, &Throttled).await.unwrap();
        jobs::enqueue(&queue, &Broken).await.unwrap();
        let mut later = jobs::new_job(&Sleepy { millis: 0 });
        later.run_at = Some(tenantd::clock::now_unix_ms() + 3_600_000);
        queue.enqueue(&later).await.unwrap();
        pool.run_until_empty().await.unwrap();
        let stats = queue.stats().await.unwrap();
        assert_eq!(
            stats,
            [
                ("available".to_string(), 2),
                ("failed".to_string(), 1),
                ("succeeded".to_string(), 40)
            ],
            "40 done, the broken one failed, the throttled one and the later one wait"
        );
        assert_eq!(queue.due_or_running().await.unwrap(), 0);
    }

    on_both_backends!(
        run_until_empty_finishes_due_work_and_leaves_later_work,
        the_daemon_runs_queued_jobs,
        an_idle_pool_wakes_for_new_work_without_waiting_for_its_poll,
        outcomes_are_recorded_without_sleeping_on_throttled_jobs,
        leases_are_renewed_while_a_job_runs,
        a_lease_renewal_never_waits_on_the_job_it_renews,
        a_job_claimed_ahead_that_waited_too_long_is_handed_back,
        on_stop_unfinished_jobs_are_released_after_the_grace_period,
        a_second_stop_signal_hands_running_jobs_back_at_once,
    );
}

async fn bulk_enqueue_and_batched_completion(db: TestDb) {
    let queue = queue(&db).await;
    let mut jobs: Vec<NewJob> = (0..2500)
        .map(|n| job("noop", &format!("t{}", n % 5), None))
        .collect();
    jobs.push(job("sync", "t1", Some("k")));
    jobs.push(job("sync", "t1", Some("k")));
    assert_eq!(
        queue.enqueue_many(&jobs).await.unwrap(),
        2501,
        "a taken dedupe key is skipped"
    );
    let claimed = queue.claim("w", 100, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 100);
    // Two claims, so two lease tokens, completed in one batch.
    let mut claimed = claimed;
    claimed.extend(queue.claim("w2", 10, LEASE).await.unwrap());
    assert_eq!(claimed.len(), 110);
    assert!(queue
        .complete_each(&claimed)
        .await
        .unwrap()
        .iter()
        .all(|held| *held));
    assert!(
        queue
            .complete_each(&claimed)
            .await
            .unwrap()
            .iter()
            .all(|held| !held),
        "completion is fenced by the lease"
    );
    assert_eq!(
        queue.list(JobState::Succeeded, 1000).await.unwrap().len(),
        110
    );
}

/// Payloads go through the batch inserts (`jsonb_each` on SQLite, text arrays on PostgreSQL):
/// escapes, non-ASCII text, integers past 2^53 and nesting come back as they went in.
async fn payloads_come_back_exactly_as_enqueued(db: TestDb) {
    let queue = queue(&db).await;
    let payload = json!({
        "text": "quote \" backslash \\ newline \n tab \t nul \u{0} é ✓ 𝄞",
        "big": 9_007_199_254_740_993_u64,
        "negative": -42,
        "float": 1.5e300,
        "nested": {"list": [1, "two", null, true, {"deep": []}]},
        "empty": ""
    });
    let mut single = job("fidelity", "t1", None);
    single.payload = payload.clone();
    queue.enqueue_many(&[single]).await.unwrap();
    let mut writer = queue.batch_writer();
    let mut batched = job("fidelity", "t2", None);
    batched.payload = payload.clone();
    writer.insert(&[batched.encode()]).await.unwrap();
    let claimed = queue.claim("w", 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 2);
    for job in claimed {
        assert_eq!(job.payload, payload, "{}", job.tenant_id);
    }
}

/// Makes the database refuse any job of kind `refused` (a row failing mid-batch).
async fn refuse_kind_refused(db: &TestDb) {
    if db.is_postgres() {
        db.execute(
            "CREATE FUNCTION refuse_job() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql",
        )
        .await;
        db.execute(
            "CREATE TRIGGER refuse_job BEFORE INSERT ON jobs FOR EACH ROW WHEN (NEW.kind = 'refused') EXECUTE FUNCTION refuse_job()",
        )
        .await;
    } else {
        db.execute(
            "CREATE TRIGGER refuse_job BEFORE INSERT ON jobs WHEN NEW.kind = 'refused' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .await;
    }
}

/// The intake's writer: a batch is one transaction (a failing row leaves none of its batch
/// behind), dedupe keys taken in the table or earlier in the batch are skipped, and after a
/// failure the next batch goes through on a fresh connection.
async fn a_batch_writer_commits_whole_batches_or_nothing_and_recovers(db: TestDb) {
    let queue = queue(&db).await;
    queue
        .enqueue(&job("notify", "t1", Some("taken")))
        .await
        .unwrap();
    let mut writer = queue.batch_writer();
    let batch = [
        job("notify", "t1", Some("taken")).encode(),
        job("notify", "t1", Some("new")).encode(),
        job("notify", "t1", Some("new")).encode(),
        job("notify", "t2", None).encode(),
    ];
    assert_eq!(
        writer.insert(&batch).await.unwrap(),
        2,
        "taken and repeated keys are skipped"
    );
    // A row the database refuses, in the middle of a batch.
    refuse_kind_refused(&db).await;
    let failing = [
        job("notify", "t3", Some("before")).encode(),
        job("refused", "t3", None).encode(),
        job("notify", "t3", Some("after")).encode(),
    ];
    assert!(writer.insert(&failing).await.is_err());
    assert_eq!(
        db.strings("SELECT id FROM jobs WHERE tenant_id = 't3'")
            .await
            .len(),
        0,
        "nothing of a failed batch is committed"
    );
    assert_eq!(
        writer
            .insert(&[job("notify", "t3", Some("before")).encode()])
            .await
            .unwrap(),
        1,
        "the writer recovers after a failure"
    );
    let total = db.strings("SELECT id FROM jobs").await.len();
    assert_eq!(total, 4);
}

/// Whatever a batch's size (one row, a few, hundreds), each row goes in once with its own
/// fields and nothing of an earlier batch comes back, and a refused row late in a large batch
/// leaves none of it behind.
async fn batches_of_every_size_insert_each_row_once_with_its_own_fields(db: TestDb) {
    let queue = queue(&db).await;
    let mut writer = queue.batch_writer();
    let mut expected = 0;
    for (batch, size) in [4_usize, 3, 1, 255, 256, 257, 600, 2]
        .into_iter()
        .enumerate()
    {
        let rows: Vec<_> = (0..size)
            .map(|n| {
                let mut job = job("sized", &format!("b{batch}"), Some(&format!("{batch}-{n}")));
                job.payload = json!({ "batch": batch, "n": n });
                job.priority = i64::try_from(n).unwrap();
                job.encode()
            })
            .collect();
        assert_eq!(
            writer.insert(&rows).await.unwrap(),
            size as u64,
            "batch of {size}"
        );
        expected += size;
        let stored = db
            .strings(&format!(
                "SELECT dedupe_key || ' ' || priority || ' ' || payload FROM jobs WHERE tenant_id = 'b{batch}'"
            ))
            .await;
        assert_eq!(stored.len(), size, "batch of {size}");
        for row in stored {
            let (key, rest) = row.split_once(' ').unwrap();
            let (priority, payload) = rest.split_once(' ').unwrap();
            let payload: serde_json::Value = serde_json::from_str(payload).unwrap();
            assert_eq!(key, format!("{batch}-{}", payload["n"]), "{row}");
            assert_eq!(priority, payload["n"].to_string(), "{row}");
            assert_eq!(payload["batch"], batch, "{row}");
        }
    }
    assert_eq!(db.strings("SELECT id FROM jobs").await.len(), expected);
    refuse_kind_refused(&db).await;
    let mut large: Vec<_> = (0..400)
        .map(|n| job("sized", "large", Some(&format!("large-{n}"))).encode())
        .collect();
    large[300] = job("refused", "large", None).encode();
    assert!(writer.insert(&large).await.is_err());
    assert_eq!(
        db.strings("SELECT id FROM jobs WHERE tenant_id = 'large'")
            .await
            .len(),
        0,
        "a refused row late in a batch rolls back the rows before it"
    );
    let after = [job("sized", "large", Some("large-0")).encode()];
    assert_eq!(writer.insert(&after).await.unwrap(), 1);
}

async fn the_queue_commands_show_retry_and_cancel_jobs(db: TestDb) {
    let queue = queue(&db).await;
    let mut once = job("broken", "t1", None);
    once.max_attempts = 1;
    let dead = queue.enqueue(&once).await.unwrap().id().to_string();
    let claimed = queue.claim("w", 1, LEASE).await.unwrap().remove(0);
    queue
        .retry(&claimed, "bad_request", "400", Duration::ZERO)
        .await
        .unwrap();
    let mut later = job("later", "t1", None);
    later.run_at = Some(i64::MAX / 2);
    let waiting = queue.enqueue(&later).await.unwrap().id().to_string();
    let run = |args: &[&str]| {
        let output = crate::helpers::tenantd_command()
            .args(["--database-url", db.url(), "queue"])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (code, text) = run(&["stats", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let stats: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        (stats["dead"].as_i64(), stats["available"].as_i64()),
        (Some(1), Some(1))
    );
    let (code, text) = run(&["list", "--state", "dead", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let listed: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        (listed[0]["id"].as_str(), listed[0]["last_reason"].as_str()),
        (Some(dead.as_str()), Some("bad_request"))
    );
    assert_eq!(run(&["list", "--state", "zombie"]).0, Some(2));
    assert_eq!(run(&["retry", &dead]).0, Some(0));
    assert_eq!(
        run(&["retry", &dead]).0,
        Some(2),
        "only dead, failed or cancelled jobs"
    );
    assert_eq!(run(&["cancel", &waiting]).0, Some(0));
    let (_, text) = run(&["stats"]);
    assert!(
        text.contains("available") && text.contains("cancelled"),
        "{text}"
    );
}
