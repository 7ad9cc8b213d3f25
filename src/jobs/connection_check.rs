//! `connection_check`: the operator's connection health check, run as an operation run:
//! acquires a Microsoft Graph token for each of the tenant's connections and records the
//! outcome on the run. A failed check is an outcome (consent missing, sign-in needed), not a
//! job to retry.

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};
use crate::runs;
use crate::vault::connections;

/// Check a tenant's connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionCheck {
    /// Entra tenant ID.
    pub tenant_id: String,
    /// The operation run this job reports to.
    #[serde(default)]
    pub run_id: Option<String>,
}

impl Job for ConnectionCheck {
    const KIND: &'static str = "connection_check";
    const MAX_ATTEMPTS: u32 = 3;

    fn tenant(&self) -> Option<String> {
        Some(self.tenant_id.clone())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let run_id = self.run_id.clone().unwrap_or_default();
        runs::mark_running(&context.store, &run_id)
            .await
            .map_err(JobError::database)?;
        let list = connections::list(&context.store, Some(&self.tenant_id))
            .await
            .map_err(JobError::database)?;
        let mut failures: Vec<(String, &'static str)> = Vec::new();
        for connection in &list {
            if let Err(err) = context
                .tokens
                .access_token(connection, context.tokens.graph_resource())
                .await
            {
                failures.push((connection.id.clone(), err.reason_code()));
            }
        }
        let (ok, reason, message) = match failures.first() {
            _ if list.is_empty() => (
                false,
                "no_connections",
                "the tenant has no connections".to_string(),
            ),
            None => (
                true,
                "ok",
                format!("{} connection(s) got a Graph token", list.len()),
            ),
            Some((_, reason)) => {
                let detail: Vec<String> = failures
                    .iter()
                    .map(|(id, reason)| format!("{id}: {reason}"))
                    .collect();
                (false, *reason, detail.join("; "))
            }
        };
        runs::finish(&context.store, &run_id, ok, reason, &message)
            .await
            .map_err(JobError::database)?;
        Ok(())
    }
}
