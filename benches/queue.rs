//! Queue benchmark: enqueue and drain no-op jobs on SQLite and PostgreSQL (W claimers calling
//! the queue directly, and the daemon's worker pool), and pickup latency.
//!
//!     cargo bench --bench queue                      # both databases, defaults below
//!     JOBS=100000 WORKERS="1 4 8" POOL_CONCURRENCY="64" BACKENDS="sqlite postgres" cargo bench --bench queue
//!
//! `CLAIM_BATCH` (default 500, graphile-worker's local queue size) is how many jobs a claimer
//! takes at once. PostgreSQL: `BENCH_POSTGRES_URL` (default postgres://postgres@127.0.0.1:5432/postgres); a
//! database `tenantd_bench` is created fresh for every measurement. Prints one line per
//! measurement: `backend measure workers value unit`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use tenantd::queue::{NewJob, Queue};
use tenantd::store::Store;

mod common;
use common::{env_list, fresh, settle};

const LEASE: Duration = Duration::from_secs(60);

fn noop(n: usize) -> NewJob {
    NewJob {
        kind: "noop".into(),
        payload: json!({}),
        tenant_id: format!("t{}", n % 10),
        dedupe_key: None,
        priority: 0,
        run_at: None,
        max_attempts: 3,
    }
}

#[allow(clippy::cast_precision_loss)]
fn rate(jobs: usize, elapsed: Duration) -> f64 {
    jobs as f64 / elapsed.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let jobs: usize = std::env::var("JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let workers: Vec<usize> = env_list("WORKERS", "1 4 8")
        .iter()
        .filter_map(|w| w.parse().ok())
        .collect();
    let batch: u32 = std::env::var("CLAIM_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let pool_sizes: Vec<usize> = env_list("POOL_CONCURRENCY", "64")
        .iter()
        .filter_map(|w| w.parse().ok())
        .collect();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("metrics recorder");
    let dir = tempfile::tempdir().expect("temp dir");
    for backend in env_list("BACKENDS", "sqlite postgres") {
        for &count in &workers {
            let store = fresh(&backend, dir.path()).await;
            let queue = Queue::new(store.clone());
            let all: Vec<NewJob> = (0..jobs).map(noop).collect();
            let started = Instant::now();
            for chunk in all.chunks(10_000) {
                queue.enqueue_many(chunk).await.expect("enqueue");
            }
            let enqueue = started.elapsed();
            println!(
                "{backend} enqueue {count} {:.0} jobs/s",
                rate(jobs, enqueue)
            );
            settle(&backend).await;
            let started = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..count {
                let queue = queue.clone();
                tasks.push(tokio::spawn(async move {
                    let owner = format!("bench-{w}");
                    let mut done = 0usize;
                    // Full-batch completions and their total time: one statement's cost.
                    let (mut full, mut full_time) = (0u32, Duration::ZERO);
                    loop {
                        let claimed = queue.claim(&owner, batch, LEASE).await.expect("claim");
                        if claimed.is_empty() {
                            return (done, full, full_time);
                        }
                        let started = Instant::now();
                        let held = queue.complete_each(&claimed).await.expect("complete");
                        if claimed.len() == batch as usize {
                            full += 1;
                            full_time += started.elapsed();
                        }
                        done += held.iter().filter(|held| **held).count();
                    }
                }));
            }
            let (mut drained, mut full, mut full_time) = (0, 0u32, Duration::ZERO);
            for task in tasks {
                let (done, completions, took) = task.await.expect("worker");
                drained += done;
                full += completions;
                full_time += took;
            }
            let drain = started.elapsed();
            assert_eq!(drained, jobs, "every job completed once");
            println!("{backend} drain {count} {:.0} jobs/s", rate(jobs, drain));
            if full > 0 {
                // A completion of CLAIM_BATCH jobs is one statement over 8 KiB: the measure
                // that finds a socket without TCP_NODELAY (~40 ms instead of a few).
                println!(
                    "{backend} complete_{batch}_mean {count} {:.2} ms",
                    full_time.as_secs_f64() * 1000.0 / f64::from(full)
                );
            }
            println!(
                "{backend} e2e_seq {count} {:.0} jobs/s",
                rate(jobs, enqueue + drain)
            );
            store.close().await;
        }
        // The daemon's own path: a worker pool running no-op jobs, successes group-committed.
        for &concurrency in &pool_sizes {
            let store = fresh(&backend, dir.path()).await;
            let queue = Queue::new(store.clone());
            let all: Vec<NewJob> = (0..jobs).map(noop).collect();
            for chunk in all.chunks(10_000) {
                queue.enqueue_many(chunk).await.expect("enqueue");
            }
            settle(&backend).await;
            let before = succeeded(&metrics);
            let stop = tokio_util::sync::CancellationToken::new();
            let started = Instant::now();
            let running = tokio::spawn(
                worker_pool(&store, &queue, concurrency).run(
                    stop.clone(),
                    tenantd::health::TaskHealth::default()
                        .register("workers", Duration::from_secs(600)),
                ),
            );
            while succeeded(&metrics) - before < jobs as u64 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let drain = started.elapsed();
            stop.cancel();
            running.await.expect("pool");
            println!(
                "{backend} pool_drain {concurrency} {:.0} jobs/s",
                rate(jobs, drain)
            );
            store.close().await;
        }
        // Pickup latency: one idle claimer waiting on its work signal with the daemon's default
        // poll interval (500 ms); jobs added one at a time, by this process (same queue) and by
        // another instance (its own queue: PostgreSQL's NOTIFY, or SQLite's polling).
        let store = fresh(&backend, dir.path()).await;
        let claimer = Queue::new(store.clone());
        let other = pickup(&claimer, &Queue::new(store.clone())).await;
        println!("{backend} pickup_other_instance_p50 1 {:.2} ms", other.0);
        println!("{backend} pickup_other_instance_p99 1 {:.2} ms", other.1);
        let same = pickup(&claimer, &claimer).await;
        println!("{backend} pickup_same_process_p50 1 {:.2} ms", same.0);
        println!("{backend} pickup_same_process_p99 1 {:.2} ms", same.1);
        store.close().await;
    }
}

/// p50 and p99 pickup latency (ms) of 200 jobs (after 20 unmeasured ones) added by `enqueuer` 20 ms apart, claimed by one
/// idle claimer on `claimer` that waits on its work signal (500 ms poll) like the worker pool.
#[allow(clippy::cast_precision_loss)]
async fn pickup(claimer: &Queue, enqueuer: &Queue) -> (f64, f64) {
    const SAMPLES: usize = 200;
    // Jobs before the measured ones, so the measurement sees warm connection pools.
    const WARMUP: usize = 20;
    let origin = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let poller = {
        let (queue, samples) = (claimer.clone(), samples.clone());
        tokio::spawn(async move {
            let signal = queue.work_signal().await;
            while samples.lock().unwrap().len() < WARMUP + SAMPLES {
                let claimed = queue.claim("latency", 10, LEASE).await.expect("claim");
                let now = Instant::now();
                for job in &claimed {
                    let added: u64 = job.payload["added_ns"].as_u64().unwrap_or(0);
                    samples.lock().unwrap().push((added, now));
                }
                if claimed.is_empty() {
                    signal.wait(Duration::from_millis(500)).await;
                } else {
                    queue.complete_each(&claimed).await.expect("complete");
                }
            }
        })
    };
    // Let the claimer start listening before the first job.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..WARMUP + SAMPLES {
        let added = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(0);
        let mut job = noop(0);
        job.payload = json!({"added_ns": added});
        enqueuer.enqueue(&job).await.expect("enqueue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    poller.await.expect("poller");
    let mut samples = samples.lock().unwrap().clone();
    samples.sort_unstable_by_key(|(added, _)| *added);
    let mut latencies: Vec<f64> = samples[WARMUP..]
        .iter()
        .map(|(added, seen)| (seen.duration_since(origin).as_nanos() as f64 - *added as f64) / 1e6)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    (pick(0.5), pick(0.99))
}

/// `tenantd_jobs_total{kind="noop",outcome="succeeded"}` as the worker pool reports it.
fn succeeded(metrics: &metrics_exporter_prometheus::PrometheusHandle) -> u64 {
    metrics
        .render()
        .lines()
        .find(|line| {
            line.starts_with("tenantd_jobs_total{")
                && line.contains("kind=\"noop\"")
                && line.contains("outcome=\"succeeded\"")
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// A worker pool as the daemon builds it (standard job kinds; no job here asks for tokens).
fn worker_pool(store: &Store, queue: &Queue, concurrency: usize) -> tenantd::worker::WorkerPool {
    let keys = Arc::new(
        tenantd::vault::Keyring::parse(
            std::path::Path::new("bench"),
            &tenantd::vault::Keyring::new_key_line("bench"),
        )
        .expect("key"),
    );
    let identity = tenantd::vault::identity::IdentityClient::new(
        url::Url::parse("http://127.0.0.1:9").expect("url"),
    );
    let tokens = Arc::new(tenantd::vault::tokens::TokenService::new(
        store.clone(),
        keys,
        identity,
    ));
    tenantd::worker::WorkerPool {
        queue: queue.clone(),
        registry: Arc::new(tenantd::jobs::Registry::standard()),
        context: tenantd::jobs::JobContext {
            attempt: 1,
            public_url: None,
            store: store.clone(),
            queue: queue.clone(),
            tokens: tokens.clone(),
            keys: std::sync::Arc::new(
                tenantd::vault::Keyring::parse(
                    std::path::Path::new("k"),
                    &tenantd::vault::Keyring::new_key_line("k1"),
                )
                .unwrap(),
            ),
            graph: std::sync::Arc::new(tenantd::graph::GraphClient::new(
                &tenantd::config::GraphConfig::default(),
                tokens.clone(),
            )),
        },
        owner: "bench".into(),
        concurrency,
        lease: LEASE,
        poll: Duration::from_millis(500),
        grace: Duration::from_secs(5),
        release_now: Default::default(),
    }
}
