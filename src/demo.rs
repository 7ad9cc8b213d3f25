//! `tenantd demo`: the whole daemon against the built-in Graph emulator, no Microsoft account
//! needed. Starts the emulator in-process with a demo tenant and app, and points tenantd at it
//! with an embedded SQLite database under `data/demo/`.
//!
//! Owns no tables. Invariants: the demo never talks to Microsoft (both `graph.base_url` and
//! `identity.authority` point at the loopback emulator); flags given on the command line still
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

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The emulator address cannot be bound.
    #[error("cannot start the Graph emulator on {address}: {reason}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        reason: String,
    },
    /// The demo tenant could not be seeded.
    #[error("cannot seed the demo tenant: {0}")]
    Seed(String),
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

    /// The settings that point tenantd at the emulator, to be applied before the user's flags.
    pub fn overrides(&self) -> Vec<FlagOverride> {
        vec![
            FlagOverride {
                key: "secrets.key_file",
                flag: "demo",
                value: DEMO_KEY_FILE.into(),
            },
            FlagOverride {
                key: "database.url",
                flag: "demo",
                value: DEMO_DATABASE_URL.into(),
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

    /// What the operator reads first: where everything is and what runs.
    pub fn banner(&self, admin: SocketAddr, webhook: SocketAddr) -> String {
        let base = self.emulator.base_url();
        format!(
            "tenantd demo: the full daemon against the built-in Graph emulator (no Microsoft account)\n\
             \x20 admin (health, readiness, metrics)  http://{admin}/healthz  /readyz  /metrics\n\
             \x20 webhook listener                    http://{webhook}/\n\
             \x20 Graph emulator                      {base}  (Graph {base}/v1.0, control API {base}/_emulator)\n\
             \x20 demo tenant                         {} ({}), app {}, users {}\n\
             \x20 database                            {DEMO_DATABASE_URL}\n\
             What runs now: database migrations, both listeners, health, readiness and metrics; the demo\n\
             tenant connected app-only with its secret sealed in the vault and a Graph token acquired from the\n\
             emulator (`tenantd tenant list --database-url {DEMO_DATABASE_URL}` shows it); the work queue and\n\
             schedules; a heartbeat every 30 s (unless the configuration has its own) that keeps three demo users\n\
             busy with mail, documents and events (`tenantd heartbeat list --tenant {} --database-url {DEMO_DATABASE_URL}`).\n\
             Stop with Ctrl-C.",
            self.tenant.tenant_id,
            self.tenant.domain,
            self.tenant.client_id,
            self.tenant.users.join(", "),
            self.tenant.tenant_id,
        )
    }
}
