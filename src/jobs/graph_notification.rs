//! `graph_notification`: one accepted change notification. Fetches the changed resource
//! through the Graph client with the connection that created the subscription and stores it
//! idempotently: mail into `messages` (a `deleted` change marks the row). A rich notification
//! carries the resource already (decrypted by the listener) and is stored without a fetch.
//! Events, users and drive roots are fetched (the change is confirmed against Graph, and a
//! failing fetch is retried or dead-lettered like any Graph call) and counted by outcome
//! (`fetched`, `gone`), not stored: no feature reads them yet. Other resources are counted
//! `not_stored`.

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};
use crate::connections::Connection;
use crate::graph::requests::DriveOwner;
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

/// What a notification's resource path points at, in Graph's forms (`users/{u}/...`, also
/// `{user id}@{tenant id}` and a mail folder in between).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangedResource {
    /// `users/{u}/messages/{id}` (or in a folder).
    Message { user: String, id: String },
    /// `users/{u}/events/{id}` (or `calendar/events/{id}`).
    Event { user: String, id: String },
    /// `users/{id}`.
    User { id: String },
    /// `users/{u}/drive/root` or `drives/{id}/root`.
    DriveRoot(DriveOwner),
}

impl ChangedResource {
    /// The resource `resource` names, or `None` for paths tenantd does not fetch.
    pub fn parse(resource: &str, tenant_id: &str) -> Option<Self> {
        let parts: Vec<&str> = resource
            .trim_start_matches('/')
            .split('/')
            .filter(|part| !part.is_empty())
            .collect();
        let (first, rest) = parts.split_first()?;
        if first.eq_ignore_ascii_case("drives") {
            return match rest {
                [drive, root] if root.eq_ignore_ascii_case("root") => {
                    Some(Self::DriveRoot(DriveOwner::Drive((*drive).to_string())))
                }
                _ => None,
            };
        }
        if !first.eq_ignore_ascii_case("users") {
            return None;
        }
        let (user, rest) = rest.split_first()?;
        let user = match user.split_once('@') {
            // `{user id}@{tenant id}`: the user id alone addresses the same mailbox.
            Some((user, tenant)) if tenant.eq_ignore_ascii_case(tenant_id) => user,
            _ => user,
        };
        if user.is_empty() {
            return None;
        }
        let user = user.to_string();
        let is = |part: &str, name: &str| part.eq_ignore_ascii_case(name);
        match rest {
            [] => Some(Self::User { id: user }),
            [drive, root] if is(drive, "drive") && is(root, "root") => {
                Some(Self::DriveRoot(DriveOwner::User(user)))
            }
            [.., kind, id] if is(kind, "messages") => Some(Self::Message {
                user,
                id: (*id).to_string(),
            }),
            [events, id] | [_, events, id] if is(events, "events") => Some(Self::Event {
                user,
                id: (*id).to_string(),
            }),
            _ => None,
        }
    }
}

fn count(outcome: &'static str) {
    metrics::counter!(crate::metrics::names::WEBHOOK_ITEMS, "endpoint" => "worker", "outcome" => outcome).increment(1);
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
        let (user, message_id) = match ChangedResource::parse(&self.resource, &self.tenant_id) {
            Some(ChangedResource::Message { user, id }) => (user, id),
            Some(other) => return fetch_only(&context, &connection, &self, &other).await,
            None => {
                count("not_stored");
                return Ok(());
            }
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
        super::store_message(&context.store, &self.tenant_id, &stored).await
    }
}

/// Confirms a change to an event, user or drive against Graph (see the module's note).
async fn fetch_only(
    context: &JobContext,
    connection: &Connection,
    notification: &GraphNotification,
    resource: &ChangedResource,
) -> Result<(), JobError> {
    if notification.change_type == "deleted" {
        count("gone");
        return Ok(());
    }
    let fetched = match resource {
        ChangedResource::Event { user, id } => context.graph.get_event(connection, user, id).await,
        ChangedResource::User { id } => context.graph.get_user(connection, id).await,
        ChangedResource::DriveRoot(owner) => context.graph.get_drive_root(connection, owner).await,
        ChangedResource::Message { .. } => unreachable!("mail is stored, not only fetched"),
    };
    match fetched {
        Ok(_) => count("fetched"),
        // Deleted since the notification.
        Err(GraphError::NotFound { .. }) => count("gone"),
        Err(err) => return Err(err.into_job_error()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";

    #[test]
    fn resource_paths_in_graphs_forms_are_understood() {
        let message = |user: &str, id: &str| {
            Some(ChangedResource::Message {
                user: user.into(),
                id: id.into(),
            })
        };
        let parse = |path: &str| ChangedResource::parse(path, TENANT);
        assert_eq!(
            parse(&format!("users/u1@{TENANT}/messages/AAMk=")),
            message("u1", "AAMk=")
        );
        assert_eq!(parse("Users/u1/Messages/AAMk"), message("u1", "AAMk"));
        assert_eq!(
            parse("users/u1/mailFolders('Inbox')/messages/m"),
            message("u1", "m")
        );
        assert_eq!(
            parse("/users/u1/events/AAMkE"),
            Some(ChangedResource::Event {
                user: "u1".into(),
                id: "AAMkE".into()
            })
        );
        assert_eq!(
            parse("users/u1/calendar/events/e"),
            Some(ChangedResource::Event {
                user: "u1".into(),
                id: "e".into()
            })
        );
        assert_eq!(
            parse("Users/8f6bb3b0"),
            Some(ChangedResource::User {
                id: "8f6bb3b0".into()
            })
        );
        assert_eq!(
            parse("users/u1/drive/root"),
            Some(ChangedResource::DriveRoot(DriveOwner::User("u1".into())))
        );
        assert_eq!(
            parse("drives/b!x/root"),
            Some(ChangedResource::DriveRoot(DriveOwner::Drive("b!x".into())))
        );
        assert_eq!(parse("users/u1/contacts/c"), None);
        assert_eq!(parse("communications/presences/p"), None);
        assert_eq!(parse("users"), None);
        assert_eq!(parse("drives/d/items/i"), None);
    }
}
