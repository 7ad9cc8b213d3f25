//! `bot_delete`: removes what provisioning a bot created, as an operation run of recorded
//! steps (seed 004, issue #20): the bot registration, the Teams app in the tenant's catalog,
//! then the app registration with its secret. Nothing else is touched: each delete names an id
//! tenantd recorded (the bot registration's id is the app registration's client id).
//!
//! Owns no tables (it writes `bots` through `crate::bots`). Invariants: a step is recorded as
//! soon as its delete succeeded or Graph says the object is gone already (404), so a resumed
//! run skips it; failures that need a human end the run with their reason.

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};
use crate::bots;
use crate::graph::GraphError;
use crate::runs;
use crate::vault::connections;

/// Delete one bot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BotDelete {
    /// The bot (`bots.id`).
    pub bot_id: String,
    /// The bot's tenant (the run's scope).
    pub tenant_id: String,
    /// The operation run this job reports to.
    #[serde(default)]
    pub run_id: Option<String>,
}

/// Gone already counts as done.
fn deleted(result: Result<(), GraphError>) -> Result<(), GraphError> {
    match result {
        Err(GraphError::NotFound { .. }) => Ok(()),
        other => other,
    }
}

impl Job for BotDelete {
    const KIND: &'static str = "bot_delete";
    const MAX_ATTEMPTS: u32 = 8;

    fn tenant(&self) -> Option<String> {
        Some(self.tenant_id.clone())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let run_id = self.run_id.clone().unwrap_or_default();
        runs::mark_running(&context.store, &run_id)
            .await
            .map_err(JobError::database)?;
        let store = &context.store;
        let bot = bots::get(store, &self.bot_id)
            .await
            .map_err(JobError::database)?;
        let outcome = async {
            let connection = connections::get(store, &bot.connection_id)
                .await
                .map_err(|err| JobError::Permanent {
                    reason: err.reason_code(),
                    message: format!("the bot's connection {} is gone", bot.connection_id),
                })?;
            let graph = &context.graph;
            if let Some(app_id) = &bot.app_id {
                // Also when the registration was never recorded: its id is ours.
                deleted(graph.delete_bot(&connection, app_id).await)?;
                bots::record_bot_unregistered(store, &bot.id)
                    .await
                    .map_err(JobError::database)?;
            }
            if let Some(teams_app_id) = &bot.teams_app_id {
                deleted(graph.delete_app_definition(&connection, teams_app_id).await)?;
                bots::record_teams_app_removed(store, &bot.id)
                    .await
                    .map_err(JobError::database)?;
            }
            if let Some(application_id) = &bot.application_id {
                deleted(graph.delete_application(&connection, application_id).await)?;
            }
            bots::record_deleted(store, &bot.id)
                .await
                .map_err(JobError::database)
        }
        .await;
        let (ok, reason, message) = match outcome {
            Ok(()) => (
                true,
                "ok",
                "the bot registration, the Teams app and the app registration are deleted"
                    .to_string(),
            ),
            Err(retry @ JobError::Retry { .. }) => return Err(retry),
            Err(JobError::Permanent { reason, message }) => (false, reason, message),
        };
        runs::finish(store, &run_id, ok, reason, &message)
            .await
            .map_err(JobError::database)
    }
}
