//! `delegated_send_mail`: sends mail from a signed-in staff user's own mailbox (`Mail.Send`,
//! delegated), for other systems that hand tenantd the work (`tenantd enqueue` or a row in
//! `jobs`). The message is created as a draft first, so Graph names its internetMessageId and
//! conversation before it leaves; the action is remembered for the attribution lookback, then
//! the draft is sent. With a `request_id`, a retried or repeated job sends once.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{acting_connection, Job, JobContext, JobError};
use crate::attribution::{self, NewAction};
use crate::graph::GraphError;
use crate::metrics::names;

/// Send mail as a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegatedSendMail {
    /// Entra tenant ID.
    pub tenant_id: String,
    /// The delegated connection to act through (or name the `user`).
    #[serde(default)]
    pub connection_id: Option<String>,
    /// The signed-in user (object id or sign-in name) whose delegated connection acts.
    #[serde(default)]
    pub user: Option<String>,
    /// Recipients' addresses.
    pub to: Vec<String>,
    /// Copy recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// Subject.
    pub subject: String,
    /// Body text (HTML when `html`).
    pub body: String,
    /// The body is HTML.
    #[serde(default)]
    pub html: bool,
    /// The caller's idempotency key: one mail per key and tenant.
    #[serde(default)]
    pub request_id: Option<String>,
}

fn recipients(addresses: &[String]) -> serde_json::Value {
    addresses
        .iter()
        .map(|a| json!({"emailAddress": {"address": a}}))
        .collect()
}

fn count(result: &'static str) {
    metrics::counter!(names::DELEGATED_ACTIONS, "kind" => "send_mail", "result" => result)
        .increment(1);
}

impl Job for DelegatedSendMail {
    const KIND: &'static str = "delegated_send_mail";
    const MAX_ATTEMPTS: u32 = 8;

    fn dedupe_key(&self) -> Option<String> {
        self.request_id.clone()
    }

    fn tenant(&self) -> Option<String> {
        Some(self.tenant_id.clone())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let bad_address = self
            .to
            .iter()
            .chain(&self.cc)
            .find(|a| !a.contains('@') || a.contains(char::is_whitespace));
        if self.to.is_empty() || bad_address.is_some() {
            return Err(JobError::Permanent {
                reason: "job_payload_invalid",
                message: "`to` needs at least one address, and every address an @".into(),
            });
        }
        let connection = acting_connection(
            &context.store,
            &self.tenant_id,
            self.connection_id.as_deref(),
            self.user.as_deref(),
        )
        .await?;
        let me = connection.user_id.clone();
        let graph = &context.graph;
        let known = match &self.request_id {
            Some(request) => {
                attribution::by_request(&context.store, &self.tenant_id, "mail", request)
                    .await
                    .map_err(JobError::database)?
            }
            None => None,
        };
        let action = match known {
            Some(action) if action.state == "done" => {
                count("already_sent");
                return Ok(());
            }
            Some(prepared) => prepared,
            None => {
                let message = json!({
                    "subject": self.subject,
                    "body": {"contentType": if self.html { "html" } else { "text" }, "content": self.body},
                    "toRecipients": recipients(&self.to),
                    "ccRecipients": recipients(&self.cc),
                });
                let draft = graph
                    .create_draft(&connection, &me, &message)
                    .await
                    .map_err(JobError::from)?;
                let text = |key: &str| draft[key].as_str().map(str::to_string);
                let id = text("id").ok_or_else(|| JobError::Permanent {
                    reason: "graph_answer_invalid",
                    message: "Graph's draft has no id".into(),
                })?;
                attribution::remember(
                    &context.store,
                    &NewAction {
                        tenant_id: &self.tenant_id,
                        connection_id: &connection.id,
                        user_id: &me,
                        kind: "mail",
                        request_id: self.request_id.as_deref(),
                        graph_id: &id,
                        internet_message_id: text("internetMessageId").as_deref(),
                        conversation_id: text("conversationId").as_deref(),
                        subject: Some(&self.subject),
                        done: false,
                    },
                )
                .await
                .map_err(JobError::database)?
            }
        };
        match graph.send_draft(&connection, &me, &action.graph_id).await {
            Ok(()) => count("sent"),
            // The draft left Drafts: it was sent before the last attempt could say so.
            Err(GraphError::NotFound { .. }) => count("already_sent"),
            Err(err) => {
                count("failed");
                return Err(JobError::from(err));
            }
        }
        attribution::mark_done(&context.store, &action.id)
            .await
            .map_err(JobError::database)
    }
}
