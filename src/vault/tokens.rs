//! Access tokens for connections: cached per connection and resource (encrypted in
//! `connection_tokens`), renewed five minutes before expiry, one request at a time per
//! connection and resource however many callers wait (single flight), and every failure
//! classified into the connection's status.
//!
//! Owns no tables (`connections` writes go through [`crate::vault::connections`]). Invariants: a
//! refresh's new refresh token is committed before the new access token is stored or returned,
//! so a crash in between leaves a usable refresh token (Microsoft does not revoke the old one
//! either); disabled connections and non-organizational identities get no token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use backon::Retryable;

use crate::audit::{self, Actor};
use crate::clock::now_unix;
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::store::Store;
use crate::vault::connections::{
    self, check_authority, AuthMode, Connection, ConnectionError, Provider, Status, REFRESH_SLOT,
};
use crate::vault::identity::{IdentityClient, TokenError, Tokens};
use crate::vault::Keyring;

/// Delegated connections a sweep renews at once.
const SWEEP_CONCURRENCY: usize = 16;
/// A token endpoint that could not be reached: two more tries within about half a second.
const TOKEN_RETRY: RetryPolicy = RetryPolicy::new(
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(2),
)
.with_max_times(2);
/// Tokens are renewed this long before they expire.
pub const RENEW_BEFORE_SECONDS: i64 = 300;
/// How often the sweep runs.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(120);
/// Consecutive transient failures (each already retried with backoff) before a connection is
/// marked `error` with reason `identity_unavailable`.
pub const TRANSIENT_LIMIT: u32 = 5;

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Delegated connections whose tokens were renewed.
    pub renewed: usize,
    /// Renewals that failed.
    pub failed: usize,
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenServiceError {
    /// The identity platform refused or was unreachable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Stored state could not be read or written.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The connection is disabled.
    #[error("the connection is disabled")]
    Disabled,
    /// A delegated connection has no refresh token.
    #[error(
        "the connection has no refresh token; fix: sign in again with `tenantd tenant connect`"
    )]
    NoRefreshToken,
}

impl TokenServiceError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            TokenServiceError::Token(err) => err.reason_code(),
            TokenServiceError::Connection(err) => err.reason_code(),
            TokenServiceError::Disabled => "connection_disabled",
            TokenServiceError::NoRefreshToken => "refresh_token_missing",
        }
    }
}

type Flight = Arc<tokio::sync::Mutex<()>>;

/// Hands out access tokens.
pub struct TokenService {
    store: Store,
    keys: Arc<Keyring>,
    identity: IdentityClient,
    flights: Mutex<HashMap<(String, String), Flight>>,
    transient: Mutex<HashMap<String, u32>>,
}

impl TokenService {
    /// A service over `store` with `keys`, asking `identity`.
    pub fn new(store: Store, keys: Arc<Keyring>, identity: IdentityClient) -> Self {
        Self {
            store,
            keys,
            identity,
            flights: Mutex::new(HashMap::new()),
            transient: Mutex::new(HashMap::new()),
        }
    }

    /// The audience of Graph tokens (the configured cloud's Graph).
    pub fn graph_resource(&self) -> &str {
        self.identity.graph_resource()
    }

    fn flight(&self, connection_id: &str, resource: &str) -> Flight {
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((connection_id.to_string(), resource.to_string()))
            .or_default()
            .clone()
    }

    /// An access token for `resource` (a resource URI such as `https://graph.microsoft.com`).
    ///
    /// # Errors
    /// [`TokenServiceError`]; the connection's status is updated for failures that need a
    /// human, and left alone for transient ones.
    pub async fn access_token(
        &self,
        connection: &Connection,
        resource: &str,
    ) -> Result<Secret<String>, TokenServiceError> {
        if connection.status == Status::Disabled {
            return Err(TokenServiceError::Disabled);
        }
        check_authority(&connection.authority).map_err(TokenServiceError::Connection)?;
        let flight = self.flight(&connection.id, resource);
        let _turn = flight.lock().await;
        if let Some((token, expires_at)) =
            connections::load_token(&self.store, &self.keys, &connection.id, resource).await?
        {
            if expires_at.is_some_and(|at| at - RENEW_BEFORE_SECONDS > now_unix()) {
                return Ok(Secret::new(token.to_string()));
            }
        }
        // Network errors and 5xx are retried with backoff here; past that the caller (or the
        // next sweep) tries again.
        let fetched = (|| self.fetch(connection, resource))
            .retry(TOKEN_RETRY)
            .when(|err: &TokenServiceError| matches!(err, TokenServiceError::Token(e) if e.status().is_none()))
            .await;
        metrics::counter!(
            crate::metrics::names::TOKEN_REQUESTS,
            "grant" => match connection.auth_mode { AuthMode::App => "client_credentials", AuthMode::Delegated => "refresh_token" },
            "result" => if fetched.is_ok() { "ok" } else { "failed" }
        )
        .increment(1);
        match fetched {
            Ok(tokens) => {
                self.transient
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&connection.id);
                if let Some(refresh) = &tokens.refresh_token {
                    // Committed before the access token is used: a crash after this line
                    // loses nothing.
                    connections::store_token(
                        &self.store,
                        &self.keys,
                        &connection.id,
                        REFRESH_SLOT,
                        refresh.expose(),
                        None,
                    )
                    .await?;
                }
                let lifetime = i64::try_from(tokens.expires_in).unwrap_or(i64::MAX);
                connections::store_token(
                    &self.store,
                    &self.keys,
                    &connection.id,
                    resource,
                    tokens.access_token.expose(),
                    Some(now_unix().saturating_add(lifetime)),
                )
                .await?;
                connections::set_status(
                    &self.store,
                    connection,
                    Status::Active,
                    None,
                    Actor::Daemon,
                )
                .await?;
                Ok(tokens.access_token)
            }
            Err(err) => {
                let reason = err.reason_code();
                metrics::counter!(crate::metrics::names::TOKEN_FAILURES, "reason" => reason)
                    .increment(1);
                if let TokenServiceError::Token(token_error) = &err {
                    // Failures that need a human move the status now; transient ones only
                    // after TRANSIENT_LIMIT in a row.
                    let status = token_error.status().or_else(|| {
                        (self.count_transient(&connection.id) >= TRANSIENT_LIMIT)
                            .then_some(Status::Error)
                    });
                    if let Some(status) = status {
                        connections::set_status(
                            &self.store,
                            connection,
                            status,
                            Some(reason),
                            Actor::Daemon,
                        )
                        .await?;
                    }
                }
                audit::record(
                    &self.store,
                    Actor::Daemon,
                    "token_failed",
                    Some(&connection.tenant_id),
                    Some(&connection.id),
                    Some(reason),
                )
                .await
                .map_err(ConnectionError::from)?;
                tracing::warn!(tenant.id = %connection.tenant_id, connection.id = %connection.id, reason, "token request failed");
                Err(err)
            }
        }
    }

    fn count_transient(&self, connection_id: &str) -> u32 {
        let mut counts = self.transient.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(connection_id.to_string()).or_default();
        *count += 1;
        *count
    }

    /// Renews the tokens of active delegated connections that expire before the next sweep (so
    /// refresh tokens stay alive and revocations surface early), and updates the connection
    /// gauges. App-only tokens are acquired on demand.
    ///
    /// # Errors
    /// The database failed.
    pub async fn sweep(&self) -> Result<SweepReport, ConnectionError> {
        use futures_util::StreamExt;
        let list = connections::list(&self.store, None).await?;
        let now = now_unix();
        let horizon =
            now + RENEW_BEFORE_SECONDS + i64::try_from(SWEEP_INTERVAL.as_secs()).unwrap_or(0);
        let mut report = SweepReport::default();
        // Several at once: each waits mostly on the identity platform, and thousands one by
        // one would outlast the sweep interval. `for_each_concurrent` polls them all together.
        let outcomes = std::sync::Mutex::new(Vec::new());
        futures_util::stream::iter(list.iter().filter(|c| {
            c.auth_mode == AuthMode::Delegated
                && c.status == Status::Active
                && c.token_expires_at.is_none_or(|at| at <= horizon)
        }))
        .for_each_concurrent(SWEEP_CONCURRENCY, |connection| async {
            let renewed = self
                .access_token(connection, self.identity.graph_resource())
                .await
                .is_ok();
            outcomes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(renewed);
        })
        .await;
        for renewed in outcomes
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            if renewed {
                report.renewed += 1;
            } else {
                report.failed += 1;
            }
        }
        let list = connections::list(&self.store, None).await?;
        for status in [
            Status::Active,
            Status::ConsentRequired,
            Status::InteractionRequired,
            Status::NeedsReconsent,
            Status::Error,
            Status::Disabled,
        ] {
            #[allow(clippy::cast_precision_loss)]
            let count = list.iter().filter(|c| c.status == status).count() as f64;
            metrics::gauge!(crate::metrics::names::CONNECTIONS, "status" => status.as_str())
                .set(count);
        }
        if let Some(soonest) = list
            .iter()
            .filter(|c| c.status == Status::Active)
            .filter_map(|c| c.token_expires_at)
            .min()
        {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(crate::metrics::names::TOKEN_EXPIRY).set((soonest - now_unix()) as f64);
        }
        Ok(report)
    }

    /// New tokens for `connection` from its provider's identity platform. The one place a
    /// second provider would add an arm (and a token client beside `vault/identity.rs`).
    async fn fetch(
        &self,
        connection: &Connection,
        resource: &str,
    ) -> Result<Tokens, TokenServiceError> {
        match connection.provider {
            Provider::Microsoft => self.fetch_from_microsoft(connection, resource).await,
        }
    }

    /// Client credentials (app-only) or a refresh token (delegated) at the Microsoft identity
    /// platform.
    async fn fetch_from_microsoft(
        &self,
        connection: &Connection,
        resource: &str,
    ) -> Result<Tokens, TokenServiceError> {
        match connection.auth_mode {
            AuthMode::App => {
                let secret =
                    connections::client_secret(&self.store, &self.keys, &connection.id).await?;
                Ok(self
                    .identity
                    .client_credentials(
                        &connection.tenant_id,
                        &connection.client_id,
                        &secret,
                        resource,
                    )
                    .await?)
            }
            AuthMode::Delegated => {
                let (refresh, _) =
                    connections::load_token(&self.store, &self.keys, &connection.id, REFRESH_SLOT)
                        .await?
                        .ok_or(TokenServiceError::NoRefreshToken)?;
                let secret = connections::client_secret(&self.store, &self.keys, &connection.id)
                    .await
                    .ok();
                let scope = format!("{resource}/.default offline_access");
                Ok(self
                    .identity
                    .refresh(
                        &connection.tenant_id,
                        &connection.client_id,
                        secret.as_ref().map(|s| s.as_str()),
                        &refresh,
                        &scope,
                    )
                    .await?)
            }
        }
    }
}
