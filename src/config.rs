//! Configuration: typed settings layered from built-in defaults, a TOML file, `TENANTD_…`
//! environment variables and command-line flags (figment), validated before anything starts.
//!
//! Owns no tables. Invariants: a [`Config`] returned by [`load`] is valid; every error names the
//! key, where the value came from and how to fix it, and never prints a secret value; secrets
//! are held in [`Secret`] types and may come from `<key>_file` paths (systemd credentials).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::error::Kind;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use crate::secret::{Secret, REDACTED};

/// Prefix of environment variables that set configuration keys: `TENANTD_<SECTION>__<KEY>`.
pub const ENV_PREFIX: &str = "TENANTD_";
/// Config file read when `--config` is not given, if it exists (relative to the working directory).
pub const DEFAULT_CONFIG_PATH: &str = "config/tenantd.toml";
/// Environment variables with the prefix that are not configuration keys (no warning for them).
const NON_KEY_ENV_VARS: &[&str] = &[
    "TENANTD_CONFIG",
    "TENANTD_TEST_POSTGRES_URL",
    "TENANTD_REQUIRE_POSTGRES",
];
/// Keys whose values are secrets: their values never appear in error messages.
const SECRET_KEYS: &[&str] = &["database.url"];

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

fn default_timezone() -> String {
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

/// What is wrong with a heartbeat scenario: (key below `heartbeat[n]`, problem, fix).
pub fn heartbeat_problems(heartbeat: &HeartbeatConfig) -> Vec<(String, String, &'static str)> {
    let mut problems = Vec::new();
    if uuid::Uuid::parse_str(heartbeat.tenant.trim()).is_err() {
        problems.push((
            "tenant".into(),
            format!("`{}` is not a tenant GUID", heartbeat.tenant),
            "use the Entra tenant ID (a GUID), as `tenantd tenant list` shows it",
        ));
    }
    if let Err(err) = crate::cron::CronSchedule::parse(&heartbeat.schedule, &heartbeat.timezone) {
        let key = if matches!(err, crate::cron::CronProblem::Zone) {
            "timezone"
        } else {
            "schedule"
        };
        problems.push((key.into(), err.to_string(), err.fix()));
    }
    let users = &heartbeat.users;
    if !(1..=100).contains(&users.count) {
        problems.push((
            "users.count".into(),
            format!("{} demo users", users.count),
            "use 1 to 100",
        ));
    }
    let prefix_ok = !users.prefix.is_empty()
        && users.prefix.len() <= 40
        && users
            .prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !prefix_ok {
        problems.push((
            "users.prefix".into(),
            format!("`{}` cannot start a userPrincipalName", users.prefix),
            "use 1 to 40 lowercase letters, digits, '-' or '.', e.g. \"demo\"",
        ));
    }
    if !users.domain.contains('.') || users.domain.contains(['@', ' ', '/']) {
        problems.push((
            "users.domain".into(),
            format!("`{}` is not a domain", users.domain),
            "use a verified domain of the tenant, e.g. \"contoso.onmicrosoft.com\"",
        ));
    }
    if users.usage_location.len() != 2
        || !users.usage_location.chars().all(|c| c.is_ascii_uppercase())
    {
        problems.push((
            "users.usage_location".into(),
            format!("`{}` is not a country code", users.usage_location),
            "use an ISO 3166 two-letter code in capitals, e.g. \"DE\" (Graph licenses no user without one)",
        ));
    }
    if users
        .license_sku
        .as_deref()
        .is_some_and(|sku| sku.trim().is_empty())
    {
        problems.push((
            "users.license_sku".into(),
            "empty".into(),
            "give a skuPartNumber such as \"ENTERPRISEPACK\", or leave the key out",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (n, activity) in heartbeat.activities.iter().enumerate() {
        if !(1..=50).contains(&activity.per_run) {
            problems.push((
                format!("activities[{n}].per_run"),
                format!("{} per run", activity.per_run),
                "use 1 to 50",
            ));
        }
        if !seen.insert(activity.kind) {
            problems.push((
                format!("activities[{n}].kind"),
                format!("`{}` is listed twice", activity.kind.as_str()),
                "list each kind once and set its per_run",
            ));
        }
    }
    problems
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

/// The change types Graph knows, in its order.
const CHANGE_TYPES: [&str; 3] = ["created", "updated", "deleted"];

/// Checks and normalizes a subscription target: the tenant as a lowercase GUID, the resource
/// without a leading slash, the change types deduplicated in Graph's order. The error is the
/// problem and its fix.
///
/// # Errors
/// What is wrong and how to fix it.
pub fn subscription_target(
    tenant: &str,
    resource: &str,
    change_types: &[String],
) -> Result<(String, String, String), (String, &'static str)> {
    let tenant = uuid::Uuid::parse_str(tenant.trim())
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| {
            (
                format!("tenant `{tenant}` is not a GUID"),
                "use the Entra tenant ID of a connected tenant",
            )
        })?;
    let trimmed = resource.trim().trim_start_matches('/');
    if trimmed.is_empty() || trimmed.contains("://") || trimmed.chars().any(char::is_whitespace) {
        return Err((
            format!("resource `{resource}` is not a Graph resource path"),
            "write it like `users/{id}/messages`, without the base URL",
        ));
    }
    let mut wanted = Vec::new();
    for change in change_types {
        let change = change.trim();
        if !CHANGE_TYPES.contains(&change) {
            return Err((
                format!("change type `{change}` is unknown"),
                "use created, updated and/or deleted",
            ));
        }
        wanted.push(change);
    }
    if wanted.is_empty() {
        return Err((
            "no change types".into(),
            "use created, updated and/or deleted",
        ));
    }
    let ordered: Vec<&str> = CHANGE_TYPES
        .iter()
        .copied()
        .filter(|t| wanted.contains(t))
        .collect();
    Ok((tenant, trimmed.to_string(), ordered.join(",")))
}

/// Graph sends Outlook resources (messages, events, contacts) with resource data only for a
/// `$select` (the rich-notifications supported-resources table).
fn rich_target_problem(subscription: &SubscriptionConfig) -> Option<(String, &'static str)> {
    let lower = subscription.resource.to_ascii_lowercase();
    let outlook = lower.trim_start_matches('/').starts_with("users/")
        && (lower.contains("/messages")
            || lower.contains("/events")
            || lower.contains("/contacts"));
    (subscription.include_resource_data && outlook && !lower.contains("$select=")).then(|| {
        (
            format!(
                "resource `{}` is an Outlook resource without $select",
                subscription.resource
            ),
            "add the properties Graph should send, e.g. `?$select=subject,from,receivedDateTime`",
        )
    })
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
fn redact_url(raw: &str) -> String {
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

fn redact_query(url: &str) -> String {
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

/// A command-line flag that sets a configuration key; it wins over every other layer.
#[derive(Debug, Clone)]
pub struct FlagOverride {
    /// Dotted key, e.g. `log.level`.
    pub key: &'static str,
    /// The flag as typed, for error messages, e.g. `--log-level`.
    pub flag: &'static str,
    /// The value given.
    pub value: String,
}

impl Provider for FlagOverride {
    fn metadata(&self) -> Metadata {
        let flag = self.flag;
        Metadata::named(format!("the {flag} flag"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // Switches (`listener.allow_http_public_url`) are booleans, not the words.
        let value = match self.value.as_str() {
            "true" => Value::from(true),
            "false" => Value::from(false),
            other => Value::from(other.to_string()),
        };
        let dict = figment::util::nest(self.key, value)
            .into_dict()
            .expect("nest returns a dict");
        Ok(Profile::Default.collect(dict))
    }
}

/// A loaded, validated configuration and what the operator should hear about it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: Config,
    /// The TOML file read, if any.
    pub file: Option<PathBuf>,
    /// Things that are not errors but probably mistakes (e.g. an env var that sets nothing).
    pub warnings: Vec<String>,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key, e.g. `database.url`.
    pub key: String,
    /// Where the value came from: a file, an environment variable, a flag.
    pub origin: Option<String>,
    /// What is wrong, without the secret value.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.key)?;
        if let Some(origin) = &self.origin {
            write!(f, " (from {origin})")?;
        }
        write!(f, ": {}\n    fix: {}", self.problem, self.fix)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` named a file that is not there.
    #[error("config file {} does not exist\n    fix: create it (config/tenantd.example.toml documents every key) or pass another --config", .path.display())]
    FileNotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// A `<key>_file` could not be read.
    #[error("`{key}` = {}: cannot read the file: {reason}\n    fix: point it at a readable file holding only the value", .path.display())]
    SecretFile {
        /// The `_file` key.
        key: String,
        /// The resolved path.
        path: PathBuf,
        /// The I/O error (no contents).
        reason: String,
    },
    /// One or more keys are wrong.
    #[error("{}", render_problems(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn render_problems(problems: &[ConfigProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

impl ConfigError {
    /// The problems, when the error is about keys (for tests and tooling).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            Self::Invalid(problems) => problems,
            _ => &[],
        }
    }
}

/// Loads the configuration: defaults, then the TOML file (`file`, or
/// [`DEFAULT_CONFIG_PATH`] when present), then `TENANTD_<SECTION>__<KEY>` environment variables,
/// then `flags`; reads `<key>_file` secrets; validates.
///
/// # Errors
/// [`ConfigError`] naming each bad key, its origin and the fix.
pub fn load(file: Option<&Path>, flags: &[FlagOverride]) -> Result<LoadedConfig, ConfigError> {
    let file = match file {
        Some(path) if !path.is_file() => {
            return Err(ConfigError::FileNotFound {
                path: path.to_path_buf(),
            })
        }
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.is_file()),
    };

    let mut figment = Figment::new();
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    // Only `PREFIX_SECTION__KEY` names are keys; `TENANTD_CONFIG` and test switches are not.
    figment = figment.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    );
    for flag in flags {
        figment = figment.merge(flag.clone());
    }

    let mut config: Config = figment.extract().map_err(|err| {
        ConfigError::Invalid(
            err.into_iter()
                .map(|e| describe_figment_error(&e))
                .collect(),
        )
    })?;
    resolve_secret_files(&figment, &mut config)?;
    apply_cloud(&figment, &mut config);

    let problems = validate(&config, &figment);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }

    Ok(LoadedConfig {
        config,
        file,
        warnings: env_warnings(std::env::vars().map(|(name, _)| name)),
    })
}

/// `graph.cloud` decides `graph.base_url` and `identity.authority` where they were not given.
fn apply_cloud(figment: &Figment, config: &mut Config) {
    let cloud = config.graph.cloud;
    if figment.find_value("graph.base_url").is_err() {
        config.graph.base_url = cloud.graph_base_url();
    }
    if figment.find_value("identity.authority").is_err() {
        config.identity.authority = Url::parse(cloud.authority()).expect("preset URLs parse");
    }
}

/// Reads `database.url_file` (and future `<key>_file` secrets) into their keys.
fn resolve_secret_files(figment: &Figment, config: &mut Config) -> Result<(), ConfigError> {
    let Some(path) = config.database.url_file.clone() else {
        return Ok(());
    };
    if figment.find_value("database.url").is_ok() {
        return Err(ConfigError::Invalid(vec![ConfigProblem {
            key: "database.url_file".into(),
            origin: origin_of(figment, "database.url_file"),
            problem: "both `database.url` and `database.url_file` are set".into(),
            fix: "keep only one of them".into(),
        }]));
    }
    let value = read_secret_file("database.url_file", &path)?;
    config.database.url = DatabaseUrl::new(value);
    Ok(())
}

/// Reads a secret from a file; a relative path is resolved in `$CREDENTIALS_DIRECTORY` when
/// systemd set one (`LoadCredential=`). Trailing newlines are not part of the secret.
fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let resolved = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    };
    let contents = std::fs::read_to_string(&resolved).map_err(|err| ConfigError::SecretFile {
        key: key.into(),
        path: resolved.clone(),
        reason: err.kind().to_string(),
    })?;
    Ok(contents.trim_end_matches(['\n', '\r']).to_string())
}

/// Checks the values serde cannot: schemes, ranges, filter syntax.
fn validate(config: &Config, figment: &Figment) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut problem = |key: &str, problem: String, fix: &str| {
        problems.push(ConfigProblem {
            key: key.into(),
            origin: origin_of(figment, key),
            problem,
            fix: fix.into(),
        });
    };

    match config.database.url.scheme().as_deref() {
        Some("sqlite" | "postgres" | "postgresql") => {}
        Some(other) => problem(
            "database.url",
            format!("unsupported database `{other}`"),
            FIX_DATABASE_URL,
        ),
        None => problem(
            "database.url",
            "not a URL (no scheme)".into(),
            FIX_DATABASE_URL,
        ),
    }
    if config.listener.header_read_timeout_ms == 0 {
        problem(
            "listener.header_read_timeout_ms",
            "must be at least 1".into(),
            "use a few seconds, such as 10000",
        );
    }
    if config.listener.max_connections_per_peer == 0 {
        problem(
            "listener.max_connections_per_peer",
            "must be at least 1".into(),
            "use a whole number such as 256 (or listener.max_connections behind a reverse proxy)",
        );
    }
    if config.listener.body_read_timeout_ms == 0 {
        problem(
            "listener.body_read_timeout_ms",
            "must be at least 1".into(),
            "use a whole number of milliseconds such as 5000 (Graph waits 3 s for an answer)",
        );
    }
    if config.listener.max_connections == 0 {
        problem(
            "listener.max_connections",
            "must be at least 1".into(),
            "use a whole number such as 1024",
        );
    }
    if config.graph.requests_per_second == Some(0) {
        problem(
            "graph.requests_per_second",
            "must be at least 1".into(),
            "remove it to let tenantd learn each tenant's budget from Graph, or set a cap such as 20",
        );
    }
    if config.database.max_connections == 0 {
        problem(
            "database.max_connections",
            "must be at least 1".into(),
            "use a whole number such as 8",
        );
    }
    if config.database.acquire_timeout_seconds == 0 {
        problem(
            "database.acquire_timeout_seconds",
            "must be at least 1".into(),
            "use a whole number of seconds such as 5",
        );
    }
    if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&config.log.level) {
        problem(
            "log.level",
            format!("not a log filter: {err}"),
            FIX_LOG_LEVEL,
        );
    }
    for (key, url) in [
        ("graph.base_url", Some(&config.graph.base_url)),
        ("identity.authority", Some(&config.identity.authority)),
        ("listener.public_url", config.listener.public_url.as_ref()),
    ] {
        if let Some(url) = url {
            if !matches!(url.scheme(), "https" | "http") {
                problem(
                    key,
                    format!("scheme `{}` is not http(s)", url.scheme()),
                    "use an absolute https:// URL",
                );
            }
        }
    }
    if let Some(url) = &config.listener.public_url {
        if url.scheme() == "http" && !config.listener.allow_http_public_url {
            problem(
                "listener.public_url",
                format!("`{url}` is http://, and Microsoft Graph only posts notifications to https:// endpoints"),
                "use the https:// URL of the TLS proxy or tunnel in front of the listener (or, for an emulator, set listener.allow_http_public_url = true)",
            );
        }
    }
    let cloud = config.graph.cloud;
    if let Some(other) = config
        .graph
        .base_url
        .host_str()
        .and_then(Cloud::of_graph_host)
        .filter(|other| *other != cloud)
    {
        problem(
            "graph.base_url",
            format!(
                "is the Graph of the `{}` cloud but graph.cloud is `{}`",
                other.name(),
                cloud.name()
            ),
            "set graph.cloud to the cloud the tenants live in and leave graph.base_url unset (it follows the cloud)",
        );
    }
    let authority_host = config.identity.authority.host_str().unwrap_or_default();
    if let Some(other) = Cloud::ALL.into_iter().find(|other| {
        other
            .authority()
            .strip_prefix("https://")
            .is_some_and(|host| host.eq_ignore_ascii_case(authority_host))
    }) {
        if other.authority() != cloud.authority() {
            problem(
                "identity.authority",
                format!(
                    "is the identity platform of the `{}` cloud but graph.cloud is `{}`",
                    other.name(),
                    cloud.name()
                ),
                "set graph.cloud to the cloud the tenants live in and leave identity.authority unset (it follows the cloud)",
            );
        }
    }
    if config.admin.bind == config.listener.bind && config.admin.bind.port() != 0 {
        problem(
            "admin.bind",
            format!("same address as listener.bind ({})", config.listener.bind),
            "give the admin and public listeners different ports",
        );
    }
    for (n, subscription) in config.subscriptions.iter().enumerate() {
        if let Err((what, fix)) = subscription_target(
            &subscription.tenant,
            &subscription.resource,
            &subscription.change_types,
        ) {
            problem(&format!("subscriptions[{n}]"), what, fix);
        }
        if let Some((what, fix)) = rich_target_problem(subscription) {
            problem(
                &format!("subscriptions[{n}].include_resource_data"),
                what,
                fix,
            );
        }
    }
    let mut heartbeat_tenants = std::collections::HashSet::new();
    for (n, heartbeat) in config.heartbeat.iter().enumerate() {
        for (key, what, fix) in heartbeat_problems(heartbeat) {
            problem(&format!("heartbeat[{n}].{key}"), what, fix);
        }
        if !heartbeat_tenants.insert(heartbeat.tenant.trim().to_ascii_lowercase()) {
            problem(
                &format!("heartbeat[{n}].tenant"),
                "a second scenario for the same tenant".into(),
                "give each tenant one [[heartbeat]] (cleanup and run-now address a tenant)",
            );
        }
    }
    if config.shutdown.grace_seconds > 3600 {
        problem(
            "shutdown.grace_seconds",
            "more than an hour".into(),
            "use a value systemd's TimeoutStopSec can cover, such as 30",
        );
    }
    problems
}

const FIX_DATABASE_URL: &str = "use sqlite://PATH (embedded) or postgres://USER@HOST:PORT/DATABASE";
const FIX_LOG_LEVEL: &str =
    "use error, warn, info, debug or trace, or directives such as \"info,tenantd=debug\"";

/// Where a key's value came from, for messages.
fn origin_of(figment: &Figment, key: &str) -> Option<String> {
    figment.find_metadata(key).map(|metadata| {
        let path: Vec<String> = key.split('.').map(String::from).collect();
        describe_origin(metadata, &path)
    })
}

fn describe_origin(metadata: &Metadata, path: &[String]) -> String {
    match &metadata.source {
        Some(Source::File(file)) => file.display().to_string(),
        // figment cannot invert `split("__")`, so rebuild the variable name from the key path.
        _ if metadata.name.contains("environment") => format!(
            "environment variable {ENV_PREFIX}{}",
            path.join("__").to_ascii_uppercase()
        ),
        _ => metadata.name.to_string(),
    }
}

/// Turns one figment/serde error into a problem with a fix, without echoing secret values.
fn describe_figment_error(err: &figment::Error) -> ConfigProblem {
    // A file that is not valid TOML (a duplicate key, a syntax error) names no key: say so.
    let key = if err.path.is_empty() {
        "config file".to_string()
    } else {
        err.path.join(".")
    };
    let origin = err
        .metadata
        .as_ref()
        .map(|metadata| describe_origin(metadata, &err.path));
    let secret = SECRET_KEYS.contains(&key.as_str());
    let (problem, fix) = match &err.kind {
        Kind::UnknownField(field, expected) => {
            let suggestion = expected
                .iter()
                .map(|candidate| (strsim::levenshtein(field, candidate), *candidate))
                .filter(|(distance, _)| *distance <= 3)
                .min()
                .map(|(_, candidate)| format!("did you mean `{candidate}`? "))
                .unwrap_or_default();
            (
                "unknown key".to_string(),
                format!(
                    "{suggestion}remove it or use one of: {}",
                    expected.join(", ")
                ),
            )
        }
        Kind::InvalidType(actual, expected) => {
            let found = if secret {
                "a value of another type".to_string()
            } else {
                actual.to_string()
            };
            (format!("expected {expected}, found {found}"), fix_for(&key))
        }
        Kind::InvalidValue(actual, expected) => {
            let found = if secret {
                REDACTED.to_string()
            } else {
                actual.to_string()
            };
            (
                format!("invalid value {found}: expected {expected}"),
                fix_for(&key),
            )
        }
        Kind::UnknownVariant(variant, expected) => (
            format!("unknown value `{variant}`"),
            format!("use one of: {}", expected.join(", ")),
        ),
        Kind::Message(message) if !secret => (message.clone(), fix_for(&key)),
        other if !secret => (other.to_string(), fix_for(&key)),
        _ => ("invalid value".to_string(), fix_for(&key)),
    };
    ConfigProblem {
        key,
        origin,
        problem,
        fix,
    }
}

fn fix_for(key: &str) -> String {
    let fix = match key {
        "admin.bind" => "use HOST:PORT such as \"127.0.0.1:9090\"",
        "listener.bind" => "use HOST:PORT such as \"0.0.0.0:8080\"",
        "database.url" => FIX_DATABASE_URL,
        "log.level" => FIX_LOG_LEVEL,
        "log.format" => "use \"pretty\" or \"json\"",
        "graph.base_url" | "identity.authority" | "listener.public_url" => {
            "use an absolute https:// URL"
        }
        "database.url_file" => "use a path to a file holding only the URL",
        "config file" => "make the file valid TOML (each key once per section); config/tenantd.example.toml shows the layout",
        _ if key.ends_with("_seconds") || key.ends_with("max_connections") => "use a whole number",
        _ => "see config/tenantd.example.toml for the accepted values",
    };
    fix.to_string()
}

/// Warnings for `TENANTD_*` variables that set nothing, such as `TENANTD_LOG_LEVEL` written
/// with one underscore where two are needed.
fn env_warnings(names: impl Iterator<Item = String>) -> Vec<String> {
    names
        .filter(|name| name.starts_with(ENV_PREFIX))
        .filter(|name| !name.contains("__") && !NON_KEY_ENV_VARS.contains(&name.as_str()))
        .map(|name| {
            format!(
                "environment variable {name} sets no configuration key; \
                 keys are TENANTD_<SECTION>__<KEY> with two underscores, e.g. TENANTD_LOG__LEVEL"
            )
        })
        .collect()
}

impl Config {
    /// The effective configuration as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes to TOML")
    }
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment::Jail fixes the closure's error type"
)]
mod tests {
    use super::*;
    use figment::Jail;

    fn flag(key: &'static str, flag: &'static str, value: &str) -> FlagOverride {
        FlagOverride {
            key,
            flag,
            value: value.into(),
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_configured() {
        Jail::expect_with(|_jail| {
            let loaded = load(None, &[]).expect("defaults are valid");
            let config = loaded.config;
            assert_eq!(config.database.url.expose(), "sqlite://data/tenantd.db");
            assert_eq!(config.admin.bind.to_string(), "127.0.0.1:9090");
            assert_eq!(config.listener.bind.to_string(), "0.0.0.0:8080");
            assert_eq!(
                config.graph.base_url.as_str(),
                "https://graph.microsoft.com/v1.0"
            );
            assert_eq!(
                config.identity.authority.as_str(),
                "https://login.microsoftonline.com/"
            );
            assert_eq!(config.log.format, LogFormat::Pretty);
            assert_eq!(config.shutdown.grace_seconds, 30);
            assert!(loaded.file.is_none());
            Ok(())
        });
    }

    /// learn.microsoft.com/graph/deployments: each cloud's identity authority and Graph root;
    /// .../graph/sdks/national-clouds: the token audience is the national Graph host.
    #[test]
    fn a_cloud_sets_authority_graph_host_and_token_audience_together() {
        Jail::expect_with(|jail| {
            for (cloud, graph, authority) in [
                (
                    "global",
                    "https://graph.microsoft.com",
                    "https://login.microsoftonline.com/",
                ),
                (
                    "usgov",
                    "https://graph.microsoft.us",
                    "https://login.microsoftonline.us/",
                ),
                (
                    "usgov-dod",
                    "https://dod-graph.microsoft.us",
                    "https://login.microsoftonline.us/",
                ),
                (
                    "china",
                    "https://microsoftgraph.chinacloudapi.cn",
                    "https://login.chinacloudapi.cn/",
                ),
            ] {
                jail.set_env("TENANTD_GRAPH__CLOUD", cloud);
                let config = load(None, &[]).unwrap().config;
                assert_eq!(
                    config.graph.base_url.as_str(),
                    format!("{graph}/v1.0"),
                    "{cloud}"
                );
                assert_eq!(config.identity.authority.as_str(), authority, "{cloud}");
                assert_eq!(config.graph.token_resource(), graph, "{cloud}");
            }
            // Explicit URLs win; a proxy in front of Graph keeps the cloud's audience, and a
            // Graph host names its own.
            jail.set_env("TENANTD_GRAPH__CLOUD", "usgov");
            jail.set_env(
                "TENANTD_GRAPH__BASE_URL",
                "https://graph-proxy.internal/v1.0",
            );
            jail.set_env(
                "TENANTD_IDENTITY__AUTHORITY",
                "https://login-proxy.internal",
            );
            let config = load(None, &[]).unwrap().config;
            assert_eq!(
                config.graph.base_url.as_str(),
                "https://graph-proxy.internal/v1.0"
            );
            assert_eq!(
                config.identity.authority.as_str(),
                "https://login-proxy.internal/"
            );
            assert_eq!(config.graph.token_resource(), "https://graph.microsoft.us");
            jail.set_env(
                "TENANTD_GRAPH__BASE_URL",
                "https://dod-graph.microsoft.us/v1.0",
            );
            jail.set_env("TENANTD_GRAPH__CLOUD", "usgov-dod");
            let config = load(None, &[]).unwrap().config;
            assert_eq!(
                config.graph.token_resource(),
                "https://dod-graph.microsoft.us"
            );
            Ok(())
        });
    }

    #[test]
    fn a_graph_host_or_authority_of_another_cloud_names_the_key_and_the_fix() {
        Jail::expect_with(|jail| {
            jail.set_env("TENANTD_GRAPH__BASE_URL", "https://graph.microsoft.us/v1.0");
            let err = load(None, &[]).unwrap_err().to_string();
            assert!(err.contains("graph.base_url"), "{err}");
            assert!(
                err.contains("`usgov` cloud but graph.cloud is `global`"),
                "{err}"
            );
            assert!(err.contains("set graph.cloud"), "{err}");
            jail.set_env("TENANTD_GRAPH__CLOUD", "usgov");
            jail.set_env(
                "TENANTD_IDENTITY__AUTHORITY",
                "https://login.chinacloudapi.cn",
            );
            let err = load(None, &[]).unwrap_err().to_string();
            assert!(err.contains("identity.authority"), "{err}");
            assert!(!err.contains("graph.base_url"), "{err}");
            jail.set_env("TENANTD_GRAPH__CLOUD", "mars");
            let err = load(None, &[]).unwrap_err().to_string();
            assert!(err.contains("graph.cloud"), "{err}");
            assert!(err.contains("usgov-dod"), "the accepted values: {err}");
            Ok(())
        });
    }

    /// concepts/change-notifications-delivery-webhooks.md: the endpoint must be HTTPS.
    #[test]
    fn an_http_public_url_is_refused_unless_allowed() {
        Jail::expect_with(|jail| {
            jail.set_env("TENANTD_LISTENER__PUBLIC_URL", "http://tenantd.example.com");
            let err = load(None, &[]).unwrap_err().to_string();
            assert!(err.contains("listener.public_url"), "{err}");
            assert!(
                err.contains("only posts notifications to https://"),
                "{err}"
            );
            assert!(err.contains("allow_http_public_url"), "the fix: {err}");
            jail.set_env("TENANTD_LISTENER__ALLOW_HTTP_PUBLIC_URL", "true");
            assert!(load(None, &[]).is_ok());
            jail.set_env("TENANTD_LISTENER__ALLOW_HTTP_PUBLIC_URL", "false");
            jail.set_env(
                "TENANTD_LISTENER__PUBLIC_URL",
                "https://tenantd.example.com",
            );
            assert!(load(None, &[]).is_ok());
            // The demo's switch arrives as a flag.
            jail.set_env("TENANTD_LISTENER__PUBLIC_URL", "http://127.0.0.1:8080");
            let flags = [flag("listener.allow_http_public_url", "demo", "true")];
            assert!(load(None, &flags).is_ok());
            Ok(())
        });
    }

    #[test]
    fn layers_override_in_order_file_then_env_then_flags() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "tenantd.toml",
                "[log]\nlevel = \"debug\"\nformat = \"json\"\n[admin]\nbind = \"127.0.0.1:1111\"\n",
            )?;
            jail.set_env("TENANTD_ADMIN__BIND", "127.0.0.1:2222");
            jail.set_env("TENANTD_DATABASE__MAX_CONNECTIONS", "3");
            let flags = [flag("log.level", "--log-level", "warn")];
            let config = load(Some(Path::new("tenantd.toml")), &flags)
                .unwrap()
                .config;
            assert_eq!(config.log.format, LogFormat::Json, "file beats default");
            assert_eq!(config.admin.bind.port(), 2222, "env beats file");
            assert_eq!(config.database.max_connections, 3);
            assert_eq!(config.log.level, "warn", "flag beats file");
            Ok(())
        });
    }

    #[test]
    fn the_default_config_file_is_read_when_present() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file(DEFAULT_CONFIG_PATH, "[shutdown]\ngrace_seconds = 7\n")?;
            let loaded = load(None, &[]).unwrap();
            assert_eq!(loaded.config.shutdown.grace_seconds, 7);
            assert_eq!(loaded.file.as_deref(), Some(Path::new(DEFAULT_CONFIG_PATH)));
            Ok(())
        });
    }

    #[test]
    fn an_explicit_missing_config_file_is_an_error() {
        Jail::expect_with(|_jail| {
            let err = load(Some(Path::new("nope.toml")), &[]).unwrap_err();
            assert!(matches!(err, ConfigError::FileNotFound { .. }), "{err}");
            assert!(err.to_string().contains("nope.toml"));
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_in_the_file_is_named_with_a_suggestion() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[database]\nurll = \"sqlite://x.db\"\n")?;
            let err = load(Some(Path::new("t.toml")), &[]).unwrap_err();
            let problem = &err.problems()[0];
            assert_eq!(problem.key, "database.urll");
            assert_eq!(problem.problem, "unknown key");
            assert!(
                problem.fix.contains("did you mean `url`"),
                "{}",
                problem.fix
            );
            assert!(problem.origin.as_deref().unwrap().contains("t.toml"));
            Ok(())
        });
    }

    #[test]
    fn an_unknown_section_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[databse]\nurl = \"sqlite://x.db\"\n")?;
            let err = load(Some(Path::new("t.toml")), &[]).unwrap_err();
            assert_eq!(err.problems()[0].key, "databse");
            assert!(err.problems()[0].fix.contains("did you mean `database`"));
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_from_the_environment_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("TENANTD_LOG__LEVLE", "debug");
            let err = load(None, &[]).unwrap_err();
            let problem = &err.problems()[0];
            assert_eq!(problem.key, "log.levle");
            let origin = problem.origin.as_deref().unwrap();
            assert!(origin.contains("TENANTD_LOG__LEVLE"), "{origin}");
            Ok(())
        });
    }

    #[test]
    fn a_wrong_type_names_the_key_and_the_fix() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[admin]\nbind = \"not-an-address\"\n")?;
            let err = load(Some(Path::new("t.toml")), &[]).unwrap_err();
            let problem = &err.problems()[0];
            assert_eq!(problem.key, "admin.bind");
            assert!(problem.fix.contains("HOST:PORT"), "{}", problem.fix);
            Ok(())
        });
    }

    #[test]
    fn a_heartbeat_scenario_loads_and_each_bad_key_is_named_with_its_fix() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "good.toml",
                "[[heartbeat]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nschedule = \"0 */20 8-18 * * Mon-Fri\"\ntimezone = \"Europe/Berlin\"\n\
                 users = { count = 12, prefix = \"demo\", domain = \"contoso.onmicrosoft.com\", usage_location = \"DE\", license_sku = \"ENTERPRISEPACK\" }\n\
                 activities = [ { kind = \"mail\", per_run = 4 }, { kind = \"file\", per_run = 1 }, { kind = \"chat\", per_run = 2 }, { kind = \"event\", per_run = 1 } ]\n",
            )?;
            let loaded = load(Some(Path::new("good.toml")), &[]).unwrap();
            let heartbeat = &loaded.config.heartbeat[0];
            assert_eq!(heartbeat.users.count, 12);
            assert_eq!(heartbeat.activities[2].kind, ActivityKind::Chat);
            jail.create_file(
                "bad.toml",
                "[[heartbeat]]\ntenant = \"contoso.com\"\nschedule = \"*/20 8-18 * * Mon-Fri\"\n\
                 users = { count = 0, prefix = \"Demo User\", domain = \"contoso\", usage_location = \"de\" }\n\
                 activities = [ { kind = \"mail\", per_run = 0 }, { kind = \"mail\", per_run = 1 } ]\n\n\
                 [[heartbeat]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nschedule = \"0 0 9 * * *\"\ntimezone = \"Mars/Olympus\"\n\
                 users = { count = 1, prefix = \"demo\", domain = \"contoso.onmicrosoft.com\", usage_location = \"DE\" }\n",
            )?;
            let err = load(Some(Path::new("bad.toml")), &[]).unwrap_err();
            let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "heartbeat[0].tenant",
                    "heartbeat[0].schedule",
                    "heartbeat[0].users.count",
                    "heartbeat[0].users.prefix",
                    "heartbeat[0].users.domain",
                    "heartbeat[0].users.usage_location",
                    "heartbeat[0].activities[0].per_run",
                    "heartbeat[0].activities[1].kind",
                    "heartbeat[1].timezone",
                ]
            );
            assert!(err.problems().iter().all(|p| !p.fix.is_empty()));
            assert!(
                err.problems()[1].fix.contains("seconds"),
                "{}",
                err.problems()[1].fix
            );
            jail.create_file(
                "kind.toml",
                "[[heartbeat]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nschedule = \"0 0 9 * * *\"\n\
                 users = { count = 1, prefix = \"demo\", domain = \"contoso.onmicrosoft.com\", usage_location = \"DE\" }\n\
                 activities = [ { kind = \"fax\", per_run = 1 } ]\n",
            )?;
            let err = load(Some(Path::new("kind.toml")), &[]).unwrap_err();
            assert!(err.to_string().contains("fax"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_subscription_names_its_entry_and_the_fix() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[[subscriptions]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nresource = \"users/u/messages\"\nchange_types = [\"created\"]\n\n\
                 [[subscriptions]]\ntenant = \"contoso.com\"\nresource = \"users/u/events\"\nchange_types = [\"created\"]\n\n\
                 [[subscriptions]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nresource = \"users/u/events\"\nchange_types = [\"moved\"]\n\n\
                 [[subscriptions]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nresource = \"users/u/messages\"\nchange_types = [\"created\"]\ninclude_resource_data = true\n",
            )?;
            let err = load(Some(Path::new("t.toml")), &[]).unwrap_err();
            let problems: Vec<(&str, &str)> = err
                .problems()
                .iter()
                .map(|p| (p.key.as_str(), p.fix.as_str()))
                .collect();
            assert_eq!(
                problems,
                [
                    (
                        "subscriptions[1]",
                        "use the Entra tenant ID of a connected tenant"
                    ),
                    ("subscriptions[2]", "use created, updated and/or deleted"),
                    (
                        "subscriptions[3].include_resource_data",
                        "add the properties Graph should send, e.g. `?$select=subject,from,receivedDateTime`"
                    ),
                ]
            );
            jail.create_file(
                "ok.toml",
                "[[subscriptions]]\ntenant = \"84BD8158-6D4D-4958-8B9F-9D6445542F95\"\nresource = \"/users/u/messages\"\nchange_types = [\"updated\", \"created\"]\n\n\
                 [[subscriptions]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nresource = \"users/u/messages?$select=subject\"\nchange_types = [\"created\"]\ninclude_resource_data = true\n",
            )?;
            let loaded = load(Some(Path::new("ok.toml")), &[]).unwrap();
            assert_eq!(loaded.config.subscriptions.len(), 2);
            assert!(loaded.config.subscriptions[1].include_resource_data);
            Ok(())
        });
    }

    #[test]
    fn a_bad_log_format_lists_the_choices() {
        Jail::expect_with(|_jail| {
            let err = load(None, &[flag("log.format", "--log-format", "xml")]).unwrap_err();
            let problem = &err.problems()[0];
            assert_eq!(problem.key, "log.format");
            assert!(problem.fix.contains("pretty") && problem.fix.contains("json"));
            assert_eq!(problem.origin.as_deref(), Some("the --log-format flag"));
            Ok(())
        });
    }

    #[test]
    fn validation_rejects_an_unsupported_database_and_a_bad_filter() {
        Jail::expect_with(|jail| {
            jail.set_env("TENANTD_DATABASE__URL", "mysql://root:hunter2@db/x");
            jail.set_env("TENANTD_LOG__LEVEL", "info,[[[");
            let err = load(None, &[]).unwrap_err();
            let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["database.url", "log.level"]);
            assert!(!err.to_string().contains("hunter2"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[database]\nurl = [\"postgres://u:hunter2@h/d\"]\n",
            )?;
            let err = load(Some(Path::new("t.toml")), &[]).unwrap_err();
            assert_eq!(err.problems()[0].key, "database.url");
            assert!(!err.to_string().contains("hunter2"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn url_file_reads_the_secret_and_honours_the_credentials_directory() {
        Jail::expect_with(|jail| {
            jail.create_dir("creds")?;
            jail.create_file("creds/db-url", "postgres://tenantd:hunter2@db/tenantd\n")?;
            let creds = jail.directory().join("creds");
            jail.set_env("CREDENTIALS_DIRECTORY", creds.display());
            jail.set_env("TENANTD_DATABASE__URL_FILE", "db-url");
            let config = load(None, &[]).unwrap().config;
            assert_eq!(
                config.database.url.expose(),
                "postgres://tenantd:hunter2@db/tenantd"
            );
            assert!(!format!("{config:?}").contains("hunter2"));
            assert!(!config.to_redacted_toml().contains("hunter2"));
            Ok(())
        });
    }

    #[test]
    fn url_and_url_file_together_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("url", "sqlite://a.db")?;
            jail.set_env("TENANTD_DATABASE__URL", "sqlite://b.db");
            jail.set_env("TENANTD_DATABASE__URL_FILE", "url");
            let err = load(None, &[]).unwrap_err();
            assert_eq!(err.problems()[0].key, "database.url_file");
            Ok(())
        });
    }

    #[test]
    fn an_unreadable_url_file_names_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("TENANTD_DATABASE__URL_FILE", "/nonexistent/db-url");
            let err = load(None, &[]).unwrap_err();
            assert!(matches!(err, ConfigError::SecretFile { .. }));
            assert!(err.to_string().contains("database.url_file"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn single_underscore_env_vars_are_warned_about() {
        let names = [
            "TENANTD_LOG_LEVEL",
            "TENANTD_LOG__LEVEL",
            "TENANTD_CONFIG",
            "PATH",
        ]
        .map(String::from);
        let warnings = env_warnings(names.into_iter());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("TENANTD_LOG_LEVEL"));
    }

    #[test]
    fn database_urls_print_without_passwords() {
        for (raw, shown) in [
            ("sqlite://data/tenantd.db", "sqlite://data/tenantd.db"),
            (
                "postgres://u:hunter2@db:5432/x",
                "postgres://u:[redacted]@db:5432/x",
            ),
            (
                "postgres://u@db/x?sslmode=require",
                "postgres://u@db/x?sslmode=require",
            ),
            (
                "postgres://db/x?user=u&password=hunter2",
                "postgres://db/x?user=u&password=[redacted]",
            ),
            (
                "postgres://u:p@ss:w@rd@db/x",
                "postgres://u:[redacted]@db/x",
            ),
        ] {
            let url = DatabaseUrl::new(raw);
            assert_eq!(url.redacted(), shown);
            assert_eq!(format!("{url:?}"), shown);
            assert_eq!(url.to_string(), shown);
        }
    }

    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let example = include_str!("../config/tenantd.example.toml");
        let parsed: Config = toml::from_str(example).expect("example parses with no unknown keys");
        assert_eq!(
            parsed.to_redacted_toml(),
            Config::default().to_redacted_toml(),
            "the example's values are the defaults"
        );
        // Optional keys have no default, so the example shows them commented out.
        for optional in ["url_file", "public_url", "base_url", "authority"] {
            assert!(
                example.contains(&format!("# {optional} = ")),
                "{optional} undocumented"
            );
        }
    }
}

/// Fuzzing the configuration loader with a fixed budget: any file text, valid TOML or not,
/// with known keys holding values of any shape, ends in a config or in problems naming keys,
/// never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn load_text(text: &str) -> Result<Config, Vec<ConfigProblem>> {
        let figment = Figment::new().merge(Toml::string(text));
        let mut config: Config = figment.extract().map_err(|err| {
            err.into_iter()
                .map(|e| describe_figment_error(&e))
                .collect::<Vec<_>>()
        })?;
        apply_cloud(&figment, &mut config);
        let problems = validate(&config, &figment);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    const KEYS: &[&str] = &[
        "database.url",
        "database.max_connections",
        "graph.cloud",
        "graph.base_url",
        "identity.authority",
        "listener.public_url",
        "listener.bind",
        "listener.max_connections_per_peer",
        "log.level",
        "shutdown.grace_seconds",
        "secrets.key_file",
        "queue.workers",
    ];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<String>().prop_map(|s| format!("{s:?}")),
            Just("[1, \"a\"]".to_string()),
            Just("{ a = 1 }".to_string()),
            Just("\"http://[::1\"".to_string()),
            Just("\"usgov\"".to_string()),
            Just("\"https://graph.microsoft.us/v1.0\"".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn any_text_loads_or_names_its_problems(text in any::<String>()) {
            let _ = load_text(&text);
        }

        #[test]
        fn known_keys_with_values_of_any_shape_never_panic(
            entries in proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..6)
        ) {
            let mut text = String::new();
            for (key, value) in entries {
                let (section, name) = key.split_once('.').expect("dotted");
                text.push_str(&format!("[{section}]\n{name} = {value}\n"));
            }
            if let Err(problems) = load_text(&text) {
                prop_assert!(problems.iter().all(|p| !p.key.is_empty()));
            }
        }
    }
}
