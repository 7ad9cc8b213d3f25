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
    let stale = queue
        .claim("w1", 1, Duration::from_millis(50))
        .await
        .unwrap()
        .remove(0);
    assert!(
        queue.claim("w2", 1, LEASE).await.unwrap().is_empty(),
        "leased jobs are not claimed twice"
    );
    assert_eq!(
        queue.reap().await.unwrap().rescued,
        0,
        "a live lease is left alone"
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
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
    queue
        .claim("w", 1, Duration::from_millis(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
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

async fn two_instances_share_one_queue_without_running_a_job_twice(db: TestDb) {
    let first = queue(&db).await;
    let second = Queue::new(db.store().await);
    for n in 0..200 {
        first
            .enqueue(&job("noop", &format!("t{}", n % 7), None))
            .await
            .unwrap();
    }
    let worker = |queue: Queue, owner: &'static str| async move {
        let mut seen = Vec::new();
        loop {
            let batch = queue.claim(owner, 7, LEASE).await.unwrap();
            if batch.is_empty() {
                break;
            }
            for job in batch {
                assert!(queue.complete(&job).await.unwrap());
                seen.push(job.id);
            }
        }
        seen
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

on_both_backends!(
    dedupe_holds_among_unfinished_jobs_only,
    expired_leases_are_rescued_and_stale_workers_fenced_off,
    retries_back_off_and_dead_letter_after_the_last_attempt,
    a_large_backlog_does_not_starve_a_small_tenant,
    two_instances_share_one_queue_without_running_a_job_twice,
    finished_jobs_are_pruned_after_retention_and_cancel_only_touches_waiting_jobs,
);
