//! `graph_notification`: one accepted change notification. Fetches the changed resource
//! through the Graph client with the connection that created the subscription and stores it
//! idempotently: mail into `messages` (a `deleted` change marks the row). A rich notification
//! carries the resource already (decrypted by the listener) and is stored without a fetch. Notifications for
//! other resources (events, users, drive items) are counted (`outcome="not_stored"`) and not
//! fetched yet; storing them comes with the features that need them.

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};
use crate::graph::GraphError;
use crate::mailbox::{self, StoredMessage};
use crate::subscriptions;

/// A notification to process (the webhook listener's payload).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphNotification {
    /// tenantd's subscription id.
    pub subscription_id: String,
    /// The subscription's tenant.
    pub tenant_id: String,
    /// `created`, `updated` or `deleted`.
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

/// The mailbox owner and message id in a message resource path (`users/{u}/messages/{id}`,
/// also with a folder in between and Graph's `{user}@{tenant}` form), or `None`.
pub fn message_target(resource: &str, tenant_id: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = resource.trim_start_matches('/').split('/').collect();
    if parts.len() < 4
        || !parts[0].eq_ignore_ascii_case("users")
        || !parts[parts.len() - 2].eq_ignore_ascii_case("messages")
    {
        return None;
    }
    let user = match parts[1].split_once('@') {
        // `{user id}@{tenant id}`: the user id alone addresses the same mailbox.
        Some((user, tenant)) if tenant.eq_ignore_ascii_case(tenant_id) => user,
        _ => parts[1],
    };
    let id = parts[parts.len() - 1];
    (!user.is_empty() && !id.is_empty()).then(|| (user.to_string(), id.to_string()))
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
        let connection = super::job_connection(&context.store, &subscription).await?;
        let Some((user, message_id)) = message_target(&self.resource, &self.tenant_id) else {
            // Not mail: nothing is stored for it yet.
            metrics::counter!(crate::metrics::names::WEBHOOK_ITEMS, "endpoint" => "worker", "outcome" => "not_stored").increment(1);
            return Ok(());
        };
        if self.change_type == "deleted" {
            return mailbox::mark_deleted(
                &context.store,
                &self.tenant_id,
                &message_id,
                &user,
                &subscription.id,
            )
            .await
            .map_err(JobError::database);
        }
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
                Err(GraphError::NotFound { .. }) => return Ok(()),
                Err(err) => return Err(err.into_job_error()),
            },
        };
        let stored =
            StoredMessage::from_graph(&message, &user, &subscription.id).ok_or_else(|| {
                JobError::Permanent {
                    reason: "graph_answer_invalid",
                    message: "Graph's message has no id".into(),
                }
            })?;
        mailbox::upsert(&context.store, &self.tenant_id, &stored)
            .await
            .map_err(JobError::database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";

    #[test]
    fn message_paths_in_graphs_forms_are_understood() {
        assert_eq!(
            message_target(&format!("users/u1@{TENANT}/messages/AAMk="), TENANT),
            Some(("u1".into(), "AAMk=".into()))
        );
        assert_eq!(
            message_target("Users/u1/Messages/AAMk", TENANT),
            Some(("u1".into(), "AAMk".into()))
        );
        assert_eq!(
            message_target("users/u1/mailFolders('Inbox')/messages/m", TENANT),
            Some(("u1".into(), "m".into()))
        );
        assert_eq!(message_target("users/u1/events/e", TENANT), None);
        assert_eq!(message_target("users/u1", TENANT), None);
    }
}
