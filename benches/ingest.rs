//! Webhook ingest benchmark: the real daemon (in this process, workers off) answering Graph
//! change notifications with durable 202s, loaded by wrk (Debian's `wrk`) with 4 and 64
//! connections, on SQLite and PostgreSQL. Every request is a distinct notification (its own
//! etag), so every 202 is a queued job; the bench checks that afterwards.
//!
//!     cargo bench --bench ingest
//!     CONNECTIONS="4 64" SECONDS=8 BACKENDS="sqlite postgres" cargo bench --bench ingest
//!
//! Prints `backend connections requests_per_s p50_ms p99_ms jobs_queued non_2xx`. Compare
//! with `../shared/bench/limit-ingest` in the same sitting (docs/PERFORMANCE.md).

use std::process::Command;
use std::sync::Arc;

use tenantd::app::{Application, Shutdown};
use tenantd::config::{Config, DatabaseUrl};
use tenantd::subscriptions::{self, Desired, Origin};
use tenantd::systemd::Notifier;
use tenantd::vault::Keyring;

mod common;
use common::{env_list, fresh_url};

const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
const GRAPH_ID: &str = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07";

/// A wrk script posting sample-shaped notifications, each with its own etag.
fn script(client_state: &str) -> String {
    let item = serde_json::json!({
        "id": "lsgTZMr9KwAAA",
        "subscriptionId": GRAPH_ID,
        "subscriptionExpirationDateTime": "2026-11-25T18:23:45.9356913Z",
        "clientState": client_state,
        "changeType": "created",
        "resource": "users/5f2a/messages/AAMkAGI2",
        "tenantId": TENANT,
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": "users/5f2a/messages/AAMkAGI2",
            "@odata.etag": "ETAG",
            "id": "AAMkAGI2"
        }
    });
    let body = serde_json::json!({ "value": [item] }).to_string();
    let (before, after) = body.split_once("ETAG").expect("placeholder");
    format!(
        r#"local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local counter = 0
request = function()
  counter = counter + 1
  local body = [[{before}]] .. "W/" .. tid .. "-" .. counter .. [[{after}]]
  return wrk.format("POST", "/webhooks/graph", {{["Content-Type"] = "application/json"}}, body)
end
"#
    )
}

/// `Requests/sec` and the 50th and 99th percentile latencies (ms) from wrk's output.
fn parse_wrk(output: &str) -> (f64, f64, f64, u64) {
    let ms = |value: &str| -> f64 {
        let value = value.trim();
        if let Some(v) = value.strip_suffix("us") {
            v.parse::<f64>().unwrap_or(f64::NAN) / 1000.0
        } else if let Some(v) = value.strip_suffix("ms") {
            v.parse().unwrap_or(f64::NAN)
        } else if let Some(v) = value.strip_suffix('s') {
            v.parse::<f64>().unwrap_or(f64::NAN) * 1000.0
        } else {
            f64::NAN
        }
    };
    let mut rate = f64::NAN;
    let (mut p50, mut p99) = (f64::NAN, f64::NAN);
    let mut non_2xx = 0;
    for line in output.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rate = v.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = ms(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = ms(v);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    (rate, p50, p99, non_2xx)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = std::env::var("SECONDS").unwrap_or_else(|_| "8".into());
    let dir = tempfile::tempdir().expect("temp dir");
    for backend in env_list("BACKENDS", "sqlite postgres") {
        for connections in env_list("CONNECTIONS", "4 64") {
            let key_file = dir.path().join(format!("keys-{backend}-{connections}"));
            Keyring::create_file(&key_file, "k1").expect("key file");
            let url = fresh_url(&backend, dir.path()).await;
            let mut config = Config::default();
            config.database.url = DatabaseUrl::new(url.clone());
            config.database.max_connections = 16;
            config.admin.bind = "127.0.0.1:0".parse().expect("address");
            config.listener.bind = "127.0.0.1:0".parse().expect("address");
            config.secrets.key_file = key_file.clone();
            config.queue.workers = 0;
            let app = Application::build(config, Notifier::disabled())
                .await
                .expect("daemon builds");
            let keys = Arc::clone(app.keys());
            let store = app.store().clone();
            let types = vec!["created".to_string()];
            let row = subscriptions::declare(
                &store,
                &keys,
                &Desired {
                    tenant_id: TENANT,
                    resource: "users/5f2a/messages",
                    change_types: &types,
                    origin: Origin::Cli,
                    include_resource_data: false,
                },
            )
            .await
            .expect("subscription");
            subscriptions::record_created(&store, &row.id, GRAPH_ID, "c1", 4_102_444_800)
                .await
                .expect("created");
            let state = subscriptions::client_state(&store, &keys, &row.id)
                .await
                .expect("client state");
            let lua = dir.path().join("notification.lua");
            std::fs::write(&lua, script(&state)).expect("script");
            let public = app.public_addr();
            let shutdown = Shutdown::new();
            let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
            let output = tokio::task::spawn_blocking({
                let (lua, seconds, connections) =
                    (lua.clone(), seconds.clone(), connections.clone());
                move || {
                    Command::new("wrk")
                        .args([
                            "-t2",
                            &format!("-c{connections}"),
                            &format!("-d{seconds}s"),
                            "--latency",
                            "-s",
                        ])
                        .arg(&lua)
                        .arg(format!("http://{public}/webhooks/graph"))
                        .output()
                        .expect("wrk runs (apt-get install wrk)")
                }
            })
            .await
            .expect("wrk");
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            let (rate, p50, p99, non_2xx) = parse_wrk(&text);
            shutdown.stop();
            running.await.expect("daemon").expect("daemon stops");
            let store = tenantd::store::Store::connect(&tenantd::config::DatabaseConfig {
                url: DatabaseUrl::new(url.clone()),
                ..Default::default()
            })
            .await;
            let queued = match store {
                Ok(store) => {
                    let stats = tenantd::queue::Queue::new(store.clone())
                        .stats()
                        .await
                        .unwrap_or_default();
                    store.close().await;
                    stats.iter().map(|(_, n)| *n).sum::<i64>()
                }
                Err(_) => -1,
            };
            println!(
                "{backend} connections {connections} requests_per_s {rate:.0} p50_ms {p50:.2} p99_ms {p99:.2} jobs_queued {queued} non_2xx {non_2xx}"
            );
        }
    }
}
