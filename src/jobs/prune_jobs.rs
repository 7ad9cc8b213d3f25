//! `prune_jobs`: deletes finished jobs older than the retention (`queue.retention_hours`), so
//! the jobs table stays small. One at a time (deduplicated).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};

/// Delete finished jobs older than `retention_hours`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneJobs {
    /// Retention in hours.
    pub retention_hours: u64,
}

impl Job for PruneJobs {
    const KIND: &'static str = "prune_jobs";
    const ONE_AT_A_TIME: bool = true;
    const MAX_ATTEMPTS: u32 = 3;

    fn dedupe_key(&self) -> Option<String> {
        Some(Self::KIND.into())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let retention = Duration::from_secs(self.retention_hours.saturating_mul(3600));
        match context.queue.prune(retention).await {
            Ok(pruned) => {
                tracing::info!(job.kind = Self::KIND, pruned, "pruned finished jobs");
                Ok(())
            }
            Err(err) => Err(JobError::Retry {
                reason: err.reason_code(),
                message: err.to_string(),
                after: None,
            }),
        }
    }
}
