//! Wake-ups for idle claimers: jobs added by this process, and on PostgreSQL `LISTEN/NOTIFY`
//! from the `jobs_added` trigger (migration 0008).
//!
//! Owns no table. Invariant: a notification is a hint; claimers keep polling, so a lost one
//! costs latency, never work.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::StoreError;

/// Wakes an idle claimer when work may be ready: jobs added by this process, and on
/// PostgreSQL jobs added by any process or by other systems' own inserts (LISTEN/NOTIFY).
/// Notifications are hints; polling stays the fallback, so a lost one only costs latency.
pub struct WorkSignal {
    pub(super) added: Arc<Notify>,
    pub(super) notified: Arc<Notify>,
    /// Receives PostgreSQL notifications on its own connection; stopped when the signal drops.
    pub(super) listener: Option<tokio::task::JoinHandle<()>>,
}

impl WorkSignal {
    /// Waits until work may be ready or `timeout` passed.
    pub async fn wait(&self, timeout: Duration) {
        tokio::select! {
            () = self.added.notified() => {}
            () = self.notified.notified() => {}
            () = tokio::time::sleep(timeout) => {}
        }
    }

    /// Whether PostgreSQL notifications are being received.
    pub fn listens(&self) -> bool {
        self.listener.is_some()
    }
}

impl Drop for WorkSignal {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// Turns notifications into wake-ups. Runs in its own task so that a wait ending for another
/// reason never cancels a half-read notification; reconnects on the next receive after a loss.
pub(super) async fn forward_notifications(
    mut listener: sqlx::postgres::PgListener,
    notified: Arc<Notify>,
) {
    loop {
        match listener.recv().await {
            Ok(_) => notified.notify_one(),
            Err(err) => {
                tracing::debug!(error = %StoreError::from(err), "job notifications interrupted; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
