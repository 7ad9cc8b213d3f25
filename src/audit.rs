//! The audit trail: every connection added or removed, consent change, status change and token
//! failure, with time, actor and reason code.
//!
//! Owns `audit_log`. Invariants: rows are only ever appended (removing a tenant keeps its
//! trail); no secret, token or personal data beyond ids is ever written here.

use crate::clock::now_unix;
use crate::store::{with_pool, write_tx, Store, StoreError};

/// Who did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// An operator through the command line.
    Cli,
    /// The running daemon (sweeps, token requests).
    Daemon,
    /// A browser redirect to the public listener (OAuth and consent callbacks).
    Callback,
}

impl Actor {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Cli => "cli",
            Actor::Daemon => "daemon",
            Actor::Callback => "callback",
        }
    }
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: i64,
    /// `cli`, `daemon` or `callback`.
    pub actor: String,
    /// What happened, e.g. `connection_added`, `status_changed`, `token_failed`.
    pub event: String,
    /// The tenant.
    pub tenant_id: Option<String>,
    /// The connection.
    pub connection_id: Option<String>,
    /// A stable reason code.
    pub reason: Option<String>,
}

type AuditRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Appends an entry.
///
/// # Errors
/// The database failed.
pub async fn record(
    store: &Store,
    actor: Actor,
    event: &str,
    tenant_id: Option<&str>,
    connection_id: Option<&str>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO audit_log (at, actor, event, tenant_id, connection_id, reason) \
                       VALUES ($1, $2, $3, $4, $5, $6)";
    write_tx!(store, |pool| {
        sqlx::query(SQL)
            .bind(now_unix())
            .bind(actor.as_str())
            .bind(event)
            .bind(tenant_id)
            .bind(connection_id)
            .bind(reason)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// A tenant's trail, oldest first.
///
/// # Errors
/// The database failed.
pub async fn for_tenant(store: &Store, tenant_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
    const SQL: &str = "SELECT at, actor, event, tenant_id, connection_id, reason FROM audit_log \
                       WHERE tenant_id = $1 ORDER BY id";
    let rows: Vec<AuditRow> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(tenant_id)
        .fetch_all(pool)
        .await?);
    Ok(rows
        .into_iter()
        .map(
            |(at, actor, event, tenant_id, connection_id, reason)| AuditEntry {
                at,
                actor,
                event,
                tenant_id,
                connection_id,
                reason,
            },
        )
        .collect())
}
