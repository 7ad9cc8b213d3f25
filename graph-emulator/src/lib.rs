//! A stateful stand-in for the parts of Microsoft Graph v1.0, the Microsoft identity platform
//! v2.0 and the Teams Developer Portal that tenantd uses, with Microsoft's shapes, status codes,
//! headers and error bodies. It backs `tenantd demo`, lets operators point a staging tenantd at
//! something that behaves like Microsoft, and lets tests run without any network beyond
//! loopback.
//!
//! One listener serves everything, so one base address configures a client:
//! - identity platform: `{base}/{tenant}/oauth2/v2.0/{token,devicecode,authorize}`,
//!   `{base}/{tenant}/v2.0/adminconsent` (set tenantd's `identity.authority` to `{base}`);
//! - Graph: `{base}/v1.0/...` (set `graph.base_url` to `{base}/v1.0`);
//! - Teams Developer Portal: `{base}/devportal/api/...`;
//! - control API: `{base}/_emulator/...` (seed tenants, apps, users; switch failures, budgets
//!   and faults; approve device codes; trigger lifecycle events; read the request log).
//!
//! Owns no database: the [`world::World`] lives in memory for the life of the process.

#![forbid(unsafe_code)]

pub mod clock;
pub mod control;
pub mod devportal;
pub mod graph;
pub mod identity;
pub mod jwt;
pub mod notifications;
pub mod package;
pub mod rich;
pub mod throttle;
pub mod world;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::throttle::Throttle;
use crate::world::World;

/// Settings that tests and operators change at run time (`PUT /_emulator/settings`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Settings {
    /// Access token lifetime (`expires_in`); Microsoft's default is 60-90 minutes.
    pub access_token_lifetime_seconds: u64,
    /// Refresh token lifetime (inactivity); Microsoft's default is 90 days.
    pub refresh_token_lifetime_seconds: u64,
    /// Device code lifetime; Microsoft's default is 900 s.
    pub device_code_lifetime_seconds: u64,
    /// Device code polling interval; Microsoft's default is 5 s.
    pub device_code_interval_seconds: u64,
    /// Delay between licensing a user and their mailbox and drive appearing.
    pub provisioning_delay_seconds: u64,
    /// Delay before a secret added with `addPassword` works (Microsoft: seconds, no SLA).
    pub secret_replication_delay_seconds: u64,
    /// How long the validation handshake may take; Graph allows 10 s.
    pub handshake_timeout_ms: u64,
    /// How long a notification POST may take before it counts as failed; Graph allows 3 s.
    pub delivery_timeout_ms: u64,
    /// Redeliveries of a failed notification (Graph retries for up to 4 hours).
    pub delivery_retries: u32,
    /// First redelivery delay, doubled each time.
    pub delivery_retry_base_ms: u64,
    /// Accept `http://` notification URLs on any host (Graph requires HTTPS; loopback hosts are
    /// always accepted so tests and the demo need no certificates).
    pub allow_http_notification_urls: bool,
    /// The cloud stood in for: its Graph resource is the only Graph audience tokens are
    /// issued for and accepted with.
    pub cloud: world::Cloud,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            access_token_lifetime_seconds: 3599,
            refresh_token_lifetime_seconds: 90 * 24 * 3600,
            device_code_lifetime_seconds: 900,
            device_code_interval_seconds: 5,
            provisioning_delay_seconds: 0,
            secret_replication_delay_seconds: 0,
            handshake_timeout_ms: 10_000,
            delivery_timeout_ms: 3_000,
            delivery_retries: 5,
            delivery_retry_base_ms: 1_000,
            allow_http_notification_urls: false,
            cloud: world::Cloud::Global,
        }
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct Shared {
    world: Mutex<World>,
    settings: Mutex<Settings>,
    counters: Mutex<BTreeMap<String, u64>>,
    /// Signs and verifies tokens.
    pub signer: jwt::Signer,
    /// Signs the `validationTokens` of rich notifications (RS256, published as a JWKS).
    pub token_signer: rich::TokenSigner,
    /// Budgets, mailbox concurrency, faults and the request log.
    pub throttle: Throttle,
    /// Delivers change and lifecycle notifications.
    pub notifier: notifications::Notifier,
    /// The emulator's own base URL (`http://127.0.0.1:7070`), for links it hands out.
    pub base_url: String,
    router: OnceLock<Router>,
}

impl Shared {
    /// Locks the world. Never hold the guard across an await.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The ids of the subscriptions Graph holds now, in order (what tests compare with a
    /// daemon's records).
    pub fn subscription_ids(&self) -> std::collections::BTreeSet<String> {
        self.world().subscriptions.keys().cloned().collect()
    }

    /// The current settings.
    pub fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the settings.
    pub fn set_settings(&self, settings: Settings) {
        *self
            .settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = settings;
    }

    /// The routes, for `$batch` to send its requests through.
    pub fn router(&self) -> Option<Router> {
        self.router.get().cloned()
    }

    /// Adds one to a named counter.
    pub fn count(&self, name: &str) {
        *self
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(name.to_string())
            .or_default() += 1;
    }

    /// All counters.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// The state every route gets.
pub type AppState = Arc<Shared>;

/// Builds the whole HTTP surface for `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(graph::router())
        .merge(identity::router())
        .merge(devportal::router())
        .merge(control::router())
        .fallback(graph::unknown_segment)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            throttle::middleware,
        ))
        .with_state(state)
}

/// A running emulator.
#[derive(Debug, Clone)]
pub struct Emulator {
    shared: AppState,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Emulator {
    /// Serves on `listener` until [`Emulator::stop`].
    ///
    /// # Errors
    /// The listener has no local address.
    pub fn serve(listener: TcpListener, settings: Settings) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            world: Mutex::new(World::default()),
            settings: Mutex::new(settings),
            counters: Mutex::new(BTreeMap::new()),
            signer: jwt::Signer::random(),
            token_signer: rich::TokenSigner::default(),
            throttle: Throttle::default(),
            notifier: notifications::Notifier::default(),
            base_url,
            router: OnceLock::new(),
        });
        notifications::spawn_delivery(shared.clone(), stop.clone());
        let routes = router(shared.clone());
        let _ = shared.router.set(routes.clone());
        // OData key syntax and `/me` are rewritten before routing, so routes stay plain.
        let app = tower::ServiceBuilder::new()
            .map_request(|mut request: axum::extract::Request| {
                let path = request.uri().path();
                if path.starts_with("/v1.0/") {
                    let canonical = graph::canonical_path(path);
                    let rebuilt = match request.uri().query() {
                        Some(query) => format!("{canonical}?{query}"),
                        None => canonical,
                    };
                    if let Ok(uri) = rebuilt.parse() {
                        *request.uri_mut() = uri;
                    }
                }
                request
            })
            .service(routes);
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, axum::ServiceExt::into_make_service(app))
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "graph emulator listener failed");
            }
        });
        Ok(Self { shared, addr, stop })
    }

    /// Binds `addr` (port 0 for any) and serves.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start(addr: SocketAddr, settings: Settings) -> std::io::Result<Self> {
        Self::serve(TcpListener::bind(addr).await?, settings)
    }

    /// Binds a free loopback port and serves with default settings.
    ///
    /// # Errors
    /// No loopback port can be bound.
    pub async fn start_local() -> std::io::Result<Self> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0)), Settings::default()).await
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`: the identity authority (`identity.authority`).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `http://addr/v1.0` (`graph.base_url`).
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.shared.base_url)
    }

    /// `http://addr/devportal`: the Teams Developer Portal base.
    pub fn devportal_url(&self) -> String {
        format!("{}/devportal", self.shared.base_url)
    }

    /// The shared state, for seeding in-process.
    pub fn shared(&self) -> &AppState {
        &self.shared
    }

    /// Stops serving and delivering.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}
