//! `tenantd demo`: the whole daemon against the built-in Graph emulator, no Microsoft account
//! needed. Starts the emulator in-process with a demo tenant and app, and points tenantd at it
//! with an embedded SQLite database under `data/demo/`.
//!
//! Owns no tables. Invariants: the demo never talks to Microsoft (`graph.base_url`,
//! `graph.developer_portal_url` and `identity.authority` point at the loopback emulator); flags given on the command line still
//! win over the demo's settings.

use std::net::SocketAddr;

use graph_emulator::control::{seed_demo, DemoTenant};
use graph_emulator::{Emulator, Settings};

use crate::app::Application;
use crate::audit::Actor;
use crate::config::{ActivityConfig, ActivityKind, DemoUsersConfig, FlagOverride, HeartbeatConfig};
use crate::vault::connections::{self, NewAppConnection};
use crate::vault::Keyring;

/// Where the demo keeps its database.
pub const DEMO_DATABASE_URL: &str = "sqlite://data/demo/tenantd.db";
/// Where the demo keeps its vault keys.
pub const DEMO_KEY_FILE: &str = "data/demo/vault.keys";
/// Where the demo writes the configuration it runs from, for the CLI beside it too.
pub const DEMO_CONFIG_FILE: &str = "data/demo/tenantd.toml";

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The emulator address cannot be bound.
    #[error("cannot start the Graph emulator on {address}: {reason}; choose another address with --emulator-bind")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        reason: String,
    },
    /// The demo tenant could not be seeded.
    #[error("cannot seed the demo tenant: {0}")]
    Seed(String),
    /// The demo's configuration file could not be written.
    #[error("cannot write the demo configuration {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A running emulator with the demo tenant.
pub struct Demo {
    /// The emulator.
    pub emulator: Emulator,
    /// The demo tenant and app.
    pub tenant: DemoTenant,
}

impl Demo {
    /// Starts the emulator on `bind` and seeds the demo tenant.
    ///
    /// # Errors
    /// [`DemoError`] when the address is taken or seeding fails.
    pub async fn start(bind: SocketAddr) -> Result<Self, DemoError> {
        let emulator = Emulator::start(bind, Settings::default())
            .await
            .map_err(|err| DemoError::Bind {
                address: bind,
                reason: err.to_string(),
            })?;
        let tenant =
            seed_demo(emulator.shared()).map_err(|err| DemoError::Seed(err.to_string()))?;
        let keys = std::path::Path::new(DEMO_KEY_FILE);
        if !keys.exists() {
            Keyring::create_file(keys, "demo").map_err(|err| DemoError::Seed(err.to_string()))?;
        }
        Ok(Self { emulator, tenant })
    }

    /// The demo's heartbeat scenario, used when the configuration has none: every 30 seconds
    /// three demo users get mail, a document and a calendar event (chat is skipped: the demo
    /// connects app-only), so the emulated tenant shows activity within the first minute.
    pub fn heartbeat(&self) -> HeartbeatConfig {
        HeartbeatConfig {
            tenant: self.tenant.tenant_id.clone(),
            schedule: "*/30 * * * * *".into(),
            timezone: "UTC".into(),
            users: DemoUsersConfig {
                count: 3,
                prefix: "demo".into(),
                domain: self.tenant.domain.clone(),
                usage_location: "US".into(),
                license_sku: Some("ENTERPRISEPACK".into()),
            },
            activities: [
                (ActivityKind::Mail, 2),
                (ActivityKind::File, 1),
                (ActivityKind::Event, 1),
                (ActivityKind::Chat, 1),
            ]
            .into_iter()
            .map(|(kind, per_run)| ActivityConfig { kind, per_run })
            .collect(),
            seed: 1,
        }
    }

    /// Writes [`DEMO_CONFIG_FILE`] (absolute paths, so `TENANTD_CONFIG` works from any
    /// directory): the database, the key file, the emulator's addresses and the heartbeat, with
    /// the [`Demo::overrides`]. Rewritten at each start (the emulator's port may change).
    /// Returns its absolute path.
    ///
    /// # Errors
    /// [`DemoError::Config`] when the file cannot be written.
    pub fn write_config(&self) -> Result<std::path::PathBuf, DemoError> {
        let path = absolute(std::path::Path::new(DEMO_CONFIG_FILE));
        let failed = |reason: String| DemoError::Config {
            path: path.display().to_string(),
            reason,
        };
        let mut root = toml::Table::new();
        for setting in self.overrides() {
            let (section, key) = setting.key.split_once('.').expect("dotted keys");
            let value = match setting.key {
                "listener.allow_http_public_url" => toml::Value::Boolean(setting.value == "true"),
                _ => toml::Value::String(setting.value),
            };
            root.entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("sections are tables")
                .insert(key.to_string(), value);
        }
        let heartbeat =
            toml::Value::try_from(self.heartbeat()).map_err(|e| failed(e.to_string()))?;
        root.insert("heartbeat".into(), toml::Value::Array(vec![heartbeat]));
        let text = format!(
            "# Written by `tenantd demo` at each start: where the demo keeps its state and how it\n\
             # reaches its Graph emulator. For the CLI beside the running demo:\n\
             #   export TENANTD_CONFIG={}\n\n{}",
            path.display(),
            toml::to_string(&root).map_err(|e| failed(e.to_string()))?
        );
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
        }
        std::fs::write(&path, text).map_err(|e| failed(e.to_string()))?;
        Ok(path)
    }

    /// The settings that point tenantd at the emulator, to be applied before the user's flags.
    pub fn overrides(&self) -> Vec<FlagOverride> {
        vec![
            FlagOverride {
                key: "secrets.key_file",
                flag: "demo",
                value: absolute(std::path::Path::new(DEMO_KEY_FILE))
                    .display()
                    .to_string(),
            },
            FlagOverride {
                key: "database.url",
                flag: "demo",
                value: demo_database_url(),
            },
            FlagOverride {
                key: "graph.base_url",
                flag: "demo",
                value: self.emulator.graph_url(),
            },
            FlagOverride {
                key: "identity.authority",
                flag: "demo",
                value: self.emulator.base_url(),
            },
            FlagOverride {
                key: "graph.developer_portal_url",
                flag: "demo",
                value: self.emulator.devportal_url(),
            },
            // The loopback emulator posts to plain http; Microsoft Graph would not.
            FlagOverride {
                key: "listener.allow_http_public_url",
                flag: "demo",
                value: "true".into(),
            },
        ]
    }

    /// Connects the demo tenant's app (replacing the connection of an earlier run, whose
    /// emulator had another secret) and acquires a Graph token through the vault.
    ///
    /// # Errors
    /// A sanitized message with a reason code.
    pub async fn connect(&self, app: &Application) -> Result<String, String> {
        let store = app.store();
        let _ = connections::remove(store, &self.tenant.tenant_id, None, Actor::Daemon).await;
        let authority = self.emulator.base_url();
        let connection = connections::add_app(
            store,
            app.keys(),
            NewAppConnection {
                tenant_id: &self.tenant.tenant_id,
                client_id: &self.tenant.client_id,
                client_secret: &self.tenant.client_secret,
                label: Some("demo"),
                make_default: true,
                authority: &authority,
            },
            Actor::Daemon,
        )
        .await
        .map_err(|err| format!("{} ({})", err, err.reason_code()))?;
        app.tokens()
            .access_token(&connection, app.tokens().graph_resource())
            .await
            .map_err(|err| format!("{} ({})", err, err.reason_code()))?;
        Ok(connection.id)
    }

    /// Wants the demo's subscriptions (as `tenantd subscription create` would): new mail in each
    /// heartbeat user's Inbox, and on the first one rich notifications carrying the message,
    /// encrypted for a certificate tenantd makes.
    ///
    /// # Errors
    /// A sanitized message with a reason code.
    async fn subscribe(
        &self,
        store: &crate::store::Store,
        keys: &Keyring,
    ) -> Result<usize, String> {
        let users = self.heartbeat().users;
        let created = vec!["created".to_string()];
        let mut wanted = 0;
        for n in 1..=users.count {
            let upn = format!("{}{n:02}@{}", users.prefix, users.domain);
            let plain = format!("users/{upn}/mailFolders('Inbox')/messages");
            let rich = format!("{plain}?$select=subject,from,receivedDateTime");
            let mut resources = vec![(plain, false)];
            if n == 1 {
                resources.push((rich, true));
            }
            for (resource, include_resource_data) in resources {
                crate::subscriptions::declare(
                    store,
                    keys,
                    &crate::subscriptions::Desired {
                        tenant_id: &self.tenant.tenant_id,
                        resource: &resource,
                        change_types: &created,
                        origin: crate::subscriptions::Origin::Cli,
                        include_resource_data,
                    },
                )
                .await
                .map_err(|err| format!("{err} ({})", err.reason_code()))?;
                wanted += 1;
            }
        }
        Ok(wanted)
    }

    /// Starts the webhook pipeline without waiting for the schedules: a heartbeat run at once
    /// (it creates the demo users whose mailboxes are watched), then the subscriptions wanted
    /// and a reconcile queued, which creates them at the emulator through `public_url`. The
    /// heartbeat's next runs (every 30 s) send mail that comes back as notifications, is
    /// fetched and stored. Returns the number of subscriptions wanted.
    ///
    /// # Errors
    /// A sanitized message with a reason code.
    pub async fn start_pipeline(
        &self,
        store: &crate::store::Store,
        keys: &Keyring,
        public_url: Option<String>,
    ) -> Result<usize, String> {
        use crate::queue::Queue;
        let queue = Queue::new(store.clone());
        let failed = |err: crate::queue::QueueError| format!("{err} ({})", err.reason_code());
        let first_run = crate::jobs::heartbeat_run::HeartbeatRun::new(&self.heartbeat());
        let id = crate::jobs::enqueue(&queue, &first_run)
            .await
            .map_err(failed)?
            .id()
            .to_string();
        // The users exist once the run is over (it is retried if Graph is slow): up to a minute.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let state = queue.get(&id).await.map_err(failed)?.map(|job| job.state);
            if !matches!(state.as_deref(), Some("available" | "running")) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the first heartbeat run ({id}) has not finished within a minute (heartbeat_slow); see `tenantd queue list --state available`"
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        let wanted = self.subscribe(store, keys).await?;
        let reconcile = crate::jobs::reconcile_subscriptions::ReconcileSubscriptions { public_url };
        crate::jobs::enqueue(&queue, &reconcile)
            .await
            .map_err(failed)?;
        Ok(wanted)
    }

    /// One line of live counts, for the operator watching the demo: notifications received
    /// (each one a `graph_notification` job), messages stored, jobs done and failed, and the
    /// Graph calls the emulator answered, 429s among them.
    ///
    /// # Errors
    /// The database failed.
    pub async fn counts_line(&self, store: &crate::store::Store) -> Result<String, String> {
        let jobs = crate::queue::Queue::new(store.clone())
            .stats_by_kind()
            .await
            .map_err(|err| err.to_string())?;
        let sum = |wanted: &dyn Fn(&str, &str) -> bool| -> i64 {
            jobs.iter()
                .filter(|(kind, state, _)| wanted(kind, state))
                .map(|(_, _, count)| count)
                .sum()
        };
        let notifications = sum(&|kind, _| kind == "graph_notification");
        let done = sum(&|_, state| state == "succeeded");
        let failed = sum(&|_, state| matches!(state, "failed" | "dead"));
        let stored = crate::mailbox::count_stored(store)
            .await
            .map_err(|err| err.to_string())?;
        let requests = self.emulator.shared().throttle.requests();
        let throttled = requests.iter().filter(|r| r.status == 429).count();
        Ok(format!(
            "demo: {notifications} notifications received, {stored} messages stored, {done} jobs done ({failed} failed), {} Graph calls ({throttled} answered 429)",
            requests.len()
        ))
    }

    /// Signs `user` of the demo tenant in with the device code flow (approved in the
    /// in-process emulator, as the user would in a browser) and keeps the delegated connection:
    /// what `tenantd bot provision` acts through. Returns the connection id.
    ///
    /// # Errors
    /// A sanitized message with a reason code.
    pub async fn connect_delegated(&self, app: &Application, user: &str) -> Result<String, String> {
        use crate::vault::identity::{token_claims, DevicePoll, IdentityClient};
        let authority = self.emulator.base_url();
        let url = url::Url::parse(&authority).map_err(|e| e.to_string())?;
        let identity = IdentityClient::new(url);
        let tenant = &self.tenant.tenant_id;
        let client_id = &self.tenant.client_id;
        // Graph's delegated permissions of the demo app (one request spans one resource; the
        // Developer Portal's token comes later from the refresh token).
        let scope = std::iter::once("offline_access")
            .chain(
                graph_emulator::control::DEMO_DELEGATED_PERMISSIONS
                    .iter()
                    .copied()
                    .filter(|permission| !permission.contains("://")),
            )
            .collect::<Vec<_>>()
            .join(" ");
        let code = identity
            .start_device_code(tenant, client_id, &scope)
            .await
            .map_err(|err| format!("{err} ({})", err.reason_code()))?;
        graph_emulator::identity::approve_device_code(
            &mut self.emulator.shared().world(),
            &code.user_code,
            user,
        )?;
        let tokens = loop {
            match identity
                .poll_device_code(tenant, client_id, code.device_code.expose())
                .await
                .map_err(|err| format!("{err} ({})", err.reason_code()))?
            {
                DevicePoll::Done(tokens) => break tokens,
                DevicePoll::Pending | DevicePoll::SlowDown => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        };
        let claims =
            token_claims(tokens.access_token.expose()).ok_or("the access token is unreadable")?;
        let refresh = tokens
            .refresh_token
            .as_ref()
            .ok_or("the sign-in returned no refresh token")?;
        let connection = connections::add_delegated(
            app.store(),
            app.keys(),
            connections::NewDelegatedConnection {
                tenant_id: tenant,
                client_id,
                user_id: claims["oid"].as_str().unwrap_or_default(),
                user_name: claims["upn"].as_str(),
                authority: &authority,
                refresh_token: refresh.expose(),
            },
            Actor::Daemon,
        )
        .await
        .map_err(|err| format!("{err} ({})", err.reason_code()))?;
        Ok(connection.id)
    }

    /// What the operator reads first: where everything is, what runs, and the one line that
    /// points the CLI at this demo (`config`, the file [`Demo::write_config`] wrote).
    pub fn banner(
        &self,
        admin: SocketAddr,
        webhook: SocketAddr,
        config: &std::path::Path,
    ) -> String {
        let base = self.emulator.base_url();
        let binary = std::env::current_exe()
            .map_or_else(|_| "tenantd".to_string(), |exe| exe.display().to_string());
        format!(
            "tenantd demo: the full daemon against the built-in Graph emulator (no Microsoft account)\n\
             \x20 admin (health, readiness, metrics)  http://{admin}/healthz  /readyz  /metrics\n\
             \x20 webhook listener                    http://{webhook}/\n\
             \x20 Graph emulator                      {base}  (Graph {base}/v1.0, control API {base}/_emulator)\n\
             \x20 demo tenant                         {} ({}), app {}, users {}\n\
             \x20 configuration                       {} (database, vault key file, emulator, heartbeat)\n\
             What runs now: database migrations, both listeners, health, readiness and metrics; the demo\n\
             tenant connected app-only with its secret sealed in the vault and a Graph token acquired from the\n\
             emulator; the work queue and schedules; a heartbeat every 30 s that keeps three demo users busy\n\
             with mail, documents and events; subscriptions on their Inboxes (one with rich notifications),\n\
             so the emulator posts each new mail to the webhook listener, which queues it, and a worker fetches\n\
             and stores the message. A line of live counts follows every minute.\n\
             In another terminal, the CLI on this demo (the binary is {binary}; `cargo install --path .` puts\n\
             `tenantd` on PATH):\n\
             \x20 export TENANTD_CONFIG={}\n\
             \x20 tenantd tenant list\n\
             \x20 tenantd heartbeat list --tenant {}\n\
             \x20 tenantd queue stats\n\
             \x20 tenantd subscription list\n\
             Stop with Ctrl-C.",
            self.tenant.tenant_id,
            self.tenant.domain,
            self.tenant.client_id,
            self.tenant.users.join(", "),
            config.display(),
            config.display(),
            self.tenant.tenant_id,
        )
    }
}

/// Starts the demo's database afresh when `url` is the demo's own (a user's `--database-url`
/// is never touched): the in-process emulator keeps nothing between runs, so a database kept
/// from an earlier run would name users, objects and subscriptions that no longer exist.
/// Returns whether an earlier database was removed.
///
/// # Errors
/// [`DemoError::Config`] when the old files cannot be removed.
pub fn start_database_afresh(url: &crate::config::DatabaseUrl) -> Result<bool, DemoError> {
    if url.expose() != demo_database_url() {
        return Ok(false);
    }
    let Some(path) = crate::store::sqlite_file(url) else {
        return Ok(false);
    };
    let mut removed = false;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&file) {
            Ok(()) => removed = true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(DemoError::Config {
                    path: file.display().to_string(),
                    reason: err.to_string(),
                })
            }
        }
    }
    Ok(removed)
}

/// `path` from the current directory (unchanged when that cannot be read).
fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::env::current_dir().map_or_else(|_| path.to_path_buf(), |dir| dir.join(path))
}

/// [`DEMO_DATABASE_URL`] with an absolute path.
fn demo_database_url() -> String {
    let relative = DEMO_DATABASE_URL
        .strip_prefix("sqlite://")
        .expect("a sqlite URL");
    format!(
        "sqlite://{}",
        absolute(std::path::Path::new(relative)).display()
    )
}
