//! `tenantd tenant ...` and `tenantd keys ...`: connect tenants, list and remove connections,
//! print consent URLs, check consent, rotate vault keys. They work with the daemon stopped or
//! running, against the same database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use super::{exit_code, Access, CliError, CliResult};
use crate::audit::Actor;
use crate::clock::now_unix;
use crate::config::Config;
use crate::store::Store;
use crate::vault::connections::{
    self, AuthMode, Connection, NewAppConnection, NewDelegatedConnection,
};
use crate::vault::identity::{token_claims, DevicePoll, IdentityClient, DEV_PORTAL_RESOURCE};
use crate::vault::tokens::TokenService;
use crate::vault::Keyring;

/// `tenantd tenant ...`
#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Add an app-only connection (client credentials); the secret is stored encrypted
    AddApp {
        /// Entra tenant ID (GUID)
        #[arg(long, value_name = "GUID")]
        tenant: String,
        /// Application (client) id
        #[arg(long, value_name = "ID")]
        client_id: String,
        /// File holding only the client secret (never pass secrets as arguments)
        #[arg(long, value_name = "PATH")]
        client_secret_file: PathBuf,
        /// A label for `tenant list`
        #[arg(long, value_name = "LABEL")]
        name: Option<String>,
        /// Make it the tenant's default app-only connection (the first one always is)
        #[arg(long)]
        default: bool,
    },
    /// Connect delegated access by device code: prints the URL and code, waits for the sign-in
    Connect {
        /// Entra tenant ID, or `organizations`
        #[arg(long, value_name = "GUID")]
        tenant: String,
        /// Application (client) id
        #[arg(long, value_name = "ID")]
        client_id: String,
    },
    /// One line per connection: status, reason, token expiry, last refresh
    List {
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// The v2.0 admin consent URL for the tenant's default app
    ConsentUrl {
        /// Entra tenant ID (GUID)
        #[arg(long, value_name = "GUID")]
        tenant: String,
        /// Where the admin is sent back [default: <listener.public_url>/oauth/consent-callback]
        #[arg(long, value_name = "URL")]
        redirect_uri: Option<String>,
    },
    /// Print a sign-in URL for delegated access through a browser (authorization code + PKCE);
    /// the public listener's /oauth/callback completes it
    AuthorizeUrl {
        /// Entra tenant ID, or `organizations`
        #[arg(long, value_name = "GUID")]
        tenant: String,
        /// Application (client) id
        #[arg(long, value_name = "ID")]
        client_id: String,
        /// Where the browser comes back [default: <listener.public_url>/oauth/callback]
        #[arg(long, value_name = "URL")]
        redirect_uri: Option<String>,
    },
    /// Acquire tokens for Microsoft Graph and the Teams Developer Portal; list what is granted
    /// and missing; print the admin consent URL when consent is missing
    Check {
        /// Entra tenant ID (GUID)
        #[arg(long, value_name = "GUID")]
        tenant: String,
    },
    /// Remove a tenant's connections (or one): secrets and tokens are deleted, the audit trail
    /// stays
    Remove {
        /// Entra tenant ID (GUID)
        #[arg(long, value_name = "GUID")]
        tenant: String,
        /// Only this connection
        #[arg(long, value_name = "ID")]
        connection: Option<String>,
    },
}

/// `tenantd keys ...`
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Write a new key file with one fresh key (owner-only permissions)
    Generate {
        /// Where to write it; an existing file is never overwritten
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// The key id
        #[arg(long, default_value = "k1", value_name = "ID")]
        id: String,
    },
    /// Re-encrypt every stored secret under the active (first) key of secrets.key_file; safe to
    /// interrupt and run again. Lists every secret it cannot open and exits 1 while any is left
    Rotate,
    /// Open every stored secret and report, per key id, how many open with secrets.key_file;
    /// exits 1 when one does not
    Verify {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// The database and the vault keys. With [`Access::Read`] neither is created: a missing key
/// file names the file and the fix (exit 2).
pub(crate) async fn open(config: &Config, access: Access) -> CliResult<(Store, Arc<Keyring>)> {
    // The database first: when the CLI looks in the wrong place, that is the clearer message.
    let store = super::open_store(config, access).await?;
    let keys = match access {
        Access::Write => {
            let (keys, created) =
                Keyring::open_configured(&config.secrets.key_file).map_err(CliError::failure)?;
            if created {
                eprintln!(
                    "tenantd: created vault key file {} (keep it apart from the database in production: secrets.key_file)",
                    config.secrets.key_file.display()
                );
            }
            keys
        }
        Access::Read => Keyring::load(&config.secrets.key_file).map_err(|err| {
            CliError::usage(format!(
                "{err}; this command only reads: point the CLI at the daemon's configuration (--config FILE or TENANTD_CONFIG, or secrets.key_file / TENANTD_SECRETS__KEY_FILE)"
            ))
        })?,
    };
    Ok((store, Arc::new(keys)))
}

fn read_secret_file(path: &std::path::Path) -> Result<zeroize::Zeroizing<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--client-secret-file {}: {}", path.display(), e.kind()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(format!("--client-secret-file {} is empty", path.display()));
    }
    Ok(zeroize::Zeroizing::new(secret))
}

fn consent_redirect(config: &Config, given: Option<&str>) -> Result<String, String> {
    if let Some(uri) = given {
        return Ok(uri.to_string());
    }
    config
        .listener
        .public_url
        .as_ref()
        .map(|base| format!("{}/oauth/consent-callback", base.as_str().trim_end_matches('/')))
        .ok_or_else(|| "no redirect URI: set listener.public_url (the https base Graph and browsers reach tenantd at) or pass --redirect-uri".to_string())
}

/// The configured delegated scopes of `resource` that the token does not carry (OpenID
/// Connect scopes never appear in `scp`).
/// A bare scope name is Graph's (`graph` says whether `resource` is Graph).
fn missing_scopes(
    configured: &[String],
    resource: &str,
    graph: bool,
    granted: &str,
) -> Vec<String> {
    let granted: Vec<&str> = granted.split_whitespace().collect();
    configured
        .iter()
        .filter(|scope| {
            !matches!(
                scope.as_str(),
                "openid" | "profile" | "email" | "offline_access"
            )
        })
        .filter_map(|scope| match scope.rsplit_once('/') {
            Some((prefix, name)) if prefix == resource => Some(name.to_string()),
            Some(_) => None,
            None if graph => Some(scope.clone()),
            None => None,
        })
        .filter(|name| !granted.contains(&name.as_str()))
        .collect()
}

fn callback_redirect(config: &Config) -> Result<String, String> {
    config
        .listener
        .public_url
        .as_ref()
        .map(|base| format!("{}/oauth/callback", base.as_str().trim_end_matches('/')))
        .ok_or_else(|| {
            "no redirect URI: set listener.public_url or pass --redirect-uri".to_string()
        })
}

pub(crate) fn when(at: Option<i64>) -> String {
    match at {
        None => "-".into(),
        Some(at) => {
            let delta = at - now_unix();
            if delta >= 0 {
                format!("in {}", human(delta))
            } else {
                format!("{} ago", human(-delta))
            }
        }
    }
}

fn human(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn print_table(connections: &[Connection]) {
    if connections.is_empty() {
        println!("no connections; add one with `tenantd tenant add-app` (app-only) or `tenantd tenant connect` (delegated)");
        return;
    }
    println!(
        "{:<36}  {:<32}  {:<9}  {:<3}  {:<20}  {:<24}  {:<10}  LAST TOKEN",
        "TENANT", "CONNECTION", "MODE", "DEF", "STATUS", "REASON", "TOKEN"
    );
    for c in connections {
        let who = match c.auth_mode {
            AuthMode::App => c.label.clone().unwrap_or_default(),
            AuthMode::Delegated => c.user_name.clone().unwrap_or_else(|| c.user_id.clone()),
        };
        println!(
            "{:<36}  {:<32}  {:<9}  {:<3}  {:<20}  {:<24}  {:<10}  {} {}",
            c.tenant_id,
            c.id,
            c.auth_mode.as_str(),
            if c.is_default { "*" } else { "" },
            c.status.as_str(),
            c.reason.as_deref().unwrap_or("-"),
            when(c.token_expires_at),
            when(c.last_token_at),
            who,
        );
    }
}

/// Runs one `tenant` command and returns the exit code.
pub(crate) async fn run_tenant(config: &Config, command: &TenantCommand) -> i32 {
    let access = match command {
        TenantCommand::List { .. }
        | TenantCommand::ConsentUrl { .. }
        | TenantCommand::Check { .. } => Access::Read,
        _ => Access::Write,
    };
    let (store, keys) = match open(config, access).await {
        Ok(opened) => opened,
        Err(err) => return exit_code(Err(err)),
    };
    let identity = IdentityClient::configured(config);
    let authority = config
        .identity
        .authority
        .as_str()
        .trim_end_matches('/')
        .to_string();
    let result = match command {
        TenantCommand::AddApp {
            tenant,
            client_id,
            client_secret_file,
            name,
            default,
        } => {
            // The secret is read inside `add_app` (a bad file is a usage error there).
            let new = NewAppConnection {
                tenant_id: tenant,
                client_id,
                client_secret: "",
                label: name.as_deref(),
                make_default: *default,
                authority: &authority,
            };
            add_app(&store, &keys, new, client_secret_file).await
        }
        TenantCommand::Connect { tenant, client_id } => {
            connect(
                &store, &keys, &identity, config, &authority, tenant, client_id,
            )
            .await
        }
        TenantCommand::List { json } => list(&store, *json).await,
        TenantCommand::ConsentUrl {
            tenant,
            redirect_uri,
        } => consent_url(&store, &identity, config, tenant, redirect_uri.as_deref()).await,
        TenantCommand::AuthorizeUrl {
            tenant,
            client_id,
            redirect_uri,
        } => {
            authorize_url(
                &store,
                &keys,
                &identity,
                config,
                tenant,
                client_id,
                redirect_uri.as_deref(),
            )
            .await
        }
        TenantCommand::Check { tenant } => check(&store, keys, identity, config, tenant).await,
        TenantCommand::Remove { tenant, connection } => {
            remove(&store, tenant, connection.as_deref()).await
        }
    };
    store.close().await;
    exit_code(result)
}

/// `tenant add-app`: the secret read from its file, sealed, the connection recorded.
async fn add_app(
    store: &Store,
    keys: &Keyring,
    new: NewAppConnection<'_>,
    client_secret_file: &std::path::Path,
) -> CliResult {
    let secret = read_secret_file(client_secret_file).map_err(CliError::usage)?;
    let new = NewAppConnection {
        client_secret: &secret,
        ..new
    };
    match connections::add_app(store, keys, new, Actor::Cli).await {
        Ok(connection) => {
            println!(
                "added app-only connection {} for tenant {}{}",
                connection.id,
                connection.tenant_id,
                if connection.is_default {
                    " (default)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Err(err) => {
            if matches!(
                err.reason_code(),
                "invalid_tenant" | "identity_not_allowed" | "connection_exists"
            ) {
                Err(CliError::usage(err))
            } else {
                Err(CliError::failure(err))
            }
        }
    }
}

/// `tenant list`: every connection, as a table or JSON.
async fn list(store: &Store, json: bool) -> CliResult {
    let list = connections::list(store, None)
        .await
        .map_err(CliError::failure)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).expect("connections serialize")
        );
    } else {
        print_table(&list);
    }
    Ok(())
}

/// `tenant consent-url`: the admin consent link for the tenant's default app connection.
async fn consent_url(
    store: &Store,
    identity: &IdentityClient,
    config: &Config,
    tenant: &str,
    redirect_uri: Option<&str>,
) -> CliResult {
    let connection = connections::default_app(
        store,
        &connections::canonical_tenant(tenant).unwrap_or_default(),
    )
    .await
    .map_err(|err| CliError::usage(format!("no app-only connection for {tenant}: {err}")))?;
    let redirect = consent_redirect(config, redirect_uri).map_err(CliError::usage)?;
    let state = crate::oauth::start_consent(
        store,
        &connection.tenant_id,
        &connection.client_id,
        &redirect,
    )
    .await
    .map_err(CliError::failure)?;
    println!(
        "{}",
        identity.admin_consent_url(
            &connection.tenant_id,
            &connection.client_id,
            &redirect,
            &state
        )
    );
    eprintln!("(the link works once, for 10 minutes)");
    Ok(())
}

/// `tenant authorize-url`: a sign-in link (authorization code with PKCE) for a delegated
/// connection.
async fn authorize_url(
    store: &Store,
    keys: &Keyring,
    identity: &IdentityClient,
    config: &Config,
    tenant: &str,
    client_id: &str,
    redirect_uri: Option<&str>,
) -> CliResult {
    let redirect = redirect_uri
        .map_or_else(|| callback_redirect(config), |uri| Ok(uri.to_string()))
        .map_err(CliError::usage)?;
    let scope = config.identity.delegated_scopes.join(" ");
    let url =
        crate::oauth::start_authorize(store, keys, identity, tenant, client_id, &redirect, &scope)
            .await
            .map_err(CliError::failure)?;
    println!("{url}");
    eprintln!("(open it in a browser within 10 minutes; the link works once)");
    Ok(())
}

/// `tenant remove`: the tenant's connections (or one), their secrets and tokens; the audit
/// trail stays.
async fn remove(store: &Store, tenant: &str, connection: Option<&str>) -> CliResult {
    let removed = connections::remove(store, tenant, connection, Actor::Cli)
        .await
        .map_err(CliError::usage)?;
    println!("removed {removed} connection(s) of tenant {tenant}; secrets and tokens deleted, audit trail kept");
    Ok(())
}

async fn connect(
    store: &Store,
    keys: &Keyring,
    identity: &IdentityClient,
    config: &Config,
    authority: &str,
    tenant: &str,
    client_id: &str,
) -> CliResult {
    connections::check_authority(authority).map_err(CliError::usage)?;
    let scope = config.identity.delegated_scopes.join(" ");
    let code = identity
        .start_device_code(tenant, client_id, &scope)
        .await
        .map_err(|err| {
            CliError::failure(format!(
                "cannot start the sign-in ({}): {err}",
                err.reason_code()
            ))
        })?;
    println!("{}", code.message);
    println!(
        "(open {} and enter the code {})",
        code.verification_uri, code.user_code
    );
    let deadline = now_unix() + i64::try_from(code.expires_in).unwrap_or(900);
    let mut interval = code.interval.max(1);
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if now_unix() > deadline {
            return Err(CliError::failure(
                "the code expired before the sign-in finished (expired_token); run connect again",
            ));
        }
        match identity
            .poll_device_code(tenant, client_id, code.device_code.expose())
            .await
        {
            Ok(DevicePoll::Pending) => {}
            Ok(DevicePoll::SlowDown) => interval += 5,
            Ok(DevicePoll::Done(tokens)) => {
                let claims = token_claims(tokens.access_token.expose()).unwrap_or_default();
                let text = |key: &str| {
                    claims
                        .get(key)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                let Some(refresh) = tokens.refresh_token else {
                    return Err(CliError::usage("signed in, but no refresh token came back; add offline_access to identity.delegated_scopes"));
                };
                let (tid, oid, upn) = (text("tid"), text("oid"), text("upn"));
                let new = NewDelegatedConnection {
                    tenant_id: &tid,
                    client_id,
                    user_id: &oid,
                    user_name: Some(upn.as_str()).filter(|u| !u.is_empty()),
                    authority,
                    refresh_token: refresh.expose(),
                };
                let connection = connections::add_delegated(store, keys, new, Actor::Cli)
                    .await
                    .map_err(CliError::failure)?;
                println!(
                    "connected: delegated connection {} for {} in tenant {}",
                    connection.id,
                    connection
                        .user_name
                        .as_deref()
                        .unwrap_or(&connection.user_id),
                    connection.tenant_id
                );
                return Ok(());
            }
            Err(err) => {
                return Err(CliError::failure(format!(
                    "sign-in ended ({}): {err}",
                    err.reason_code()
                )));
            }
        }
    }
}

async fn check(
    store: &Store,
    keys: Arc<Keyring>,
    identity: IdentityClient,
    config: &Config,
    tenant: &str,
) -> CliResult {
    let tenant_id = connections::canonical_tenant(tenant).map_err(CliError::usage)?;
    let list = connections::list(store, Some(&tenant_id))
        .await
        .map_err(CliError::failure)?;
    if list.is_empty() {
        return Err(CliError::usage(format!(
            "no connections for {tenant_id}; add one with `tenantd tenant add-app`"
        )));
    }
    let service = TokenService::new(store.clone(), keys, identity.clone());
    let mut consent_missing = None;
    let mut unexpected = false;
    for connection in &list {
        println!(
            "connection {} ({}, {}): {}{}",
            connection.id,
            connection.auth_mode.as_str(),
            connection
                .user_name
                .as_deref()
                .unwrap_or(&connection.client_id),
            connection.status.as_str(),
            connection
                .reason
                .as_deref()
                .map(|reason| format!(" ({reason})"))
                .unwrap_or_default()
        );
        for (name, resource, graph) in [
            ("Microsoft Graph", identity.graph_resource(), true),
            ("Teams Developer Portal", DEV_PORTAL_RESOURCE, false),
        ] {
            match service.access_token(connection, resource).await {
                Ok(token) => {
                    let granted = granted_permissions(token.expose());
                    println!(
                        "  {name}: granted: {}",
                        if granted.is_empty() {
                            "(none)"
                        } else {
                            &granted
                        }
                    );
                    if connection.auth_mode == AuthMode::Delegated {
                        let missing = missing_scopes(
                            &config.identity.delegated_scopes,
                            resource,
                            graph,
                            &granted,
                        );
                        if !missing.is_empty() {
                            println!("  {name}: missing: {}", missing.join(" "));
                            consent_missing = Some(connection.client_id.clone());
                        }
                    }
                }
                Err(crate::vault::tokens::TokenServiceError::Token(err)) if err.is_consent() => {
                    println!(
                        "  {name}: missing consent (expected: {})",
                        err.reason_code()
                    );
                    if connection.auth_mode == AuthMode::App {
                        consent_missing = Some(connection.client_id.clone());
                    }
                }
                Err(err) => {
                    println!(
                        "  {name}: failed unexpectedly ({}): {err}",
                        err.reason_code()
                    );
                    unexpected = true;
                }
            }
        }
    }
    // Subscriptions that are not active say why (a human may have to act on the reason).
    let subscriptions = crate::subscriptions::list(store, Some(&tenant_id))
        .await
        .map_err(|err| CliError::failure(format!("{err} ({})", err.reason_code())))?;
    for row in subscriptions
        .iter()
        .filter(|row| row.wanted && row.status != "active")
    {
        println!(
            "subscription {} {}: {} ({})",
            row.id,
            row.resource,
            row.status,
            row.reason.as_deref().unwrap_or("-")
        );
    }
    if let Some(client_id) = consent_missing {
        print_consent_url(store, &identity, config, &tenant_id, &client_id).await;
    }
    if unexpected {
        // Each failure was printed beside its connection.
        Err(CliError::reported())
    } else {
        Ok(())
    }
}

/// The permissions an access token carries: its app roles (app-only) or its scopes
/// (delegated), space-separated; empty when it has neither.
fn granted_permissions(token: &str) -> String {
    let claims = token_claims(token).unwrap_or_default();
    claims
        .get("roles")
        .and_then(|r| r.as_array())
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .or_else(|| {
            claims
                .get("scp")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Prints a one-time admin consent link for `client_id` in `tenant_id`, or why there is none.
pub(crate) async fn print_consent_url(
    store: &Store,
    identity: &IdentityClient,
    config: &Config,
    tenant_id: &str,
    client_id: &str,
) {
    match consent_redirect(config, None) {
        Ok(redirect) => {
            match crate::oauth::start_consent(store, tenant_id, client_id, &redirect).await {
                Ok(state) => println!(
                    "admin consent URL: {}",
                    identity.admin_consent_url(tenant_id, client_id, &redirect, &state)
                ),
                Err(err) => println!("admin consent URL: unavailable: {err}"),
            }
        }
        Err(message) => println!("admin consent URL: unavailable: {message}"),
    }
}

/// Runs one `keys` command and returns the exit code.
pub(crate) async fn run_keys(config: &Config, command: &KeysCommand) -> i32 {
    exit_code(match command {
        KeysCommand::Generate { out, id } => Keyring::create_file(out, id)
            .map(|()| {
                println!(
                    "wrote a new key `{id}` to {} (mode 600); point secrets.key_file at it",
                    out.display()
                );
            })
            .map_err(CliError::failure),
        KeysCommand::Rotate => rotate_keys(config).await,
        KeysCommand::Verify { json } => verify_keys(config, *json).await,
    })
}

/// `keys rotate`: every sealed value re-sealed under the active key; what could not be opened
/// is named, and the exit code says whether the old key may go.
async fn rotate_keys(config: &Config) -> CliResult {
    let (store, keys) = open(config, Access::Write).await?;
    let result = crate::key_check::rotate(&store, &keys, |rotated| {
        if rotated % 100 == 0 {
            eprintln!("tenantd: re-encrypted {rotated} so far");
        }
    })
    .await;
    store.close().await;
    let report = result.map_err(|err| {
        CliError::failure(format!(
            "rotation stopped ({}): {err}; what was re-encrypted stays so, run it again when the database is back",
            err.reason_code()
        ))
    })?;
    println!(
        "re-encrypted {} secret(s) under key `{}`; {} already were",
        report.rotated,
        keys.active_id(),
        report.current
    );
    for left in &report.left {
        println!(
            "not re-encrypted: {}.{} row {} ({})",
            left.table, left.column, left.row, left.reason
        );
    }
    if report.changed > 0 {
        println!(
            "{} secret(s) changed while being re-encrypted (a token refreshed); run `tenantd keys rotate` again",
            report.changed
        );
    }
    if report.complete() {
        Ok(())
    } else if report.left.is_empty() {
        // The changed ones were named above.
        Err(CliError::reported())
    } else {
        Err(CliError::failure(format!(
            "{} secret(s) could not be opened with secrets.key_file: add back the key they name (`tenantd keys verify`), or remove or re-enter those connections and subscriptions; then run `tenantd keys rotate` again. Keep the old key until this exits 0",
            report.left.len()
        )))
    }
}

/// `keys verify`: per key id, how many stored values it opens and how many it fails.
async fn verify_keys(config: &Config, json: bool) -> CliResult {
    let (store, keys) = open(config, Access::Read).await?;
    let values = crate::key_check::sealed_values(&store).await;
    store.close().await;
    let values =
        values.map_err(|err| CliError::failure(format!("{err} ({})", err.reason_code())))?;
    let uses = crate::key_check::tally(&keys, &values);
    if json {
        println!(
            "{}",
            serde_json::to_string(&uses).expect("key uses serialize")
        );
    } else {
        println!(
            "{:<34} {:<12} {:>8} {:>8}",
            "KEY ID", "KEY FILE", "OPENS", "FAILS"
        );
        for key in &uses {
            println!(
                "{:<34} {:<12} {:>8} {:>8}",
                key.key_id,
                if key.in_key_file {
                    "present"
                } else {
                    "missing"
                },
                key.opened,
                key.failed
            );
        }
    }
    if uses.iter().all(|key| key.failed == 0) {
        Ok(())
    } else {
        Err(CliError::failure("some stored secrets do not open with secrets.key_file (FAILS above): a missing key must be added back; a present key that opens none is the wrong key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_scopes_are_counted_per_resource() {
        let configured: Vec<String> = [
            "openid",
            "offline_access",
            "User.Read",
            "Mail.Send",
            "https://dev.teams.microsoft.com/AppDefinitions.ReadWrite",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        assert_eq!(
            missing_scopes(
                &configured,
                crate::vault::identity::GRAPH_RESOURCE,
                true,
                "User.Read"
            ),
            vec!["Mail.Send"]
        );
        assert!(missing_scopes(
            &configured,
            crate::vault::identity::GRAPH_RESOURCE,
            true,
            "Mail.Send User.Read"
        )
        .is_empty());
        assert_eq!(
            missing_scopes(&configured, DEV_PORTAL_RESOURCE, false, ""),
            vec!["AppDefinitions.ReadWrite"]
        );
    }
}
