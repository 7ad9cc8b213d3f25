//! `noop`: does nothing and succeeds. Proves the queue end to end (`tenantd queue` tooling,
//! benchmarks) without touching Microsoft Graph.

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};

/// A job that does nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Noop {
    /// An optional tenant lane.
    #[serde(default)]
    pub tenant: Option<String>,
}

impl Job for Noop {
    const KIND: &'static str = "noop";

    fn tenant(&self) -> Option<String> {
        self.tenant.clone()
    }

    async fn run(self, _context: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}
