//! Graph client benchmark: a steady load against a tenant whose budget is smaller than what the
//! load asks for, through tenantd's client (learned pace per tenant and service, Retry-After)
//! and, with `PLAIN=1`, through a plain client that only honours Retry-After. Both run against
//! the built-in emulator on loopback, with the same budget, concurrency and duration.
//!
//!     cargo bench --bench graph_client
//!     BUDGETS=20,50 TASKS=16,64 SECONDS=60 WINDOW_SECONDS=10 REFILL=tokenBucket \
//!       SERVICES=identity,subscriptions PLAIN=1 cargo bench --bench graph_client
//!
//! One run per budget (requests per second), task count and service: `identity` reads a user
//! (answers carry Graph's load header past 0.8 of the limit), `subscriptions` lists
//! subscriptions (no load header: only 429s and Retry-After say stop). The emulator's budget
//! is `budget × WINDOW_SECONDS` requests per window, refilled as `REFILL` says (`tokenBucket`:
//! continuously, throttled requests costing a token; `fixedWindow`). tenantd's client starts
//! with nothing configured: its pace is learned.
//!
//! Prints per run: requests that succeeded per second, the share of the budget's rate used
//! (`budget_used`, successes over budget × seconds), the share of everything the throttle
//! would have let through (`of_allowed`: the full bucket at the start included), 429
//! responses and their share of all responses, over the whole run (the first seconds
//! included). tenantd: a request that still gets a 429 after its in-request retries waits its
//! Retry-After (as the queue would reschedule the job). The plain client does what the Graph
//! SDKs do by default: on a 429 it waits Retry-After and retries, up to 3 times, then gives the
//! request up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_emulator::throttle::{Budgets, Refill};
use graph_emulator::world::{AppSeed, TenantSeed, UserSeed};
use graph_emulator::Emulator;
use tenantd::config::{DatabaseConfig, DatabaseUrl, GraphConfig};
use tenantd::graph::{GraphClient, GraphError};
use tenantd::store::Store;
use tenantd::vault::connections::Connection;
use tenantd::vault::tokens::TokenService;

const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
const USER: &str = "user0@contoso.onmicrosoft.com";
/// The first seconds, reported apart too: where a learned pace pays for learning.
const START: Duration = Duration::from_secs(10);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    throttled: AtomicU64,
    gave_up: AtomicU64,
    other: AtomicU64,
}

/// One run's shape.
#[derive(Clone, Copy)]
struct Load {
    budget: u32,
    window: u64,
    refill: Refill,
    tasks: u64,
    seconds: u64,
    service: &'static str,
}

impl Load {
    fn budgets(&self) -> Budgets {
        Budgets {
            requests_per_window: self.budget * u32::try_from(self.window).unwrap_or(1),
            window_seconds: self.window,
            mailbox_concurrency: 4,
            refill: self.refill,
        }
    }

    /// Everything the throttle lets through in `seconds`.
    #[allow(clippy::cast_precision_loss)]
    fn allowed(&self, seconds: f64) -> f64 {
        let size = f64::from(self.budget) * self.window as f64;
        match self.refill {
            Refill::TokenBucket => size + f64::from(self.budget) * seconds,
            Refill::FixedWindow => size * (seconds / self.window as f64).ceil(),
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn report(
    name: &str,
    load: &Load,
    seconds: f64,
    tally: &Tally,
    throttled: u64,
    after_start: (u64, u64),
    rate: Option<f64>,
) {
    let ok = tally.ok.load(Ordering::Relaxed) as f64;
    let later_ok = ok - after_start.0 as f64;
    let later_throttled = (throttled - after_start.1) as f64;
    let later_seconds = seconds - START.as_secs_f64();
    let throttled = throttled as f64;
    println!(
        "{name} service {} budget {}/s tasks {} seconds {seconds:.0} ok_per_s {:.1} budget_used {:.3} of_allowed {:.3} throttled {throttled:.0} throttled_share {:.4} after_10s_used {:.3} after_10s_throttled {later_throttled:.0} gave_up {} other {}{}",
        load.service,
        load.budget,
        load.tasks,
        ok / seconds,
        ok / (f64::from(load.budget) * seconds),
        ok / load.allowed(seconds),
        throttled / (ok + throttled).max(1.0),
        later_ok / (f64::from(load.budget) * later_seconds),
        tally.gave_up.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        rate.map(|r| format!(" learned_rate {r:.1}")).unwrap_or_default(),
    );
}

async fn seeded_emulator() -> (Emulator, String, String) {
    let emulator = Emulator::start_local().await.expect("emulator");
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
            .expect("tenant");
        world
            .seed_user(
                TENANT,
                UserSeed {
                    user_principal_name: USER.into(),
                    display_name: None,
                    usage_location: Some("DE".into()),
                    license: None,
                },
                now,
                time::Duration::ZERO,
            )
            .expect("user");
        let (client_id, secret) = world
            .seed_app(
                TENANT,
                AppSeed {
                    client_id: None,
                    client_secret: None,
                    public_client: false,
                    display_name: None,
                    redirect_uris: vec![],
                    application_permissions: vec!["User.ReadWrite.All".into()],
                    delegated_permissions: vec![],
                    admin_consented: true,
                },
                now,
            )
            .expect("app");
        (client_id, secret.expect("a secret"))
    };
    (emulator, client_id, secret)
}

fn throttled_so_far(emulator: &Emulator) -> u64 {
    emulator
        .shared()
        .counters()
        .get("throttled")
        .copied()
        .unwrap_or(0)
}

async fn run_tenantd(
    emulator: &Emulator,
    tokens: &Arc<TokenService>,
    connection: &Connection,
    load: Load,
) {
    emulator.shared().throttle.set_budgets(load.budgets());
    // Nothing configured: the pace is learned.
    let client = Arc::new(GraphClient::new(
        &GraphConfig {
            base_url: url::Url::parse(&emulator.graph_url()).expect("url"),
            ..GraphConfig::default()
        },
        tokens.clone(),
    ));
    let tally = Arc::new(Tally::default());
    let throttled_before = throttled_so_far(emulator);
    let started = Instant::now();
    let run_for = Duration::from_secs(load.seconds);
    let mut running = Vec::new();
    for _ in 0..load.tasks {
        let (client, connection, tally) = (client.clone(), connection.clone(), tally.clone());
        running.push(tokio::spawn(async move {
            while started.elapsed() < run_for {
                let outcome = match load.service {
                    "identity" => client.get_user(&connection, USER).await.map(|_| ()),
                    _ => client.list_subscriptions(&connection).await.map(|_| ()),
                };
                match outcome {
                    Ok(()) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(GraphError::Throttled { retry_after, .. }) => {
                        tally.gave_up.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(retry_after).await;
                    }
                    Err(_) => {
                        tally.other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep_until((started + START).into()).await;
    let after_start = (
        tally.ok.load(Ordering::Relaxed),
        throttled_so_far(emulator) - throttled_before,
    );
    for task in running {
        task.await.expect("task");
    }
    let seconds = started.elapsed().as_secs_f64();
    let throttled = throttled_so_far(emulator) - throttled_before;
    let rate = client.limits().pace(TENANT, load.service).rate();
    report(
        "tenantd",
        &load,
        seconds,
        &tally,
        throttled,
        after_start,
        Some(rate),
    );
}

/// A plain client: no pacing, waits Retry-After on a 429 and tries again.
async fn run_plain(emulator: &Emulator, token: &str, load: Load) {
    emulator.shared().throttle.set_budgets(load.budgets());
    let http = reqwest::Client::new();
    let url = match load.service {
        "identity" => format!("{}/users/{USER}", emulator.graph_url()),
        _ => format!("{}/subscriptions", emulator.graph_url()),
    };
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let run_for = Duration::from_secs(load.seconds);
    let mut running = Vec::new();
    for _ in 0..load.tasks {
        let (http, url, token, tally) =
            (http.clone(), url.clone(), token.to_string(), tally.clone());
        running.push(tokio::spawn(async move {
            while started.elapsed() < run_for {
                // One request: the first try and up to 3 retries after Retry-After.
                for attempt in 0..=3 {
                    match http.get(&url).bearer_auth(&token).send().await {
                        Ok(response) if response.status().is_success() => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            let _ = response.bytes().await;
                            break;
                        }
                        Ok(response) if response.status().as_u16() == 429 => {
                            tally.throttled.fetch_add(1, Ordering::Relaxed);
                            let wait = response
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok())
                                .unwrap_or(1);
                            tokio::time::sleep(Duration::from_secs(wait)).await;
                            if attempt == 3 {
                                tally.gave_up.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            tally.other.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep_until((started + START).into()).await;
    let after_start = (
        tally.ok.load(Ordering::Relaxed),
        tally.throttled.load(Ordering::Relaxed),
    );
    for task in running {
        task.await.expect("task");
    }
    let seconds = started.elapsed().as_secs_f64();
    let throttled = tally.throttled.load(Ordering::Relaxed);
    report(
        "plain_retry_after_x3",
        &load,
        seconds,
        &tally,
        throttled,
        after_start,
        None,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let budgets: Vec<u32> = env_list("BUDGETS", "20,50")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    let task_counts: Vec<u64> = env_list("TASKS", "16,64")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    let services: Vec<&'static str> = env_list("SERVICES", "identity,subscriptions")
        .iter()
        .map(|s| {
            if s == "identity" {
                "identity"
            } else {
                "subscriptions"
            }
        })
        .collect();
    let seconds = env_number("SECONDS", 60);
    let window = env_number("WINDOW_SECONDS", 10).max(1);
    let refill = match std::env::var("REFILL").as_deref() {
        Ok("fixedWindow") => Refill::FixedWindow,
        _ => Refill::TokenBucket,
    };
    let plain = std::env::var("PLAIN").is_ok_and(|v| v == "1");
    println!(
        "# {refill:?}, {window} s of budget in the bucket (or per window); {seconds} s per run; budgets {budgets:?}/s; tasks {task_counts:?}; services {services:?}"
    );

    let (emulator, client_id, secret) = seeded_emulator().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::connect(&DatabaseConfig {
        url: DatabaseUrl::new(format!(
            "sqlite://{}",
            dir.path().join("bench.db").display()
        )),
        ..Default::default()
    })
    .await
    .expect("store");
    store.migrate().await.expect("migrate");
    let keys = Arc::new(
        tenantd::vault::Keyring::parse(
            std::path::Path::new("bench"),
            &tenantd::vault::Keyring::new_key_line("bench"),
        )
        .expect("key"),
    );
    let authority = emulator.base_url();
    let connection = tenantd::vault::connections::add_app(
        &store,
        &keys,
        tenantd::vault::connections::NewAppConnection {
            tenant_id: TENANT,
            client_id: &client_id,
            client_secret: &secret,
            label: None,
            make_default: true,
            authority: &authority,
        },
        tenantd::audit::Actor::Cli,
    )
    .await
    .expect("connection");
    let identity =
        tenantd::vault::identity::IdentityClient::new(url::Url::parse(&authority).expect("url"));
    let tokens = Arc::new(TokenService::new(store.clone(), keys, identity));
    let token = tokens
        .access_token(&connection, "https://graph.microsoft.com")
        .await
        .expect("token")
        .expose()
        .to_string();

    for &service in &services {
        for &budget in &budgets {
            for &tasks in &task_counts {
                let load = Load {
                    budget,
                    window,
                    refill,
                    tasks,
                    seconds,
                    service,
                };
                run_tenantd(&emulator, &tokens, &connection, load).await;
                if plain {
                    run_plain(&emulator, &token, load).await;
                }
            }
        }
    }
    store.close().await;
}
