//! Test harness: fresh databases on both backends, the daemon started in-process on port 0,
//! the real binary started as a child process, and a Prometheus text-format checker.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tenantd::app::{AppError, Application, Shutdown};
use tenantd::config::{Config, DatabaseUrl};
use tenantd::systemd::Notifier;

/// The variable that enables the PostgreSQL variant of every store test.
pub(crate) const POSTGRES_URL_VAR: &str = "TENANTD_TEST_POSTGRES_URL";

/// The server tried when `TENANTD_TEST_POSTGRES_URL` is unset.
const LOCAL_POSTGRES: &str = "127.0.0.1:5432";

/// The PostgreSQL server URL for tests: the variable, else the local server when it answers.
fn postgres_server_url() -> Option<String> {
    static LOCAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Ok(url) = std::env::var(POSTGRES_URL_VAR) {
        return Some(url);
    }
    let answers = *LOCAL.get_or_init(|| {
        let addr = LOCAL_POSTGRES.parse().expect("socket address");
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).is_ok()
    });
    answers.then(|| format!("postgres://postgres@{LOCAL_POSTGRES}/postgres"))
}

/// Generates `sqlite::NAME` and `postgres::NAME` tests from `async fn NAME(db: TestDb)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::TestDb::sqlite()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::helpers::TestDb::postgres().await {
                        super::$name(db).await;
                    }
                }
            )+
        }
    };
}

/// Runs `$body` with `$conn` a fresh connection of the right kind to the test database.
macro_rules! on_connection {
    ($db:expr, |$conn:ident| $body:expr) => {
        match &$db.kind {
            Kind::Sqlite { .. } => {
                let mut $conn = sqlx::SqliteConnection::connect(&$db.url)
                    .await
                    .expect("connect");
                $body
            }
            Kind::Postgres { .. } => {
                let mut $conn = sqlx::PgConnection::connect(&$db.url)
                    .await
                    .expect("connect");
                $body
            }
        }
    };
}

/// A database used by one test only.
pub(crate) struct TestDb {
    url: String,
    kind: Kind,
}

/// A held write lock on `jobs` ([`TestDb::lock_jobs`]); released by [`JobsLock::release`].
pub(crate) enum JobsLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl JobsLock {
    /// Ends the locking transaction.
    pub(crate) async fn release(self) {
        use sqlx::Connection as _;
        match self {
            JobsLock::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            JobsLock::Postgres(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }
}

enum Kind {
    Sqlite {
        _dir: tempfile::TempDir,
        file: PathBuf,
    },
    Postgres {
        server_url: String,
        name: String,
    },
}

impl TestDb {
    /// A new SQLite file in a temporary folder (the folder is created by the daemon).
    pub(crate) fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("state/tenantd.db");
        Self {
            url: format!("sqlite://{}", file.display()),
            kind: Kind::Sqlite { _dir: dir, file },
        }
    }

    /// A new PostgreSQL database on the server named by `TENANTD_TEST_POSTGRES_URL`, or, when
    /// that is unset, on the local server at 127.0.0.1:5432 (user `postgres`) if one answers.
    /// `None` (test skipped, said on stderr) when there is neither, unless
    /// `TENANTD_REQUIRE_POSTGRES=1`, as in CI, where a missing server fails the test.
    pub(crate) async fn postgres() -> Option<Self> {
        let Some(server_url) = postgres_server_url() else {
            assert!(
                std::env::var("TENANTD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "TENANTD_REQUIRE_POSTGRES=1 but {POSTGRES_URL_VAR} is not set and nothing answers on {LOCAL_POSTGRES}"
            );
            eprintln!("skipped: no PostgreSQL on {LOCAL_POSTGRES}; set {POSTGRES_URL_VAR} to run the PostgreSQL variant");
            return None;
        };
        let name = format!("tenantd_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&server_url)
            .await
            .unwrap_or_else(|err| panic!("{POSTGRES_URL_VAR}: cannot connect: {err}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let mut url = url::Url::parse(&server_url).expect("valid postgres URL");
        url.set_path(&format!("/{name}"));
        Some(Self {
            url: url.to_string(),
            kind: Kind::Postgres { server_url, name },
        })
    }

    /// Whether this is the PostgreSQL variant.
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self.kind, Kind::Postgres { .. })
    }

    /// The database URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Holds the write lock on `jobs` from a connection of its own until the returned guard
    /// is dropped: SQLite `BEGIN EXCLUSIVE`, PostgreSQL `LOCK TABLE jobs` in an open
    /// transaction. Writers of the daemon wait; readers go on.
    pub(crate) async fn lock_jobs(&self) -> JobsLock {
        use sqlx::Connection as _;
        match &self.kind {
            Kind::Sqlite { .. } => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                JobsLock::Sqlite(conn)
            }
            Kind::Postgres { .. } => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
                sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                JobsLock::Postgres(conn)
            }
        }
    }

    /// Takes the database away under a running daemon: the SQLite file is deleted, the
    /// PostgreSQL database is dropped with its sessions terminated.
    pub(crate) async fn make_unavailable(&self) {
        match &self.kind {
            Kind::Sqlite { file, .. } => std::fs::remove_file(file).expect("delete database file"),
            Kind::Postgres { server_url, name } => drop_postgres(server_url, name).await,
        }
    }

    /// Runs raw SQL against the database (tests that tamper with rows).
    pub(crate) async fn execute(&self, sql: &str) {
        let statement = sqlx::AssertSqlSafe(sql.to_string());
        on_connection!(self, |conn| {
            sqlx::query(statement)
                .execute(&mut conn)
                .await
                .expect("execute");
        });
    }

    /// The first column of every row `sql` returns, as text.
    pub(crate) async fn strings(&self, sql: &str) -> Vec<String> {
        let statement = sqlx::AssertSqlSafe(sql.to_string());
        on_connection!(self, |conn| sqlx::query_scalar(statement)
            .fetch_all(&mut conn)
            .await
            .expect("query"))
    }

    /// Everything the database holds, as raw bytes (SQLite: the file and its WAL) or as the
    /// text of every row of every tenantd table (PostgreSQL).
    pub(crate) async fn raw_contents(&self) -> Vec<u8> {
        match &self.kind {
            Kind::Sqlite { file, .. } => {
                let mut bytes = std::fs::read(file).unwrap_or_default();
                let mut wal = file.clone().into_os_string();
                wal.push("-wal");
                bytes.extend(std::fs::read(wal).unwrap_or_default());
                bytes
            }
            Kind::Postgres { .. } => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                let mut out = Vec::new();
                for table in [
                    "connections",
                    "connection_tokens",
                    "audit_log",
                    "instances",
                    "bots",
                    "jobs",
                    "operation_runs",
                ] {
                    let sql = sqlx::AssertSqlSafe(format!("SELECT t::text FROM {table} t"));
                    let rows: Vec<String> = sqlx::query_scalar(sql)
                        .fetch_all(&mut conn)
                        .await
                        .expect("dump");
                    for row in rows {
                        out.extend(row.into_bytes());
                    }
                }
                out
            }
        }
    }

    /// A store on this database, for assertions.
    pub(crate) async fn store(&self) -> tenantd::store::Store {
        let config = tenantd::config::DatabaseConfig {
            url: DatabaseUrl::new(self.url.clone()),
            ..Default::default()
        };
        tenantd::store::Store::connect(&config)
            .await
            .expect("connect test store")
    }
}

async fn drop_postgres(server_url: &str, name: &str) {
    let mut conn = sqlx::PgConnection::connect(server_url)
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .expect("drop test database");
    conn.close().await.ok();
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Kind::Postgres { server_url, name } = &self.kind {
            let (server_url, name) = (server_url.clone(), name.clone());
            // Drop runs inside the test's runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(drop_postgres(&server_url, &name));
            })
            .join();
        }
    }
}

/// Configuration for a test daemon: the given database, both listeners on port 0.
/// Puts `config`'s public listener on a free loopback port, chosen before the daemon starts
/// because Graph must be told where to post; returns its URL.
pub(crate) fn public_listener_on_free_port(config: &mut Config) -> String {
    // Below the ephemeral range (32768-60999 on Linux): a port the kernel hands out for port 0
    // is also what outgoing connections take, and tests that open hundreds of them (the
    // reconnect storm) would take it between this check and the daemon's bind.
    let port = loop {
        let candidate = 20_000 + uuid::Uuid::new_v4().as_u128() % 12_000;
        let candidate = u16::try_from(candidate).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            break candidate;
        }
    };
    let public_url = format!("http://127.0.0.1:{port}");
    config.listener.bind = format!("127.0.0.1:{port}").parse().unwrap();
    config.listener.public_url = Some(url::Url::parse(&public_url).unwrap());
    // The emulator posts to the loopback listener over plain http.
    config.listener.allow_http_public_url = true;
    public_url
}

pub(crate) fn test_config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.database.url = DatabaseUrl::new(db.url());
    config.admin.bind = "127.0.0.1:0".parse().unwrap();
    config.listener.bind = "127.0.0.1:0".parse().unwrap();
    config.shutdown.grace_seconds = 5;
    config.secrets.key_file = test_key_file();
    config
}

/// A fresh vault key file in the system temp folder (configured files are never invented).
pub(crate) fn test_key_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tenantd-test-{}.keys",
        uuid::Uuid::new_v4().simple()
    ));
    tenantd::vault::Keyring::create_file(&path, "k1").expect("write a test key file");
    path
}

/// A daemon running in this process.
pub(crate) struct TestApp {
    pub(crate) admin: SocketAddr,
    pub(crate) public: SocketAddr,
    pub(crate) instance_id: String,
    pub(crate) shutdown: Shutdown,
    pub(crate) handle: tokio::task::JoinHandle<Result<(), AppError>>,
    pub(crate) client: reqwest::Client,
    /// A worker pool on the daemon's parts, run by the test beside the daemon's own workers.
    runner: tenantd::worker::WorkerPool,
}

impl TestApp {
    pub(crate) async fn get_admin(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .expect("admin request")
    }

    pub(crate) async fn get_public(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("http://{}{path}", self.public))
            .send()
            .await
            .expect("public request")
    }

    /// Runs the queue in this task, beside the daemon's workers, until no job is due or
    /// running: the test waits for the work, not for a clock.
    pub(crate) async fn run_queue_until_empty(&self) {
        self.runner
            .clone()
            .run_until_empty()
            .await
            .expect("the queue could be read");
    }

    /// Requests a graceful stop and waits for it.
    pub(crate) async fn stop(self) -> Result<(), AppError> {
        self.shutdown.stop();
        self.handle.await.expect("run_until_stopped panicked")
    }
}

/// Builds and starts the daemon in-process on `db`.
pub(crate) async fn spawn_app(db: &TestDb) -> TestApp {
    spawn_app_with(test_config(db)).await
}

/// Builds and starts the daemon in-process with `config`.
pub(crate) async fn spawn_app_with(config: Config) -> TestApp {
    let app = Application::build(config, Notifier::disabled())
        .await
        .expect("application builds");
    let (admin, public) = (app.admin_addr(), app.public_addr());
    let instance_id = app.instance_id().to_string();
    let runner = app.worker_pool(&format!("{instance_id}:test"));
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        admin,
        public,
        instance_id,
        shutdown,
        handle,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        runner,
    }
}

/// The real `tenantd` binary running as a child process, its stderr collected line by line.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

/// A `tenantd` command with a clean `TENANTD_*` environment.
pub(crate) fn tenantd_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tenantd"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TENANTD_") || name == "NOTIFY_SOCKET" || name.starts_with("WATCHDOG_")
        {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null());
    command
}

impl Daemon {
    /// Starts `tenantd ARGS run` with JSON logs and both listeners on port 0.
    pub(crate) fn run(command: Command) -> Self {
        Self::start(command, "run", Stdio::null())
    }

    /// Starts `tenantd ARGS SUBCOMMAND` with JSON logs and both listeners on port 0.
    pub(crate) fn start(mut command: Command, subcommand: &str, stdout: Stdio) -> Self {
        command
            .args([
                "--log-format",
                "json",
                "--admin-bind",
                "127.0.0.1:0",
                "--listener-bind",
                "127.0.0.1:0",
                subcommand,
            ])
            .stdout(stdout)
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn tenantd");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    /// Every stderr line so far.
    pub(crate) fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a JSON log line whose `message` contains `needle`; returns it parsed.
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.lines.lock().unwrap().iter().find_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                value["message"].as_str()?.contains(needle).then_some(value)
            });
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {timeout:?}; stderr so far:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many JSON log lines so far have a `message` containing `needle`.
    pub(crate) fn count_logs(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|value| {
                value["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle))
            })
            .count()
    }

    /// Waits for "tenantd is running" and returns the admin and public addresses.
    pub(crate) fn wait_until_running(&self) -> (SocketAddr, SocketAddr) {
        let line = self.wait_for_log("tenantd is running", Duration::from_secs(30));
        let admin = line["admin.addr"]
            .as_str()
            .expect("admin.addr field")
            .parse()
            .unwrap();
        let public = line["public.addr"]
            .as_str()
            .expect("public.addr field")
            .parse()
            .unwrap();
        (admin, public)
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`) with kill(1).
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "tenantd did not exit within {timeout:?}; stderr:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking GET with no proxy, for subprocess tests.
/// Runs on its own thread, so it works inside and outside a tokio runtime.
pub(crate) fn http_get(url: &str) -> Result<(u16, String), String> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            Ok((status, response.text().await.map_err(|e| e.to_string())?))
        })
    })
    .join()
    .expect("http thread")
}

/// One sample of a Prometheus scrape.
#[derive(Debug)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_labels(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or(format!("label without =\" in {raw}"))?;
        if !valid_metric_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {raw}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {raw}")),
            }
        };
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(labels)
}

fn parse_value(raw: &str) -> Result<f64, String> {
    match raw {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        other => other
            .parse()
            .map_err(|_| format!("bad sample value {other:?}")),
    }
}

/// Parses the Prometheus text exposition format (0.0.4) strictly: names, labels and values
/// well-formed; every sample's family declared by one `# TYPE` line before it and described by
/// a `# HELP` line (`promtool check metrics` asks for both); histogram buckets cumulative and
/// ending in `+Inf` equal to `_count`.
pub(crate) fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: std::collections::HashMap<String, String> = Default::default();
    let mut helps: std::collections::HashSet<String> = Default::default();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(format!("unknown type {kind} for {name}"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(format!("TYPE repeated for {name}"));
                    }
                }
                (Some("HELP"), Some(name), Some(help))
                    if valid_metric_name(name) && !help.trim().is_empty() =>
                {
                    helps.insert(name.to_string());
                }
                (Some("HELP" | "TYPE"), _, _) => return Err(format!("malformed line {line:?}")),
                _ => {}
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or(format!("no value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or(format!("unclosed labels in {line:?}"))?;
                (name, parse_labels(labels)?)
            }
            None => (series, Vec::new()),
        };
        if !valid_metric_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|base| {
                    matches!(
                        types.get(*base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                })
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("sample {name} has no TYPE line before it"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: parse_value(value)?,
        });
    }
    check_histograms(&samples, &types)?;
    let mut undescribed: Vec<&String> =
        types.keys().filter(|name| !helps.contains(*name)).collect();
    undescribed.sort();
    if !undescribed.is_empty() {
        return Err(format!("families without HELP: {undescribed:?}"));
    }
    Ok(samples)
}

fn check_histograms(
    samples: &[Sample],
    types: &std::collections::HashMap<String, String>,
) -> Result<(), String> {
    for (family, _) in types.iter().filter(|(_, kind)| *kind == "histogram") {
        let bucket_name = format!("{family}_bucket");
        let mut series: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
        for sample in samples.iter().filter(|s| s.name == bucket_name) {
            let le = sample
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .ok_or("bucket without le")?;
            let others: Vec<String> = sample
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            series
                .entry(others.join(","))
                .or_default()
                .push((parse_value(&le.1)?, sample.value));
        }
        for (labels, buckets) in series {
            if buckets
                .windows(2)
                .any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1)
            {
                return Err(format!("{family}{{{labels}}}: buckets not cumulative"));
            }
            let last = buckets.last().ok_or("empty histogram")?;
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{{{labels}}}: no +Inf bucket"));
            }
        }
    }
    Ok(())
}

/// The tenant's default app-only connection to `emulator`, sealed with `keys`.
pub(crate) async fn default_app(
    store: &tenantd::store::Store,
    keys: &tenantd::vault::Keyring,
    emulator: &graph_emulator::Emulator,
    tenant: &str,
    client_id: &str,
    secret: &str,
) -> tenantd::vault::connections::Connection {
    tenantd::vault::connections::add_app(
        store,
        keys,
        tenantd::vault::connections::NewAppConnection {
            tenant_id: tenant,
            client_id,
            client_secret: secret,
            label: None,
            make_default: true,
            authority: &emulator.base_url(),
        },
        tenantd::audit::Actor::Cli,
    )
    .await
    .unwrap()
}

/// The id of the first user seeded in `tenant` at `emulator`.
pub(crate) fn first_user_id(emulator: &graph_emulator::Emulator, tenant: &str) -> String {
    let world = emulator.shared().world();
    world.tenants[tenant]
        .users
        .values()
        .next()
        .expect("a seeded user")
        .id
        .clone()
}

/// A finished process's standard output and error, as one text.
pub(crate) fn combined_output(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A test vault key, the tenant's default app-only connection to `emulator`, and a token
/// service asking the emulator: what tests of Graph-calling code share.
pub(crate) async fn connect_app(
    store: &tenantd::store::Store,
    emulator: &graph_emulator::Emulator,
    tenant: &str,
    client_id: &str,
    secret: &str,
) -> (
    tenantd::vault::connections::Connection,
    Arc<tenantd::vault::tokens::TokenService>,
) {
    let key = tenantd::vault::Keyring::new_key_line("k1");
    let keys = Arc::new(tenantd::vault::Keyring::parse(std::path::Path::new("k"), &key).unwrap());
    let authority = emulator.base_url();
    let connection = default_app(store, &keys, emulator, tenant, client_id, secret).await;
    let identity =
        tenantd::vault::identity::IdentityClient::new(url::Url::parse(&authority).unwrap());
    let tokens = Arc::new(tenantd::vault::tokens::TokenService::new(
        store.clone(),
        keys,
        identity,
    ));
    (connection, tokens)
}

/// The Graph emulator with one tenant (domain contoso.onmicrosoft.com), `users` users
/// (`user{n}@…`, the first licensed, so with a mailbox) and an admin-consented app holding
/// `permissions`; the app's client id and secret.
pub(crate) async fn seeded_emulator(
    tenant: &str,
    users: usize,
    permissions: &[&str],
) -> (graph_emulator::Emulator, String, String) {
    seeded_emulator_with(tenant, users, permissions, &[]).await
}

/// [`seeded_emulator`] whose app also has admin-consented `delegated` permissions.
pub(crate) async fn seeded_emulator_with(
    tenant: &str,
    users: usize,
    permissions: &[&str],
    delegated: &[&str],
) -> (graph_emulator::Emulator, String, String) {
    use graph_emulator::world::{AppSeed, TenantSeed, UserSeed};
    let emulator = graph_emulator::Emulator::start_local().await.unwrap();
    let now = graph_emulator::clock::now();
    let (client_id, secret) = {
        let mut world = emulator.shared().world();
        world
            .seed_tenant(TenantSeed {
                id: Some(tenant.into()),
                domain: "contoso.onmicrosoft.com".into(),
                display_name: None,
                skus: None,
            })
            .unwrap();
        for n in 0..users {
            let license = (n == 0).then(|| "ENTERPRISEPACK".to_string());
            world
                .seed_user(
                    tenant,
                    UserSeed {
                        user_principal_name: format!("user{n}@contoso.onmicrosoft.com"),
                        display_name: None,
                        usage_location: Some("DE".into()),
                        license,
                    },
                    now,
                    time::Duration::ZERO,
                )
                .unwrap();
        }
        let (client_id, secret) = world
            .seed_app(
                tenant,
                AppSeed {
                    client_id: None,
                    client_secret: None,
                    public_client: false,
                    display_name: None,
                    redirect_uris: vec![],
                    application_permissions: permissions.iter().map(|p| p.to_string()).collect(),
                    delegated_permissions: delegated.iter().map(|p| p.to_string()).collect(),
                    admin_consented: true,
                },
                now,
            )
            .unwrap();
        (client_id, secret.unwrap())
    };
    (emulator, client_id, secret)
}

/// A job context on `store` using `tokens`, with a throwaway vault key and a Graph client on
/// the default configuration (tests that call Graph replace `graph`).
pub(crate) fn job_context(
    store: &tenantd::store::Store,
    tokens: Arc<tenantd::vault::tokens::TokenService>,
) -> tenantd::jobs::JobContext {
    tenantd::jobs::JobContext {
        attempt: 1,
        public_url: None,
        store: store.clone(),
        queue: tenantd::queue::Queue::new(store.clone()),
        graph: Arc::new(tenantd::graph::GraphClient::new(
            &tenantd::config::GraphConfig::default(),
            tokens.clone(),
        )),
        tokens,
        keys: Arc::new(
            tenantd::vault::Keyring::parse(
                std::path::Path::new("k"),
                &tenantd::vault::Keyring::new_key_line("k1"),
            )
            .unwrap(),
        ),
    }
}

/// Runs the queue until job `id` has finished: its state and last reason, e.g. `succeeded` or
/// `failed license_seats_exhausted`. A job waiting for its retry is waited for until its
/// `run_at`, then the queue runs again.
pub(crate) async fn job_outcome(app: &TestApp, db: &TestDb, id: &str) -> String {
    let sql = format!(
        "SELECT state || ' ' || COALESCE(last_reason, '') || ' ' || CAST(run_at AS TEXT) FROM jobs WHERE id = '{id}'"
    );
    for _ in 0..10 {
        app.run_queue_until_empty().await;
        let row = db.strings(&sql).await;
        let row = row.first().expect("the job exists");
        let (state_and_reason, run_at) = row.rsplit_once(' ').expect("three fields");
        if !state_and_reason.starts_with("available") {
            return state_and_reason.trim().to_string();
        }
        // Waiting for its retry: at the job's own time, not a fixed poll.
        let run_at: u64 = run_at.parse().expect("run_at is unix milliseconds");
        let wait = run_at.saturating_sub(tenantd::clock::now_unix_ms().try_into().unwrap());
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    panic!("job {id} was still retried after ten runs of the queue");
}

/// `upn` signs in once with the device code flow for `scope`; the delegated connection that
/// keeps the refresh token.
pub(crate) async fn sign_in_delegated(
    store: &tenantd::store::Store,
    keys: &tenantd::vault::Keyring,
    emulator: &graph_emulator::Emulator,
    tenant: &str,
    client_id: &str,
    upn: &str,
    scope: &str,
) -> tenantd::vault::connections::Connection {
    use tenantd::vault::identity::{token_claims, DevicePoll, IdentityClient};
    let identity = IdentityClient::new(url::Url::parse(&emulator.base_url()).unwrap());
    let code = identity
        .start_device_code(tenant, client_id, scope)
        .await
        .unwrap();
    graph_emulator::identity::approve_device_code(
        &mut emulator.shared().world(),
        &code.user_code,
        upn,
    )
    .unwrap();
    let tokens = loop {
        match identity
            .poll_device_code(tenant, client_id, code.device_code.expose())
            .await
            .unwrap()
        {
            DevicePoll::Done(tokens) => break tokens,
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    let claims = token_claims(tokens.access_token.expose()).unwrap();
    tenantd::vault::connections::add_delegated(
        store,
        keys,
        tenantd::vault::connections::NewDelegatedConnection {
            tenant_id: tenant,
            client_id,
            user_id: claims["oid"].as_str().unwrap(),
            user_name: claims["upn"].as_str(),
            authority: &emulator.base_url(),
            refresh_token: tokens.refresh_token.as_ref().unwrap().expose(),
        },
        tenantd::audit::Actor::Cli,
    )
    .await
    .unwrap()
}

/// A TCP proxy in front of PostgreSQL that can be cut (every connection dropped, new ones
/// refused) and restored, or frozen (connections stay open and nothing passes either way: a
/// database that hangs): outages the test controls.
pub(crate) struct CuttableProxy {
    pub(crate) addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    frozen: tokio_util::sync::CancellationToken,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CuttableProxy {
    pub(crate) async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frozen = tokio_util::sync::CancellationToken::new();
        let links = Arc::new(Mutex::new(Vec::new()));
        let (accept_cut, accept_links, accept_frozen) =
            (cut.clone(), links.clone(), frozen.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if accept_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let frozen = accept_frozen.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            () = frozen.cancelled() => {
                                // Both sockets stay open; nothing is forwarded any more.
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                });
                accept_links.lock().unwrap().push(link.abort_handle());
            }
        });
        Self {
            addr,
            cut,
            frozen,
            links,
        }
    }

    /// The database is gone: connections reset, new ones refused.
    pub(crate) fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub(crate) fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The database hangs: every open connection and every new one stays open and silent.
    pub(crate) fn freeze(&self) {
        self.frozen.cancel();
    }

    /// `db`'s URL with the proxy in front.
    pub(crate) fn url_for(&self, db: &TestDb) -> String {
        let mut proxied: url::Url = db.url().parse().unwrap();
        proxied.set_port(Some(self.addr.port())).unwrap();
        proxied.set_host(Some("127.0.0.1")).unwrap();
        proxied.to_string()
    }

    /// A proxy in front of `db`'s server.
    pub(crate) async fn in_front_of(db: &TestDb) -> Self {
        let server: url::Url = db.url().parse().unwrap();
        let upstream = format!(
            "{}:{}",
            server.host_str().unwrap(),
            server.port().unwrap_or(5432)
        )
        .parse()
        .unwrap();
        Self::start(upstream).await
    }
}
