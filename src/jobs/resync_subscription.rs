//! `resync_subscription`: brings tenantd's copy of a subscription's resource up to date when
//! Graph may have dropped notifications: a `missed` lifecycle event, `subscriptionRemoved`,
//! or a subscription Graph lost (404 on renewal). A subscription Graph no longer has is
//! created again first, and only then is the resource read: a change between the read and
//! the new subscription would otherwise be seen by neither. A mail folder
//! (`users/{id}/mailFolders/{folder}/messages`) is read with a delta query from where the last
//! resync stopped, its removed messages marked deleted; all of a user's mail
//! (`users/{id}/messages`, which has no delta query) from the last known point: every message
//! received since the newest one stored (less a margin), or the newest messages when none is.
//! Other resources store nothing yet, so there is nothing to bring up to date. Sources:
//! graph-protocol.md §1.3 and §1.7, learn.microsoft.com/graph/api/message-delta,
//! concepts/change-notifications-lifecycle-events.md ("subscriptionRemoved": create a new
//! subscription, then resync).

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};
use crate::graph::resources::GraphResource;
use crate::mailbox::{self, StoredMessage};
use crate::metrics::names;
use crate::subscriptions;

/// Pages of a delta query or listing read in one run (a longer resync continues from its
/// delta link next time).
const MAX_PAGES: usize = 50;

/// How far before the newest stored message an all-mail resync starts reading (mail can be
/// stamped a little before it shows up in the mailbox).
const RESYNC_MARGIN_SECONDS: i64 = 15 * 60;

/// How soon a resync looks again when another job is creating the subscription.
const RECREATING_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

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

/// What a subscription's resource is, read by the one resource grammar: a mail folder
/// (`users/{u}/mailFolders('Inbox')/messages`, any case, a query ignored), all of a user's
/// mail (`users/{u}/messages`, `me/messages`), or anything else.
fn target(resource: &str) -> Target {
    match GraphResource::parse(resource) {
        Some(GraphResource::Mail {
            user,
            folder: Some(folder),
        }) => Target::Folder { user, folder },
        Some(GraphResource::Mail { user, folder: None }) => Target::AllMail { user },
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
            super::subscription_steps::still_there(&context, &self.subscription_id).await?
        else {
            return Ok(());
        };
        if !subscription.wanted {
            return Ok(());
        }
        if subscription.graph_id.is_none() {
            recreate(&context, &subscription).await?;
        }
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
                .map_err(JobError::from)?,
            _ => {
                let since =
                    mailbox::newest_received(&context.store, &self.tenant_id, &subscription.id)
                        .await
                        .map_err(JobError::database)?
                        .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
                        .map(|at| {
                            (at - chrono::Duration::seconds(RESYNC_MARGIN_SECONDS))
                                .with_timezone(&chrono::Utc)
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        });
                let pages = if since.is_some() { MAX_PAGES } else { 10 };
                let messages = context
                    .graph
                    .newest_messages(&connection, &user, since.as_deref(), pages)
                    .await;
                (messages.map_err(JobError::from)?, None)
            }
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

/// Creates the subscription again at Graph before anything is read (see the module's note).
async fn recreate(
    context: &JobContext,
    subscription: &subscriptions::Subscription,
) -> Result<(), JobError> {
    use super::subscription_steps::{create_subscription, Creation};
    let connection = super::job_connection(&context.store, subscription).await?;
    match create_subscription(
        context,
        subscription,
        &connection,
        context.public_url.as_deref(),
    )
    .await?
    {
        Creation::Created => {
            tracing::info!(subscription = %subscription.id, "subscription created again; reading what changed meanwhile");
            Ok(())
        }
        Creation::InProgress => Err(JobError::Retry {
            reason: "subscription_recreating",
            message: "another job is creating the subscription again; the resync reads once it exists".into(),
            after: Some(RECREATING_RETRY),
        }),
        Creation::Failed(reason) => Err(JobError::Retry {
            reason,
            message: "the subscription could not be created again yet; the resync reads once it exists".into(),
            after: None,
        }),
        Creation::NoPublicUrl => Err(JobError::Permanent {
            reason: "public_url_missing",
            message: "listener.public_url is not set, so the subscription cannot be created again; set it and retry this job".into(),
        }),
    }
}

/// Queues a resync of the subscription's resource (one at a time per subscription).
pub(super) async fn enqueue_resync(
    context: &JobContext,
    subscription: &subscriptions::Subscription,
) -> Result<(), JobError> {
    super::enqueue(
        &context.queue,
        &ResyncSubscription {
            subscription_id: subscription.id.clone(),
            tenant_id: subscription.tenant_id.clone(),
        },
    )
    .await
    .map(|_| ())
    .map_err(JobError::database)
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
