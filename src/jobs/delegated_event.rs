//! `delegated_event`: creates, updates or cancels an event on a signed-in staff user's own
//! calendar (`Calendars.ReadWrite`, delegated), for other systems that hand tenantd the work.
//! Created events are remembered with the user's other delegated actions; a `request_id` makes
//! creation happen once (it is also Graph's `transactionId`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{acting_connection, Job, JobContext, JobError};
use crate::attribution::{self, NewAction};
use crate::graph::GraphError;
use crate::metrics::names;

/// What to do with the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventAction {
    /// `POST /users/{me}/events` with `event`.
    Create,
    /// `PATCH /users/{me}/events/{event_id}` with `event`.
    Update,
    /// `POST /users/{me}/events/{event_id}/cancel` (attendees are told).
    Cancel,
}

impl EventAction {
    fn metric(self) -> &'static str {
        match self {
            EventAction::Create => "event_create",
            EventAction::Update => "event_update",
            EventAction::Cancel => "event_cancel",
        }
    }
}

/// An event action as a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegatedEvent {
    /// Entra tenant ID.
    pub tenant_id: String,
    /// The delegated connection to act through (or name the `user`).
    #[serde(default)]
    pub connection_id: Option<String>,
    /// The signed-in user (object id or sign-in name).
    #[serde(default)]
    pub user: Option<String>,
    /// Create, update or cancel.
    pub action: EventAction,
    /// The event (update, cancel).
    #[serde(default)]
    pub event_id: Option<String>,
    /// Graph's event JSON (create: subject, start, end, attendees...; update: the changes).
    #[serde(default)]
    pub event: Option<Value>,
    /// Cancellation message to attendees.
    #[serde(default)]
    pub comment: Option<String>,
    /// The caller's idempotency key.
    #[serde(default)]
    pub request_id: Option<String>,
}

fn invalid(message: &str) -> JobError {
    JobError::Permanent {
        reason: "job_payload_invalid",
        message: message.into(),
    }
}

impl Job for DelegatedEvent {
    const KIND: &'static str = "delegated_event";
    const MAX_ATTEMPTS: u32 = 8;

    fn dedupe_key(&self) -> Option<String> {
        self.request_id.clone()
    }

    fn tenant(&self) -> Option<String> {
        Some(self.tenant_id.clone())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let event = self.event.as_ref().filter(|e| e.is_object());
        let event_id = self.event_id.as_deref().filter(|id| !id.is_empty());
        match (self.action, event, event_id) {
            (EventAction::Create, None, _) => return Err(invalid("create needs `event`")),
            (EventAction::Update, None, _) | (EventAction::Update, _, None) => {
                return Err(invalid("update needs `event_id` and `event`"))
            }
            (EventAction::Cancel, _, None) => return Err(invalid("cancel needs `event_id`")),
            _ => {}
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
        let outcome = match self.action {
            EventAction::Create => {
                if let Some(request) = &self.request_id {
                    let known =
                        attribution::by_request(&context.store, &self.tenant_id, "event", request)
                            .await
                            .map_err(JobError::database)?;
                    if known.is_some() {
                        return Ok(());
                    }
                }
                let mut body = event.cloned().unwrap_or_default();
                if let Some(request) = &self.request_id {
                    // Graph's own idempotency key for event creation.
                    body["transactionId"] = Value::String(request.clone());
                }
                match graph.create_event(&connection, &me, &body).await {
                    Ok(created) => {
                        let id = created["id"].as_str().unwrap_or_default().to_string();
                        attribution::remember(
                            &context.store,
                            &NewAction {
                                tenant_id: &self.tenant_id,
                                connection_id: &connection.id,
                                user_id: &me,
                                kind: "event",
                                request_id: self.request_id.as_deref(),
                                graph_id: &id,
                                internet_message_id: None,
                                conversation_id: None,
                                subject: created["subject"].as_str(),
                                done: true,
                            },
                        )
                        .await
                        .map_err(JobError::database)?;
                        Ok(())
                    }
                    Err(err) => Err(err),
                }
            }
            EventAction::Update => graph
                .update_event(
                    &connection,
                    &me,
                    event_id.unwrap_or_default(),
                    event.unwrap_or(&Value::Null),
                )
                .await
                .map(drop),
            EventAction::Cancel => {
                graph
                    .cancel_event(
                        &connection,
                        &me,
                        event_id.unwrap_or_default(),
                        self.comment.as_deref().unwrap_or_default(),
                    )
                    .await
            }
        };
        let result = match &outcome {
            Ok(()) => "done",
            Err(_) => "failed",
        };
        metrics::counter!(names::DELEGATED_ACTIONS, "kind" => self.action.metric(), "result" => result).increment(1);
        outcome.map_err(|err| match err {
            GraphError::NotFound { .. } => JobError::Permanent {
                reason: "event_not_found",
                message: "the user's calendar has no such event".into(),
            },
            err => JobError::from(err),
        })
    }
}
