//! The configuration's schema: the typed sections serde reads (`[database]`, `[listener]`,
//! `[graph]`, `[[subscriptions]]`, `[[heartbeat]]`, …), their defaults, the `Cloud` presets and
//! the database URL that prints without its password.
//!
//! Owns no tables. Invariants: every section has defaults (an empty file is a valid config);
//! unknown keys are refused; a secret value never prints.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use crate::secret::{Secret, REDACTED};

/// The whole configuration. Every section has defaults, so an empty file is a valid config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where tenantd keeps its state.
    pub database: DatabaseConfig,
    /// The public listener Microsoft Graph posts notifications to.
    pub listener: ListenerConfig,
    /// The loopback admin listener: health, readiness, metrics.
    pub admin: AdminConfig,
    /// Microsoft Graph.
    pub graph: GraphConfig,
    /// The Microsoft identity platform (token endpoints).
    pub identity: IdentityConfig,
    /// Logging.
    pub log: LogConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// The vault's encryption keys.
    pub secrets: SecretsConfig,
    /// The work queue and its workers.
    pub queue: QueueConfig,
    /// Change-notification subscriptions to keep alive (`[[subscriptions]]`).
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Scheduled demo-tenant activity (`[[heartbeat]]`).
    pub heartbeat: Vec<HeartbeatConfig>,
}

/// `[[heartbeat]]`: demo users kept provisioned in a tenant and activity created among them on
/// a schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Entra tenant ID (GUID) of a connected tenant.
    pub tenant: String,
    /// Cron with seconds, e.g. `"0 */20 8-18 * * Mon-Fri"`.
    pub schedule: String,
    /// IANA time zone the schedule is read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// The demo users.
    pub users: DemoUsersConfig,
    /// What each run creates.
    #[serde(default)]
    pub activities: Vec<ActivityConfig>,
    /// Seeds the generated content (names, subjects, texts), so runs are reproducible.
    #[serde(default)]
    pub seed: u64,
}

pub(super) fn default_timezone() -> String {
    "UTC".into()
}

/// The demo users of a heartbeat scenario: `{prefix}01@{domain}` up to `count`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DemoUsersConfig {
    /// How many (1 to 100).
    pub count: u32,
    /// userPrincipalName prefix, e.g. `demo`.
    pub prefix: String,
    /// A verified domain of the tenant, e.g. `contoso.onmicrosoft.com`.
    pub domain: String,
    /// ISO 3166 two-letter country code; Graph assigns no license without one.
    pub usage_location: String,
    /// `skuPartNumber` to assign (e.g. `ENTERPRISEPACK`); none leaves users unlicensed.
    #[serde(default)]
    pub license_sku: Option<String>,
}

/// One kind of activity and how many of it each run creates.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ActivityConfig {
    /// `mail`, `file`, `chat` or `event`.
    pub kind: ActivityKind,
    /// How many per run (1 to 50).
    pub per_run: u32,
}

/// What a heartbeat activity creates.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ActivityKind {
    /// Mail between demo users.
    Mail,
    /// A document in a demo user's OneDrive.
    File,
    /// A Teams chat message (needs delegated access).
    Chat,
    /// A calendar event (some later updated or cancelled).
    Event,
}

impl ActivityKind {
    /// The stable name (config, metrics, `provisioned_objects.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Mail => "mail",
            ActivityKind::File => "file",
            ActivityKind::Chat => "chat",
            ActivityKind::Event => "event",
        }
    }
}

/// `[[subscriptions]]`: a Graph change-notification subscription tenantd creates and renews.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Entra tenant ID (GUID) of a connected tenant.
    pub tenant: String,
    /// Graph resource path without the base URL, e.g. `users/{id}/messages`.
    pub resource: String,
    /// `created`, `updated` and/or `deleted`.
    pub change_types: Vec<String>,
    /// Rich notifications: Graph sends the changed resource, encrypted, with each notification
    /// (tenantd makes the encryption certificate). Outlook resources need `?$select=...`.
    #[serde(default)]
    pub include_resource_data: bool,
}

/// `[queue]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Jobs this process runs at once (0: this instance runs no jobs).
    pub workers: u32,
    /// How long a claimed job stays leased without renewal; renewed every third of it.
    pub lease_seconds: u64,
    /// How often idle workers look for new jobs.
    pub poll_interval_ms: u64,
    /// How long finished jobs are kept.
    pub retention_hours: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            workers: 8,
            lease_seconds: 60,
            poll_interval_ms: 500,
            retention_hours: 168,
        }
    }
}

/// `[secrets]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// File with the vault keys, one per line `<key id> <base64 of 32 bytes>`; the first
    /// encrypts, the others only decrypt. Relative paths are looked up in
    /// `$CREDENTIALS_DIRECTORY` first. The default file is created with a fresh key when missing.
    pub key_file: PathBuf,
}

/// Where the vault keys live unless configured.
pub const DEFAULT_KEY_FILE: &str = "data/vault.keys";

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            key_file: PathBuf::from(DEFAULT_KEY_FILE),
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (embedded default; file and folder are created) or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (several instances sharing one queue).
    pub url: DatabaseUrl,
    /// Read `url` from this file instead; a relative path is looked up in
    /// `$CREDENTIALS_DIRECTORY` when systemd provides one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection before failing.
    pub acquire_timeout_seconds: u64,
    /// SQLite only: how long a writer waits for the database lock.
    pub busy_timeout_seconds: u64,
    /// PostgreSQL only: statements running longer than this are cancelled by the server.
    pub statement_timeout_seconds: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::new("sqlite://data/tenantd.db"),
            url_file: None,
            max_connections: 8,
            acquire_timeout_seconds: 5,
            busy_timeout_seconds: 5,
            statement_timeout_seconds: 30,
        }
    }
}

/// `[listener]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address the public webhook listener binds.
    pub bind: SocketAddr,
    /// The https base URL Microsoft Graph reaches the listener at (behind a proxy or tunnel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<Url>,
    /// A connection that has not sent a request's headers within this is closed (keep-alive
    /// connections idle this long too).
    pub header_read_timeout_ms: u64,
    /// Open connections at most; at the cap, the connection that made no progress for longest
    /// is closed to admit the new one.
    pub max_connections: u32,
    /// Open connections from one peer address at most (the same eviction within that
    /// address), so one client cannot take the whole listener. Behind a reverse proxy every
    /// connection comes from the proxy: raise it to `max_connections` and limit clients there.
    pub max_connections_per_peer: u32,
    /// A request body must arrive whole within this many milliseconds (else 408).
    pub body_read_timeout_ms: u64,
    /// ... and, after its first second, at this many bytes per second at least.
    pub body_min_bytes_per_second: u64,
    /// Accept an `http://` `public_url`. Graph only posts to https; `tenantd demo` sets this
    /// for the loopback emulator.
    pub allow_http_public_url: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            public_url: None,
            header_read_timeout_ms: 10_000,
            max_connections: 1_024,
            max_connections_per_peer: 256,
            body_read_timeout_ms: 5_000,
            body_min_bytes_per_second: 4_096,
            allow_http_public_url: false,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`). Loopback by default:
    /// it is meant for the local supervisor and Prometheus, not the internet.
    pub bind: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// A Microsoft cloud: its identity authority, Graph host and Graph token audience, which
/// belong together (learn.microsoft.com/graph/deployments: "App registration and token
/// service root endpoints", "Microsoft Graph and Graph Explorer service root endpoints";
/// .../graph/sdks/national-clouds: scopes use the national Graph host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// Microsoft Graph global service.
    #[default]
    Global,
    /// Microsoft Graph for US Government L4 (GCC High).
    Usgov,
    /// Microsoft Graph for US Government L5 (DOD).
    UsgovDod,
    /// Microsoft Graph operated by 21Vianet in China.
    China,
}

impl Cloud {
    /// Every cloud, for messages and lookups.
    pub const ALL: [Cloud; 4] = [Cloud::Global, Cloud::Usgov, Cloud::UsgovDod, Cloud::China];

    /// The name used in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::Usgov => "usgov",
            Cloud::UsgovDod => "usgov-dod",
            Cloud::China => "china",
        }
    }

    /// The identity platform authority.
    pub const fn authority(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov | Cloud::UsgovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    /// Microsoft Graph's service root, which is also the audience of Graph tokens.
    pub const fn graph_resource(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::UsgovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// Microsoft Graph v1.0 in this cloud.
    pub fn graph_base_url(self) -> Url {
        Url::parse(&format!("{}/v1.0", self.graph_resource())).expect("preset URLs parse")
    }

    /// The cloud whose Graph lives at `host`, if any.
    pub fn of_graph_host(host: &str) -> Option<Cloud> {
        Cloud::ALL.into_iter().find(|cloud| {
            cloud
                .graph_resource()
                .strip_prefix("https://")
                .is_some_and(|own| own.eq_ignore_ascii_case(host))
        })
    }
}

/// `[graph]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphConfig {
    /// The Microsoft cloud (`global`, `usgov`, `usgov-dod`, `china`): sets `graph.base_url`
    /// and `identity.authority` unless they are given, and the Graph token audience.
    pub cloud: Cloud,
    /// Graph API base, including the version. Follows `graph.cloud` unless given (a proxy or
    /// the emulator).
    pub base_url: Url,
    /// A cap on the request rate per tenant and Graph service (requests per second). Unset
    /// (the default), tenantd learns each tenant's budget from Graph's answers: it starts at 5
    /// per second, climbs while Graph allows and slows down at 429s and load headers.
    pub requests_per_second: Option<u32>,
    /// Concurrent requests per mailbox (Outlook allows 4 per app and mailbox).
    pub mailbox_concurrency: u32,
    /// Concurrent Graph requests of this process.
    pub max_concurrency: u32,
    /// Time limit of one HTTP request.
    pub request_timeout_seconds: u64,
    /// Retries inside one call (429, 503, 504, connection errors); past them, or past
    /// `retry_budget_seconds`, the work goes back to the queue.
    pub max_retries: u32,
    /// Longest time one call may spend waiting to retry.
    pub retry_budget_seconds: u64,
    /// The Teams Developer Portal API (bot provisioning: app package import, bot registration,
    /// the sideloading policy), without `/api`. Tokens are always asked for the portal's own
    /// resource, `https://dev.teams.microsoft.com`.
    pub developer_portal_url: Url,
}

impl GraphConfig {
    /// The audience of Graph tokens: it follows the Graph host (`https://{host}` for a
    /// Microsoft Graph host of any cloud); a base URL on another host (a proxy, the emulator)
    /// stands in for `graph.cloud`'s Graph, so tokens are asked for that cloud's.
    pub fn token_resource(&self) -> String {
        match self.base_url.host_str().and_then(Cloud::of_graph_host) {
            Some(cloud) => cloud.graph_resource().to_string(),
            None => self.cloud.graph_resource().to_string(),
        }
    }
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            cloud: Cloud::Global,
            base_url: Cloud::Global.graph_base_url(),
            requests_per_second: None,
            mailbox_concurrency: 4,
            max_concurrency: 64,
            request_timeout_seconds: 30,
            max_retries: 3,
            retry_budget_seconds: 60,
            developer_portal_url: Url::parse("https://dev.teams.microsoft.com")
                .expect("preset URLs parse"),
        }
    }
}

/// `[identity]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Identity platform authority; token URLs are `{authority}/{tenant}/oauth2/v2.0/token`.
    pub authority: Url,
    /// Delegated permissions tenantd asks for (device code, consent URL, `tenant check`). A
    /// bare name is a Microsoft Graph permission; other APIs are named by URI, e.g.
    /// `https://dev.teams.microsoft.com/AppDefinitions.ReadWrite`.
    pub delegated_scopes: Vec<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            authority: Url::parse(Cloud::Global.authority()).expect("preset URLs parse"),
            delegated_scopes: [
                "openid",
                "profile",
                "email",
                "offline_access",
                "User.Read",
                "Mail.Send",
                "Calendars.ReadWrite",
            ]
            .into_iter()
            .map(str::to_string)
            .collect(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines for terminals.
    #[default]
    Pretty,
    /// One JSON object per line, for journald and container log collectors.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A level (`info`) or filter directives (`info,tenantd::store=debug`). Reloaded on SIGHUP.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long in-flight work may take before the process exits anyway.
    pub grace_seconds: u64,
    /// A background task silent this many seconds past what it promised makes the process
    /// exit 1, so the supervisor restarts it (a stuck daemon does not heal); 0 disables.
    pub stall_exit_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_seconds: 30,
            stall_exit_seconds: 300,
        }
    }
}

impl ShutdownConfig {
    /// The grace period as a duration.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_seconds)
    }
}

/// A database URL. It may carry a password, so it prints with the password replaced.
#[derive(Clone)]
pub struct DatabaseUrl(Secret<String>);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(Secret::new(url.into()))
    }

    /// The full URL, password included: only for opening connections.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The scheme before `:` (`sqlite`, `postgres`, …), lowercased.
    pub fn scheme(&self) -> Option<String> {
        self.expose()
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
    }

    /// The URL with any password (in the user info or a `password=` parameter) replaced.
    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// Replaces the password in `scheme://user:password@host/…` and in `password=` parameters.
pub(super) fn redact_url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        // `sqlite:path` and similar cannot carry a password in user info.
        return redact_query(raw);
    };
    let (scheme, rest) = raw.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    redact_query(&format!("{scheme}{authority}{tail}"))
}

pub(super) fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                format!("{key}={REDACTED}")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}
