//! `resync_subscription`: brings tenantd's copy of a subscription's resource up to date when
//! Graph may have dropped notifications: a `missed` lifecycle event, `subscriptionRemoved`,
//! or a subscription Graph lost (404 on renewal). A mail folder
//! (`users/{id}/mailFolders/{folder}/messages`) is read with a delta query from where the last
//! resync stopped, its removed messages marked deleted; all of a user's mail
//! (`users/{id}/messages`, which has no delta query) by reading the newest messages again.
//! Other resources store nothing yet, so there is nothing to bring up to date. Sources:
//! graph-protocol.md §1.3 and §1.7, learn.microsoft.com/graph/api/message-delta.

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};
use crate::graph::GraphError;
use crate::mailbox::{self, StoredMessage};
use crate::metrics::names;
use crate::subscriptions;

/// Pages of a delta query or listing read in one run (a longer resync continues from its
/// delta link next time).
const MAX_PAGES: usize = 50;

/// Resynchronize one subscription's resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResyncSubscription {
    /// tenantd's subscription id.
    pub subscription_id: String,
    /// The subscription's tenant.
    pub tenant_id: String,
}

/// What a subscription's resource is, for resynchronizing.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// One mail folder (delta query).
    Folder { user: String, folder: String },
    /// All of a user's mail (no delta query).
    AllMail { user: String },
    /// Nothing tenantd stores.
    Other,
}

/// `users/{u}/mailFolders('Inbox')/messages`, `users/{u}/mailFolders/inbox/messages` (query
/// ignored) or `users/{u}/messages`.
fn target(resource: &str) -> Target {
    let path = resource
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    let lower: Vec<String> = parts.iter().map(|p| p.to_ascii_lowercase()).collect();
    match lower
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["users", _, "messages"] => Target::AllMail {
            user: parts[1].to_string(),
        },
        ["users", _, "mailfolders", _, "messages"] => Target::Folder {
            user: parts[1].to_string(),
            folder: parts[3].to_string(),
        },
        [users, _, folder, "messages"]
            if *users == "users" && folder.starts_with("mailfolders(") && folder.ends_with(')') =>
        {
            let inner = &parts[2]["mailFolders(".len()..parts[2].len() - 1];
            Target::Folder {
                user: parts[1].to_string(),
                folder: inner.trim_matches('\'').to_string(),
            }
        }
        _ => Target::Other,
    }
}

fn count(result: &'static str) {
    metrics::counter!(names::SUBSCRIPTION_RESYNCS, "result" => result).increment(1);
}

impl Job for ResyncSubscription {
    const KIND: &'static str = "resync_subscription";
    const MAX_ATTEMPTS: u32 = 8;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

    fn dedupe_key(&self) -> Option<String> {
        Some(format!("resync:{}", self.subscription_id))
    }

    fn tenant(&self) -> Option<String> {
        Some(self.tenant_id.clone())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let Some(subscription) =
            super::graph_lifecycle::still_there(&context, &self.subscription_id).await?
        else {
            return Ok(());
        };
        let target = target(&subscription.resource);
        let user = match &target {
            Target::Other => {
                count("nothing_stored");
                return subscriptions::record_resynced(&context.store, &subscription.id)
                    .await
                    .map_err(JobError::database);
            }
            Target::Folder { user, .. } | Target::AllMail { user } => user.clone(),
        };
        let connection = super::job_connection(&context.store, &subscription).await?;
        let (items, delta_link) = match &target {
            Target::Folder { folder, .. } => context
                .graph
                .message_delta(
                    &connection,
                    &user,
                    folder,
                    subscription.delta_link.as_deref(),
                    MAX_PAGES,
                )
                .await
                .map_err(GraphError::into_job_error)?,
            _ => (
                context
                    .graph
                    .newest_messages(&connection, &user, 10)
                    .await
                    .map_err(GraphError::into_job_error)?,
                None,
            ),
        };
        let (mut stored, mut removed) = (0u64, 0u64);
        for item in &items {
            let Some(id) = item["id"].as_str() else {
                continue;
            };
            if item.get("@removed").is_some() {
                mailbox::mark_deleted(&context.store, &self.tenant_id, id, &user, &subscription.id)
                    .await
                    .map_err(JobError::database)?;
                removed += 1;
            } else if let Some(message) = StoredMessage::from_graph(item, &user, &subscription.id) {
                super::store_message(&context.store, &self.tenant_id, &message).await?;
                stored += 1;
            }
        }
        if matches!(target, Target::Folder { .. }) {
            subscriptions::record_delta_link(
                &context.store,
                &subscription.id,
                delta_link.as_deref(),
            )
            .await
            .map_err(JobError::database)?;
        }
        subscriptions::record_resynced(&context.store, &subscription.id)
            .await
            .map_err(JobError::database)?;
        tracing::info!(subscription = %subscription.id, stored, removed, "resource resynchronized");
        count("resynced");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_resources_in_graphs_forms_are_understood() {
        assert_eq!(
            target("users/u1/mailFolders('Inbox')/messages"),
            Target::Folder {
                user: "u1".into(),
                folder: "Inbox".into()
            }
        );
        assert_eq!(
            target("/users/u1/mailfolders/inbox/messages?$select=subject"),
            Target::Folder {
                user: "u1".into(),
                folder: "inbox".into()
            }
        );
        assert_eq!(
            target("Users/u1/Messages"),
            Target::AllMail { user: "u1".into() }
        );
        assert_eq!(target("users/u1/events"), Target::Other);
        assert_eq!(target("chats/getAllMessages"), Target::Other);
    }
}
