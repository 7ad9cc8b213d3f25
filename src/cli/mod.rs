//! The command line: parses arguments, loads the configuration, installs logging and signal
//! handling, and runs one command. The only module (with `main`) that knows about processes:
//! exit codes, signals, the environment of the service manager.
//!
//! Owns no tables. Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

/// `println!` for the CLI: a closed stdout (`tenantd tenant list | head`) ends the process
/// quietly instead of panicking with a backtrace; other write errors end it with exit 1.
/// Defined before the submodules, so it replaces std's `println!` in all of them.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(&err);
        }
    }};
}

/// `print!` likewise.
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(&err);
        }
    }};
}

mod attribution;
mod bot;
mod heartbeat;
mod queue;
mod runs;
mod status;
mod subscription;
mod tenant;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::app::{Application, Shutdown};
use crate::config::{self, FlagOverride, LoadedConfig};
use crate::store::Store;
use crate::systemd::Notifier;
use crate::telemetry::{self, LogLevelHandle};

/// Success.
pub const EXIT_OK: i32 = 0;
/// The command ran and failed (database down, daemon not ready, listener failed).
pub const EXIT_FAILURE: i32 = 1;
/// Bad arguments or configuration; running again unchanged will not help.
pub const EXIT_USAGE: i32 = 2;

/// Why a command failed, and the exit code that says so: a usage error (2: running it again
/// unchanged will not help) or a failure (1). Printed once, by [`exit_code`], as
/// `tenantd: MESSAGE`; a failure whose reasons were already printed carries no message.
#[derive(Debug)]
pub(crate) struct CliError {
    code: i32,
    message: Option<String>,
}

impl CliError {
    /// Bad arguments or configuration (exit 2).
    pub(crate) fn usage(message: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_USAGE,
            message: Some(message.to_string()),
        }
    }

    /// The command ran and failed (exit 1).
    pub(crate) fn failure(message: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_FAILURE,
            message: Some(message.to_string()),
        }
    }

    /// A failure whose reasons the command already printed (exit 1).
    pub(crate) fn reported() -> Self {
        Self {
            code: EXIT_FAILURE,
            message: None,
        }
    }
}

/// What a command returns: `Ok` exits 0.
pub(crate) type CliResult<T = ()> = Result<T, CliError>;

/// The exit code of a command's result, its error printed to stderr.
pub(crate) fn exit_code(result: CliResult) -> i32 {
    match result {
        Ok(()) => EXIT_OK,
        Err(err) => {
            if let Some(message) = err.message {
                eprintln!("tenantd: {message}");
            }
            err.code
        }
    }
}

/// tenantd keeps Microsoft 365 tenants connected, alive and in sync through Microsoft Graph.
#[derive(Debug, Parser)]
#[command(name = "tenantd", version, about, long_about = None)]
#[command(
    after_help = "Configuration layers, later wins: defaults < TOML file < TENANTD_<SECTION>__<KEY> \
environment variables < flags. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error."
)]
pub struct Cli {
    /// TOML configuration file [default: config/tenantd.toml when it exists]
    #[arg(long, global = true, env = "TENANTD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Override database.url (visible in `ps`; prefer database.url_file for passwords)
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Override admin.bind, e.g. 127.0.0.1:9090
    #[arg(long, global = true, value_name = "ADDR")]
    admin_bind: Option<String>,
    /// Override listener.bind, e.g. 0.0.0.0:8080
    #[arg(long, global = true, value_name = "ADDR")]
    listener_bind: Option<String>,
    /// Override log.level, e.g. debug or "info,tenantd::store=debug"
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// Override log.format: pretty or json
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: webhook listener, admin listener (health, readiness, metrics) and
    /// background work, until SIGTERM or SIGINT. SIGHUP reloads the log level.
    Run,
    /// Run the whole daemon against the built-in Graph emulator with a demo tenant: no Microsoft
    /// account needed. Uses its own database, sqlite://data/demo/tenantd.db.
    Demo {
        /// Address of the in-process Graph emulator (port 0 picks a free one)
        #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
        emulator_bind: std::net::SocketAddr,
    },
    /// Connect tenants and manage their connections (works with the daemon running or not)
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Manage the vault's encryption keys
    #[command(subcommand)]
    Keys(tenant::KeysCommand),
    /// Inspect the work queue; retry or cancel single jobs
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Start operations as operation runs and list them
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Graph change-notification subscriptions: want, list, stop wanting
    #[command(subcommand)]
    Subscription(subscription::SubscriptionCommand),
    /// Demo-tenant heartbeat: run a scenario now, list what it created, clean up
    #[command(subcommand)]
    Heartbeat(heartbeat::HeartbeatCommand),
    /// Teams bots: provision one for a signed-in user, list and show them, check sideloading
    #[command(subcommand)]
    Bot(bot::BotCommand),
    /// One screen at a glance: per tenant its connections, subscriptions and last heartbeat;
    /// the queue's depth and age by kind, dead letters, the latest failures (reads only)
    Status {
        /// Redraw every 2 seconds until Ctrl-C
        #[arg(long)]
        watch: bool,
        /// JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Queue a job of any kind (e.g. delegated_send_mail, delegated_event) with a JSON payload
    Enqueue {
        /// The job kind
        kind: String,
        /// The payload, one JSON object
        #[arg(long, value_name = "JSON")]
        payload: String,
    },
    /// What tenantd did as users and the replies linked to it; the lookback window
    #[command(subcommand)]
    Attribution(attribution::AttributionCommand),
    /// Apply pending database migrations and exit (`run` also applies them at start).
    Migrate,
    /// Validate the configuration and print the effective values, secrets redacted.
    CheckConfig,
    /// Ask a running daemon's /readyz: exit 0 when ready, 1 otherwise (container health checks).
    Healthcheck {
        /// Readiness URL [default: http://<admin.bind>/readyz, loopback for 0.0.0.0]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Give up after this many seconds
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        timeout_seconds: u64,
    },
}

impl Cli {
    fn flag_overrides(&self) -> Vec<FlagOverride> {
        [
            ("database.url", "--database-url", &self.database_url),
            ("admin.bind", "--admin-bind", &self.admin_bind),
            ("listener.bind", "--listener-bind", &self.listener_bind),
            ("log.level", "--log-level", &self.log_level),
            ("log.format", "--log-format", &self.log_format),
        ]
        .into_iter()
        .filter_map(|(key, flag, value)| {
            value.clone().map(|value| FlagOverride { key, flag, value })
        })
        .collect()
    }

    fn load_config(&self) -> Result<LoadedConfig, config::ConfigError> {
        config::load(self.config.as_deref(), &self.flag_overrides())
    }
}

/// How long after the grace period a stopping daemon is ended regardless.
const HARD_STOP_MARGIN: Duration = Duration::from_secs(10);

/// Standard output could not be written: a reader that went away (a closed pipe) is an
/// ordinary end, anything else a failure. Either way the process ends here.
#[doc(hidden)]
pub fn stdout_failed(err: &std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(EXIT_OK);
    }
    eprintln!("tenantd: cannot write to standard output: {err}");
    std::process::exit(EXIT_FAILURE);
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return err.exit_code();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tenantd: cannot start the async runtime: {err}");
            return EXIT_FAILURE;
        }
    };
    if let Command::Demo { emulator_bind } = &cli.command {
        return demo(&cli, *emulator_bind, &runtime);
    }
    let loaded = match cli.load_config() {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("tenantd: configuration error:\n  {err}");
            return EXIT_USAGE;
        }
    };
    match &cli.command {
        Command::Run => run(loaded, cli.flag_overrides(), &runtime, None),
        Command::Demo { .. } => unreachable!("handled above"),
        Command::Tenant(command) => {
            print_warnings(&loaded);
            runtime.block_on(tenant::run_tenant(&loaded.config, command))
        }
        Command::Keys(command) => {
            print_warnings(&loaded);
            runtime.block_on(tenant::run_keys(&loaded.config, command))
        }
        Command::Queue(command) => {
            print_warnings(&loaded);
            runtime.block_on(queue::run(&loaded.config, command))
        }
        Command::Runs(command) => {
            print_warnings(&loaded);
            runtime.block_on(runs::run(&loaded.config, command))
        }
        Command::Subscription(command) => {
            print_warnings(&loaded);
            runtime.block_on(subscription::run(&loaded.config, command))
        }
        Command::Heartbeat(command) => {
            print_warnings(&loaded);
            runtime.block_on(heartbeat::run(&loaded.config, command))
        }
        Command::Bot(command) => {
            print_warnings(&loaded);
            runtime.block_on(bot::run(&loaded.config, command))
        }
        Command::Status { watch, json } => {
            print_warnings(&loaded);
            exit_code(runtime.block_on(status::run(&loaded.config, *watch, *json)))
        }
        Command::Enqueue { kind, payload } => {
            print_warnings(&loaded);
            runtime.block_on(attribution::enqueue(&loaded.config, kind, payload))
        }
        Command::Attribution(command) => {
            print_warnings(&loaded);
            runtime.block_on(attribution::run(&loaded.config, command))
        }
        Command::Migrate => {
            print_warnings(&loaded);
            runtime.block_on(migrate(loaded))
        }
        Command::CheckConfig => {
            print_warnings(&loaded);
            check_config(&loaded)
        }
        Command::Healthcheck {
            url,
            timeout_seconds,
        } => runtime.block_on(healthcheck(&loaded, url.as_deref(), *timeout_seconds)),
    }
}

/// What a command does to the daemon's state, which decides whether it may create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reads only: a missing database or key file is an error naming the file and the fix,
    /// never created (an operator who points the CLI at the wrong place must hear so, not get
    /// an empty new install beside the daemon's).
    Read,
    /// Writes: the database is created and migrated, the built-in key file created, when
    /// missing (zero setup).
    Write,
}

/// The database: with [`Access::Write`] created and migrated when needed; with
/// [`Access::Read`] it must exist and be migrated.
async fn open_store(config: &config::Config, access: Access) -> CliResult<crate::store::Store> {
    if access == Access::Read {
        if let Some(path) = crate::store::sqlite_file(&config.database.url) {
            if !path.exists() {
                return Err(CliError::usage(format!(
                    "no database at {}: this command only reads. Point the CLI at the daemon's configuration (--config FILE or TENANTD_CONFIG, or database.url / TENANTD_DATABASE__URL), or create a new one with `tenantd migrate`",
                    path.display()
                )));
            }
        }
    }
    let store = crate::store::Store::connect(&config.database)
        .await
        .map_err(CliError::failure)?;
    match access {
        Access::Write => {
            store.migrate().await.map_err(CliError::failure)?;
        }
        Access::Read => store.check_ready().await.map_err(|err| match err {
            crate::store::StoreError::NotMigrated(_) => CliError::usage(format!(
                "{err}: this command only reads; run `tenantd migrate` (or start the daemon, which migrates)"
            )),
            other => CliError::failure(other),
        })?,
    }
    Ok(store)
}

fn print_warnings(loaded: &LoadedConfig) {
    for warning in &loaded.warnings {
        eprintln!("tenantd: warning: {warning}");
    }
}

fn check_config(loaded: &LoadedConfig) -> i32 {
    match &loaded.file {
        Some(file) => println!("# configuration valid; file: {}", file.display()),
        None => println!("# configuration valid; no file (defaults, environment, flags)"),
    }
    println!("# effective values, secrets redacted\n");
    print!("{}", loaded.config.to_redacted_toml());
    EXIT_OK
}

async fn migrate(loaded: LoadedConfig) -> i32 {
    let url = loaded.config.database.url.redacted();
    let result = async {
        let store = Store::connect(&loaded.config.database).await?;
        let applied = store.migrate().await;
        let known = store.known_migrations().len();
        store.close().await;
        applied.map(|applied| (applied, known))
    }
    .await;
    exit_code(match result {
        Ok((applied, known)) if applied.is_empty() => {
            println!("{url}: up to date ({known} migrations)");
            Ok(())
        }
        Ok((applied, _)) => {
            println!("{url}: applied migrations {applied:?}");
            Ok(())
        }
        Err(err) => Err(CliError::failure(format!(
            "migrate failed ({}): {err}",
            err.reason_code()
        ))),
    })
}

async fn healthcheck(loaded: &LoadedConfig, url: Option<&str>, timeout_seconds: u64) -> i32 {
    let url = url.map_or_else(
        || {
            let mut address = loaded.config.admin.bind;
            if address.ip().is_unspecified() {
                address.set_ip(if address.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!("http://{address}/readyz")
        },
        str::to_string,
    );
    // The admin port is local: proxies from the environment must not get in the way.
    let client = match crate::tls::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(timeout_seconds))
        .build()
    {
        Ok(client) => client,
        Err(err) => return exit_code(Err(CliError::failure(format!("healthcheck: {err}")))),
    };
    // The answer goes to stdout (container health logs show it); exit 1 says "not ready".
    exit_code(match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => {
            println!("ready ({url})");
            Ok(())
        }
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            println!("not ready ({url}): {status} {body}");
            Err(CliError::reported())
        }
        Err(err) => {
            println!("not reachable ({url}): {err}");
            Err(CliError::reported())
        }
    })
}

/// `tenantd demo`: starts the emulator, then runs the daemon pointed at it.
fn demo(cli: &Cli, emulator_bind: std::net::SocketAddr, runtime: &tokio::runtime::Runtime) -> i32 {
    // The emulator's tasks keep running on the runtime's workers after this block_on.
    let demo = match runtime.block_on(crate::demo::Demo::start(emulator_bind)) {
        Ok(demo) => demo,
        Err(err) => {
            eprintln!("tenantd: {err}");
            return EXIT_FAILURE;
        }
    };
    let demo_config = match demo.write_config() {
        Ok(path) => path,
        Err(err) => {
            eprintln!("tenantd: {err}");
            return EXIT_FAILURE;
        }
    };
    // The demo runs from the file it wrote, the user's flags still winning; with a file of the
    // user's own, the demo's settings are layered over it as flags instead.
    let (file, flags) = match cli.config.as_deref() {
        None => (demo_config.clone(), cli.flag_overrides()),
        Some(file) => {
            let mut flags = demo.overrides();
            flags.extend(cli.flag_overrides());
            (file.to_path_buf(), flags)
        }
    };
    let mut loaded = match config::load(Some(&file), &flags) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("tenantd: configuration error:\n  {err}");
            return EXIT_USAGE;
        }
    };
    if loaded.config.heartbeat.is_empty() {
        loaded.config.heartbeat.push(demo.heartbeat());
    }
    match crate::demo::start_database_afresh(&loaded.config.database.url) {
        Ok(true) => println!(
            "tenantd demo: starting afresh: the built-in emulator keeps nothing between runs, so the demo's database from the last run was removed (use --database-url to keep a database of your own)"
        ),
        Ok(false) => {}
        Err(err) => {
            eprintln!("tenantd: {err}");
            return EXIT_FAILURE;
        }
    }
    let code = run(loaded, flags, runtime, Some((&demo, demo_config.as_path())));
    demo.emulator.stop();
    code
}

fn run(
    loaded: LoadedConfig,
    flags: Vec<FlagOverride>,
    runtime: &tokio::runtime::Runtime,
    demo: Option<(&crate::demo::Demo, &std::path::Path)>,
) -> i32 {
    // Signals first: a SIGTERM during start-up must stop us cleanly, not kill us.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("tenantd: cannot install signal handlers: {err}");
            return EXIT_FAILURE;
        }
    };
    let log = match telemetry::init(loaded.config.log.format, &loaded.config.log.level) {
        Ok(handle) => handle,
        Err(err) => {
            eprintln!("tenantd: {err}");
            return EXIT_FAILURE;
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(file) = &loaded.file {
        tracing::info!(config.file = %file.display(), "configuration loaded");
    }

    let shutdown = Shutdown::new();
    let (signal_tx, signal_rx) = tokio::sync::mpsc::unbounded_channel();
    let signals_handle = signals.handle();
    // Whatever is stuck (a wedged database thread, a runtime that no longer polls), the
    // process is gone HARD_STOP_MARGIN after the grace period that follows the first stop
    // signal: this thread is no runtime's, so nothing in the runtime can hold it.
    let hard_stop = loaded.config.shutdown.grace() + HARD_STOP_MARGIN;
    let forwarder = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut deadline_set = false;
            for signal in signals.forever() {
                if !deadline_set && (signal == SIGTERM || signal == SIGINT) {
                    deadline_set = true;
                    let _ = std::thread::Builder::new()
                        .name("hard-stop".into())
                        .spawn(move || {
                            std::thread::sleep(hard_stop);
                            eprintln!(
                                "tenantd: still not stopped {}s after the stop signal (the grace period and {}s more); exiting now",
                                hard_stop.as_secs(),
                                HARD_STOP_MARGIN.as_secs()
                            );
                            std::process::exit(EXIT_FAILURE);
                        });
                }
                if signal_tx.send(signal).is_err() {
                    break;
                }
            }
        });
    if let Err(err) = forwarder {
        eprintln!("tenantd: cannot start the signal thread: {err}");
        return EXIT_FAILURE;
    }

    let result = runtime.block_on(async {
        // The file actually read (the demo's own when it runs from it).
        let reload = Reload {
            config: loaded.file.clone(),
            flags,
            log,
        };
        tokio::spawn(handle_signals(signal_rx, shutdown.clone(), reload));
        let mut app = Application::build(loaded.config, Notifier::from_env()).await?;
        if let Some((demo, demo_config)) = demo {
            // Graph (here the emulator, which accepts http on loopback) posts to the public
            // listener's own address, so the demo runs the webhook pipeline too.
            let mut public = app.public_addr();
            if public.ip().is_unspecified() {
                public.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            if let Ok(url) = url::Url::parse(&format!("http://{public}")) {
                app.default_public_url(url);
            }
            tracing::info!(
                emulator.url = %demo.emulator.base_url(),
                tenant.id = %demo.tenant.tenant_id,
                "demo: pointed at the built-in Graph emulator"
            );
            println!(
                "{}",
                demo.banner(app.admin_addr(), app.public_addr(), demo_config)
            );
            match demo.connect(&app).await {
                Ok(connection) => tracing::info!(
                    connection.id = %connection,
                    "demo: tenant connected, Graph token acquired through the vault"
                ),
                Err(message) => {
                    tracing::error!(error = %message, "demo: connecting the demo tenant failed")
                }
            }
            let megan = demo.tenant.users.last().cloned().unwrap_or_default();
            match demo.connect_delegated(&app, &megan).await {
                Ok(connection) => {
                    tracing::info!(connection.id = %connection, user = %megan, "demo: demo user signed in (delegated)");
                    println!(
                        "demo: {megan} signed in (delegated connection {connection}); provision a Teams bot for her:\n  tenantd bot provision --connection {connection} --name \"Demo bot\" --endpoint https://bots.example.com/api/messages"
                    );
                }
                Err(message) => tracing::error!(
                    error = %message,
                    "demo: signing the demo user in (delegated) failed"
                ),
            }
        }
        let (store, keys) = (app.store().clone(), app.keys().clone());
        let public_url = app.reconcile_url();
        let run = app.run_until_stopped(shutdown);
        match demo {
            // The pipeline started and the live counts every minute, beside the daemon, until
            // it stops.
            Some((demo, _)) => {
                let report = async {
                    match demo.start_pipeline(&store, &keys, public_url).await {
                        Ok(wanted) => tracing::info!(
                            subscriptions = wanted,
                            "demo: first heartbeat run done; subscriptions on its users' mailboxes wanted and a reconcile queued"
                        ),
                        Err(message) => tracing::error!(
                            error = %message,
                            "demo: the webhook pipeline could not be started"
                        ),
                    }
                    let mut minutes = tokio::time::interval_at(
                        tokio::time::Instant::now() + Duration::from_secs(60),
                        Duration::from_secs(60),
                    );
                    loop {
                        minutes.tick().await;
                        match demo.counts_line(&store).await {
                            Ok(line) => println!("{line}"),
                            Err(err) => tracing::warn!(error = %err, "demo: counts unavailable"),
                        }
                    }
                };
                tokio::select! {
                    result = run => result,
                    () = report => unreachable!("the report never ends"),
                }
            }
            None => run.await,
        }
    });
    signals_handle.close();
    match result {
        Ok(()) => EXIT_OK,
        Err(err) => {
            tracing::error!(error = %err, "tenantd stopped on an error");
            eprintln!("tenantd: {err}");
            EXIT_FAILURE
        }
    }
}

/// What SIGHUP re-reads and where it applies the result.
struct Reload {
    config: Option<PathBuf>,
    flags: Vec<FlagOverride>,
    log: LogLevelHandle,
}

impl Reload {
    fn apply(&self) {
        match config::load(self.config.as_deref(), &self.flags) {
            Ok(loaded) => match self.log.set_level(&loaded.config.log.level) {
                Ok(()) => tracing::info!(
                    log.level = %loaded.config.log.level,
                    "configuration reloaded; log level applied (other keys need a restart)"
                ),
                Err(err) => tracing::error!(error = %err, "reload: log level not applied"),
            },
            Err(err) => tracing::error!(
                error = %err,
                "reload failed; keeping the running configuration"
            ),
        }
    }
}

async fn handle_signals(
    mut signals: tokio::sync::mpsc::UnboundedReceiver<i32>,
    shutdown: Shutdown,
    reload: Reload,
) {
    while let Some(signal) = signals.recv().await {
        let name = match signal {
            SIGHUP => {
                reload.apply();
                continue;
            }
            SIGTERM => "SIGTERM",
            _ => "SIGINT",
        };
        if shutdown.is_stopping() {
            tracing::warn!(
                signal = name,
                "second stop signal: not waiting for in-flight work"
            );
            shutdown.force();
        } else {
            tracing::info!(signal = name, "stop requested");
            shutdown.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_become_overrides_for_their_keys() {
        let cli = Cli::try_parse_from([
            "tenantd",
            "--log-level",
            "debug",
            "--admin-bind",
            "127.0.0.1:0",
            "check-config",
        ])
        .unwrap();
        let overrides = cli.flag_overrides();
        let pairs: Vec<(&str, &str)> = overrides
            .iter()
            .map(|o| (o.key, o.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("admin.bind", "127.0.0.1:0"), ("log.level", "debug")]
        );
    }

    #[test]
    fn a_missing_subcommand_is_a_usage_error() {
        let err = Cli::try_parse_from(["tenantd"]).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
    }
}
