//! `prune_attribution`: forgets delegated actions older than their tenant's lookback window
//! (and the replies linked to them). One at a time (deduplicated).

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};

/// Prune the attribution lookback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneAttribution {}

impl Job for PruneAttribution {
    const KIND: &'static str = "prune_attribution";
    const MAX_ATTEMPTS: u32 = 3;

    fn dedupe_key(&self) -> Option<String> {
        Some(Self::KIND.into())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let pruned = crate::attribution::prune(&context.store, crate::clock::now_unix())
            .await
            .map_err(JobError::database)?;
        tracing::info!(
            job.kind = Self::KIND,
            pruned,
            "pruned delegated actions past their lookback"
        );
        Ok(())
    }
}
