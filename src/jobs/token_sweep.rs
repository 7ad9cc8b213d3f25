//! `token_sweep`: renews delegated tokens that would lapse before the next sweep and updates
//! the connection gauges (see [`crate::vault::tokens::TokenService::sweep`]). Scheduled every two
//! minutes; one at a time.

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};

/// Sweep every connection's tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenSweep {}

impl Job for TokenSweep {
    const KIND: &'static str = "token_sweep";
    const MAX_ATTEMPTS: u32 = 2;

    fn dedupe_key(&self) -> Option<String> {
        Some(Self::KIND.into())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        match context.tokens.sweep().await {
            Ok(report) => {
                if report.renewed + report.failed > 0 {
                    tracing::info!(
                        renewed = report.renewed,
                        failed = report.failed,
                        "token sweep"
                    );
                }
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
