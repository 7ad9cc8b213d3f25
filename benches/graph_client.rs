//! Graph client benchmark: a steady load against a tenant whose budget is smaller than what the
//! load asks for, through tenantd's client (adaptive per-tenant rate, Retry-After) and through a
//! plain client that only honours Retry-After. Both run against the built-in emulator on
//! loopback, with the same budget, concurrency and duration.
//!
//!     cargo bench --bench graph_client
//!     BUDGET=200 WINDOW_SECONDS=2 TASKS=32 SECONDS=120 WARMUP_SECONDS=30 CLIENT_RATE=400 cargo bench --bench graph_client
//!
//! Prints, per client, the whole run and the steady state (after `WARMUP_SECONDS`): requests
//! that succeeded per second, the share of the budget used, 429 responses and their share of
//! all responses. tenantd: a request that still gets a 429 after its in-request retries waits
//! its Retry-After (as the queue would reschedule the job). The plain client does what the
//! Graph SDKs do by default: on a 429 it waits Retry-After and retries, up to 3 times, then
//! gives the request up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_emulator::throttle::Budgets;
use graph_emulator::world::{AppSeed, TenantSeed, UserSeed};
use graph_emulator::Emulator;
use tenantd::config::{DatabaseConfig, DatabaseUrl, GraphConfig};
use tenantd::graph::{GraphClient, GraphError};
use tenantd::store::Store;

const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
const USER: &str = "user0@contoso.onmicrosoft.com";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    throttled: AtomicU64,
    gave_up: AtomicU64,
    other: AtomicU64,
}

/// Counts at one moment.
#[derive(Clone, Copy, Default)]
struct Counts {
    at: Option<Instant>,
    ok: u64,
    throttled: u64,
    gave_up: u64,
}

impl Tally {
    fn counts(&self, throttled: u64) -> Counts {
        Counts {
            at: Some(Instant::now()),
            ok: self.ok.load(Ordering::Relaxed),
            throttled,
            gave_up: self.gave_up.load(Ordering::Relaxed),
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn report(name: &str, phase: &str, from: Counts, to: Counts, budget_per_second: f64) {
    let seconds = to
        .at
        .expect("set")
        .duration_since(from.at.expect("set"))
        .as_secs_f64();
    let ok = (to.ok - from.ok) as f64;
    let throttled = (to.throttled - from.throttled) as f64;
    let rate = ok / seconds;
    println!(
        "{name} {phase} seconds {seconds:.0} ok_per_s {rate:.1} budget_used {:.3} throttled {throttled:.0} throttled_share {:.4} gave_up {}",
        rate / budget_per_second,
        throttled / (ok + throttled).max(1.0),
        to.gave_up - from.gave_up,
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let budget = u32::try_from(env_number("BUDGET", 200)).unwrap_or(200);
    let window = env_number("WINDOW_SECONDS", 2);
    let tasks = env_number("TASKS", 32);
    let seconds = env_number("SECONDS", 120);
    let warmup = Duration::from_secs(env_number("WARMUP_SECONDS", 30).min(seconds));
    let client_rate = u32::try_from(env_number("CLIENT_RATE", 400)).unwrap_or(400);
    #[allow(clippy::cast_precision_loss)]
    let budget_per_second = f64::from(budget) / window as f64;
    println!(
        "# budget {budget} requests per {window} s ({budget_per_second:.0}/s) per app and tenant; {tasks} tasks for {seconds} s; tenantd's configured rate {client_rate}/s; steady state after {} s",
        warmup.as_secs()
    );

    let (emulator, client_id, secret) = seeded_emulator().await;
    let set_budget = || {
        emulator.shared().throttle.set_budgets(Budgets {
            requests_per_window: budget,
            window_seconds: window,
            mailbox_concurrency: 4,
            ..Budgets::default()
        });
    };
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
    let connection = tenantd::connections::add_app(
        &store,
        &keys,
        tenantd::connections::NewAppConnection {
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
        tenantd::identity::IdentityClient::new(url::Url::parse(&authority).expect("url"));
    let tokens = Arc::new(tenantd::tokens::TokenService::new(
        store.clone(),
        keys,
        identity,
    ));
    let token = tokens
        .access_token(&connection, "https://graph.microsoft.com")
        .await
        .expect("token")
        .expose()
        .to_string();
    let run_for = Duration::from_secs(seconds);

    // tenantd's client.
    set_budget();
    let client = Arc::new(GraphClient::new(
        &GraphConfig {
            base_url: url::Url::parse(&emulator.graph_url()).expect("url"),
            requests_per_second: client_rate,
            ..GraphConfig::default()
        },
        tokens.clone(),
    ));
    let throttled_so_far = || {
        emulator
            .shared()
            .counters()
            .get("throttled")
            .copied()
            .unwrap_or(0)
    };
    let tally = Arc::new(Tally::default());
    let start = tally.counts(throttled_so_far());
    let started = start.at.expect("set");
    let mut running = Vec::new();
    for _ in 0..tasks {
        let (client, connection, tally) = (client.clone(), connection.clone(), tally.clone());
        running.push(tokio::spawn(async move {
            while started.elapsed() < run_for {
                match client.get_user(&connection, USER).await {
                    Ok(_) => {
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
    tokio::time::sleep_until((started + warmup).into()).await;
    let steady = tally.counts(throttled_so_far());
    for task in running {
        task.await.expect("task");
    }
    let end = tally.counts(throttled_so_far());
    report("tenantd", "whole_run", start, end, budget_per_second);
    report("tenantd", "steady", steady, end, budget_per_second);
    println!(
        "# tenantd's rate for the tenant at the end: {:.1}/s; other errors {}",
        client.limits().tenant(TENANT).rate(),
        tally.other.load(Ordering::Relaxed)
    );

    // A plain client: no pacing, waits Retry-After on a 429 and tries again.
    tokio::time::sleep(Duration::from_secs(window)).await;
    set_budget();
    let http = reqwest::Client::new();
    let url = format!("{}/users/{USER}", emulator.graph_url());
    let tally = Arc::new(Tally::default());
    let start = tally.counts(0);
    let started = start.at.expect("set");
    let mut running = Vec::new();
    for _ in 0..tasks {
        let (http, url, token, tally) = (http.clone(), url.clone(), token.clone(), tally.clone());
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
    tokio::time::sleep_until((started + warmup).into()).await;
    let steady = tally.counts(tally.throttled.load(Ordering::Relaxed));
    for task in running {
        task.await.expect("task");
    }
    let end = tally.counts(tally.throttled.load(Ordering::Relaxed));
    report(
        "plain_retry_after_x3",
        "whole_run",
        start,
        end,
        budget_per_second,
    );
    report(
        "plain_retry_after_x3",
        "steady",
        steady,
        end,
        budget_per_second,
    );
    store.close().await;
}
