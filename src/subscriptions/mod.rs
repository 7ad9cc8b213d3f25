//! Graph change-notification subscriptions: the ones tenantd wants (declared in configuration
//! or by the CLI), the random clientState each one carries, and what Graph answered when it
//! created or renewed them (its id, expiry, status and reason code). The webhook listener reads
//! the clientStates here to check incoming notifications.
//!
//! Owns `subscriptions`. Invariants: one row per (tenant, resource, change types); a Graph id
//! belongs to at most one row; the clientState is 32 random bytes (43 characters, under Graph's
//! 128), sealed by the vault to its row and never shown in logs, errors or Debug output.
//!
//! Its parts: the rows here, Graph's lifetimes and the renewal rule in `lifetimes.rs`, the
//! webhook's checks (and their cache) in `checks.rs`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::clock::now_unix;
use crate::store::{with_pool, write_tx, Store, StoreError};
use crate::vault::{Keyring, Slot, VaultError};

mod checks;
mod lifetimes;

pub use checks::{checks_for, Check, CheckCache, RichCheck, CHECK_CACHE_TTL};
pub use lifetimes::{action, max_lifetime, renewal_due, Action};

/// Where a wanted subscription was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `[[subscriptions]]` in the configuration.
    Config,
    /// `tenantd subscription create`.
    Cli,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Cli => "cli",
        }
    }
}

/// A subscription row (without its clientState).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Subscription {
    /// tenantd's id.
    pub id: String,
    /// Entra tenant ID.
    pub tenant_id: String,
    /// Graph resource path, e.g. `users/{id}/messages`.
    pub resource: String,
    /// Comma-separated change types, as Graph takes them.
    pub change_types: String,
    /// `config` or `cli`.
    pub origin: String,
    /// False once removed from the configuration or deleted by the CLI: reconcile deletes it.
    pub wanted: bool,
    /// Graph's subscription id, once created.
    pub graph_id: Option<String>,
    /// The connection that created it.
    pub connection_id: Option<String>,
    /// Graph's expiry (Unix seconds).
    pub expires_at: Option<i64>,
    /// Last successful renewal (Unix seconds).
    pub last_renewed_at: Option<i64>,
    /// `pending`, `active`, `failed` or `removed`.
    pub status: String,
    /// Reason code of the last failure.
    pub reason: Option<String>,
    /// Rich notifications: Graph sends the resource, encrypted, with each notification.
    pub include_resource_data: bool,
    /// The encryption certificate's id (rich notifications only).
    pub encryption_certificate_id: Option<String>,
    /// The encryption certificate, base64 DER (public; rich notifications only).
    #[serde(skip)]
    pub encryption_certificate: Option<String>,
    /// Where the last resync of the resource stopped (Graph's `@odata.deltaLink`).
    #[serde(skip)]
    pub delta_link: Option<String>,
}

/// A subscription to want.
#[derive(Debug, Clone)]
pub struct Desired<'a> {
    /// Entra tenant ID (GUID).
    pub tenant_id: &'a str,
    /// Graph resource path.
    pub resource: &'a str,
    /// Change types (`created`, `updated`, `deleted`).
    pub change_types: &'a [String],
    /// Where it was declared.
    pub origin: Origin,
    /// With resource data (rich notifications): tenantd makes an encryption certificate.
    pub include_resource_data: bool,
}

/// Why a subscription operation failed. Messages carry no clientState.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A clientState could not be sealed or opened.
    #[error("a subscription's clientState could not be decrypted: {0}")]
    Vault(#[from] VaultError),
    /// The tenant is not a GUID, the resource is malformed or a change type unknown.
    #[error("{0}")]
    Invalid(String),
    /// No such subscription.
    #[error("no subscription with id {0}")]
    NotFound(String),
    /// The encryption certificate could not be made or its key used.
    #[error(transparent)]
    Certificate(#[from] crate::rich_notifications::RichError),
}

impl SubscriptionError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            SubscriptionError::Store(err) => err.reason_code(),
            SubscriptionError::Vault(err) => err.reason_code(),
            SubscriptionError::Invalid(_) => "subscription_invalid",
            SubscriptionError::NotFound(_) => "subscription_not_found",
            SubscriptionError::Certificate(err) => err.reason_code(),
        }
    }
}

fn client_state_slot(id: &str) -> Slot<'_> {
    Slot {
        table: "subscriptions",
        column: "client_state",
        row: id,
    }
}

fn encryption_key_slot(id: &str) -> Slot<'_> {
    Slot {
        table: "subscriptions",
        column: "encryption_key",
        row: id,
    }
}

/// Checks and normalizes a desired subscription (the rules live with the configuration, which
/// checks `[[subscriptions]]` at load).
fn normalize(desired: &Desired<'_>) -> Result<(String, String, String), SubscriptionError> {
    crate::config::subscription_target(desired.tenant_id, desired.resource, desired.change_types)
        .map_err(|(what, fix)| SubscriptionError::Invalid(format!("{what}: {fix}")))
}

fn new_client_state() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

// The columns of [`COLUMNS`], in order (sqlx decodes tuples of up to 16).
type Row = (
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    String,
    Option<String>,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
);

const COLUMNS: &str = "id, tenant_id, resource, change_types, origin, wanted, graph_id, connection_id, expires_at, last_renewed_at, status, reason, \
     include_resource_data, encryption_certificate_id, encryption_certificate, delta_link";

fn from_row(row: Row) -> Subscription {
    let (
        id,
        tenant_id,
        resource,
        change_types,
        origin,
        wanted,
        graph_id,
        connection_id,
        expires_at,
        last_renewed_at,
        status,
        reason,
        include_resource_data,
        encryption_certificate_id,
        encryption_certificate,
        delta_link,
    ) = row;
    Subscription {
        id,
        tenant_id,
        resource,
        change_types,
        origin,
        wanted: wanted != 0,
        graph_id,
        connection_id,
        expires_at,
        last_renewed_at,
        status,
        reason,
        include_resource_data: include_resource_data != 0,
        encryption_certificate_id,
        encryption_certificate,
        delta_link,
    }
}

/// Wants a subscription: a new row with a fresh clientState (and, with resource data, a new
/// encryption certificate), or the existing row for the same tenant, resource, change types
/// and resource-data choice marked wanted again.
///
/// # Errors
/// [`SubscriptionError::Invalid`] naming what to fix, a certificate that could not be made,
/// or the database.
pub async fn declare(
    store: &Store,
    keys: &Keyring,
    desired: &Desired<'_>,
) -> Result<Subscription, SubscriptionError> {
    let (tenant, resource, change_types) = normalize(desired)?;
    let rich = i64::from(desired.include_resource_data);
    let sql = format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE tenant_id = $1 AND resource = $2 AND change_types = $3 AND include_resource_data = $4"
    );
    let find = || async {
        let row: Option<Row> = with_pool!(store, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
            sql.as_str()
        ))
        .bind(&tenant)
        .bind(&resource)
        .bind(&change_types)
        .bind(rich)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?);
        Ok::<_, SubscriptionError>(row)
    };
    if let Some(existing) = find().await?.map(from_row) {
        if !existing.wanted {
            const WANT: &str = "UPDATE subscriptions SET wanted = 1, updated_at = $1 WHERE id = $2";
            write_tx!(store, |conn| sqlx::query(WANT)
                .bind(now_unix())
                .bind(&existing.id)
                .execute(conn)
                .await
                .map_err(StoreError::from)?
                .rows_affected());
        }
        return Ok(Subscription {
            wanted: true,
            ..existing
        });
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let sealed = keys.seal(new_client_state().as_bytes(), client_state_slot(&id));
    let certificate = if desired.include_resource_data {
        // RSA key generation takes a while: off the async threads.
        let for_id = id.clone();
        let made = tokio::task::spawn_blocking(move || {
            crate::rich_notifications::new_certificate(&for_id)
        })
        .await
        .map_err(|err| crate::rich_notifications::RichError::Certificate(err.to_string()))??;
        let sealed_key = keys.seal(&made.key_pkcs8, encryption_key_slot(&id));
        Some((made.id, made.certificate, sealed_key))
    } else {
        None
    };
    let (certificate_id, certificate, sealed_key) = match certificate {
        Some((a, b, c)) => (Some(a), Some(b), Some(c)),
        None => (None, None, None),
    };
    let now = now_unix();
    const INSERT: &str = "INSERT INTO subscriptions (id, tenant_id, resource, change_types, origin, client_state, created_at, updated_at, \
         include_resource_data, encryption_certificate_id, encryption_certificate, encryption_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (tenant_id, resource, change_types, include_resource_data) DO UPDATE SET wanted = 1, updated_at = excluded.updated_at";
    write_tx!(store, |conn| sqlx::query(INSERT)
        .bind(&id)
        .bind(&tenant)
        .bind(&resource)
        .bind(&change_types)
        .bind(desired.origin.as_str())
        .bind(&sealed)
        .bind(now)
        .bind(now)
        .bind(rich)
        .bind(&certificate_id)
        .bind(&certificate)
        .bind(&sealed_key)
        .execute(conn)
        .await
        .map_err(StoreError::from)?
        .rows_affected());
    // Another declare may have won the insert: the row in the table is the one.
    find()
        .await?
        .map(from_row)
        .ok_or(SubscriptionError::NotFound(id))
}

/// Runs `sql`, an UPDATE of one row taking `$1` = now and `$2` = the row's id; returns the
/// rows changed.
async fn touch_row(store: &Store, sql: &'static str, id: &str) -> Result<u64, SubscriptionError> {
    Ok(write_tx!(store, |conn| sqlx::query(sql)
        .bind(now_unix())
        .bind(id)
        .execute(conn)
        .await
        .map_err(StoreError::from)?
        .rows_affected()))
}

/// Runs `sql`, an UPDATE of one row taking `$1` = `value`, `$2` = now and `$3` = the row's id.
async fn set_on_row(
    store: &Store,
    sql: &'static str,
    value: Option<&str>,
    id: &str,
) -> Result<u64, SubscriptionError> {
    Ok(write_tx!(store, |conn| sqlx::query(sql)
        .bind(value)
        .bind(now_unix())
        .bind(id)
        .execute(conn)
        .await
        .map_err(StoreError::from)?
        .rows_affected()))
}

/// Records where a resync of the subscription's resource stopped (`None` to start over).
///
/// # Errors
/// The database failed.
pub async fn record_delta_link(
    store: &Store,
    id: &str,
    delta_link: Option<&str>,
) -> Result<(), SubscriptionError> {
    const SQL: &str = "UPDATE subscriptions SET delta_link = $1, updated_at = $2 WHERE id = $3";
    set_on_row(store, SQL, delta_link, id).await?;
    Ok(())
}

/// Clears the `notifications_missed` reason once the resource is resynchronized.
///
/// # Errors
/// The database failed.
pub async fn record_resynced(store: &Store, id: &str) -> Result<(), SubscriptionError> {
    const SQL: &str = "UPDATE subscriptions SET reason = NULL, updated_at = $1 WHERE id = $2 AND reason = 'notifications_missed'";
    touch_row(store, SQL, id).await?;
    Ok(())
}

/// Makes the configured subscriptions wanted and stops wanting configured ones that were
/// removed from the configuration (rows made by the CLI are left alone). Returns how many are
/// configured.
///
/// # Errors
/// An invalid entry (configuration validation catches these first), or the database.
pub async fn sync_configured(
    store: &Store,
    keys: &Keyring,
    configured: &[crate::config::SubscriptionConfig],
) -> Result<usize, SubscriptionError> {
    let mut kept = Vec::new();
    for entry in configured {
        let row = declare(
            store,
            keys,
            &Desired {
                tenant_id: &entry.tenant,
                resource: &entry.resource,
                change_types: &entry.change_types,
                origin: Origin::Config,
                include_resource_data: entry.include_resource_data,
            },
        )
        .await?;
        kept.push(row.id);
    }
    for row in list(store, None).await? {
        if row.origin == Origin::Config.as_str() && row.wanted && !kept.contains(&row.id) {
            unwant(store, &row.id).await?;
        }
    }
    Ok(kept.len())
}

/// Subscriptions, optionally of one tenant, oldest first.
///
/// # Errors
/// The database failed.
pub async fn list(
    store: &Store,
    tenant: Option<&str>,
) -> Result<Vec<Subscription>, SubscriptionError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE ($1 = '' OR tenant_id = $2) ORDER BY created_at, id"
    );
    let tenant = tenant.unwrap_or_default();
    let rows: Vec<Row> = with_pool!(store, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.as_str()
    ))
    .bind(tenant)
    .bind(tenant)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?);
    Ok(rows.into_iter().map(from_row).collect())
}

/// Up to `limit` subscriptions with ids after `after` (from the first with `None`), in id
/// order: a reconcile of tens of thousands holds one page at a time, not all of them.
///
/// # Errors
/// The database failed.
pub async fn page(
    store: &Store,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Subscription>, SubscriptionError> {
    let sql = format!("SELECT {COLUMNS} FROM subscriptions WHERE id > $1 ORDER BY id LIMIT $2");
    let rows: Vec<Row> = with_pool!(store, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.as_str()
    ))
    .bind(after.unwrap_or_default())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?);
    Ok(rows.into_iter().map(from_row).collect())
}

/// How many subscriptions are in each status, and the soonest expiry of an active one: what
/// the gauges show, counted by the database.
///
/// # Errors
/// The database failed.
pub async fn status_counts(
    store: &Store,
) -> Result<(Vec<(String, i64)>, Option<i64>), SubscriptionError> {
    const COUNTS: &str = "SELECT status, count(*) FROM subscriptions GROUP BY status";
    const SOONEST: &str = "SELECT min(expires_at) FROM subscriptions WHERE status = 'active'";
    let counts: Vec<(String, i64)> = with_pool!(store, |pool| sqlx::query_as(COUNTS)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?);
    let soonest: Option<i64> = with_pool!(store, |pool| sqlx::query_scalar(SOONEST)
        .fetch_one(pool)
        .await
        .map_err(StoreError::from)?);
    Ok((counts, soonest))
}

/// One subscription by tenantd's id.
///
/// # Errors
/// [`SubscriptionError::NotFound`], or the database.
pub async fn get(store: &Store, id: &str) -> Result<Subscription, SubscriptionError> {
    let sql = format!("SELECT {COLUMNS} FROM subscriptions WHERE id = $1");
    let row: Option<Row> = with_pool!(store, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.as_str()
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?);
    row.map(from_row)
        .ok_or_else(|| SubscriptionError::NotFound(id.to_string()))
}

/// Stops wanting a subscription; reconcile deletes it at Graph and then the row.
///
/// # Errors
/// [`SubscriptionError::NotFound`], or the database.
pub async fn unwant(store: &Store, id: &str) -> Result<(), SubscriptionError> {
    const SQL: &str = "UPDATE subscriptions SET wanted = 0, updated_at = $1 WHERE id = $2";
    let changed = touch_row(store, SQL, id).await?;
    if changed == 0 {
        return Err(SubscriptionError::NotFound(id.to_string()));
    }
    Ok(())
}

/// Removes the row (after Graph's subscription is gone).
///
/// # Errors
/// The database failed.
pub async fn forget(store: &Store, id: &str) -> Result<(), SubscriptionError> {
    write_tx!(store, |conn| sqlx::query(
        "DELETE FROM subscriptions WHERE id = $1"
    )
    .bind(id)
    .execute(conn)
    .await
    .map_err(StoreError::from)?
    .rows_affected());
    Ok(())
}

/// The clientState to send to Graph when creating the subscription.
///
/// # Errors
/// [`SubscriptionError::NotFound`], a vault failure, or the database.
pub async fn client_state(
    store: &Store,
    keys: &Keyring,
    id: &str,
) -> Result<Zeroizing<String>, SubscriptionError> {
    const SQL: &str = "SELECT client_state FROM subscriptions WHERE id = $1";
    let sealed: Option<String> = with_pool!(store, |pool| sqlx::query_scalar(SQL)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?);
    let sealed = sealed.ok_or_else(|| SubscriptionError::NotFound(id.to_string()))?;
    Ok(keys.open_string(&sealed, client_state_slot(id))?)
}

/// How long a create may be in flight before another reconcile may try again.
const CREATE_TIMEOUT_SECONDS: i64 = 300;

/// Claims the right to create the subscription at Graph, so two reconciles running at once
/// (a slow tick overlapping the next, several instances) never create it twice. False when
/// another create is in flight (marked with reason `creating` for up to five minutes) or
/// Graph's id is already known.
///
/// # Errors
/// The database failed.
pub async fn begin_create(store: &Store, id: &str) -> Result<bool, SubscriptionError> {
    const SQL: &str = "UPDATE subscriptions SET reason = 'creating', updated_at = $1 \
         WHERE id = $2 AND graph_id IS NULL AND NOT (reason IS NOT NULL AND reason = 'creating' AND updated_at > $3)";
    let now = now_unix();
    let claimed = write_tx!(store, |conn| sqlx::query(SQL)
        .bind(now)
        .bind(id)
        .bind(now - CREATE_TIMEOUT_SECONDS)
        .execute(conn)
        .await
        .map_err(StoreError::from)?
        .rows_affected());
    Ok(claimed == 1)
}

/// Records Graph's answer to a create: its id, the connection used and the expiry.
///
/// # Errors
/// The database failed.
pub async fn record_created(
    store: &Store,
    id: &str,
    graph_id: &str,
    connection_id: &str,
    expires_at: i64,
) -> Result<(), SubscriptionError> {
    const SQL: &str = "UPDATE subscriptions SET graph_id = $1, connection_id = $2, expires_at = $3, last_renewed_at = $4, \
         status = 'active', reason = NULL, updated_at = $5 WHERE id = $6";
    let now = now_unix();
    write_tx!(store, |conn| sqlx::query(SQL)
        // Graph's ids are GUIDs it writes in either case; kept lower-cased (the webhook
        // matches them so).
        .bind(graph_id.to_ascii_lowercase())
        .bind(connection_id)
        .bind(expires_at)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(conn)
        .await
        .map_err(StoreError::from)?
        .rows_affected());
    Ok(())
}

/// Records a renewal's new expiry.
///
/// # Errors
/// The database failed.
pub async fn record_renewed(
    store: &Store,
    id: &str,
    expires_at: i64,
) -> Result<(), SubscriptionError> {
    const SQL: &str = "UPDATE subscriptions SET expires_at = $1, last_renewed_at = $2, status = 'active', reason = NULL, updated_at = $3 WHERE id = $4";
    let now = now_unix();
    write_tx!(store, |conn| sqlx::query(SQL)
        .bind(expires_at)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(conn)
        .await
        .map_err(StoreError::from)?
        .rows_affected());
    Ok(())
}

/// Records that Graph no longer has the subscription (404 on renewal, `subscriptionRemoved`):
/// reconcile creates it again.
///
/// # Errors
/// The database failed.
pub async fn record_removed(
    store: &Store,
    id: &str,
    reason: &str,
) -> Result<(), SubscriptionError> {
    const SQL: &str = "UPDATE subscriptions SET graph_id = NULL, expires_at = NULL, status = 'removed', reason = $1, updated_at = $2 WHERE id = $3";
    set_on_row(store, SQL, Some(reason), id).await?;
    Ok(())
}

/// Records that Graph missed notifications for the subscription (`missed` lifecycle event):
/// the reason stays until the resource is resynchronized.
///
/// # Errors
/// The database failed.
pub async fn record_missed(store: &Store, id: &str) -> Result<(), SubscriptionError> {
    const SQL: &str =
        "UPDATE subscriptions SET reason = 'notifications_missed', updated_at = $1 WHERE id = $2";
    touch_row(store, SQL, id).await?;
    Ok(())
}

/// Records a failed create or renewal with its reason code.
///
/// # Errors
/// The database failed.
pub async fn record_failed(store: &Store, id: &str, reason: &str) -> Result<(), SubscriptionError> {
    const SQL: &str =
        "UPDATE subscriptions SET status = 'failed', reason = $1, updated_at = $2 WHERE id = $3";
    set_on_row(store, SQL, Some(reason), id).await?;
    Ok(())
}

/// Every sealed value this module owns: clientStates and rich subscriptions' certificate keys.
///
/// # Errors
/// The database failed.
pub async fn sealed_values(store: &Store) -> Result<Vec<crate::vault::SealedValue>, StoreError> {
    let rows: Vec<(String, String, Option<String>)> = with_pool!(store, |pool| sqlx::query_as(
        "SELECT id, client_state, encryption_key FROM subscriptions"
    )
    .fetch_all(pool)
    .await?);
    let mut values = Vec::with_capacity(rows.len());
    for (id, client_state, encryption_key) in rows {
        if let Some(key) = encryption_key {
            values.push(crate::vault::SealedValue {
                table: "subscriptions",
                column: "encryption_key",
                row: id.clone(),
                sealed: key,
            });
        }
        values.push(crate::vault::SealedValue {
            table: "subscriptions",
            column: "client_state",
            row: id,
            sealed: client_state,
        });
    }
    Ok(values)
}

/// Replaces a sealed value with `resealed` if it is still what was read. Returns whether it
/// was replaced.
///
/// # Errors
/// The database failed.
pub async fn replace_sealed(
    store: &Store,
    value: &crate::vault::SealedValue,
    resealed: &str,
) -> Result<bool, StoreError> {
    let sql = match value.column {
        "encryption_key" => {
            "UPDATE subscriptions SET encryption_key = $1 WHERE id = $2 AND encryption_key = $3"
        }
        _ => "UPDATE subscriptions SET client_state = $1 WHERE id = $2 AND client_state = $3",
    };
    let replaced = write_tx!(store, |conn| sqlx::query(sql)
        .bind(resealed)
        .bind(&value.row)
        .bind(&value.sealed)
        .execute(conn)
        .await?
        .rows_affected());
    Ok(replaced == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired<'a>(resource: &'a str, types: &'a [String]) -> Desired<'a> {
        Desired {
            tenant_id: "84BD8158-6D4D-4958-8B9F-9D6445542F95",
            resource,
            change_types: types,
            origin: Origin::Config,
            include_resource_data: false,
        }
    }

    #[test]
    fn targets_are_normalized_and_bad_ones_name_the_fix() {
        let types = vec!["updated".to_string(), "created".into(), "created".into()];
        let (tenant, resource, change_types) =
            normalize(&desired("/users/abc/messages", &types)).unwrap();
        assert_eq!(tenant, "84bd8158-6d4d-4958-8b9f-9d6445542f95");
        assert_eq!(resource, "users/abc/messages");
        assert_eq!(change_types, "created,updated", "Graph's order, no repeats");
        let err = normalize(&desired(
            "https://graph.microsoft.com/v1.0/users/abc/messages",
            &types,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("without the base URL"), "{err}");
        let bad = vec!["moved".to_string()];
        let err = normalize(&desired("users/abc/messages", &bad)).unwrap_err();
        assert!(err.to_string().contains("created, updated and/or deleted"));
        assert!(normalize(&desired("users/abc/messages", &[])).is_err());
    }

    #[test]
    fn lifetimes_follow_graphs_table_and_renewal_starts_early_enough() {
        let minutes = |r: &str| max_lifetime(r, false).as_secs() / 60;
        assert_eq!(minutes("users/u/messages"), 10_075);
        assert_eq!(minutes("users/u/mailFolders('Inbox')/messages"), 10_075);
        assert_eq!(minutes("users/u/events"), 10_075);
        assert_eq!(minutes("users/u/drive/root"), 42_295);
        assert_eq!(minutes("users"), 41_755);
        assert_eq!(minutes("chats/getAllMessages"), 4_315);
        assert_eq!(minutes("teams/t/channels/c/messages"), 4_315);
        // Mail: a week; renew in its last quarter (~42 h), not just the last 2 hours.
        assert_eq!(
            max_lifetime("users/u/messages?$select=subject", true).as_secs() / 60,
            1_435,
            "Outlook with resource data: under a day"
        );
        assert_eq!(
            max_lifetime("chats/getAllMessages", true).as_secs() / 60,
            4_315
        );
        let week = max_lifetime("users/u/messages", false);
        let quarter = i64::try_from(week.as_secs() / 4).unwrap();
        assert!(!renewal_due(1_000_000 + quarter + 60, 1_000_000, week));
        assert!(renewal_due(1_000_000 + quarter - 60, 1_000_000, week));
        // Presence: an hour; 2 hours is more than its life, so its second half it is.
        let hour = max_lifetime("communications/presences/x/presence", false);
        assert!(!renewal_due(1_000_000 + 40 * 60, 1_000_000, hour));
        assert!(renewal_due(1_000_000 + 25 * 60, 1_000_000, hour));
    }

    #[test]
    fn client_states_are_random_and_within_graphs_limit() {
        let (a, b) = (new_client_state(), new_client_state());
        assert_ne!(*a, *b);
        assert_eq!(a.len(), 43, "32 bytes, base64url");
        assert!(a.len() <= 128);
    }

    #[test]
    fn a_check_never_shows_its_client_state() {
        let check = Check {
            id: "s1".into(),
            tenant_id: "t".into(),
            client_state: Zeroizing::new("very-secret-state".into()),
            rich: None,
        };
        assert!(!format!("{check:?}").contains("very-secret-state"));
    }
}
