//! Queue benchmark: enqueue and drain no-op jobs on SQLite and PostgreSQL, and pickup latency.
//!
//!     cargo bench --bench queue                      # both databases, defaults below
//!     JOBS=100000 WORKERS="1 4 8" BACKENDS="sqlite postgres" cargo bench --bench queue
//!
//! PostgreSQL: `BENCH_POSTGRES_URL` (default postgres://postgres@127.0.0.1:5432/postgres); a
//! database `tenantd_bench` is created fresh for every measurement. Prints one line per
//! measurement: `backend measure workers value unit`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use tenantd::config::{DatabaseConfig, DatabaseUrl};
use tenantd::queue::{NewJob, Queue};
use tenantd::store::Store;

const LEASE: Duration = Duration::from_secs(60);

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

async fn fresh(backend: &str, dir: &std::path::Path) -> Store {
    let url = if backend == "postgres" {
        let server = std::env::var("BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut conn = sqlx::PgConnection::connect(&server)
            .await
            .expect("postgres");
        sqlx::query("DROP DATABASE IF EXISTS tenantd_bench WITH (FORCE)")
            .execute(&mut conn)
            .await
            .expect("drop");
        sqlx::query("CREATE DATABASE tenantd_bench")
            .execute(&mut conn)
            .await
            .expect("create");
        let mut url = url::Url::parse(&server).unwrap();
        url.set_path("/tenantd_bench");
        url.to_string()
    } else {
        let file = dir.join(format!("bench-{}.db", uuid::Uuid::new_v4().simple()));
        format!("sqlite://{}", file.display())
    };
    let config = DatabaseConfig {
        url: DatabaseUrl::new(url),
        max_connections: 16,
        ..Default::default()
    };
    let store = Store::connect(&config).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

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

/// `CHECKPOINT; ANALYZE` between enqueue and drain, as the peer script does.
async fn settle(backend: &str) {
    if backend == "postgres" {
        let server = std::env::var("BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut url = url::Url::parse(&server).unwrap();
        url.set_path("/tenantd_bench");
        let mut conn = sqlx::PgConnection::connect(url.as_str())
            .await
            .expect("connect");
        sqlx::query("CHECKPOINT")
            .execute(&mut conn)
            .await
            .expect("checkpoint");
        sqlx::query("ANALYZE jobs")
            .execute(&mut conn)
            .await
            .expect("analyze");
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
        .unwrap_or(100);
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
                    loop {
                        let claimed = queue.claim(&owner, batch, LEASE).await.expect("claim");
                        if claimed.is_empty() {
                            return done;
                        }
                        done +=
                            usize::try_from(queue.complete_many(&claimed).await.expect("complete"))
                                .unwrap_or(0);
                    }
                }));
            }
            let mut drained = 0;
            for task in tasks {
                drained += task.await.expect("worker");
            }
            let drain = started.elapsed();
            assert_eq!(drained, jobs, "every job completed once");
            println!("{backend} drain {count} {:.0} jobs/s", rate(jobs, drain));
            println!(
                "{backend} e2e_seq {count} {:.0} jobs/s",
                rate(jobs, enqueue + drain)
            );
            store.close().await;
        }
        // Pickup latency: one idle worker polling every 1 ms; jobs added one at a time.
        let store = fresh(&backend, dir.path()).await;
        let queue = Queue::new(store.clone());
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = {
            let (queue, samples, stop) = (queue.clone(), samples.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let claimed = queue.claim("latency", 10, LEASE).await.expect("claim");
                    let now = Instant::now();
                    for job in &claimed {
                        let added: u64 = job.payload["added_ns"].as_u64().unwrap_or(0);
                        samples.lock().unwrap().push((added, now));
                    }
                    if claimed.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        queue.complete_many(&claimed).await.expect("complete");
                    }
                }
            })
        };
        let origin = Instant::now();
        for _ in 0..200 {
            let added = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(0);
            let mut job = noop(0);
            job.payload = json!({"added_ns": added});
            queue.enqueue(&job).await.expect("enqueue");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        poller.await.expect("poller");
        let mut latencies: Vec<f64> = samples
            .lock()
            .unwrap()
            .iter()
            .map(|(added, seen)| {
                (seen.duration_since(origin).as_nanos() as f64 - *added as f64) / 1e6
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
        println!("{backend} pickup_p50 1 {:.2} ms", pick(0.5));
        println!("{backend} pickup_p99 1 {:.2} ms", pick(0.99));
        store.close().await;
    }
}
