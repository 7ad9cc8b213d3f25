//! Operation runs on both databases: same-type dedupe, scope busy, the connection check run by
//! the workers, and the `runs` commands.

use std::sync::Arc;
use std::time::Duration;

use graph_emulator::world::{AppSeed, FailureRule, IdentityFailure, TenantSeed};
use graph_emulator::Emulator;
use serde_json::json;
use tenantd::jobs::Registry;
use tenantd::queue::{NewJob, Queue};
use tenantd::runs::{self, Started};
use tenantd::store::Store;
use tenantd::worker::WorkerPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{tenantd_command, TestDb};
use crate::on_both_backends;

const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";

fn job(kind: &str) -> NewJob {
    NewJob {
        kind: kind.into(),
        payload: json!({"tenant_id": TENANT}),
        tenant_id: TENANT.into(),
        dedupe_key: None,
        priority: 0,
        run_at: None,
        max_attempts: 3,
    }
}

async fn store(db: &TestDb) -> Store {
    let store = db.store().await;
    store.migrate().await.unwrap();
    store
}

async fn the_same_type_is_deduplicated_and_another_type_finds_the_scope_busy(db: TestDb) {
    let store = store(&db).await;
    let queue = Queue::new(store.clone());
    let Started::New(first) = runs::start(
        &store,
        &queue,
        "connection_check",
        TENANT,
        job("connection_check"),
    )
    .await
    .unwrap() else {
        panic!("new")
    };
    assert_eq!(first.state, "queued");
    assert!(first.job_id.is_some());
    assert_eq!(
        runs::start(
            &store,
            &queue,
            "connection_check",
            TENANT,
            job("connection_check")
        )
        .await
        .unwrap(),
        Started::Existing(first.clone())
    );
    let busy = runs::start(&store, &queue, "inventory_sync", TENANT, job("noop"))
        .await
        .unwrap();
    assert_eq!(
        busy,
        Started::ScopeBusy(first.clone()),
        "the active run is named"
    );
    assert!(
        matches!(
            runs::start(
                &store,
                &queue,
                "inventory_sync",
                "11111111-2222-3333-4444-555555555555",
                job("noop")
            )
            .await
            .unwrap(),
            Started::New(_)
        ),
        "scopes are independent"
    );
    assert_eq!(
        queue.stats().await.unwrap(),
        vec![("available".to_string(), 2)],
        "one job per new run, none for dedupes"
    );
    runs::finish(&store, &first.id, true, "ok", "done")
        .await
        .unwrap();
    assert!(
        matches!(
            runs::start(&store, &queue, "inventory_sync", TENANT, job("noop"))
                .await
                .unwrap(),
            Started::New(_)
        ),
        "free again once finished"
    );
}

async fn the_connection_check_runs_on_the_workers_and_records_its_outcome(db: TestDb) {
    let emulator = Emulator::start_local().await.unwrap();
    let now = graph_emulator::clock::now();
    let (client_id, secret) = {
        let mut world = emulator.shared().world();
        world
            .seed_tenant(TenantSeed {
                id: Some(TENANT.into()),
                domain: "contoso.onmicrosoft.com".into(),
                display_name: None,
                skus: None,
            })
            .unwrap();
        let (id, secret) = world
            .seed_app(
                TENANT,
                AppSeed {
                    client_id: None,
                    client_secret: None,
                    public_client: false,
                    display_name: None,
                    redirect_uris: vec![],
                    application_permissions: vec!["User.Read.All".into()],
                    delegated_permissions: vec![],
                    admin_consented: true,
                },
                now,
            )
            .unwrap();
        (id, secret.unwrap())
    };
    let store = store(&db).await;
    let (_, tokens) =
        crate::helpers::connect_app(&store, &emulator, TENANT, &client_id, &secret).await;
    let queue = Queue::new(store.clone());
    let pool = WorkerPool {
        queue: queue.clone(),
        registry: Arc::new(Registry::standard()),
        context: tenantd::jobs::JobContext {
            attempt: 1,
            public_url: None,
            queue: queue.clone(),
            ..crate::helpers::job_context(&store, tokens)
        },
        owner: "w".into(),
        concurrency: 2,
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(20),
        grace: Duration::from_secs(2),
        release_now: Default::default(),
    };
    let stop = CancellationToken::new();
    let health = tenantd::health::TaskHealth::default();
    let running = tokio::spawn(pool.run(
        stop.clone(),
        health.register("workers", Duration::from_secs(60)),
    ));
    let check = |store: Store, queue: Queue| async move {
        let payload = json!({"tenant_id": TENANT});
        let new = NewJob {
            kind: "connection_check".into(),
            payload,
            tenant_id: TENANT.into(),
            dedupe_key: None,
            priority: 0,
            run_at: None,
            max_attempts: 3,
        };
        let Started::New(run) = runs::start(&store, &queue, "connection_check", TENANT, new)
            .await
            .unwrap()
        else {
            panic!("new run")
        };
        for _ in 0..250 {
            let current = runs::get(&store, &run.id).await.unwrap().unwrap();
            if current.finished_at.is_some() {
                return current;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the run did not finish");
    };
    let done = check(store.clone(), queue.clone()).await;
    assert_eq!(
        (done.state.as_str(), done.reason.as_deref()),
        ("succeeded", Some("ok")),
        "{done:?}"
    );
    assert!(done.started_at.is_some());
    emulator.shared().world().failures.push(FailureRule {
        tenant: None,
        client_id: None,
        user: None,
        failure: IdentityFailure::ConsentRequired,
    });
    store_clear_tokens(&db).await;
    let failed = check(store.clone(), queue.clone()).await;
    assert_eq!(
        (failed.state.as_str(), failed.reason.as_deref()),
        ("failed", Some("consent_required")),
        "{failed:?}"
    );
    stop.cancel();
    running.await.unwrap();
}

async fn store_clear_tokens(db: &TestDb) {
    db.execute("DELETE FROM connection_tokens").await;
}

async fn the_runs_commands_start_and_list(db: TestDb) {
    let run = |args: &[&str]| {
        let output = tenantd_command()
            .args(["--database-url", db.url(), "runs"])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (code, text) = run(&["connection-check", "--tenant", TENANT]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("started run"), "{text}");
    let (code, text) = run(&["connection-check", "--tenant", TENANT]);
    assert_eq!(code, Some(0));
    assert!(text.contains("already active"), "{text}");
    assert_eq!(
        run(&["connection-check", "--tenant", "contoso.onmicrosoft.com"]).0,
        Some(2)
    );
    let store = store(&db).await;
    let busy = runs::start(
        &store,
        &Queue::new(store.clone()),
        "inventory_sync",
        TENANT,
        job("noop"),
    )
    .await
    .unwrap();
    assert!(matches!(busy, Started::ScopeBusy(_)));
    let (code, text) = run(&["list", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let listed: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["kind"], "connection_check");
    assert_eq!(listed[0]["state"], "queued");
}

async fn a_run_whose_job_dead_letters_or_is_cancelled_ends_failed_and_frees_the_scope(db: TestDb) {
    let store = store(&db).await;
    let queue = Queue::new(store.clone());
    let mut one_attempt = job("heartbeat_run");
    one_attempt.max_attempts = 1;
    let Started::New(dead) = runs::start(&store, &queue, "heartbeat_run", TENANT, one_attempt)
        .await
        .unwrap()
    else {
        panic!("new")
    };
    assert_eq!(
        runs::settle(&store, &queue).await.unwrap(),
        0,
        "a queued job is left alone"
    );
    let claimed = queue
        .claim("test", 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    runs::mark_running(&store, &dead.id).await.unwrap();
    assert_eq!(
        runs::settle(&store, &queue).await.unwrap(),
        0,
        "a running job is left alone"
    );
    // The job's last attempt asks for a retry: the queue dead-letters it, nobody records the run.
    queue
        .retry(
            &claimed[0],
            "services_not_ready",
            "the mailbox of demo01 is not provisioned yet",
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(
        queue
            .get(dead.job_id.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap()
            .state,
        "dead"
    );
    // Starting again settles the dead run first instead of answering with it.
    let Started::New(next) = runs::start(
        &store,
        &queue,
        "heartbeat_run",
        TENANT,
        job("heartbeat_run"),
    )
    .await
    .unwrap() else {
        panic!("the dead run no longer holds the scope")
    };
    let ended = runs::get(&store, &dead.id).await.unwrap().unwrap();
    assert_eq!(ended.state, "failed");
    assert_eq!(ended.reason.as_deref(), Some("services_not_ready"));
    let message = ended.message.unwrap();
    assert!(
        message.contains("dead after 1 attempts") && message.contains("demo01"),
        "{message}"
    );
    assert!(ended.finished_at.is_some());

    assert!(queue.cancel(next.job_id.as_deref().unwrap()).await.unwrap());
    assert_eq!(runs::settle(&store, &queue).await.unwrap(), 1);
    let cancelled = runs::get(&store, &next.id).await.unwrap().unwrap();
    assert_eq!(
        (cancelled.state.as_str(), cancelled.reason.as_deref()),
        ("failed", Some("job_cancelled"))
    );
    assert_eq!(
        runs::settle(&store, &queue).await.unwrap(),
        0,
        "settled once"
    );
    assert!(runs::active(&store, TENANT).await.unwrap().is_none());
}

on_both_backends!(
    the_same_type_is_deduplicated_and_another_type_finds_the_scope_busy,
    the_connection_check_runs_on_the_workers_and_records_its_outcome,
    the_runs_commands_start_and_list,
    a_run_whose_job_dead_letters_or_is_cancelled_ends_failed_and_frees_the_scope,
);

mod schedules {
    use chrono::{DateTime, Utc};
    use tenantd::jobs::noop::Noop;
    use tenantd::queue::{JobState, Queue};
    use tenantd::scheduler::{job_of, Schedule, Scheduler};

    use crate::helpers::TestDb;
    use crate::on_both_backends;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    async fn instance(db: &TestDb) -> (Scheduler, Queue) {
        let store = db.store().await;
        store.migrate().await.unwrap();
        let queue = Queue::new(store.clone());
        let schedules = vec![Schedule::new(
            "every_minute",
            "0 * * * * *",
            "Europe/Berlin",
            job_of(Noop::default()),
        )
        .unwrap()];
        (Scheduler::new(store, queue.clone(), schedules), queue)
    }

    async fn each_fire_time_is_enqueued_once_across_instances_and_caught_up_once(db: TestDb) {
        let (first, queue) = instance(&db).await;
        let (second, _) = instance(&db).await;
        assert_eq!(
            first.tick(utc("2026-05-01T10:00:30Z")).await.unwrap(),
            0,
            "a new schedule starts now, without backfill"
        );
        // Both instances tick at the same moment: one job for the 10:01 fire.
        let now = utc("2026-05-01T10:01:05Z");
        let (a, b) = tokio::join!(first.tick(now), second.tick(now));
        assert_eq!(a.unwrap() + b.unwrap(), 1);
        assert_eq!(
            first.tick(now).await.unwrap() + second.tick(now).await.unwrap(),
            0,
            "ticking again changes nothing"
        );
        // Three hours of downtime: one catch-up job, not 180.
        let later = utc("2026-05-01T13:01:30Z");
        assert_eq!(
            second.tick(later).await.unwrap() + first.tick(later).await.unwrap(),
            1
        );
        let jobs = queue.list(JobState::Available, 100).await.unwrap();
        assert_eq!(jobs.len(), 2);
        assert!(jobs.iter().all(|j| j.kind == "noop"));
    }

    on_both_backends!(each_fire_time_is_enqueued_once_across_instances_and_caught_up_once);
}
