//! `heartbeat_cleanup`: removes from a tenant everything heartbeat runs recorded in
//! `provisioned_objects` and nothing else: mail (both copies of sent mail), files, events and
//! chat messages (soft-deleted as the delegated user: Graph cannot delete them) first, then
//! licenses tenantd assigned to users it did not create, then the users it created (their
//! licenses go with them). An object Graph no longer has counts as removed; any other failure
//! leaves its row for the next cleanup and fails the run with the first reason.

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};
use crate::graph::GraphError;
use crate::heartbeat::{self, ProvisionedObject};
use crate::metrics::names;
use crate::runs;
use crate::vault::connections;

/// Remove a tenant's heartbeat objects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatCleanup {
    /// Entra tenant ID.
    pub tenant_id: String,
    /// The operation run this job reports to.
    #[serde(default)]
    pub run_id: Option<String>,
}

/// The order objects are removed in: contents before licenses before users.
fn rank(kind: &str) -> u8 {
    match kind {
        "mail" | "sent_mail" | "file" | "event" | "chat" => 0,
        "license" => 1,
        _ => 2,
    }
}

async fn remove(
    context: &JobContext,
    app: &connections::Connection,
    staff: Option<&connections::Connection>,
    object: &ProvisionedObject,
    users_removed: &[String],
) -> Result<(), GraphError> {
    let graph = &context.graph;
    let (owner, id) = (object.owner.as_str(), object.graph_id.as_str());
    match object.kind.as_str() {
        "mail" => graph.delete_message(app, owner, id).await,
        // A sent message's copy in `owner`'s mailbox, found by its internetMessageId.
        "sent_mail" => {
            for copy in graph.messages_by_internet_id(app, owner, id).await? {
                if let Some(copy) = copy["id"].as_str() {
                    match graph.delete_message(app, owner, copy).await {
                        Ok(()) | Err(GraphError::NotFound { .. }) => {}
                        Err(err) => return Err(err),
                    }
                }
            }
            Ok(())
        }
        // Chat messages cannot be deleted, only soft-deleted, as a member of the chat.
        "chat" => match staff {
            Some(staff) => {
                graph
                    .soft_delete_chat_message(staff, &staff.user_id, owner, id)
                    .await
            }
            None => Err(GraphError::Forbidden {
                code: "delegated_access_required".into(),
                access_policy: false,
            }),
        },
        "file" => graph.delete_drive_item(app, owner, id).await,
        "event" => graph.delete_event(app, owner, id).await,
        // Goes with its user when tenantd created the user.
        "license" if users_removed.iter().any(|u| u == owner) => Ok(()),
        "license" => graph.remove_license(app, owner, id).await,
        "user" => graph.delete_user(app, id).await,
        _ => Ok(()),
    }
}

impl Job for HeartbeatCleanup {
    const KIND: &'static str = "heartbeat_cleanup";
    const MAX_ATTEMPTS: u32 = 3;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

    fn tenant(&self) -> Option<String> {
        Some(self.tenant_id.clone())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let run_id = self.run_id.clone().unwrap_or_default();
        runs::mark_running(&context.store, &run_id)
            .await
            .map_err(JobError::database)?;
        let app = connections::default_app(&context.store, &self.tenant_id)
            .await
            .map_err(|_| JobError::Permanent {
                reason: "no_app_connection",
                message: "the tenant has no usable app connection".into(),
            })?;
        let staff = super::heartbeat_run::delegated(&context, &self.tenant_id).await?;
        let mut objects = heartbeat::list(&context.store, &self.tenant_id, false)
            .await
            .map_err(JobError::database)?;
        objects.sort_by_key(|object| rank(&object.kind));
        let users_removed: Vec<String> = objects
            .iter()
            .filter(|o| o.kind == "user")
            .map(|o| o.graph_id.clone())
            .collect();
        let (mut removed, mut failures) = (0usize, Vec::new());
        for object in &objects {
            let result = match remove(&context, &app, staff.as_ref(), object, &users_removed).await
            {
                Ok(()) => "removed",
                Err(GraphError::NotFound { .. }) => "gone",
                Err(err) => {
                    failures.push(err.reason_code());
                    "failed"
                }
            };
            metrics::counter!(names::HEARTBEAT_CLEANUP, "kind" => object.kind.clone(), "result" => result).increment(1);
            if result != "failed" {
                heartbeat::mark_removed(&context.store, &object.id)
                    .await
                    .map_err(JobError::database)?;
                removed += 1;
            }
        }
        let (ok, reason, message) = match failures.first() {
            None => (true, "ok", format!("{removed} object(s) removed")),
            Some(reason) => (
                false,
                *reason,
                format!(
                    "{removed} object(s) removed, {} left for the next cleanup",
                    failures.len()
                ),
            ),
        };
        runs::finish(&context.store, &run_id, ok, reason, &message)
            .await
            .map_err(JobError::database)?;
        Ok(())
    }
}
