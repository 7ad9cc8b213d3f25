//! Browser flows completed on the public listener: authorization code + PKCE sign-ins
//! (`/oauth/callback`) and admin consent results (`/oauth/consent-callback`).
//!
//! Owns `oauth_states`. Invariants: a state is random, single use and expires after 10
//! minutes; it is consumed atomically (one conditional UPDATE), so a replayed or raced callback
//! changes nothing; the PKCE verifier is sealed in the vault; the `tenant` a consent redirect
//! names is never trusted over the tenant recorded with the state; answers never echo codes,
//! tokens or secrets.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::audit::{self, Actor};
use crate::clock::now_unix;
use crate::store::{with_pool, write_tx, Store, StoreError};
use crate::vault::connections::{self, AuthMode, ConnectionError, NewDelegatedConnection, Status};
use crate::vault::identity::{token_claims, CodeRedemption, IdentityClient, TokenError};
use crate::vault::{Keyring, Slot};

/// How long a started browser flow may take.
pub const STATE_LIFETIME_SECONDS: i64 = 600;

/// A flow's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Authorization code + PKCE sign-in.
    Authorize,
    /// Admin consent.
    Consent,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Authorize => "authorize",
            Kind::Consent => "consent",
        }
    }
}

/// Why a callback was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// Unknown, expired or already used state, or a missing parameter.
    #[error("invalid or expired request")]
    InvalidState,
    /// The identity platform refused the code.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Storing the result failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

impl CallbackError {
    /// Stable reason code. A code the identity platform refuses as bad, expired or used is
    /// `invalid_grant` (the refresh-token meanings of its AADSTS codes do not apply here); the
    /// message keeps the AADSTS codes.
    pub fn reason_code(&self) -> &'static str {
        match self {
            CallbackError::InvalidState => "invalid_state",
            CallbackError::Token(token) if token.is_bad_authorization_code() => "invalid_grant",
            CallbackError::Token(token) => token.reason_code(),
            CallbackError::Connection(connection) => connection.reason_code(),
        }
    }
}

impl From<StoreError> for CallbackError {
    fn from(err: StoreError) -> Self {
        CallbackError::Connection(ConnectionError::Store(err))
    }
}

fn random_state() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn verifier_slot(state: &str) -> Slot<'_> {
    Slot {
        table: "oauth_states",
        column: "code_verifier",
        row: state,
    }
}

/// Every sealed value this module owns: the PKCE verifiers of pending browser sign-ins.
///
/// # Errors
/// The database failed.
pub async fn sealed_values(store: &Store) -> Result<Vec<crate::vault::SealedValue>, StoreError> {
    let rows: Vec<(String, String)> = crate::store::with_pool!(store, |pool| sqlx::query_as(
        "SELECT state, code_verifier FROM oauth_states WHERE code_verifier IS NOT NULL"
    )
    .fetch_all(pool)
    .await?);
    Ok(rows
        .into_iter()
        .map(|(state, sealed)| crate::vault::SealedValue {
            table: "oauth_states",
            column: "code_verifier",
            row: state,
            sealed,
        })
        .collect())
}

/// Replaces a sealed verifier with `resealed` if it is still what was read. Returns whether
/// it was replaced.
///
/// # Errors
/// The database failed.
pub async fn replace_sealed(
    store: &Store,
    value: &crate::vault::SealedValue,
    resealed: &str,
) -> Result<bool, StoreError> {
    let replaced = crate::store::write_tx!(store, |pool| sqlx::query(
        "UPDATE oauth_states SET code_verifier = $1 WHERE state = $2 AND code_verifier = $3"
    )
    .bind(resealed)
    .bind(&value.row)
    .bind(&value.sealed)
    .execute(pool)
    .await?
    .rows_affected());
    Ok(replaced == 1)
}

async fn insert(
    store: &Store,
    state: &str,
    kind: Kind,
    tenant: &str,
    client_id: &str,
    redirect_uri: &str,
    verifier: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_unix();
    const SQL: &str = "INSERT INTO oauth_states (state, kind, tenant_id, client_id, redirect_uri, code_verifier, created_at, expires_at) \
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    write_tx!(store, |pool| {
        sqlx::query(SQL)
            .bind(state)
            .bind(kind.as_str())
            .bind(tenant)
            .bind(client_id)
            .bind(redirect_uri)
            .bind(verifier)
            .bind(now)
            .bind(now + STATE_LIFETIME_SECONDS)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Records an admin consent request; returns the state to put in the consent URL.
///
/// # Errors
/// The database failed.
pub async fn start_consent(
    store: &Store,
    tenant: &str,
    client_id: &str,
    redirect_uri: &str,
) -> Result<String, StoreError> {
    let state = random_state();
    insert(
        store,
        &state,
        Kind::Consent,
        tenant,
        client_id,
        redirect_uri,
        None,
    )
    .await?;
    Ok(state)
}

/// Starts a browser sign-in: returns the authorization URL (PKCE S256, state recorded).
///
/// # Errors
/// The database failed.
pub async fn start_authorize(
    store: &Store,
    keys: &Keyring,
    identity: &IdentityClient,
    tenant: &str,
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
) -> Result<String, StoreError> {
    let state = random_state();
    let verifier = Zeroizing::new(format!("{}{}", random_state(), random_state()));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let sealed = keys.seal(verifier.as_bytes(), verifier_slot(&state));
    insert(
        store,
        &state,
        Kind::Authorize,
        tenant,
        client_id,
        redirect_uri,
        Some(&sealed),
    )
    .await?;
    Ok(identity.authorize_url(tenant, client_id, redirect_uri, scope, &state, &challenge))
}

struct Pending {
    tenant_id: String,
    client_id: String,
    redirect_uri: String,
    code_verifier: Option<String>,
}

/// Consumes a state: succeeds once, within its lifetime, for its kind.
async fn consume(store: &Store, state: &str, kind: Kind) -> Result<Pending, CallbackError> {
    let now = now_unix();
    const USE: &str = "UPDATE oauth_states SET used_at = $1 WHERE state = $2 AND kind = $3 AND used_at IS NULL AND expires_at > $4";
    let used = write_tx!(store, |pool| sqlx::query(USE)
        .bind(now)
        .bind(state)
        .bind(kind.as_str())
        .bind(now)
        .execute(pool)
        .await
        .map_err(StoreError::from)?
        .rows_affected());
    if used != 1 {
        return Err(CallbackError::InvalidState);
    }
    const READ: &str = "SELECT tenant_id, client_id, redirect_uri, code_verifier FROM oauth_states WHERE state = $1";
    let row: (String, String, String, Option<String>) =
        with_pool!(store, |pool| sqlx::query_as(READ)
            .bind(state)
            .fetch_one(pool)
            .await
            .map_err(StoreError::from)?);
    Ok(Pending {
        tenant_id: row.0,
        client_id: row.1,
        redirect_uri: row.2,
        code_verifier: row.3,
    })
}

/// Completes a browser sign-in: redeems the code with the PKCE verifier and stores a delegated
/// connection. Returns it.
///
/// # Errors
/// [`CallbackError`].
pub async fn complete_authorize(
    store: &Store,
    keys: &Keyring,
    identity: &IdentityClient,
    authority: &str,
    state: &str,
    code: &str,
    scope: &str,
) -> Result<connections::Connection, CallbackError> {
    let pending = consume(store, state, Kind::Authorize).await?;
    let sealed = pending.code_verifier.ok_or(CallbackError::InvalidState)?;
    let verifier = keys
        .open_string(&sealed, verifier_slot(state))
        .map_err(ConnectionError::from)?;
    // A confidential app redeems with its secret, taken from the tenant's app connection of the
    // same client when there is one.
    let secret = match connections::list(store, Some(&pending.tenant_id)).await {
        Ok(list) => match list
            .into_iter()
            .find(|c| c.client_id == pending.client_id && c.auth_mode == AuthMode::App)
        {
            Some(app) => Some(connections::client_secret(store, keys, &app.id).await?),
            None => None,
        },
        Err(_) => None,
    };
    let tokens = identity
        .authorization_code(CodeRedemption {
            tenant: &pending.tenant_id,
            client_id: &pending.client_id,
            secret: secret.as_ref().map(|s| s.as_str()),
            code,
            redirect_uri: &pending.redirect_uri,
            verifier: &verifier,
            scope,
        })
        .await?;
    let claims = token_claims(tokens.access_token.expose()).unwrap_or_default();
    let text = |key: &str| {
        claims
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (tid, oid, upn) = (text("tid"), text("oid"), text("upn"));
    let refresh = tokens.refresh_token.ok_or(CallbackError::InvalidState)?;
    let connection = connections::add_delegated(
        store,
        keys,
        NewDelegatedConnection {
            tenant_id: &tid,
            client_id: &pending.client_id,
            user_id: &oid,
            user_name: Some(upn.as_str()).filter(|u| !u.is_empty()),
            authority,
            refresh_token: refresh.expose(),
        },
        Actor::Callback,
    )
    .await?;
    Ok(connection)
}

/// What an admin consent redirect reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentOutcome {
    /// Granted: these connections went back to `active`.
    Granted {
        /// The tenant recorded with the state.
        tenant_id: String,
        /// Connections moved back to active.
        reactivated: usize,
    },
    /// Refused, with Microsoft's `error`.
    Refused {
        /// The tenant recorded with the state.
        tenant_id: String,
        /// The `error` parameter.
        error: String,
    },
}

/// Records an admin consent result. Microsoft sends `admin_consent=True` with errors too, so
/// `error` is checked first.
///
/// # Errors
/// [`CallbackError`].
pub async fn complete_consent(
    store: &Store,
    state: &str,
    admin_consent: Option<&str>,
    error: Option<&str>,
) -> Result<ConsentOutcome, CallbackError> {
    let pending = consume(store, state, Kind::Consent).await?;
    if let Some(error) = error {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        audit::record(
            store,
            Actor::Callback,
            "consent_refused",
            Some(&pending.tenant_id),
            None,
            Some(&error),
        )
        .await?;
        return Ok(ConsentOutcome::Refused {
            tenant_id: pending.tenant_id,
            error,
        });
    }
    if !admin_consent.is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(CallbackError::InvalidState);
    }
    audit::record(
        store,
        Actor::Callback,
        "consent_granted",
        Some(&pending.tenant_id),
        None,
        None,
    )
    .await?;
    let mut reactivated = 0;
    for connection in connections::list(store, Some(&pending.tenant_id)).await? {
        if connection.status == Status::ConsentRequired {
            connections::set_status(
                store,
                &connection,
                Status::Active,
                Some("consent_granted"),
                Actor::Callback,
            )
            .await?;
            reactivated += 1;
        }
    }
    Ok(ConsentOutcome::Granted {
        tenant_id: pending.tenant_id,
        reactivated,
    })
}
