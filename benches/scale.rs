//! Scale benchmark (issue #17): one token sweep over thousands of delegated connections and
//! app-only tokens for thousands more, one reconcile creating and one renewing tens of
//! thousands of subscriptions (each created through Graph's handshake with the daemon's own
//! listener), the time of each and this process's peak RSS.
//!
//!     cargo bench --bench scale
//!     CONNECTIONS=10000 SUBSCRIPTIONS=30000 BACKENDS="sqlite postgres" cargo bench --bench scale
//!
//! The Graph emulator runs in a child process (this program started again as `scale emulator
//! N`), so the RSS measured here is tenantd's side alone: the store, the vault, the Graph
//! client, the jobs and the daemon's listeners (the application runs with no workers; the
//! bench runs the jobs itself). Addresses come from the environment: `EMULATOR_BIND` (default
//! `127.0.0.1:0`), `BENCH_POSTGRES_URL` (see `common`). Half the connections are app-only, half
//! delegated (a refresh token each); subscriptions go to the app-only tenants, spread evenly.
//! Prints one line per measurement: `backend measure count seconds rate peak_rss_mb`.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantd::config::{Config, DatabaseUrl};

mod common;
use common::{env_list, fresh_url};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn client_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn secret(n: usize) -> String {
    format!("bench-secret-{n}")
}

fn refresh_token(n: usize) -> String {
    format!("1.bench-refresh-{n}")
}

/// This process's peak and current resident set, in MiB (`/proc/self/status`).
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The child: an emulator with `tenants` tenants (a licensed user and a consented app each;
/// odd tenants also a refresh grant for that user), its address and then one line
/// `tenant user` per tenant on stdout; runs until stdin closes.
fn run_emulator(tenants: usize) {
    use graph_emulator::world::{AppSeed, RefreshGrant, TenantSeed, UserSeed};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bind = std::env::var("EMULATOR_BIND").unwrap_or_else(|_| "127.0.0.1:0".into());
        let settings = graph_emulator::Settings {
            allow_http_notification_urls: true,
            ..graph_emulator::Settings::default()
        };
        let emulator =
            graph_emulator::Emulator::start(bind.parse().expect("EMULATOR_BIND"), settings)
                .await
                .expect("emulator");
        let now = graph_emulator::clock::now();
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", emulator.base_url()).unwrap();
        {
            let mut world = emulator.shared().world();
            for n in 0..tenants {
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
                world
                    .seed_app(
                        &tenant,
                        AppSeed {
                            client_id: Some(client_id(n)),
                            client_secret: Some(secret(n)),
                            public_client: false,
                            display_name: None,
                            redirect_uris: vec![],
                            application_permissions: vec![
                                "Mail.Read".into(),
                                "Calendars.Read".into(),
                            ],
                            delegated_permissions: vec!["Mail.Read".into(), "User.Read".into()],
                            admin_consented: true,
                        },
                        now,
                    )
                    .unwrap();
                if n % 2 == 1 {
                    world.refresh_tokens.insert(
                        refresh_token(n),
                        RefreshGrant {
                            tenant: tenant.clone(),
                            client_id: client_id(n),
                            user_id: user.clone(),
                            issued: now,
                            expires: now + time::Duration::days(90),
                        },
                    );
                }
                writeln!(out, "{tenant} {user}").unwrap();
            }
        }
        out.flush().unwrap();
        drop(out);
        // Until the parent closes stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .is_ok_and(|read| read > 0)
            {}
        })
        .await;
        drop(emulator);
    });
}

fn report(backend: &str, measure: &str, count: usize, took: Duration) {
    #[allow(clippy::cast_precision_loss)]
    let rate = count as f64 / took.as_secs_f64();
    let (peak, _) = rss_mb();
    println!(
        "{backend} {measure} {count} {:.1} {rate:.0}/s {peak:.1}",
        took.as_secs_f64()
    );
}

async fn count(store_url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    if store_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(store_url).await.expect("pg");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&mut conn)
            .await
            .expect("count")
    } else {
        let mut conn = sqlx::SqliteConnection::connect(store_url)
            .await
            .expect("sqlite");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&mut conn)
            .await
            .expect("count")
    }
}

async fn execute(store_url: &str, sql: &str) {
    use sqlx::Connection;
    if store_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(store_url).await.expect("pg");
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .expect("execute");
    } else {
        let mut conn = sqlx::SqliteConnection::connect(store_url)
            .await
            .expect("sqlite");
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .expect("execute");
    }
}

#[allow(clippy::too_many_lines)]
async fn measure(
    backend: &str,
    emulator: &str,
    tenants: &[(String, String)],
    subscriptions: usize,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_url(backend, dir.path()).await;
    let key_file = dir.path().join("vault.keys");
    tenantd::vault::Keyring::create_file(&key_file, "k1").expect("key file");
    let keys = Arc::new(tenantd::vault::Keyring::load(&key_file).expect("keys"));
    let public_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        probe.local_addr().expect("addr").port()
    };
    let public_url = format!("http://127.0.0.1:{public_port}");
    let mut config = Config::default();
    config.database.url = DatabaseUrl::new(url.clone());
    config.admin.bind = "127.0.0.1:0".parse().unwrap();
    config.listener.bind = format!("127.0.0.1:{public_port}").parse().unwrap();
    config.listener.public_url = Some(url::Url::parse(&public_url).unwrap());
    config.listener.allow_http_public_url = true;
    config.secrets.key_file = key_file.clone();
    config.graph.base_url = url::Url::parse(&format!("{emulator}/v1.0")).unwrap();
    config.identity.authority = url::Url::parse(emulator).unwrap();
    // The bench runs the jobs itself, one at a time, and times each.
    config.queue.workers = 0;
    let app =
        tenantd::app::Application::build(config.clone(), tenantd::systemd::Notifier::disabled())
            .await
            .expect("application");
    let shutdown = tenantd::app::Shutdown::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let store = tenantd::store::Store::connect(&config.database)
        .await
        .expect("store");

    // Connections: even tenants app-only, odd tenants delegated.
    let started = Instant::now();
    for (n, (tenant, user)) in tenants.iter().enumerate() {
        if n % 2 == 0 {
            tenantd::vault::connections::add_app(
                &store,
                &keys,
                tenantd::vault::connections::NewAppConnection {
                    tenant_id: tenant,
                    client_id: &client_id(n),
                    client_secret: &secret(n),
                    label: None,
                    make_default: true,
                    authority: emulator,
                },
                tenantd::audit::Actor::Cli,
            )
            .await
            .expect("app connection");
        } else {
            tenantd::vault::connections::add_delegated(
                &store,
                &keys,
                tenantd::vault::connections::NewDelegatedConnection {
                    tenant_id: tenant,
                    client_id: &client_id(n),
                    user_id: user,
                    user_name: None,
                    authority: emulator,
                    refresh_token: &refresh_token(n),
                },
                tenantd::audit::Actor::Cli,
            )
            .await
            .expect("delegated connection");
        }
    }
    report(backend, "add_connections", tenants.len(), started.elapsed());

    let identity = tenantd::vault::identity::IdentityClient::configured(&config);
    let tokens = Arc::new(tenantd::vault::tokens::TokenService::new(
        store.clone(),
        keys.clone(),
        identity,
    ));
    // The sweep: every delegated connection renews (none has a token yet).
    let started = Instant::now();
    let swept = tokens.sweep().await.expect("sweep");
    assert_eq!(swept.failed, 0, "every delegated connection renewed");
    report(
        backend,
        "token_sweep_delegated",
        swept.renewed,
        started.elapsed(),
    );
    // App-only tokens are acquired on demand: all of them, 16 at a time, as jobs would.
    let apps = tenantd::vault::connections::list(&store, None)
        .await
        .expect("list")
        .into_iter()
        .filter(|c| c.auth_mode == tenantd::vault::connections::AuthMode::App)
        .collect::<Vec<_>>();
    let started = Instant::now();
    {
        use futures_util::StreamExt;
        let resource = tokens.graph_resource().to_string();
        futures_util::stream::iter(&apps)
            .for_each_concurrent(16, |connection| {
                let (tokens, resource) = (&tokens, &resource);
                async move {
                    tokens
                        .access_token(connection, resource)
                        .await
                        .expect("app-only token");
                }
            })
            .await;
    }
    report(backend, "app_only_tokens", apps.len(), started.elapsed());

    // Subscriptions over the app-only tenants, spread evenly.
    let resources = ["messages", "events", "mailFolders/inbox/messages"];
    let change_types = [vec!["created".to_string()], vec!["updated".to_string()]];
    let app_tenants: Vec<&(String, String)> = tenants.iter().step_by(2).collect();
    let started = Instant::now();
    for k in 0..subscriptions {
        let (tenant, user) = app_tenants[k % app_tenants.len()];
        let variant = k / app_tenants.len();
        let resource = format!("users/{user}/{}", resources[variant % resources.len()]);
        tenantd::subscriptions::declare(
            &store,
            &keys,
            &tenantd::subscriptions::Desired {
                tenant_id: tenant,
                resource: &resource,
                change_types: &change_types[(variant / resources.len()) % change_types.len()],
                origin: tenantd::subscriptions::Origin::Cli,
                include_resource_data: false,
            },
        )
        .await
        .expect("declare");
    }
    report(
        backend,
        "declare_subscriptions",
        subscriptions,
        started.elapsed(),
    );

    let queue = tenantd::queue::Queue::new(store.clone());
    let context = tenantd::jobs::JobContext {
        attempt: 1,
        public_url: Some(public_url.clone()),
        store: store.clone(),
        queue,
        tokens: tokens.clone(),
        keys: keys.clone(),
        graph: Arc::new(tenantd::graph::GraphClient::new(
            &config.graph,
            tokens.clone(),
        )),
    };
    let reconcile = tenantd::jobs::reconcile_subscriptions::ReconcileSubscriptions {
        public_url: Some(public_url.clone()),
    };
    let started = Instant::now();
    tenantd::jobs::Job::run(reconcile.clone(), context.clone())
        .await
        .expect("reconcile");
    let active = count(
        &url,
        "SELECT count(*) FROM subscriptions WHERE status = 'active'",
    )
    .await;
    assert_eq!(
        usize::try_from(active).unwrap(),
        subscriptions,
        "every subscription created"
    );
    report(
        backend,
        "reconcile_create",
        subscriptions,
        started.elapsed(),
    );

    // Every subscription due for renewal (an hour left), then one reconcile.
    execute(
        &url,
        &format!(
            "UPDATE subscriptions SET expires_at = {}",
            tenantd::clock::now_unix() + 3600
        ),
    )
    .await;
    let started = Instant::now();
    tenantd::jobs::Job::run(reconcile, context)
        .await
        .expect("reconcile");
    let renewed = count(
        &url,
        &format!(
            "SELECT count(*) FROM subscriptions WHERE expires_at > {}",
            tenantd::clock::now_unix() + 24 * 3600
        ),
    )
    .await;
    assert_eq!(
        usize::try_from(renewed).unwrap(),
        subscriptions,
        "every subscription renewed"
    );
    report(backend, "reconcile_renew", subscriptions, started.elapsed());

    let (peak, now) = rss_mb();
    println!("{backend} rss_peak_mb {peak:.1} rss_now_mb {now:.1}");
    shutdown.stop();
    let _ = running.await;
    store.close().await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("emulator") {
        run_emulator(args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10));
        return;
    }
    let tenants = env_number("CONNECTIONS", 10_000);
    let subscriptions = env_number("SUBSCRIPTIONS", 30_000);
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["emulator", &tenants.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the emulator");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let emulator = lines.next().expect("address").expect("address");
    let seeded: Vec<(String, String)> = lines
        .take(tenants)
        .map(|line| {
            let line = line.expect("tenant line");
            let (tenant, user) = line.split_once(' ').expect("tenant user");
            (tenant.to_string(), user.to_string())
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for backend in env_list("BACKENDS", "sqlite postgres") {
        runtime.block_on(measure(&backend, &emulator, &seeded, subscriptions));
    }
    drop(child.stdin.take());
    let _ = child.wait();
}
