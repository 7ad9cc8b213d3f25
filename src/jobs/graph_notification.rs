//! `graph_notification`: one accepted change notification. Its resource path is read by the
//! one resource grammar ([`GraphResource`]) in whatever documented form Graph wrote it. Mail is
//! fetched through the Graph client with the connection that created the subscription and
//! stored idempotently into `messages` (a `deleted` change marks the row; a rich notification
//! carries the message already, decrypted by the listener, and is stored without a fetch).
//! Events, users and drive roots are fetched to confirm the change (a failing fetch is
//! retried or dead-lettered like any Graph call) and counted `fetched` or `gone`, not stored:
//! no feature reads them yet. Every other recognised type is counted `ignored` by type. A
//! resource the grammar does not recognise is never a success: it is counted
//! `unrecognized_resource` and the job fails with the raw resource in its message, so it sits
//! in the dead letters where `tenantd queue list --state failed` shows it.
//!
//! Owns no tables. Invariant: every job ends in exactly one counted outcome of
//! `tenantd_notifications_processed_total` (or a retry).

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};
use crate::graph::resources::GraphResource;
use crate::graph::GraphError;
use crate::mailbox::{self, StoredMessage};
use crate::metrics::names;
use crate::subscriptions;
use crate::vault::connections::Connection;

/// A notification to process (the webhook listener's payload).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphNotification {
    /// tenantd's subscription id.
    pub subscription_id: String,
    /// The subscription's tenant.
    pub tenant_id: String,
    /// `created`, `updated` or `deleted` (lower-cased by the listener; compared without case
    /// here too, for jobs queued before it did).
    pub change_type: String,
    /// Graph's resource path, e.g. `users/{user}@{tenant}/messages/{id}`.
    pub resource: String,
    /// `resourceData.id`.
    #[serde(default)]
    pub resource_id: Option<String>,
    /// `resourceData.@odata.type`.
    #[serde(default)]
    pub odata_type: Option<String>,
    /// `resourceData.@odata.etag`.
    #[serde(default)]
    pub etag: Option<String>,
    /// The resource itself, from a rich notification's decrypted `encryptedContent` (no
    /// fetch needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<serde_json::Value>,
}

/// Longest raw resource quoted in a dead letter's message.
const QUOTED_RESOURCE_MAX: usize = 512;

/// Counts a processed notification by resource type and outcome.
fn count(kind: &'static str, outcome: &'static str) {
    metrics::counter!(names::NOTIFICATIONS_PROCESSED, "type" => kind, "outcome" => outcome)
        .increment(1);
}

impl GraphNotification {
    fn deleted(&self) -> bool {
        self.change_type.eq_ignore_ascii_case("deleted")
    }
}

impl Job for GraphNotification {
    const KIND: &'static str = "graph_notification";
    const MAX_ATTEMPTS: u32 = 8;

    fn tenant(&self) -> Option<String> {
        Some(self.tenant_id.clone())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let subscription = match subscriptions::get(&context.store, &self.subscription_id).await {
            Ok(subscription) => subscription,
            Err(subscriptions::SubscriptionError::NotFound(_)) => {
                return Err(JobError::Permanent {
                    reason: "subscription_not_found",
                    message: "the subscription was deleted before its notification ran".into(),
                })
            }
            Err(err) => return Err(JobError::database(err)),
        };
        let Some(resource) = GraphResource::parse(&self.resource) else {
            count("unknown", "unrecognized_resource");
            let quoted: String = self.resource.chars().take(QUOTED_RESOURCE_MAX).collect();
            return Err(JobError::Permanent {
                reason: "unrecognized_resource",
                message: format!(
                    "tenantd does not recognise the notified resource {quoted:?} (subscription {}); nothing was fetched or stored",
                    self.subscription_id
                ),
            });
        };
        let (user, message_id) = match resource {
            GraphResource::Message { user, id } => (user, id),
            GraphResource::Event { .. }
            | GraphResource::User { .. }
            | GraphResource::DriveRoot(_) => {
                let connection = super::job_connection(&context.store, &subscription).await?;
                return fetch_only(&context, &connection, &self, &resource).await;
            }
            other => {
                count(other.kind(), "ignored");
                return Ok(());
            }
        };
        if self.deleted() {
            mailbox::mark_deleted(
                &context.store,
                &self.tenant_id,
                &message_id,
                &user,
                &subscription.id,
            )
            .await
            .map_err(JobError::database)?;
            count("message", "deleted");
            return Ok(());
        }
        let connection = super::job_connection(&context.store, &subscription).await?;
        let message = match self.content {
            // A rich notification carried the message.
            Some(content) => content,
            None => match context
                .graph
                .get_message(&connection, &user, &message_id, mailbox::SELECT)
                .await
            {
                Ok(message) => message,
                // Deleted since the notification: the later `deleted` notification marks it.
                Err(GraphError::NotFound { .. }) => {
                    count("message", "gone");
                    return Ok(());
                }
                Err(err) => return Err(JobError::from(err)),
            },
        };
        let stored =
            StoredMessage::from_graph(&message, &user, &subscription.id).ok_or_else(|| {
                JobError::Permanent {
                    reason: "graph_answer_invalid",
                    message: "Graph's message has no id".into(),
                }
            })?;
        super::store_message(&context.store, &self.tenant_id, &stored).await?;
        count("message", "stored");
        Ok(())
    }
}

/// Confirms a change to an event, user or drive root against Graph (see the module's note).
async fn fetch_only(
    context: &JobContext,
    connection: &Connection,
    notification: &GraphNotification,
    resource: &GraphResource,
) -> Result<(), JobError> {
    let kind = resource.kind();
    if notification.deleted() {
        count(kind, "gone");
        return Ok(());
    }
    let fetched = match resource {
        GraphResource::Event { user, id } => context.graph.get_event(connection, user, id).await,
        GraphResource::User { id } => context.graph.get_user(connection, id).await,
        GraphResource::DriveRoot(owner) => context.graph.get_drive_root(connection, owner).await,
        _ => unreachable!("only events, users and drive roots are fetched to confirm"),
    };
    match fetched {
        Ok(_) => count(kind, "fetched"),
        // Deleted since the notification.
        Err(GraphError::NotFound { .. }) => count(kind, "gone"),
        Err(err) => return Err(JobError::from(err)),
    }
    Ok(())
}
