//! This process's row in `instances`: registered at start, refreshed while it runs, marked
//! stopped on a clean shutdown, so operators can see which tenantd processes share a database.
//!
//! Owns `instances`. Invariants: the id is random per process start and is the identity later
//! used as a lease owner; timestamps come from the database clock, never the host's.

use std::time::Duration;

use crate::store::{write_tx, Store, StoreError};

/// How often a running instance refreshes `last_seen_at`.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// This process's registration.
#[derive(Debug, Clone)]
pub struct Instance {
    id: String,
    store: Store,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

impl Instance {
    /// Inserts this process's row.
    ///
    /// # Errors
    /// [`StoreError`] when the insert fails.
    pub async fn register(store: &Store) -> Result<Self, StoreError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (host, pid, version) = (
            hostname(),
            i64::from(std::process::id()),
            env!("CARGO_PKG_VERSION"),
        );
        write_tx!(store, |conn| sqlx::query(
            "INSERT INTO instances (id, hostname, pid, version) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(&host)
        .bind(pid)
        .bind(version)
        .execute(conn)
        .await?
        .rows_affected());
        Ok(Self {
            id,
            store: store.clone(),
        })
    }

    /// The random id of this process start.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Refreshes `last_seen_at`.
    ///
    /// # Errors
    /// [`StoreError`] when the database does not answer.
    pub async fn touch(&self) -> Result<(), StoreError> {
        self.stamp(
            "UPDATE instances SET last_seen_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
            "UPDATE instances SET last_seen_at = now() WHERE id = $1",
        )
        .await
    }

    /// Records a clean stop.
    ///
    /// # Errors
    /// [`StoreError`] when the database does not answer.
    pub async fn mark_stopped(&self) -> Result<(), StoreError> {
        self.stamp(
            "UPDATE instances SET stopped_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
            "UPDATE instances SET stopped_at = now() WHERE id = $1",
        )
        .await
    }

    /// Runs a one-row update of this instance, in the store's dialect.
    async fn stamp(&self, sqlite: &'static str, postgres: &'static str) -> Result<(), StoreError> {
        write_tx!(self.store, sqlite, postgres, |conn, sql| sqlx::query(sql)
            .bind(&self.id)
            .execute(conn)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Ids of instances that have not recorded a stop, newest first.
    ///
    /// # Errors
    /// [`StoreError`] when the database does not answer.
    pub async fn running(store: &Store) -> Result<Vec<String>, StoreError> {
        const SQL: &str =
            "SELECT id FROM instances WHERE stopped_at IS NULL ORDER BY started_at DESC";
        let ids = if let Some(pool) = store.sqlite() {
            sqlx::query_scalar(SQL).fetch_all(pool).await?
        } else if let Some(pool) = store.postgres() {
            sqlx::query_scalar(SQL).fetch_all(pool).await?
        } else {
            Vec::new()
        };
        Ok(ids)
    }
}
