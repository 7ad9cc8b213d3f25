//! `graph_lifecycle`: one accepted lifecycle notification. `reauthorizationRequired` →
//! reauthorize the subscription at Graph; `subscriptionRemoved` → mark it removed (reconcile
//! creates it again) and queue a resync of its resource; `missed` → recorded on the
//! subscription (`notifications_missed`, cleared by the resync) and a resync queued; unknown
//! events are logged and ignored, as Microsoft asks.

use serde::{Deserialize, Serialize};

use super::resync_subscription::enqueue_resync;
use super::subscription_steps::{lost_at_graph, still_there};
use super::{Job, JobContext, JobError};
use crate::graph::GraphError;
use crate::subscriptions;

/// A lifecycle event to handle (the webhook listener's payload).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphLifecycle {
    /// tenantd's subscription id.
    pub subscription_id: String,
    /// The subscription's tenant.
    pub tenant_id: String,
    /// `reauthorizationRequired`, `subscriptionRemoved`, `missed`, or a future one.
    pub event: String,
}

impl Job for GraphLifecycle {
    const KIND: &'static str = "graph_lifecycle";
    const MAX_ATTEMPTS: u32 = 8;

    fn tenant(&self) -> Option<String> {
        Some(self.tenant_id.clone())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let Some(subscription) = still_there(&context, &self.subscription_id).await? else {
            return Ok(());
        };
        match self.event.as_str() {
            "reauthorizationRequired" => {
                let Some(graph_id) = subscription.graph_id.as_deref() else {
                    return Ok(());
                };
                let connection = super::job_connection(&context.store, &subscription).await?;
                match context
                    .graph
                    .reauthorize_subscription(&connection, graph_id)
                    .await
                {
                    Ok(()) => Ok(()),
                    // Gone at Graph: create it again.
                    Err(GraphError::NotFound { .. }) => {
                        lost_at_graph(&context, &subscription).await?;
                        enqueue_resync(&context, &subscription).await
                    }
                    Err(err) => Err(JobError::from(err)),
                }
            }
            "subscriptionRemoved" => {
                // Reconcile creates it again; what changed meanwhile comes from a resync.
                subscriptions::record_removed(
                    &context.store,
                    &subscription.id,
                    "subscription_removed",
                )
                .await
                .map_err(JobError::database)?;
                enqueue_resync(&context, &subscription).await
            }
            "missed" => {
                subscriptions::record_missed(&context.store, &subscription.id)
                    .await
                    .map_err(JobError::database)?;
                enqueue_resync(&context, &subscription).await
            }
            other => {
                tracing::warn!(event = other, subscription = %subscription.id, "unknown lifecycle event ignored");
                Ok(())
            }
        }
    }
}
