//! A thousand tenants without a wedge (issue #17): 1,000 app-only connections and 3,000
//! subscriptions, created by the daemon against the Graph emulator (each through Graph's
//! handshake with the daemon's own listener) while three busy loops share the machine's cores,
//! on SQLite and then PostgreSQL. Bounded in time; the lease is short so that renewals come
//! often while the reconcile is inside its transactions, the moment that wedged every writer
//! before the fix. A test binary of its own: cargo runs test binaries one after another, so
//! the busy loops do not slow the other tests' deadlines.

#[path = "daemon/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_emulator::world::{AppSeed, TenantSeed, UserSeed};
use helpers::TestDb;

const TENANTS: usize = 1_000;
const PER_TENANT: usize = 3;
/// Far above what the run takes on an idle 2-core machine (about a minute per backend), far
/// below forever.
const DEADLINE: Duration = Duration::from_secs(360);

/// Busy loops on their own threads until dropped.
struct BusyCpus {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCpus {
    fn start(count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut spins = 0_u64;
                    while !stop.load(Ordering::Relaxed) {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for BusyCpus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One tenant at the emulator: its id, its user's id, its app's id and secret.
struct Seeded {
    tenant: String,
    user: String,
    client_id: String,
    secret: String,
}

fn seed(emulator: &graph_emulator::Emulator) -> Vec<Seeded> {
    let now = graph_emulator::clock::now();
    let mut world = emulator.shared().world();
    (0..TENANTS)
        .map(|n| {
            let tenant = uuid::Uuid::new_v4().to_string();
            let domain = format!("scale{n}.onmicrosoft.com");
            world
                .seed_tenant(TenantSeed {
                    id: Some(tenant.clone()),
                    domain: domain.clone(),
                    display_name: None,
                    skus: None,
                })
                .unwrap();
            let user = world
                .seed_user(
                    &tenant,
                    UserSeed {
                        user_principal_name: format!("user@{domain}"),
                        display_name: None,
                        usage_location: Some("DE".into()),
                        license: Some("ENTERPRISEPACK".into()),
                    },
                    now,
                    time::Duration::ZERO,
                )
                .unwrap();
            let (client_id, secret) = world
                .seed_app(
                    &tenant,
                    AppSeed {
                        client_id: None,
                        client_secret: None,
                        public_client: false,
                        display_name: None,
                        redirect_uris: vec![],
                        application_permissions: vec!["Mail.Read".into(), "Calendars.Read".into()],
                        delegated_permissions: vec![],
                        admin_consented: true,
                    },
                    now,
                )
                .unwrap();
            Seeded {
                tenant,
                user,
                client_id,
                secret: secret.unwrap(),
            }
        })
        .collect()
}

async fn count(db: &TestDb, sql: &str) -> usize {
    db.strings(sql).await[0].parse().unwrap()
}

async fn a_thousand_tenants_get_their_subscriptions_without_a_wedge(db: TestDb) {
    let emulator = graph_emulator::Emulator::start_local().await.unwrap();
    let seeded = seed(&emulator);
    let mut config = helpers::test_config(&db);
    helpers::public_listener_on_free_port(&mut config);
    config.graph.base_url = url::Url::parse(&emulator.graph_url()).unwrap();
    config.identity.authority = url::Url::parse(&emulator.base_url()).unwrap();
    // Renewed every second: many renewals fall while the reconcile is mid-transaction.
    config.queue.lease_seconds = 3;
    let keys = tenantd::vault::Keyring::load(&config.secrets.key_file).unwrap();
    let store = db.store().await;
    store.migrate().await.unwrap();
    let change_types = vec!["created".to_string()];
    for tenant in &seeded {
        helpers::default_app(
            &store,
            &keys,
            &emulator,
            &tenant.tenant,
            &tenant.client_id,
            &tenant.secret,
        )
        .await;
        for resource in ["messages", "events", "mailFolders/inbox/messages"] {
            tenantd::subscriptions::declare(
                &store,
                &keys,
                &tenantd::subscriptions::Desired {
                    tenant_id: &tenant.tenant,
                    resource: &format!("users/{}/{resource}", tenant.user),
                    change_types: &change_types,
                    origin: tenantd::subscriptions::Origin::Cli,
                    include_resource_data: false,
                },
            )
            .await
            .unwrap();
        }
    }
    let wanted = TENANTS * PER_TENANT;

    let busy = BusyCpus::start(3);
    let started = Instant::now();
    let app = helpers::spawn_app_with(config).await;
    let mut last = (0, Instant::now());
    loop {
        let active = count(
            &db,
            "SELECT CAST(count(*) AS TEXT) FROM subscriptions WHERE status = 'active'",
        )
        .await;
        if active == wanted {
            break;
        }
        if active != last.0 {
            last = (active, Instant::now());
        }
        let readiness = app.get_admin("/readyz").await.text().await.unwrap();
        assert!(
            started.elapsed() < DEADLINE && last.1.elapsed() < Duration::from_secs(60),
            "{active} of {wanted} subscriptions active after {:?}, none more for {:?} (a wedge); /readyz: {readiness}",
            started.elapsed(),
            last.1.elapsed(),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = started.elapsed();
    drop(busy);
    eprintln!(
        "{}: {wanted} subscriptions for {TENANTS} tenants created in {took:?}",
        if db.is_postgres() {
            "postgresql"
        } else {
            "sqlite"
        }
    );

    // No orphans: Graph holds exactly the recorded subscriptions.
    let recorded: BTreeSet<String> = db
        .strings("SELECT graph_id FROM subscriptions WHERE graph_id IS NOT NULL")
        .await
        .into_iter()
        .collect();
    let at_graph = emulator.shared().subscription_ids();
    assert_eq!(recorded.len(), wanted);
    assert_eq!(
        at_graph, recorded,
        "Graph has exactly the subscriptions tenantd recorded"
    );
    // The writers still write: a graceful stop within the grace period.
    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("the daemon stops within its grace period")
        .unwrap();
}

/// Both backends in turn, not in parallel: each run has the machine (and its busy loops) to
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tenants_on_both_backends() {
    a_thousand_tenants_get_their_subscriptions_without_a_wedge(TestDb::sqlite()).await;
    if let Some(db) = TestDb::postgres().await {
        a_thousand_tenants_get_their_subscriptions_without_a_wedge(db).await;
    }
}
