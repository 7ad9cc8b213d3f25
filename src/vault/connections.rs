//! Tenant connections: an Entra tenant, an app registration, an auth mode (app-only or
//! delegated, with the signed-in user), a status with a reason code, and the connection's
//! encrypted client secret and tokens.
//!
//! Owns `connections` and `connection_tokens`. Invariants: the tenant key is the Entra tenant
//! ID (a GUID; domains are labels only); at most one default app-only connection per tenant
//! (a unique index enforces it); only organizational (Entra ID) authorities are accepted, never
//! B2C or External ID; every secret column holds a vault ciphertext bound to its row; removing
//! a connection deletes its secrets and tokens and keeps its audit trail.

use serde::Serialize;
use zeroize::Zeroizing;

use crate::audit::{self, Actor};
use crate::clock::now_unix;
use crate::store::{transaction, with_pool, write_tx, Store, StoreError};
use crate::vault::{Keyring, SealedValue, Slot, VaultError};

/// The `connection_tokens.resource` of a connection's refresh token (the other rows are
/// access tokens, one per resource).
pub const REFRESH_SLOT: &str = "refresh";

/// Whose identity platform issues a connection's tokens. Microsoft's only, today; the column
/// (migration 0016) and the dispatch in `vault/tokens.rs` are where a second one would go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The Microsoft identity platform (Entra ID) and Microsoft Graph.
    Microsoft,
}

impl Provider {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Microsoft => "microsoft",
        }
    }

    /// The provider of a stored name; the column's check admits `microsoft` only.
    fn parse(_value: &str) -> Self {
        Provider::Microsoft
    }
}

/// How a connection gets tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Client credentials (admin-consented application permissions).
    App,
    /// A signed-in user's refresh token (device code or authorization code).
    Delegated,
}

impl AuthMode {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::App => "app",
            AuthMode::Delegated => "delegated",
        }
    }

    fn parse(value: &str) -> Self {
        if value == "delegated" {
            AuthMode::Delegated
        } else {
            AuthMode::App
        }
    }
}

/// A connection's state, as operators see it in `tenant list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Tokens are being issued.
    Active,
    /// An admin must consent (AADSTS65001); `tenant consent-url` gives the link.
    ConsentRequired,
    /// A user must sign in interactively (MFA, Conditional Access).
    InteractionRequired,
    /// The refresh token expired or was revoked; sign in again.
    NeedsReconsent,
    /// Something unexpected failed; see the reason.
    Error,
    /// Switched off by an operator.
    Disabled,
}

impl Status {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::ConsentRequired => "consent_required",
            Status::InteractionRequired => "interaction_required",
            Status::NeedsReconsent => "needs_reconsent",
            Status::Error => "error",
            Status::Disabled => "disabled",
        }
    }

    fn parse(value: &str) -> Self {
        match value {
            "consent_required" => Status::ConsentRequired,
            "interaction_required" => Status::InteractionRequired,
            "needs_reconsent" => Status::NeedsReconsent,
            "error" => Status::Error,
            "disabled" => Status::Disabled,
            _ => Status::Active,
        }
    }
}

/// A connection, without its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connection {
    /// Connection id.
    pub id: String,
    /// Entra tenant ID.
    pub tenant_id: String,
    /// Whose identity platform issues its tokens.
    pub provider: Provider,
    /// App registration (client) id.
    pub client_id: String,
    /// App-only or delegated.
    pub auth_mode: AuthMode,
    /// Delegated: the signed-in user's object id (empty for app-only).
    pub user_id: String,
    /// Delegated: the user's sign-in name, for display.
    pub user_name: Option<String>,
    /// Operator's label.
    pub label: Option<String>,
    /// The tenant's default app-only connection.
    pub is_default: bool,
    /// Identity platform authority.
    pub authority: String,
    /// Status.
    pub status: Status,
    /// Stable reason code of the status.
    pub reason: Option<String>,
    /// Last successful token (Unix seconds).
    pub last_token_at: Option<i64>,
    /// Last failure (Unix seconds).
    pub last_failure_at: Option<i64>,
    /// Soonest expiry of a cached access token (Unix seconds).
    pub token_expires_at: Option<i64>,
    /// Created (Unix seconds).
    pub created_at: i64,
}

/// Why a connection operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A secret could not be sealed or opened.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The tenant is not an Entra tenant ID.
    #[error("`{0}` is not an Entra tenant ID; fix: use the tenant's GUID (domains are display labels only)")]
    InvalidTenant(String),
    /// A B2C or External ID authority.
    #[error("`{0}` is a B2C or External ID authority; only organizational (Entra ID) identities may get Graph tokens")]
    IdentityNotAllowed(String),
    /// The same tenant, app, mode and user exist already.
    #[error(
        "a connection for this tenant, app and mode exists already ({0}); fix: remove it first"
    )]
    Exists(String),
    /// No such connection.
    #[error("no connection matches; fix: see `tenantd tenant list`")]
    NotFound,
}

impl ConnectionError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            ConnectionError::Store(err) => err.reason_code(),
            ConnectionError::Vault(err) => err.reason_code(),
            ConnectionError::InvalidTenant(_) => "invalid_tenant",
            ConnectionError::IdentityNotAllowed(_) => "identity_not_allowed",
            ConnectionError::Exists(_) => "connection_exists",
            ConnectionError::NotFound => "connection_not_found",
        }
    }
}

/// Refuses B2C and External ID authorities (seed 003: they never get Graph tokens).
///
/// # Errors
/// [`ConnectionError::IdentityNotAllowed`].
pub fn check_authority(authority: &str) -> Result<(), ConnectionError> {
    let host = url::Url::parse(authority)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let path = authority.to_ascii_lowercase();
    let b2c = host.ends_with(".b2clogin.com")
        || host.ends_with(".ciamlogin.com")
        || path.contains("/tfp/")
        || path.contains("b2c_1");
    if b2c {
        return Err(ConnectionError::IdentityNotAllowed(authority.to_string()));
    }
    Ok(())
}

/// Checks that a tenant is a GUID and returns it in canonical (lower-case hyphenated) form.
///
/// # Errors
/// [`ConnectionError::InvalidTenant`].
pub fn canonical_tenant(tenant: &str) -> Result<String, ConnectionError> {
    uuid::Uuid::parse_str(tenant)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| ConnectionError::InvalidTenant(tenant.to_string()))
}

/// An app-only connection to add.
pub struct NewAppConnection<'a> {
    /// Entra tenant ID.
    pub tenant_id: &'a str,
    /// Client id.
    pub client_id: &'a str,
    /// Client secret (sealed before it is stored).
    pub client_secret: &'a str,
    /// Label.
    pub label: Option<&'a str>,
    /// Make it the tenant's default (the first app connection of a tenant always is).
    pub make_default: bool,
    /// Identity platform authority.
    pub authority: &'a str,
}

/// The connection columns and the soonest access token expiry, followed by `$tail`.
macro_rules! select {
    ($tail:literal) => {
        concat!("SELECT c.id, c.tenant_id, c.client_id, c.auth_mode, c.user_id, c.user_name, c.label, \
     c.is_default, c.authority, c.status, c.reason, c.last_token_at, c.last_failure_at, c.created_at, \
     (SELECT MIN(t.expires_at) FROM connection_tokens t WHERE t.connection_id = c.id AND t.resource <> 'refresh'), \
     c.provider FROM connections c ", $tail)
    };
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i64,
    Option<i64>,
    String,
);

fn from_row(row: Row) -> Connection {
    let (
        id,
        tenant_id,
        client_id,
        mode,
        user_id,
        user_name,
        label,
        is_default,
        authority,
        status,
        reason,
        last_token_at,
        last_failure_at,
        created_at,
        token_expires_at,
        provider,
    ) = row;
    Connection {
        id,
        tenant_id,
        provider: Provider::parse(&provider),
        client_id,
        auth_mode: AuthMode::parse(&mode),
        user_id,
        user_name,
        label,
        is_default: is_default == 1,
        authority,
        status: Status::parse(&status),
        reason,
        last_token_at,
        last_failure_at,
        token_expires_at,
        created_at,
    }
}

const SECRET_SLOT: (&str, &str) = ("connections", "client_secret");

fn secret_slot(connection_id: &str) -> Slot<'_> {
    Slot {
        table: SECRET_SLOT.0,
        column: SECRET_SLOT.1,
        row: connection_id,
    }
}

/// The vault slot of a token: bound to its connection and resource.
fn token_row(connection_id: &str, resource: &str) -> String {
    format!("{connection_id}/{resource}")
}

/// Adds an app-only connection, its secret sealed.
///
/// # Errors
/// Invalid tenant, disallowed authority, a duplicate, or the database.
pub async fn add_app(
    store: &Store,
    keys: &Keyring,
    new: NewAppConnection<'_>,
    actor: Actor,
) -> Result<Connection, ConnectionError> {
    let tenant_id = canonical_tenant(new.tenant_id)?;
    check_authority(new.authority)?;
    let existing = list(store, Some(&tenant_id)).await?;
    if let Some(same) = existing
        .iter()
        .find(|c| c.client_id == new.client_id && c.auth_mode == AuthMode::App)
    {
        return Err(ConnectionError::Exists(same.id.clone()));
    }
    let first_app = !existing.iter().any(|c| c.auth_mode == AuthMode::App);
    let make_default = new.make_default || first_app;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let sealed = keys.seal(new.client_secret.as_bytes(), secret_slot(&id));
    let now = now_unix();
    const CLEAR_DEFAULT: &str =
        "UPDATE connections SET is_default = 0, updated_at = $1 WHERE tenant_id = $2";
    const INSERT: &str = "INSERT INTO connections (id, tenant_id, client_id, auth_mode, label, is_default, \
         authority, client_secret, created_at, updated_at) VALUES ($1, $2, $3, 'app', $4, $5, $6, $7, $8, $9)";
    transaction!(store, |tx| {
        if make_default {
            sqlx::query(CLEAR_DEFAULT)
                .bind(now)
                .bind(&tenant_id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        sqlx::query(INSERT)
            .bind(&id)
            .bind(&tenant_id)
            .bind(new.client_id)
            .bind(new.label)
            .bind(i64::from(make_default))
            .bind(new.authority)
            .bind(&sealed)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    });
    audit::record(
        store,
        actor,
        "connection_added",
        Some(&tenant_id),
        Some(&id),
        None,
    )
    .await?;
    get(store, &id).await
}

/// A delegated connection to add after a sign-in.
pub struct NewDelegatedConnection<'a> {
    /// Entra tenant ID (from the token's `tid`).
    pub tenant_id: &'a str,
    /// Client id.
    pub client_id: &'a str,
    /// The signed-in user's object id (`oid`).
    pub user_id: &'a str,
    /// The user's sign-in name, for display.
    pub user_name: Option<&'a str>,
    /// Identity platform authority.
    pub authority: &'a str,
    /// The refresh token (sealed before it is stored).
    pub refresh_token: &'a str,
}

/// Adds (or, for the same tenant, app and user, re-activates) a delegated connection and stores
/// its refresh token.
///
/// # Errors
/// Invalid tenant, disallowed authority, or the database.
pub async fn add_delegated(
    store: &Store,
    keys: &Keyring,
    new: NewDelegatedConnection<'_>,
    actor: Actor,
) -> Result<Connection, ConnectionError> {
    let tenant_id = canonical_tenant(new.tenant_id)?;
    check_authority(new.authority)?;
    let now = now_unix();
    let existing = list(store, Some(&tenant_id)).await?.into_iter().find(|c| {
        c.client_id == new.client_id
            && c.auth_mode == AuthMode::Delegated
            && c.user_id == new.user_id
    });
    let id = match &existing {
        Some(connection) => connection.id.clone(),
        None => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            const INSERT: &str = "INSERT INTO connections (id, tenant_id, client_id, auth_mode, user_id, user_name, \
                 authority, created_at, updated_at) VALUES ($1, $2, $3, 'delegated', $4, $5, $6, $7, $8)";
            write_tx!(store, |pool| {
                sqlx::query(INSERT)
                    .bind(&id)
                    .bind(&tenant_id)
                    .bind(new.client_id)
                    .bind(new.user_id)
                    .bind(new.user_name)
                    .bind(new.authority)
                    .bind(now)
                    .bind(now)
                    .execute(pool)
                    .await
                    .map_err(StoreError::from)?;
            });
            audit::record(
                store,
                actor,
                "connection_added",
                Some(&tenant_id),
                Some(&id),
                None,
            )
            .await?;
            id
        }
    };
    store_token(store, keys, &id, REFRESH_SLOT, new.refresh_token, None).await?;
    let connection = get(store, &id).await?;
    set_status(store, &connection, Status::Active, None, actor).await?;
    get(store, &id).await
}

/// One connection by id.
///
/// # Errors
/// [`ConnectionError::NotFound`] or the database.
pub async fn get(store: &Store, id: &str) -> Result<Connection, ConnectionError> {
    const SQL: &str = select!("WHERE c.id = $1");
    let row: Option<Row> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?);
    row.map(from_row).ok_or(ConnectionError::NotFound)
}

/// Connections, of one tenant or all, by tenant then creation.
///
/// # Errors
/// The database failed.
pub async fn list(
    store: &Store,
    tenant_id: Option<&str>,
) -> Result<Vec<Connection>, ConnectionError> {
    let rows: Vec<Row> = match tenant_id {
        Some(tenant) => {
            const SQL: &str = select!("WHERE c.tenant_id = $1 ORDER BY c.created_at, c.id");
            with_pool!(store, |pool| sqlx::query_as(SQL)
                .bind(tenant)
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)?)
        }
        None => {
            const SQL: &str = select!("ORDER BY c.tenant_id, c.created_at, c.id");
            with_pool!(store, |pool| sqlx::query_as(SQL)
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)?)
        }
    };
    Ok(rows.into_iter().map(from_row).collect())
}

/// The tenant's default app-only connection.
///
/// # Errors
/// [`ConnectionError::NotFound`] or the database.
pub async fn default_app(store: &Store, tenant_id: &str) -> Result<Connection, ConnectionError> {
    list(store, Some(tenant_id))
        .await?
        .into_iter()
        .find(|c| c.auth_mode == AuthMode::App && c.is_default)
        .ok_or(ConnectionError::NotFound)
}

/// Removes one connection, or all of a tenant's: secrets and tokens go, the audit trail stays.
/// Returns how many were removed.
///
/// # Errors
/// [`ConnectionError::NotFound`] when nothing matched, or the database.
pub async fn remove(
    store: &Store,
    tenant_id: &str,
    connection_id: Option<&str>,
    actor: Actor,
) -> Result<usize, ConnectionError> {
    let tenant_id = canonical_tenant(tenant_id)?;
    let doomed: Vec<Connection> = list(store, Some(&tenant_id))
        .await?
        .into_iter()
        .filter(|c| connection_id.is_none_or(|id| id == c.id))
        .collect();
    if doomed.is_empty() {
        return Err(ConnectionError::NotFound);
    }
    for connection in &doomed {
        transaction!(store, |tx| {
            sqlx::query("DELETE FROM connection_tokens WHERE connection_id = $1")
                .bind(&connection.id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            sqlx::query("DELETE FROM connections WHERE id = $1")
                .bind(&connection.id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        });
        audit::record(
            store,
            actor,
            "connection_removed",
            Some(&tenant_id),
            Some(&connection.id),
            None,
        )
        .await?;
    }
    Ok(doomed.len())
}

/// The connection's client secret, decrypted.
///
/// # Errors
/// [`ConnectionError::NotFound`] when it has none, a vault failure, or the database.
pub async fn client_secret(
    store: &Store,
    keys: &Keyring,
    connection_id: &str,
) -> Result<Zeroizing<String>, ConnectionError> {
    let sealed: Option<Option<String>> = with_pool!(store, |pool| sqlx::query_scalar(
        "SELECT client_secret FROM connections WHERE id = $1"
    )
    .bind(connection_id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?);
    let sealed = sealed.flatten().ok_or(ConnectionError::NotFound)?;
    Ok(keys.open_string(&sealed, secret_slot(connection_id))?)
}

/// Stores (or replaces) a token of a connection for a resource (`refresh` for the refresh
/// token), sealed and bound to both.
///
/// # Errors
/// The database failed.
pub async fn store_token(
    store: &Store,
    keys: &Keyring,
    connection_id: &str,
    resource: &str,
    token: &str,
    expires_at: Option<i64>,
) -> Result<(), ConnectionError> {
    let row = token_row(connection_id, resource);
    let sealed = keys.seal(
        token.as_bytes(),
        Slot {
            table: "connection_tokens",
            column: "token",
            row: &row,
        },
    );
    const SQL: &str = "INSERT INTO connection_tokens (connection_id, resource, token, expires_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (connection_id, resource) DO UPDATE SET \
         token = excluded.token, expires_at = excluded.expires_at, updated_at = excluded.updated_at";
    write_tx!(store, |pool| {
        sqlx::query(SQL)
            .bind(connection_id)
            .bind(resource)
            .bind(&sealed)
            .bind(expires_at)
            .bind(now_unix())
            .execute(pool)
            .await
            .map_err(StoreError::from)?;
    });
    Ok(())
}

/// A stored token and its expiry.
///
/// # Errors
/// A vault failure or the database.
pub async fn load_token(
    store: &Store,
    keys: &Keyring,
    connection_id: &str,
    resource: &str,
) -> Result<Option<(Zeroizing<String>, Option<i64>)>, ConnectionError> {
    const SQL: &str = "SELECT token, expires_at FROM connection_tokens WHERE connection_id = $1 AND resource = $2";
    let row: Option<(String, Option<i64>)> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(connection_id)
        .bind(resource)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?);
    let Some((sealed, expires_at)) = row else {
        return Ok(None);
    };
    let row = token_row(connection_id, resource);
    let token = keys.open_string(
        &sealed,
        Slot {
            table: "connection_tokens",
            column: "token",
            row: &row,
        },
    )?;
    Ok(Some((token, expires_at)))
}

/// Records a status change (and the time of the success or failure) with its reason; audits
/// changes only, so a steady state does not flood the trail.
///
/// # Errors
/// The database failed.
pub async fn set_status(
    store: &Store,
    connection: &Connection,
    status: Status,
    reason: Option<&str>,
    actor: Actor,
) -> Result<(), ConnectionError> {
    let now = now_unix();
    let success = status == Status::Active;
    const OK: &str = "UPDATE connections SET status = $1, reason = $2, last_token_at = $3, updated_at = $4 WHERE id = $5";
    const FAILED: &str = "UPDATE connections SET status = $1, reason = $2, last_failure_at = $3, updated_at = $4 WHERE id = $5";
    write_tx!(store, |pool| {
        sqlx::query(if success { OK } else { FAILED })
            .bind(status.as_str())
            .bind(reason)
            .bind(now)
            .bind(now)
            .bind(&connection.id)
            .execute(pool)
            .await
            .map_err(StoreError::from)?;
    });
    if connection.status != status {
        let reason = reason.map_or_else(|| status.as_str().to_string(), str::to_string);
        audit::record(
            store,
            actor,
            "status_changed",
            Some(&connection.tenant_id),
            Some(&connection.id),
            Some(&reason),
        )
        .await?;
    }
    Ok(())
}

/// Every sealed value this module owns: client secrets and tokens.
///
/// # Errors
/// The database failed.
pub async fn sealed_values(store: &Store) -> Result<Vec<SealedValue>, StoreError> {
    let secrets: Vec<(String, Option<String>)> = with_pool!(store, |pool| sqlx::query_as(
        "SELECT id, client_secret FROM connections"
    )
    .fetch_all(pool)
    .await?);
    let tokens: Vec<(String, String, String)> = with_pool!(store, |pool| sqlx::query_as(
        "SELECT connection_id, resource, token FROM connection_tokens"
    )
    .fetch_all(pool)
    .await?);
    let secrets = secrets.into_iter().filter_map(|(id, sealed)| {
        Some(SealedValue {
            table: SECRET_SLOT.0,
            column: SECRET_SLOT.1,
            row: id,
            sealed: sealed?,
        })
    });
    let tokens = tokens
        .into_iter()
        .map(|(connection_id, resource, sealed)| SealedValue {
            table: "connection_tokens",
            column: "token",
            row: token_row(&connection_id, &resource),
            sealed,
        });
    Ok(secrets.chain(tokens).collect())
}

/// Replaces a sealed value with `resealed` if it is still what was read (a concurrent
/// refresh wins). Returns whether it was replaced.
///
/// # Errors
/// The database failed.
pub async fn replace_sealed(
    store: &Store,
    value: &SealedValue,
    resealed: &str,
) -> Result<bool, StoreError> {
    let replaced = match value.table {
        "connection_tokens" => {
            let (connection_id, resource) = value.row.split_once('/').unwrap_or((&value.row, ""));
            write_tx!(store, |pool| {
                sqlx::query(
                "UPDATE connection_tokens SET token = $1 WHERE connection_id = $2 AND resource = $3 AND token = $4"
            )
            .bind(resealed)
            .bind(connection_id)
            .bind(resource)
            .bind(&value.sealed)
            .execute(pool)
            .await?
            .rows_affected()
            })
        }
        _ => write_tx!(store, |pool| sqlx::query(
            "UPDATE connections SET client_secret = $1 WHERE id = $2 AND client_secret = $3"
        )
        .bind(resealed)
        .bind(&value.row)
        .bind(&value.sealed)
        .execute(pool)
        .await?
        .rows_affected()),
    };
    Ok(replaced == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_organizational_authorities_are_accepted() {
        assert!(check_authority("https://login.microsoftonline.com").is_ok());
        assert!(check_authority("https://login.microsoftonline.us").is_ok());
        assert!(check_authority("http://127.0.0.1:7070").is_ok());
        for b2c in [
            "https://contoso.b2clogin.com/contoso.onmicrosoft.com/B2C_1_signin",
            "https://contoso.ciamlogin.com/",
            "https://login.microsoftonline.com/tfp/contoso.onmicrosoft.com/b2c_1_susi",
        ] {
            let err = check_authority(b2c).unwrap_err();
            assert_eq!(err.reason_code(), "identity_not_allowed", "{b2c}");
        }
    }

    #[test]
    fn tenants_are_guids_in_canonical_form() {
        assert_eq!(
            canonical_tenant("84BD8158-6D4D-4958-8B9F-9D6445542F95").unwrap(),
            "84bd8158-6d4d-4958-8b9f-9d6445542f95"
        );
        assert_eq!(
            canonical_tenant("contoso.onmicrosoft.com")
                .unwrap_err()
                .reason_code(),
            "invalid_tenant"
        );
    }
}
