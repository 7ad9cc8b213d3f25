//! The real `tenantd` binary as a child process: signals, exit codes, systemd notifications,
//! configuration errors and secret redaction, on both backends where a database is involved.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::{combined_output, http_get, tenantd_command, Daemon, TestDb};
use tenantd::instance::Instance;

crate::on_both_backends!(
    sigterm_stops_the_daemon_cleanly_with_exit_code_zero_within_the_grace_period,
    migrate_applies_once_then_reports_up_to_date,
    healthcheck_exits_zero_when_ready_and_one_when_not,
    a_flood_of_forged_notifications_is_one_log_line_and_exact_metrics,
    killed_20_times_during_a_drain_every_job_still_finishes_once,
    instance_clocks_ten_minutes_off_do_not_rescue_live_jobs_early,
    a_double_sigterm_hands_the_running_job_back_and_exits_at_once,
);

/// Reliability: SIGTERM, then SIGTERM again, while a job hangs: the daemon exits 0 at once
/// (not after its 30 s grace) and the job is handed back: `available`, its attempt not
/// counted, not left `running` until its lease expires.
async fn a_double_sigterm_hands_the_running_job_back_and_exits_at_once(db: TestDb) {
    let job = hanging_job(&db).await;
    let mut command = tenantd_command();
    command.env("TENANTD_SHUTDOWN__GRACE_SECONDS", "30");
    for (name, value) in &job.env {
        command.env(name, value);
    }
    let mut daemon = Daemon::run(command);
    daemon.wait_until_running();
    crate::webhooks::eventually(
        &db,
        "SELECT id FROM jobs WHERE kind = 'connection_check' AND state = 'running'",
    )
    .await;
    let sent = Instant::now();
    daemon.signal("TERM");
    daemon.wait_for_log("stop requested", Duration::from_secs(5));
    daemon.signal("TERM");
    let status = tokio::task::block_in_place(|| daemon.wait_exit(Duration::from_secs(20)));
    assert_eq!(status.code(), Some(0), "{}", daemon.output());
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "exited in {:?}, not after the 30 s grace",
        sent.elapsed()
    );
    let state = db
        .strings("SELECT state || ' ' || CAST(attempts AS TEXT) FROM jobs WHERE kind = 'connection_check'")
        .await;
    assert_eq!(
        state,
        ["available 0"],
        "handed back without burning the attempt"
    );
    job.store.close().await;
}

/// A `connection_check` job that hangs: its connection's authority accepts connections and
/// never answers (the token request waits for its 30 s timeout). Returns what keeps it so
/// and the environment a daemon needs to run it.
struct HangingJob {
    _held: std::thread::JoinHandle<Vec<std::io::Result<std::net::TcpStream>>>,
    _dir: tempfile::TempDir,
    store: tenantd::store::Store,
    env: Vec<(&'static str, String)>,
}

async fn hanging_job(db: &TestDb) -> HangingJob {
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let authority = format!("http://{}", blackhole.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in blackhole.incoming().take(16) {
            open.push(stream);
        }
        open
    });
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("vault.keys");
    tenantd::vault::Keyring::create_file(&key_file, "k1").unwrap();
    let keys = tenantd::vault::Keyring::load(&key_file).unwrap();
    let store = db.store().await;
    store.migrate().await.unwrap();
    let tenant = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
    tenantd::vault::connections::add_app(
        &store,
        &keys,
        tenantd::vault::connections::NewAppConnection {
            tenant_id: tenant,
            client_id: "11111111-2222-4333-8444-555555555555",
            client_secret: "s",
            label: None,
            make_default: true,
            authority: &authority,
        },
        tenantd::audit::Actor::Cli,
    )
    .await
    .unwrap();
    tenantd::jobs::enqueue(
        &tenantd::queue::Queue::new(store.clone()),
        &tenantd::jobs::connection_check::ConnectionCheck {
            tenant_id: tenant.into(),
            run_id: None,
        },
    )
    .await
    .unwrap();
    let env = vec![
        ("TENANTD_DATABASE__URL", db.url().to_string()),
        ("TENANTD_SECRETS__KEY_FILE", key_file.display().to_string()),
        ("TENANTD_IDENTITY__AUTHORITY", authority.clone()),
        ("TENANTD_QUEUE__LEASE_SECONDS", "3".to_string()),
        ("TENANTD_QUEUE__WORKERS", "1".to_string()),
    ];
    HangingJob {
        _held: held,
        _dir: dir,
        store,
        env,
    }
}

/// `tenantd run` under libfaketime with the clock moved by `offset` (`+10m`, `-10m`);
/// monotonic time stays true, as it does on a machine whose wall clock is off. `None` when
/// faketime is not installed (CI installs it and sets TENANTD_REQUIRE_FAKETIME=1).
fn daemon_with_clock_off(offset: &str, env: &[(&str, String)]) -> Option<Daemon> {
    let found = std::process::Command::new("faketime")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var("TENANTD_REQUIRE_FAKETIME").as_deref() != Ok("1"),
            "TENANTD_REQUIRE_FAKETIME=1 but faketime is not installed (apt-get install faketime)"
        );
        eprintln!("skipped: faketime is not installed (apt-get install faketime)");
        return None;
    }
    let mut command = std::process::Command::new("faketime");
    for (name, _) in std::env::vars() {
        if name.starts_with("TENANTD_") || name == "NOTIFY_SOCKET" || name.starts_with("WATCHDOG_")
        {
            command.env_remove(name);
        }
    }
    command
        .stdin(Stdio::null())
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .args(["-f", offset, env!("CARGO_BIN_EXE_tenantd")]);
    for (name, value) in env {
        command.env(name, value);
    }
    Some(Daemon::run(command))
}

/// Reliability: instances whose clocks are 10 minutes off do not rescue a live job early,
/// because leases are judged by the database's clock. A job hangs in a token request to an
/// address that never answers; on PostgreSQL it runs on an instance 10 minutes slow while
/// another, 10 minutes fast, runs the reaper (twice in 20 s); on SQLite (one instance by
/// design, its clock is the database's) the fast instance runs both. The job stays `running`
/// under its first lease owner, its attempt counted once.
async fn instance_clocks_ten_minutes_off_do_not_rescue_live_jobs_early(db: TestDb) {
    let HangingJob {
        _held: held,
        _dir,
        store,
        env,
    } = hanging_job(&db).await;
    let postgres = !db.url().starts_with("sqlite");
    let Some(runner) = daemon_with_clock_off(if postgres { "-10m" } else { "+10m" }, &env) else {
        return;
    };
    runner.wait_until_running();
    let running = "SELECT lease_owner || ' ' || CAST(attempts AS TEXT) FROM jobs WHERE kind = 'connection_check' AND state = 'running'";
    let first = crate::webhooks::eventually(&db, running).await;
    // The claim was stamped with the instance's clock: proof the clock really is off.
    let stamped: i64 = db
        .strings("SELECT CAST(updated_at AS TEXT) FROM jobs WHERE kind = 'connection_check'")
        .await[0]
        .parse()
        .unwrap();
    let real = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    assert!(
        (stamped - real).abs() > 9 * 60 * 1000,
        "the runner's clock is 10 minutes off: stamped {stamped}, real {real}"
    );
    let reaper = if postgres {
        let other = [("TENANTD_QUEUE__WORKERS", "0".to_string())];
        let env: Vec<(&str, String)> = env
            .iter()
            .filter(|(name, _)| *name != "TENANTD_QUEUE__WORKERS")
            .cloned()
            .chain(other)
            .collect();
        let reaper = daemon_with_clock_off("+10m", &env).expect("faketime was found above");
        reaper.wait_until_running();
        Some(reaper)
    } else {
        None
    };
    // Two passes of the reaper (at start and after 15 s).
    tokio::time::sleep(Duration::from_secs(17)).await;
    let now = db.strings(running).await;
    assert_eq!(
        now, first,
        "the live job was not rescued: still running under its first lease, one attempt"
    );
    assert!(first[0].ends_with(" 1"), "{first:?}");
    drop(reaper);
    drop(runner);
    drop(held);
    store.close().await;
}

/// Reliability: 10,000 jobs drained by the real binary, killed with SIGKILL 20 times while it
/// works. In the end every job succeeded (none lost, none dead), none is left `running` past
/// its lease (the reaper hands killed runs' jobs back), and SQLite's integrity check passes.
async fn killed_20_times_during_a_drain_every_job_still_finishes_once(db: TestDb) {
    const JOBS: usize = 10_000;
    let store = db.store().await;
    store.migrate().await.unwrap();
    let queue = tenantd::queue::Queue::new(store.clone());
    let jobs: Vec<tenantd::queue::NewJob> = (0..JOBS)
        .map(|n| tenantd::queue::NewJob {
            kind: "noop".into(),
            payload: serde_json::json!({"tenant": format!("t{}", n % 7)}),
            tenant_id: format!("t{}", n % 7),
            dedupe_key: None,
            priority: 0,
            run_at: None,
            // Each kill may cost a running job one attempt: more than the kills.
            max_attempts: 25,
        })
        .collect();
    for chunk in jobs.chunks(1_000) {
        queue.enqueue_many(chunk).await.unwrap();
    }
    let run = || {
        let mut command = tenantd_command();
        command
            .env("TENANTD_DATABASE__URL", db.url())
            .env("TENANTD_QUEUE__WORKERS", "8")
            .env("TENANTD_QUEUE__LEASE_SECONDS", "3")
            .env("TENANTD_LOG__LEVEL", "warn,tenantd::app=info");
        Daemon::run(command)
    };
    let succeeded = || async {
        db.strings(
            "SELECT CAST(count(*) AS TEXT) FROM jobs WHERE kind = 'noop' AND state = 'succeeded'",
        )
        .await[0]
            .parse::<usize>()
            .unwrap()
    };
    // The kills are spread over the first two thirds of the drain (each when another thirtieth
    // of the jobs is done): the last one then still lands mid-drain, however fast the machine
    // drains the rest between a poll and the signal (at 20/21 the drain once finished first).
    for kill in 1..=20 {
        let mut daemon = run();
        daemon.wait_until_running();
        let threshold = JOBS * kill / 30;
        let deadline = Instant::now() + Duration::from_secs(20);
        while succeeded().await < threshold && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        daemon.signal("KILL");
        tokio::task::block_in_place(|| daemon.wait_exit(Duration::from_secs(10)));
    }
    let killed_at = succeeded().await;
    assert!(
        killed_at < JOBS,
        "the kills came during the drain, not after it ({killed_at} done)"
    );
    eprintln!("after 20 kills: {killed_at} of {JOBS} done");
    let mut daemon = run();
    daemon.wait_until_running();
    let deadline = Instant::now() + Duration::from_secs(120);
    while succeeded().await < JOBS {
        assert!(
            Instant::now() < deadline,
            "{} of {JOBS} succeeded after 120 s; stderr:\n{}",
            succeeded().await,
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.signal("TERM");
    tokio::task::block_in_place(|| daemon.wait_exit(Duration::from_secs(30)));
    let states = db
        .strings("SELECT state || ' ' || CAST(count(*) AS TEXT) FROM jobs WHERE kind = 'noop' GROUP BY state")
        .await;
    assert_eq!(
        states,
        [format!("succeeded {JOBS}")],
        "killed with {killed_at} done"
    );
    let leftovers = db
        .strings("SELECT kind || ' ' || state FROM jobs WHERE state = 'running'")
        .await;
    assert!(leftovers.is_empty(), "left running: {leftovers:?}");
    let burned = db
        .strings("SELECT CAST(max(attempts) AS TEXT) FROM jobs WHERE kind = 'noop'")
        .await;
    assert!(
        burned[0].parse::<u32>().unwrap() <= 21,
        "attempts: {burned:?}"
    );
    if db.url().starts_with("sqlite") {
        assert_eq!(db.strings("PRAGMA integrity_check").await, ["ok"]);
    }
    store.close().await;
}

/// 500 forged posts (well-formed, naming a subscription tenantd never made): each is answered
/// 202 and queues nothing (docs/decisions/0011-webhook-answers.md), the metrics count all 500,
/// and the log has one line for them, with the count, not 500.
async fn a_flood_of_forged_notifications_is_one_log_line_and_exact_metrics(db: TestDb) {
    let mut command = tenantd_command();
    command.env("TENANTD_DATABASE__URL", db.url());
    let daemon = Daemon::run(command);
    let (admin, public) = daemon.wait_until_running();
    let client = reqwest::Client::new();
    let forged = serde_json::json!({"value": [{
        "subscriptionId": "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
        "clientState": "guess",
        "changeType": "created",
        "resource": "users/u1/messages/m1",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
    }]})
    .to_string();
    for _ in 0..500 {
        let answer = client
            .post(format!("http://{public}/webhooks/graph"))
            .header("content-type", "application/json")
            .body(forged.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = metrics
        .lines()
        .find(|line| {
            line.starts_with("tenantd_webhook_items_total{")
                && line.contains("endpoint=\"notifications\"")
                && line.contains("outcome=\"unknown_subscription\"")
        })
        .unwrap_or_else(|| panic!("no unknown_subscription series in:\n{metrics}"));
    assert!(counted.ends_with(" 500"), "{counted}");
    assert_eq!(
        daemon.count_logs("notification items dropped"),
        1,
        "one line for the flood:\n{}",
        daemon.output()
    );
    let line = daemon.wait_for_log("notification items dropped", Duration::from_secs(1));
    assert_eq!(line["reason"], "unknown_subscription");
    let queued = db
        .strings("SELECT CAST(count(*) AS TEXT) FROM jobs WHERE kind = 'graph_notification'")
        .await;
    assert_eq!(queued, ["0"], "nothing queued");
}

async fn sigterm_stops_the_daemon_cleanly_with_exit_code_zero_within_the_grace_period(db: TestDb) {
    let mut command = tenantd_command();
    command
        .env("TENANTD_DATABASE__URL", db.url())
        .env("TENANTD_SHUTDOWN__GRACE_SECONDS", "3");
    let mut daemon = Daemon::run(command);
    let (admin, _) = daemon.wait_until_running();
    assert_eq!(http_get(&format!("http://{admin}/readyz")).unwrap().0, 200);

    let sent = Instant::now();
    daemon.signal("TERM");
    let status = tokio::task::block_in_place(|| daemon.wait_exit(Duration::from_secs(10)));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", daemon.output());
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        sent.elapsed()
    );
    daemon.wait_for_log("stop requested", Duration::from_secs(1));
    daemon.wait_for_log("stopped", Duration::from_secs(1));
    // The clean stop is recorded: no instance is left marked running.
    let store = db.store().await;
    assert!(Instance::running(&store).await.unwrap().is_empty());
    store.close().await;
}

async fn migrate_applies_once_then_reports_up_to_date(db: TestDb) {
    let run = || {
        tenantd_command()
            .args(["--database-url", db.url(), "migrate"])
            .output()
            .expect("run migrate")
    };
    let first = run();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains(
        "applied migrations [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]"
    ));
    let second = run();
    assert_eq!(second.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));
}

async fn healthcheck_exits_zero_when_ready_and_one_when_not(db: TestDb) {
    // No system trust store at all: the daemon and the CLI build their HTTP clients on the
    // bundled roots (src/tls.rs), never the machine's (reqwest's platform verifier refused to
    // build any client here and the process panicked).
    let no_trust_store = tempfile::tempdir().expect("empty dir");
    let without_trust_store = |command: &mut std::process::Command| {
        command
            .env("SSL_CERT_FILE", no_trust_store.path().join("none.pem"))
            .env("SSL_CERT_DIR", no_trust_store.path());
    };
    let mut command = tenantd_command();
    command.env("TENANTD_DATABASE__URL", db.url());
    without_trust_store(&mut command);
    let daemon = Daemon::run(command);
    let (admin, _) = daemon.wait_until_running();
    let check = |admin: String| {
        let mut command = tenantd_command();
        without_trust_store(&mut command);
        command
            .args(["--admin-bind", &admin, "healthcheck"])
            .output()
            .expect("run healthcheck")
    };
    let ready = check(admin.to_string());
    assert_eq!(
        ready.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ready.stdout)
    );

    db.make_unavailable().await;
    let not_ready = check(admin.to_string());
    assert_eq!(not_ready.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_ready.stdout).contains("503"));

    drop(daemon);
    // Nothing listens on port 1 of loopback.
    let unreachable = check("127.0.0.1:1".into());
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stdout).contains("not reachable"));
}

#[test]
fn run_on_the_defaults_creates_the_sqlite_database_under_data() {
    let cwd = tempfile::tempdir().unwrap();
    let mut command = tenantd_command();
    command.current_dir(cwd.path());
    let mut daemon = Daemon::run(command);
    let (admin, public) = daemon.wait_until_running();
    assert_eq!(http_get(&format!("http://{admin}/readyz")).unwrap().0, 200);
    assert_eq!(
        http_get(&format!("http://{public}/anything")).unwrap().0,
        404
    );
    assert!(cwd.path().join("data/tenantd.db").is_file());
    daemon.signal("INT");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn demo_runs_the_daemon_against_the_built_in_emulator() {
    let cwd = tempfile::tempdir().unwrap();
    let mut command = tenantd_command();
    command.current_dir(cwd.path());
    let mut daemon = Daemon::start(command, "demo", Stdio::piped());
    let (admin, _public) = daemon.wait_until_running();
    assert_eq!(http_get(&format!("http://{admin}/readyz")).unwrap().0, 200);
    assert!(cwd.path().join("data/demo/tenantd.db").is_file());
    assert!(
        !cwd.path().join("data/tenantd.db").exists(),
        "the demo keeps its own database"
    );
    let line = daemon.wait_for_log(
        "demo: pointed at the built-in Graph emulator",
        Duration::from_secs(5),
    );
    let emulator = line["emulator.url"]
        .as_str()
        .expect("emulator.url")
        .to_string();
    assert!(emulator.starts_with("http://127.0.0.1:"), "{emulator}");
    daemon.wait_for_log(
        "demo: tenant connected, Graph token acquired through the vault",
        Duration::from_secs(10),
    );
    assert!(cwd.path().join("data/demo/vault.keys").is_file());
    // Megan signs in too (delegated), for `tenantd bot provision`: two tokens in all.
    daemon.wait_for_log(
        "demo: demo user signed in (delegated)",
        Duration::from_secs(10),
    );
    let (status, counters) = http_get(&format!("{emulator}/_emulator/counters")).unwrap();
    assert_eq!(status, 200);
    assert!(counters.contains("\"tokens_issued\":2"), "{counters}");
    let (status, tenants) = http_get(&format!("{emulator}/_emulator/tenants")).unwrap();
    assert_eq!(status, 200);
    assert!(
        tenants.contains("contoso-demo.onmicrosoft.com"),
        "{tenants}"
    );
    // The demo's heartbeat fires every 30 s: within the first minute the emulated tenant has
    // demo users with mail Megan (signed in, delegated) really sent them, a document in
    // OneDrive, a calendar event and a Teams chat message.
    let deadline = Instant::now() + Duration::from_secs(60);
    let activity = loop {
        let (_, log) = http_get(&format!("{emulator}/_emulator/requests")).unwrap();
        let log: serde_json::Value = serde_json::from_str(&log).unwrap();
        let created = |method: &str, fragment: &str| {
            log.as_array().unwrap().iter().any(|r| {
                r["method"] == method
                    && r["path"].as_str().is_some_and(|p| p.contains(fragment))
                    && r["status"]
                        .as_u64()
                        .is_some_and(|s| (200..300).contains(&s))
            })
        };
        let seen = [
            created("POST", "/send"),
            created("PUT", "/drive/root:/Heartbeat/"),
            created("POST", "/events"),
            created("POST", "/chats/"),
        ];
        if seen.iter().all(|s| *s) {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat activity within a minute: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(activity, [true, true, true, true]);
    daemon.wait_for_log("heartbeat run finished", Duration::from_secs(20));
    // The webhook pipeline runs in the demo: within the first minute the emulator has
    // handshaken tenantd's subscriptions and delivered notifications of the heartbeat's mail,
    // and tenantd has fetched and stored those messages.
    let deadline = Instant::now() + Duration::from_secs(60);
    let database = cwd.path().join("data/demo/tenantd.db");
    let stored = loop {
        let (_, counters) = http_get(&format!("{emulator}/_emulator/counters")).unwrap();
        let counters: serde_json::Value = serde_json::from_str(&counters).unwrap();
        let stored = sqlite_strings(
            &database,
            "SELECT CAST(COUNT(*) AS TEXT) FROM messages WHERE deleted = 0",
        )[0]
        .parse::<i64>()
        .unwrap();
        if counters["validation_handshakes"].as_u64() > Some(0)
            && counters["notifications_delivered"].as_u64() > Some(0)
            && stored > 0
        {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "no notification stored within a minute: {counters} and {stored} messages"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(stored > 0);
    // The CLI beside the demo, from another directory, with the one line the banner gives:
    // it reads the demo's database with the demo's key file and reaches the demo's emulator.
    let config = cwd.path().join("data/demo/tenantd.toml");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains(&format!("authority = \"{emulator}\"")),
        "{written}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let out = tenantd_command()
            .current_dir(elsewhere.path())
            .env("TENANTD_CONFIG", &config)
            .args(args)
            .output()
            .unwrap();
        let text = combined_output(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {text}");
        text
    };
    let tenants = cli(&["tenant", "list"]);
    assert!(
        tenants.contains(DEMO_TENANT) && tenants.contains("active"),
        "{tenants}"
    );
    let checked = cli(&["tenant", "check", "--tenant", DEMO_TENANT]);
    assert!(checked.contains("Microsoft Graph: granted:"), "{checked}");
    let status = cli(&["status"]);
    assert!(
        status.contains(&format!("tenant {DEMO_TENANT}"))
            && status.contains(" app ")
            && status.contains("active")
            && status.contains("heartbeat     last run ")
            && status.contains("latest failures"),
        "{status}"
    );
    let status: serde_json::Value = serde_json::from_str(&cli(&["status", "--json"])).unwrap();
    assert_eq!(status["tenants"][0]["tenant_id"], DEMO_TENANT);
    assert_eq!(status["tenants"][0]["connections"][0]["status"], "active");
    assert!(
        status["tenants"][0]["subscriptions"]
            .as_array()
            .is_some_and(|s| s.len() == 4),
        "{status}"
    );
    // A Teams bot for Megan, who the demo signed in (delegated), as the banner suggests: the
    // password once, then never again, nowhere in the daemon's log; `status` shows the bot.
    let listed: serde_json::Value =
        serde_json::from_str(&cli(&["tenant", "list", "--json"])).unwrap();
    let megan = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["auth_mode"] == "delegated")
        .expect("the demo signs Megan in")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let provision = [
        "bot",
        "provision",
        "--connection",
        megan.as_str(),
        "--name",
        "Demo bot",
        "--endpoint",
        "https://bots.example.com/api/messages",
    ];
    let first = cli(&provision);
    let password = first
        .lines()
        .find_map(|line| line.strip_prefix("BOT_PASSWORD="))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the password is shown")
        .to_string();
    assert!(password.len() >= 16, "{first}");
    assert!(
        first.contains("TEAMS_APP_ID=") && first.contains("https://teams.microsoft.com/l/app/"),
        "{first}"
    );
    let again = cli(&provision);
    assert!(!again.contains(&password), "shown once: {again}");
    assert!(again.contains("tenantd keeps no copy"), "{again}");
    let status = cli(&["status"]);
    assert!(
        status.contains("Demo bot") && status.contains("ready"),
        "{status}"
    );
    assert!(
        !daemon.output().contains(&password),
        "the password is in the daemon's log"
    );
    let objects = cli(&["heartbeat", "list", "--tenant", DEMO_TENANT]);
    assert!(
        objects.contains("demo01@contoso-demo.onmicrosoft.com"),
        "{objects}"
    );
    assert!(
        std::fs::read_dir(elsewhere.path())
            .unwrap()
            .next()
            .is_none(),
        "the CLI created nothing where it ran"
    );
    let mut stdout = daemon.child.stdout.take().expect("piped stdout");
    daemon.signal("INT");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let mut banner = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut banner).unwrap();
    assert!(banner.contains("tenantd demo:"), "{banner}");
    assert!(
        banner.contains(&format!("http://{admin}/healthz")),
        "{banner}"
    );
    assert!(banner.contains(&emulator), "{banner}");
    assert!(
        banner.contains(&format!("export TENANTD_CONFIG={}", config.display())),
        "{banner}"
    );
}

/// The rows `sql` returns as text from the SQLite file at `path`, opened read-only beside the
/// running daemon.
fn sqlite_strings(path: &std::path::Path, sql: &str) -> Vec<String> {
    use sqlx::ConnectOptions;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .connect()
            .await
            .unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut connection)
            .await
            .unwrap()
    })
}

/// A restarted demo starts its database afresh, saying so, because its emulator starts empty:
/// afterwards every user the database says the heartbeat made exists in the new emulator.
#[test]
fn a_restarted_demo_starts_afresh_and_its_database_agrees_with_its_emulator() {
    let cwd = tempfile::tempdir().unwrap();
    let start = || {
        let mut command = tenantd_command();
        command.current_dir(cwd.path());
        let daemon = Daemon::start(command, "demo", Stdio::piped());
        daemon.wait_until_running();
        let line = daemon.wait_for_log(
            "demo: pointed at the built-in Graph emulator",
            Duration::from_secs(5),
        );
        let emulator = line["emulator.url"].as_str().unwrap().to_string();
        daemon.wait_for_log("demo: first heartbeat run done", Duration::from_secs(60));
        (daemon, emulator)
    };
    let stop = |mut daemon: Daemon| {
        let mut stdout = daemon.child.stdout.take().expect("piped stdout");
        daemon.signal("INT");
        assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    };
    let (first, _) = start();
    assert!(!stop(first).contains("starting afresh"));
    let (second, emulator) = start();
    let users_in_database = sqlite_strings(
        &cwd.path().join("data/demo/tenantd.db"),
        "SELECT graph_id FROM provisioned_objects WHERE kind = 'user'",
    );
    let (_, tenants) = http_get(&format!("{emulator}/_emulator/tenants")).unwrap();
    let said = stop(second);
    assert!(said.contains("starting afresh"), "{said}");
    assert_eq!(users_in_database.len(), 3, "{users_in_database:?}");
    for user in &users_in_database {
        assert!(
            tenants.contains(user.as_str()),
            "{user} is not in the emulator"
        );
    }
}

/// The demo tenant `graph_emulator::control::seed_demo` creates.
const DEMO_TENANT: &str = "6b0a4d1e-5c3f-4a8e-9d2b-7e1f0c9a8b3d";

fn recv_until(socket: &UnixDatagram, wanted: &str, deadline: Instant) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = message.lines().any(|line| line == wanted);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
    panic!("no {wanted} on the notify socket; got {seen:?}");
}

#[test]
fn systemd_gets_ready_watchdog_and_stopping_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let db = TestDb::sqlite();
    let mut command = tenantd_command();
    command
        .env("TENANTD_DATABASE__URL", db.url())
        .env("NOTIFY_SOCKET", &socket_path)
        // 400 ms timeout: tenantd pings every 200 ms.
        .env("WATCHDOG_USEC", "400000");
    let mut daemon = Daemon::run(command);
    let deadline = Instant::now() + Duration::from_secs(30);

    let before_ready = recv_until(&socket, "READY=1", deadline);
    assert!(
        before_ready.last().unwrap().contains("STATUS=listening"),
        "{before_ready:?}"
    );
    // READY=1 is sent only once the listeners accept.
    let (admin, _) = daemon.wait_until_running();
    assert_eq!(http_get(&format!("http://{admin}/healthz")).unwrap().0, 200);

    let mut pings = 0;
    while pings < 3 {
        recv_until(&socket, "WATCHDOG=1", deadline);
        pings += 1;
    }
    daemon.signal("TERM");
    let stopping = recv_until(&socket, "STOPPING=1", deadline);
    assert!(stopping.iter().all(|m| !m.contains("READY=1")));
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn an_abstract_notify_socket_is_supported() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("tenantd-test-{}", uuid::Uuid::new_v4().simple());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let db = TestDb::sqlite();
    let mut command = tenantd_command();
    command
        .env("TENANTD_DATABASE__URL", db.url())
        .env("NOTIFY_SOCKET", format!("@{name}"));
    let mut daemon = Daemon::run(command);
    recv_until(&socket, "READY=1", Instant::now() + Duration::from_secs(30));
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn sighup_reloads_the_log_level_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::sqlite();
    let config = dir.path().join("tenantd.toml");
    let write = |level: &str| {
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = \"{}\"\n[log]\nlevel = \"{level}\"\n",
                db.url()
            ),
        )
        .unwrap();
    };
    write("info");
    let mut command = tenantd_command();
    command.arg("--config").arg(&config);
    let mut daemon = Daemon::run(command);
    let (admin, _) = daemon.wait_until_running();

    // At info, serving a request logs nothing (that line is debug).
    assert_eq!(http_get(&format!("http://{admin}/healthz")).unwrap().0, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        daemon.count_logs("request served"),
        0,
        "{}",
        daemon.output()
    );

    write("debug");
    daemon.signal("HUP");
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(10));
    assert_eq!(http_get(&format!("http://{admin}/healthz")).unwrap().0, 200);
    daemon.wait_for_log("request served", Duration::from_secs(10));

    // A broken file on reload keeps the running configuration and the daemon.
    std::fs::write(&config, "[log]\nlevle = \"x\"\n").unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("reload failed", Duration::from_secs(10));
    assert_eq!(http_get(&format!("http://{admin}/healthz")).unwrap().0, 200);

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

fn config_error(args: &[&str], env: &[(&str, &str)], file: Option<&str>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tenantd_command();
    command
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(contents) = file {
        std::fs::write(dir.path().join("t.toml"), contents).unwrap();
        command.args(["--config", "t.toml"]);
    }
    command.args(args).envs(env.iter().copied());
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_key_exits_2_naming_the_key_for_every_command() {
    for command in ["run", "check-config", "migrate"] {
        let (code, stderr) = config_error(
            &[command],
            &[],
            Some("[database]\nurll = \"sqlite://x.db\"\n"),
        );
        assert_eq!(code, Some(2), "{command}: {stderr}");
        assert!(stderr.contains("`database.urll`"), "{stderr}");
        assert!(stderr.contains("did you mean `url`"), "{stderr}");
    }
    let (code, stderr) = config_error(&["run"], &[("TENANTD_ADMIN__BNID", "127.0.0.1:1")], None);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("`admin.bnid`") && stderr.contains("TENANTD_ADMIN__BNID"),
        "{stderr}"
    );
}

#[test]
fn a_bad_value_exits_2_naming_the_key_and_the_fix() {
    let (code, stderr) = config_error(&["run"], &[], Some("[admin]\nbind = \"localhost\"\n"));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("`admin.bind`") && stderr.contains("HOST:PORT"),
        "{stderr}"
    );

    let (code, stderr) = config_error(
        &["run"],
        &[("TENANTD_DATABASE__MAX_CONNECTIONS", "many")],
        None,
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("`database.max_connections`"), "{stderr}");

    let (code, stderr) = config_error(&["--log-format", "xml", "run"], &[], None);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("`log.format`") && stderr.contains("--log-format"),
        "{stderr}"
    );

    let (code, stderr) = config_error(&["--config", "missing.toml", "run"], &[], None);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let (code, _) = config_error(&["frobnicate"], &[], None);
    assert_eq!(code, Some(2));
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["healthcheck", "--help"],
        &["migrate", "--help"],
        &["check-config", "--help"],
    ] {
        let output = tenantd_command().args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn an_unreachable_database_exits_1_without_printing_its_password() {
    let (code, stderr) = config_error(
        &[
            "--database-url",
            "postgres://tenantd:canary-hunter2@127.0.0.1:1/tenantd",
            "run",
        ],
        &[("TENANTD_DATABASE__ACQUIRE_TIMEOUT_SECONDS", "2")],
        None,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot open the database"), "{stderr}");
    assert!(!stderr.contains("canary-hunter2"), "{stderr}");
}

#[test]
fn check_config_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("db-url"),
        "postgres://tenantd:canary-hunter2@db.internal/tenantd\n",
    )
    .unwrap();
    for (args, env) in [
        (
            vec!["check-config"],
            vec![(
                "TENANTD_DATABASE__URL",
                "postgres://tenantd:canary-hunter2@db/x",
            )],
        ),
        (
            vec![
                "--database-url",
                "postgres://u:canary-hunter2@db/x?password=canary-hunter2",
                "check-config",
            ],
            vec![],
        ),
        (
            vec!["check-config"],
            vec![("TENANTD_DATABASE__URL_FILE", "db-url")],
        ),
    ] {
        let output = tenantd_command()
            .current_dir(dir.path())
            .args(&args)
            .envs(env.iter().copied())
            .env("CREDENTIALS_DIRECTORY", dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        assert!(
            !stdout.contains("canary-hunter2") && !stderr.contains("canary-hunter2"),
            "{stdout}{stderr}"
        );
        assert!(stdout.contains("[redacted]"), "{stdout}");
        assert!(
            stdout.contains("[admin]") && stdout.contains("bind = \"127.0.0.1:9090\""),
            "{stdout}"
        );
    }
}

#[test]
fn a_single_underscore_env_var_is_warned_about() {
    let output = tenantd_command()
        .args(["check-config"])
        .env("TENANTD_LOG_LEVEL", "debug")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TENANTD_LOG_LEVEL") && stderr.contains("TENANTD_LOG__LEVEL"),
        "{stderr}"
    );
}

/// An address in use names the flag (and key and variable) that changes it.
#[test]
fn an_address_in_use_names_the_flag_that_changes_it() {
    let cwd = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = tenantd_command()
        .current_dir(cwd.path())
        .args(["--admin-bind", &address, "run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {address}"))
            && stderr.contains("--admin-bind")
            && stderr.contains("TENANTD_ADMIN__BIND"),
        "{stderr}"
    );
}

/// Read-only commands never create the daemon's state (issue #19): pointed at a directory
/// with no database or key file, each names the missing file and the fix, exits 2 and leaves
/// the directory empty. Once the database exists, a missing key file is named the same way.
#[test]
fn read_only_commands_never_create_a_database_or_a_key_file() {
    let cwd = tempfile::tempdir().unwrap();
    let tenantd_here = |args: &[&str]| {
        tenantd_command()
            .current_dir(cwd.path())
            .args(args)
            .output()
            .unwrap()
    };
    let read_only: [&[&str]; 9] = [
        &["status"],
        &["tenant", "list"],
        &[
            "tenant",
            "check",
            "--tenant",
            "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        ],
        &["subscription", "list"],
        &["queue", "stats"],
        &["queue", "list"],
        &["runs", "list"],
        &[
            "heartbeat",
            "list",
            "--tenant",
            "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        ],
        &["keys", "verify"],
    ];
    for args in read_only {
        let out = tenantd_here(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no database at data/tenantd.db") && stderr.contains("tenantd migrate"),
            "{args:?}: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
    }
    // A new database, still no key file: the commands that open secrets say which file.
    let migrated = tenantd_here(&["migrate"]);
    assert_eq!(migrated.status.code(), Some(0));
    for args in [
        &["tenant", "list"][..],
        &["subscription", "list"],
        &["keys", "verify"],
    ] {
        let out = tenantd_here(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("data/vault.keys") && stderr.contains("TENANTD_CONFIG"),
            "{args:?}: {stderr}"
        );
        assert!(!cwd.path().join("data/vault.keys").exists(), "{args:?}");
    }
    // With a key file, every read-only command works on the new database, and an empty list
    // says so instead of printing nothing.
    let generated = tenantd_here(&["keys", "generate", "--out", "data/vault.keys"]);
    assert_eq!(generated.status.code(), Some(0));
    for (args, says) in [
        (&["status"][..], "no tenants"),
        (&["tenant", "list"], "no connections"),
        (&["subscription", "list"], "no subscriptions"),
        (&["queue", "stats"], "no jobs"),
        (&["queue", "list"], "no dead jobs"),
        (&["runs", "list"], "no operation runs"),
        (
            &[
                "heartbeat",
                "list",
                "--tenant",
                "84bd8158-6d4d-4958-8b9f-9d6445542f95",
            ],
            "no heartbeat objects",
        ),
        (
            &[
                "attribution",
                "list",
                "--tenant",
                "84bd8158-6d4d-4958-8b9f-9d6445542f95",
            ],
            "no actions taken as users",
        ),
    ] {
        let out = tenantd_here(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            combined_output(&out)
        );
        assert!(stdout.starts_with(says), "{args:?}: {stdout}");
    }
}

/// `tenantd … | head` closes the pipe early: the CLI ends quietly (exit 0, no panic, no
/// backtrace) instead of panicking on the failed write.
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    let cwd = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = tenantd_command()
        .current_dir(cwd.path())
        .arg("check-config")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

/// Reliability: whatever is stuck, SIGTERM ends the process within the grace period plus the
/// hard-stop margin (10 s), exit code 1 so the supervisor knows. Here the database hangs (a
/// proxy keeps every connection open and forwards nothing), so the drain, the lease release
/// and the final instance write all wait forever: only the hard stop can end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_process_even_when_the_database_hangs() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let proxy = crate::helpers::CuttableProxy::in_front_of(&db).await;
    let mut command = tenantd_command();
    command
        .env("TENANTD_DATABASE__URL", proxy.url_for(&db))
        .env("TENANTD_SHUTDOWN__GRACE_SECONDS", "2");
    let mut daemon = Daemon::run(command);
    daemon.wait_until_running();
    proxy.freeze();
    // Let the daemon's own work run into the hung database first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = Instant::now();
    daemon.signal("TERM");
    let status = tokio::task::block_in_place(|| daemon.wait_exit(Duration::from_secs(30)));
    let took = sent.elapsed();
    assert_eq!(
        status.code(),
        Some(1),
        "a stop that could not finish is a failure: {}",
        daemon.output()
    );
    assert!(
        took >= Duration::from_secs(11) && took < Duration::from_secs(16),
        "exited {took:?} after SIGTERM: the 2 s grace plus the 10 s margin, not sooner, not much later"
    );
    assert!(daemon
        .output()
        .contains("still not stopped 12s after the stop signal"));
}
