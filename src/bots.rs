//! Teams bots provisioned through a delegated connection (seed 004, issue #20): each bot's
//! settings and what each provisioning step created, recorded as it lands.
//!
//! Owns `bots`. Invariants: one live bot per connection and name (a second `provision` with the
//! same name resumes the first); a step's result is written before the next step starts, so a
//! resumed run skips what exists; the client secret is stored only sealed by the vault (slot
//! `bots.secret_sealed`, row = bot id) and erased when it is shown, once.

use serde::Serialize;

use crate::clock::now_unix;
use crate::secret::Secret;
use crate::store::{with_pool, write_tx, Store, StoreError};
use crate::vault::{Keyring, SealedValue, Slot, VaultError};

/// One bot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bot {
    /// tenantd's id; the app registration's `uniqueName` is `tenantd-bot-{id}`.
    pub id: String,
    /// The tenant the bot is registered in.
    pub tenant_id: String,
    /// The delegated connection acting for the signed-in user.
    pub connection_id: String,
    /// Display name (the Teams app's `name.short`).
    pub name: String,
    /// The bot's messaging endpoint (https, ending in `/api/messages`).
    pub endpoint: String,
    /// Short description.
    pub description: String,
    /// Registered for its own tenant only.
    pub single_tenant: bool,
    /// `provisioning`, `ready`, `failed` or `deleted`.
    pub state: String,
    /// The last step completed.
    pub step: Option<String>,
    /// Why it failed (reason code).
    pub reason: Option<String>,
    /// Sanitized message of the failure.
    pub message: Option<String>,
    /// The user the connection signs in as (for the install link's `login_hint`).
    pub user_name: Option<String>,
    /// The app registration's object id.
    pub application_id: Option<String>,
    /// The app registration's client id: the bot id (`BOT_ID`).
    pub app_id: Option<String>,
    /// The client secret's `keyId`.
    pub secret_key_id: Option<String>,
    /// Whether the secret is still held (sealed) for its one showing.
    pub secret_held: bool,
    /// The client secret's display name.
    pub secret_name: String,
    /// The client secret's lifetime in days.
    pub secret_days: i64,
    /// The Teams app's id in the tenant's catalog (`TEAMS_APP_ID`).
    pub teams_app_id: Option<String>,
    /// Whether the bot registration exists.
    pub bot_registered: bool,
    /// Created (Unix seconds).
    pub created_at: i64,
    /// Last changed (Unix seconds).
    pub updated_at: i64,
}

impl Bot {
    /// The app registration's unique name (upsert key): the same on every resumed run.
    pub fn unique_name(&self) -> String {
        format!("tenantd-bot-{}", self.id)
    }

    /// Teams' install link for the app (seed 004).
    pub fn install_link(&self) -> Option<String> {
        let teams_app_id = self.teams_app_id.as_deref()?;
        let hint = self
            .user_name
            .as_deref()
            .map(|upn| {
                format!(
                    "&login_hint={}",
                    url::form_urlencoded::byte_serialize(upn.as_bytes()).collect::<String>()
                )
            })
            .unwrap_or_default();
        Some(format!(
            "https://teams.microsoft.com/l/app/{teams_app_id}?installAppPackage=true&webjoin=true&appTenantId={}{hint}",
            self.tenant_id
        ))
    }
}

/// What a new bot is asked to be.
#[derive(Debug, Clone)]
pub struct NewBot<'a> {
    /// The tenant.
    pub tenant_id: &'a str,
    /// The delegated connection.
    pub connection_id: &'a str,
    /// The connection's user.
    pub user_name: Option<&'a str>,
    /// Display name.
    pub name: &'a str,
    /// Messaging endpoint.
    pub endpoint: &'a str,
    /// Short description.
    pub description: &'a str,
    /// Single-tenant registration.
    pub single_tenant: bool,
    /// The operator's own Teams app package (zip); `None`: generated.
    pub package: Option<&'a [u8]>,
    /// The client secret's display name (credentials of this name an interrupted attempt
    /// left unrecorded are removed before a new one is added).
    pub secret_name: &'a str,
    /// The client secret's lifetime in days.
    pub secret_days: u32,
}

/// Why a bot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sealed secret could not be opened.
    #[error("the bot's client secret cannot be opened: {0}")]
    Vault(#[from] VaultError),
    /// No such bot.
    #[error("no bot {0}")]
    NotFound(String),
}

impl BotError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            BotError::Store(err) => err.reason_code(),
            BotError::Vault(_) => "vault_decrypt_failed",
            BotError::NotFound(_) => "bot_not_found",
        }
    }
}

const SECRET_SLOT_TABLE: &str = "bots";
const SECRET_SLOT_COLUMN: &str = "secret_sealed";

fn secret_slot(id: &str) -> Slot<'_> {
    Slot {
        table: SECRET_SLOT_TABLE,
        column: SECRET_SLOT_COLUMN,
        row: id,
    }
}

macro_rules! select_bots {
    ($tail:literal) => {
        concat!(
            "SELECT id, tenant_id, connection_id, name, endpoint, description, single_tenant, state, step, ",
            "reason, message, user_name, application_id, app_id, secret_key_id, ",
            "CAST(CASE WHEN secret_sealed IS NULL THEN 0 ELSE 1 END AS BIGINT), ",
            "teams_app_id, bot_registered, created_at, updated_at, secret_name, secret_days FROM bots ",
            $tail
        )
    };
}

/// A `bots` row as [`select_bots`] reads it (more columns than sqlx's tuples take).
struct Row(Bot);

macro_rules! row_from {
    ($row:ty) => {
        impl<'r> sqlx::FromRow<'r, $row> for Row {
            fn from_row(row: &'r $row) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok(Row(Bot {
                    id: row.try_get(0)?,
                    tenant_id: row.try_get(1)?,
                    connection_id: row.try_get(2)?,
                    name: row.try_get(3)?,
                    endpoint: row.try_get(4)?,
                    description: row.try_get(5)?,
                    single_tenant: row.try_get::<i64, _>(6)? != 0,
                    state: row.try_get(7)?,
                    step: row.try_get(8)?,
                    reason: row.try_get(9)?,
                    message: row.try_get(10)?,
                    user_name: row.try_get(11)?,
                    application_id: row.try_get(12)?,
                    app_id: row.try_get(13)?,
                    secret_key_id: row.try_get(14)?,
                    secret_held: row.try_get::<i64, _>(15)? != 0,
                    teams_app_id: row.try_get(16)?,
                    bot_registered: row.try_get::<i64, _>(17)? != 0,
                    created_at: row.try_get(18)?,
                    updated_at: row.try_get(19)?,
                    secret_name: row.try_get(20)?,
                    secret_days: row.try_get(21)?,
                }))
            }
        }
    };
}
row_from!(sqlx::sqlite::SqliteRow);
row_from!(sqlx::postgres::PgRow);

fn from_row(row: Row) -> Bot {
    row.0
}

impl From<sqlx::Error> for BotError {
    fn from(err: sqlx::Error) -> Self {
        BotError::Store(StoreError::from(err))
    }
}

/// A new bot, or the live one of the same connection and name (a resumed provisioning: its
/// settings are updated to `new` and it is provisioning again).
///
/// # Errors
/// The database failed.
pub async fn create_or_resume(store: &Store, new: &NewBot<'_>) -> Result<Bot, BotError> {
    let now = now_unix();
    let id = uuid::Uuid::new_v4().simple().to_string();
    const INSERT: &str = "INSERT INTO bots (id, tenant_id, connection_id, name, endpoint, description, single_tenant, user_name, package, secret_name, secret_days, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
         ON CONFLICT (connection_id, name) WHERE state <> 'deleted' DO UPDATE SET \
         endpoint = excluded.endpoint, description = excluded.description, single_tenant = excluded.single_tenant, \
         package = excluded.package, secret_name = excluded.secret_name, secret_days = excluded.secret_days, \
         state = CASE WHEN bots.state = 'ready' THEN 'ready' ELSE 'provisioning' END, \
         reason = NULL, message = NULL, updated_at = excluded.updated_at";
    write_tx!(store, |pool| sqlx::query(INSERT)
        .bind(&id)
        .bind(new.tenant_id)
        .bind(new.connection_id)
        .bind(new.name)
        .bind(new.endpoint)
        .bind(new.description)
        .bind(i64::from(new.single_tenant))
        .bind(new.user_name)
        .bind(new.package)
        .bind(new.secret_name)
        .bind(i64::from(new.secret_days))
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
    const LIVE: &str =
        select_bots!("WHERE connection_id = $1 AND name = $2 AND state <> 'deleted'");
    let row: Option<Row> = with_pool!(store, |pool| sqlx::query_as(LIVE)
        .bind(new.connection_id)
        .bind(new.name)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?);
    row.map(from_row)
        .ok_or_else(|| BotError::NotFound(new.name.to_string()))
}

/// One bot.
///
/// # Errors
/// The database failed, or there is no such bot.
pub async fn get(store: &Store, id: &str) -> Result<Bot, BotError> {
    const SQL: &str = select_bots!("WHERE id = $1");
    let row: Option<Row> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?);
    row.map(from_row)
        .ok_or_else(|| BotError::NotFound(id.to_string()))
}

/// The operator's own Teams app package of a bot, if it was given one.
///
/// # Errors
/// The database failed.
pub async fn package(store: &Store, id: &str) -> Result<Option<Vec<u8>>, BotError> {
    let row: Option<(Option<Vec<u8>>,)> = with_pool!(store, |pool| sqlx::query_as(
        "SELECT package FROM bots WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?);
    Ok(row.and_then(|(package,)| package))
}

/// Every bot not deleted, newest first.
///
/// # Errors
/// The database failed.
pub async fn list(store: &Store) -> Result<Vec<Bot>, BotError> {
    const SQL: &str = select_bots!("WHERE state <> 'deleted' ORDER BY created_at DESC, id");
    let rows: Vec<Row> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?);
    Ok(rows.into_iter().map(from_row).collect())
}

/// Runs one `UPDATE bots` with its binds, then `updated_at` and the id as the last two.
macro_rules! update {
    ($store:expr, $id:expr, $sql:literal $(, $bind:expr)*) => {{
        write_tx!($store, |pool| {
            sqlx::query($sql)
                $(.bind($bind))*
                .bind(now_unix())
                .bind($id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }};
}

/// The app registration exists: its object id and client id (step `app_registered`).
///
/// # Errors
/// The database failed.
pub async fn record_application(
    store: &Store,
    id: &str,
    application_id: &str,
    app_id: &str,
) -> Result<(), BotError> {
    update!(
        store,
        id,
        "UPDATE bots SET application_id = $1, app_id = $2, step = 'app_registered', updated_at = $3 WHERE id = $4",
        application_id,
        app_id
    )
}

/// The client secret exists: its key id and the secret, sealed (step `secret_added`).
///
/// # Errors
/// The database failed.
pub async fn record_secret(
    store: &Store,
    keys: &Keyring,
    id: &str,
    key_id: &str,
    secret: &Secret<String>,
) -> Result<(), BotError> {
    let sealed = keys.seal(secret.expose().as_bytes(), secret_slot(id));
    update!(
        store,
        id,
        "UPDATE bots SET secret_key_id = $1, secret_sealed = $2, step = 'secret_added', updated_at = $3 WHERE id = $4",
        key_id,
        &sealed
    )
}

/// The Teams app is in the tenant's catalog (step `package_imported`).
///
/// # Errors
/// The database failed.
pub async fn record_teams_app(store: &Store, id: &str, teams_app_id: &str) -> Result<(), BotError> {
    update!(
        store,
        id,
        "UPDATE bots SET teams_app_id = $1, step = 'package_imported', updated_at = $2 WHERE id = $3",
        teams_app_id
    )
}

/// The bot registration exists (step `bot_registered`); the bot is ready.
///
/// # Errors
/// The database failed.
pub async fn record_ready(store: &Store, id: &str) -> Result<(), BotError> {
    update!(
        store,
        id,
        "UPDATE bots SET bot_registered = 1, step = 'bot_registered', state = 'ready', reason = NULL, message = NULL, updated_at = $1 WHERE id = $2"
    )
}

/// The bot registration is deleted (step `bot_unregistered`).
///
/// # Errors
/// The database failed.
pub async fn record_bot_unregistered(store: &Store, id: &str) -> Result<(), BotError> {
    update!(
        store,
        id,
        "UPDATE bots SET bot_registered = 0, step = 'bot_unregistered', updated_at = $1 WHERE id = $2"
    )
}

/// The Teams app is deleted from the catalog (step `package_removed`).
///
/// # Errors
/// The database failed.
pub async fn record_teams_app_removed(store: &Store, id: &str) -> Result<(), BotError> {
    update!(
        store,
        id,
        "UPDATE bots SET teams_app_id = NULL, step = 'package_removed', updated_at = $1 WHERE id = $2"
    )
}

/// The app registration (with its secret) is deleted: the bot is gone (`deleted`).
///
/// # Errors
/// The database failed.
pub async fn record_deleted(store: &Store, id: &str) -> Result<(), BotError> {
    update!(
        store,
        id,
        "UPDATE bots SET application_id = NULL, secret_key_id = NULL, secret_sealed = NULL, step = 'deleted', state = 'deleted', reason = NULL, message = NULL, updated_at = $1 WHERE id = $2"
    )
}

/// Provisioning stopped at a step for `reason`; a later `provision` resumes it.
///
/// # Errors
/// The database failed.
pub async fn record_failed(
    store: &Store,
    id: &str,
    reason: &str,
    message: &str,
) -> Result<(), BotError> {
    update!(
        store,
        id,
        "UPDATE bots SET state = 'failed', reason = $1, message = $2, updated_at = $3 WHERE id = $4",
        reason,
        message
    )
}

/// The client secret, opened and erased: it is shown once. `None` when it was taken already.
///
/// # Errors
/// The database failed, or the sealed value does not open with these keys.
pub async fn take_secret(
    store: &Store,
    keys: &Keyring,
    id: &str,
) -> Result<Option<Secret<String>>, BotError> {
    let sealed: Option<(Option<String>,)> = with_pool!(store, |pool| sqlx::query_as(
        "SELECT secret_sealed FROM bots WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?);
    let Some(sealed) = sealed.and_then(|(sealed,)| sealed) else {
        return Ok(None);
    };
    let secret = keys.open_string(&sealed, secret_slot(id))?;
    let taken = write_tx!(store, |pool| {
        sqlx::query(
        "UPDATE bots SET secret_sealed = NULL, updated_at = $1 WHERE id = $2 AND secret_sealed = $3"
    )
    .bind(now_unix())
    .bind(id)
    .bind(&sealed)
    .execute(pool)
    .await?
    .rows_affected()
    });
    // Another reader took it in between: it was shown there.
    Ok((taken == 1).then(|| Secret::new(secret.to_string())))
}

/// Every sealed value of the table (key checks and rotation).
///
/// # Errors
/// The database failed.
pub async fn sealed_values(store: &Store) -> Result<Vec<SealedValue>, StoreError> {
    let rows: Vec<(String, String)> = with_pool!(store, |pool| sqlx::query_as(
        "SELECT id, secret_sealed FROM bots WHERE secret_sealed IS NOT NULL"
    )
    .fetch_all(pool)
    .await?);
    Ok(rows
        .into_iter()
        .map(|(row, sealed)| SealedValue {
            table: SECRET_SLOT_TABLE,
            column: SECRET_SLOT_COLUMN,
            row,
            sealed,
        })
        .collect())
}

/// Replaces a sealed secret with `resealed` if it is still what was read.
///
/// # Errors
/// The database failed.
pub async fn replace_sealed(
    store: &Store,
    value: &SealedValue,
    resealed: &str,
) -> Result<bool, StoreError> {
    let replaced = write_tx!(store, |pool| sqlx::query(
        "UPDATE bots SET secret_sealed = $1 WHERE id = $2 AND secret_sealed = $3"
    )
    .bind(resealed)
    .bind(&value.row)
    .bind(&value.sealed)
    .execute(pool)
    .await?
    .rows_affected());
    Ok(replaced == 1)
}
