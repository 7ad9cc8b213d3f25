//! Validation: the checks serde cannot make (schemes, ranges, filter syntax, subscription
//! targets, heartbeat scenarios), each problem naming its key and the fix.
//!
//! Owns no tables. Invariant: a problem never echoes a secret value.

use figment::{Figment, Metadata, Source};

use super::*;

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

/// The change types Graph knows, in its order.
pub(super) const CHANGE_TYPES: [&str; 3] = ["created", "updated", "deleted"];

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
pub(super) fn rich_target_problem(
    subscription: &SubscriptionConfig,
) -> Option<(String, &'static str)> {
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

/// Checks the values serde cannot: schemes, ranges, filter syntax, the cloud's hosts,
/// subscription targets and heartbeat scenarios. Each problem names its key, where its value
/// came from and the fix.
pub(super) fn validate(config: &Config, figment: &Figment) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut problem = |key: &str, problem: String, fix: &str| {
        problems.push(ConfigProblem {
            key: key.into(),
            origin: origin_of(figment, key),
            problem,
            fix: fix.into(),
        });
    };
    database_problems(config, &mut problem);
    listener_problems(config, &mut problem);
    cloud_problems(config, &mut problem);
    scenario_problems(config, &mut problem);
    if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&config.log.level) {
        problem(
            "log.level",
            format!("not a log filter: {err}"),
            FIX_LOG_LEVEL,
        );
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

/// `[database]`: a URL tenantd can open, pool sizes and timeouts of at least one.
fn database_problems(config: &Config, problem: &mut impl FnMut(&str, String, &str)) {
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
}

/// `[listener]` and `[admin]`: limits of at least one, a public URL Graph will post to, two
/// different ports.
fn listener_problems(config: &Config, problem: &mut impl FnMut(&str, String, &str)) {
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
    if config.admin.bind == config.listener.bind && config.admin.bind.port() != 0 {
        problem(
            "admin.bind",
            format!("same address as listener.bind ({})", config.listener.bind),
            "give the admin and public listeners different ports",
        );
    }
}

/// `[graph]`, `[identity]` and `listener.public_url`: http(s) URLs (https for the public one
/// unless allowed), and hosts of the cloud `graph.cloud` names.
fn cloud_problems(config: &Config, problem: &mut impl FnMut(&str, String, &str)) {
    if config.graph.requests_per_second == Some(0) {
        problem(
            "graph.requests_per_second",
            "must be at least 1".into(),
            "remove it to let tenantd learn each tenant's budget from Graph, or set a cap such as 20",
        );
    }
    for (key, url) in [
        ("graph.base_url", Some(&config.graph.base_url)),
        (
            "graph.developer_portal_url",
            Some(&config.graph.developer_portal_url),
        ),
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
}

/// `[[subscriptions]]` and `[[heartbeat]]`: targets Graph accepts, one scenario per tenant.
fn scenario_problems(config: &Config, problem: &mut impl FnMut(&str, String, &str)) {
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
}

pub(super) const FIX_DATABASE_URL: &str =
    "use sqlite://PATH (embedded) or postgres://USER@HOST:PORT/DATABASE";
pub(super) const FIX_LOG_LEVEL: &str =
    "use error, warn, info, debug or trace, or directives such as \"info,tenantd=debug\"";

/// Where a key's value came from, for messages.
pub(super) fn origin_of(figment: &Figment, key: &str) -> Option<String> {
    figment.find_metadata(key).map(|metadata| {
        let path: Vec<String> = key.split('.').map(String::from).collect();
        describe_origin(metadata, &path)
    })
}

pub(super) fn describe_origin(metadata: &Metadata, path: &[String]) -> String {
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
