//! Background jobs: the [`Job`] trait (stable kind name, payload type, attempts, timeout,
//! dedupe policy), the one registration list ([`Registry::standard`]), and one file per kind.
//!
//! Owns no tables (jobs are rows of [`crate::queue`]). Invariants: a kind name never changes
//! once released (rows outlive deployments); a payload deserializes into its kind's type or the
//! job fails permanently with `job_payload_invalid` instead of looping.

pub mod bot_delete;
pub mod bot_provision;
pub mod connection_check;
pub mod delegated_event;
pub mod delegated_send_mail;
pub mod graph_lifecycle;
pub mod graph_notification;
pub mod heartbeat_cleanup;
pub mod heartbeat_run;
mod kinds;
pub mod noop;
pub mod prune_attribution;
pub mod prune_jobs;
pub mod reconcile_subscriptions;
pub mod resync_subscription;
mod subscription_steps;
pub mod sweep_subscriptions;
pub mod token_sweep;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::graph::GraphError;
use crate::queue::{EncodedJob, Enqueued, JobRow, NewJob, Queue, QueueError};
use crate::store::Store;
use crate::vault::tokens::TokenServiceError;

/// What a job run reports when it does not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Try again later: after `after` if given (e.g. Graph's Retry-After), else after backoff.
    #[error("{reason}: {message}")]
    Retry {
        /// Stable reason code.
        reason: &'static str,
        /// Sanitized message.
        message: String,
        /// The earliest retry the failure asked for.
        after: Option<Duration>,
    },
    /// Will not work however often it is tried.
    #[error("{reason}: {message}")]
    Permanent {
        /// Stable reason code.
        reason: &'static str,
        /// Sanitized message.
        message: String,
    },
}

/// The job outcome of a Graph failure: throttling and transient failures go back to the queue
/// with their wait (so no worker sleeps on them); a token endpoint that could not be reached is
/// retried after backoff; everything else needs a change before it can work.
impl From<GraphError> for JobError {
    fn from(err: GraphError) -> Self {
        let reason = err.reason_code();
        let message = err.to_string();
        match err {
            GraphError::Throttled { retry_after, .. }
            | GraphError::Transient { retry_after, .. } => JobError::Retry {
                reason,
                message,
                after: Some(retry_after),
            },
            GraphError::Token(TokenServiceError::Token(token)) if token.status().is_none() => {
                JobError::Retry {
                    reason,
                    message,
                    after: None,
                }
            }
            _ => JobError::Permanent { reason, message },
        }
    }
}

impl JobError {
    /// The database failed: try again later (`database_unavailable`).
    pub fn database(err: impl std::fmt::Display) -> Self {
        JobError::Retry {
            reason: "database_unavailable",
            message: err.to_string(),
            after: None,
        }
    }
}

/// The connection a subscription's Graph calls use: the one that created it, or the tenant's
/// default app connection when it has none or that one is gone.
///
/// # Errors
/// The tenant has no usable connection, or the database failed.
pub async fn subscription_connection(
    store: &Store,
    subscription: &crate::subscriptions::Subscription,
) -> Result<crate::vault::connections::Connection, crate::vault::connections::ConnectionError> {
    if let Some(id) = &subscription.connection_id {
        if let Ok(connection) = crate::vault::connections::get(store, id).await {
            return Ok(connection);
        }
    }
    crate::vault::connections::default_app(store, &subscription.tenant_id).await
}

/// [`subscription_connection`] for a job that needs it: none usable is tried again later
/// (the operator may reconnect the tenant meanwhile).
///
/// # Errors
/// [`JobError::Retry`] with the connection's reason code.
pub async fn job_connection(
    store: &Store,
    subscription: &crate::subscriptions::Subscription,
) -> Result<crate::vault::connections::Connection, JobError> {
    subscription_connection(store, subscription)
        .await
        .map_err(|err| JobError::Retry {
            reason: err.reason_code(),
            message: "no usable connection for the subscription's tenant".into(),
            after: None,
        })
}

/// Stores a fetched message and links it to the delegated action it replies to, if any
/// (the attribution lookback).
///
/// # Errors
/// The database failed (retried).
pub async fn store_message(
    store: &Store,
    tenant_id: &str,
    message: &crate::mailbox::StoredMessage,
) -> Result<(), JobError> {
    crate::mailbox::upsert(store, tenant_id, message)
        .await
        .map_err(JobError::database)?;
    let inbound = crate::attribution::Inbound {
        message_id: &message.message_id,
        internet_message_id: message.internet_message_id.as_deref(),
        conversation_id: message.conversation_id.as_deref(),
        in_reply_to: message.in_reply_to.as_deref(),
        from_address: message.from_address.as_deref(),
        received_at: message.received_at.as_deref(),
    };
    if let Some(link) = crate::attribution::link_reply(store, tenant_id, &inbound)
        .await
        .map_err(JobError::database)?
    {
        metrics::counter!(crate::metrics::names::ATTRIBUTION_LINKS, "matched_by" => link.matched_by).increment(1);
    }
    Ok(())
}

/// The tenant is the consumer (Microsoft account) tenant: personal accounts, not staff.
const CONSUMER_TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// The delegated connection a delegated action acts through: `connection_id`, or the tenant's
/// delegated connection of `user` (object id or sign-in name). App-only connections and
/// non-organizational identities (B2C, External ID, personal accounts) are refused.
///
/// # Errors
/// [`JobError::Permanent`] with `delegated_connection_required`, `identity_not_allowed` or
/// `connection_not_found`; the database failing is retried.
pub async fn acting_connection(
    store: &Store,
    tenant_id: &str,
    connection_id: Option<&str>,
    user: Option<&str>,
) -> Result<crate::vault::connections::Connection, JobError> {
    use crate::vault::connections::{self, AuthMode, ConnectionError};
    let not_found = || {
        JobError::Permanent {
        reason: "connection_not_found",
        message: "no delegated connection of the tenant matches; fix: connect the user with `tenantd tenant connect`".into(),
    }
    };
    let connection = match (connection_id, user) {
        (Some(id), _) => match connections::get(store, id).await {
            Ok(connection) if connection.tenant_id.eq_ignore_ascii_case(tenant_id) => connection,
            Ok(_) | Err(ConnectionError::NotFound) => return Err(not_found()),
            Err(err) => return Err(JobError::database(err)),
        },
        (None, Some(user)) => connections::list(store, Some(tenant_id))
            .await
            .map_err(JobError::database)?
            .into_iter()
            .find(|c| {
                c.auth_mode == AuthMode::Delegated
                    && (c.user_id.eq_ignore_ascii_case(user)
                        || c.user_name
                            .as_deref()
                            .is_some_and(|n| n.eq_ignore_ascii_case(user)))
            })
            .ok_or_else(not_found)?,
        (None, None) => {
            return Err(JobError::Permanent {
                reason: "job_payload_invalid",
                message: "name the acting user (`user`) or its connection (`connection_id`)".into(),
            })
        }
    };
    if connection.auth_mode != AuthMode::Delegated {
        return Err(JobError::Permanent {
            reason: "delegated_connection_required",
            message: format!(
                "connection {} is app-only; this action acts as a signed-in user",
                connection.id
            ),
        });
    }
    let consumer = connection.tenant_id.eq_ignore_ascii_case(CONSUMER_TENANT);
    if consumer || connections::check_authority(&connection.authority).is_err() {
        return Err(JobError::Permanent {
            reason: "identity_not_allowed",
            message: format!(
                "connection {} is not an organizational (Entra ID) identity; Graph actions are for staff accounts only",
                connection.id
            ),
        });
    }
    Ok(connection)
}

/// What a running job may use.
#[derive(Clone)]
pub struct JobContext {
    /// The database.
    pub store: Store,
    /// The queue, to enqueue follow-up work.
    pub queue: Queue,
    /// Access tokens for connections.
    pub tokens: std::sync::Arc<crate::vault::tokens::TokenService>,
    /// The only path to Graph.
    pub graph: std::sync::Arc<crate::graph::GraphClient>,
    /// The vault keys (secrets sent to Graph, such as clientStates).
    pub keys: std::sync::Arc<crate::vault::Keyring>,
    /// `listener.public_url`: where Graph posts (jobs that create subscriptions need it).
    pub public_url: Option<String>,
    /// This run's attempt, from 1: above 1 an earlier attempt may have done part of the work
    /// without recording it (a crash between Graph's answer and the database).
    pub attempt: u32,
}

/// A kind of background work.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable kind name, stored with every job.
    const KIND: &'static str;
    /// Attempts before dead letter.
    const MAX_ATTEMPTS: u32 = 5;
    /// How long one attempt may run.
    const TIMEOUT: Duration = Duration::from_secs(60);

    /// Runs one at a time whoever enqueues it: a scheduled fire while one is unfinished is
    /// that one (the schedule keeps the kind's own dedupe key instead of one per fire).
    const ONE_AT_A_TIME: bool = false;

    /// Unfinished jobs with the same key are not enqueued twice.
    fn dedupe_key(&self) -> Option<String> {
        None
    }

    /// The tenant the job works for (its fairness lane).
    fn tenant(&self) -> Option<String> {
        None
    }

    /// Does the work.
    fn run(self, context: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// Enqueues a job of a registered kind.
///
/// # Errors
/// The database failed.
pub async fn enqueue<J: Job>(queue: &Queue, job: &J) -> Result<Enqueued, QueueError> {
    queue.enqueue(&new_job(job)).await
}

/// `job` as a [`NewJob`]: kind, payload, tenant lane, dedupe key and attempts from its [`Job`]
/// impl, priority 0, due now. Callers that differ say so with struct update syntax.
pub fn new_job<J: Job>(job: &J) -> NewJob {
    NewJob {
        kind: J::KIND.to_string(),
        payload: serde_json::to_value(job).expect("job payloads serialize"),
        tenant_id: job.tenant().unwrap_or_default(),
        dedupe_key: job.dedupe_key(),
        priority: 0,
        run_at: None,
        max_attempts: J::MAX_ATTEMPTS,
    }
}

/// `job` rendered for a batch insert with `dedupe_key` in place of the kind's own (the webhook
/// derives keys from the notification); see [`crate::queue::EncodedJob`].
pub fn encode<J: Job>(job: &J, dedupe_key: Option<&str>) -> EncodedJob {
    JobRow {
        kind: J::KIND,
        payload: job,
        tenant_id: job.tenant().as_deref().unwrap_or_default(),
        dedupe_key,
        priority: 0,
        run_at: None,
        max_attempts: J::MAX_ATTEMPTS,
    }
    .encode()
}

type Run = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;
type Handler = Arc<dyn Fn(serde_json::Value, JobContext) -> Run + Send + Sync>;

/// A registered kind: how to run it and for how long.
#[derive(Clone)]
pub struct Registered {
    handler: Handler,
    prepare: Arc<dyn Fn(serde_json::Value) -> Result<NewJob, String> + Send + Sync>,
    /// One attempt's time limit.
    pub timeout: Duration,
}

impl Registered {
    /// Runs a payload.
    pub fn run(&self, payload: serde_json::Value, context: JobContext) -> Run {
        (self.handler)(payload, context)
    }
}

/// Kinds the workers know.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<&'static str, Registered>,
}

impl Registry {
    /// Adds a kind.
    pub fn register<J: Job>(&mut self) {
        let handler: Handler = Arc::new(|payload, context| {
            Box::pin(async move {
                let job: J =
                    serde_json::from_value(payload).map_err(|err| JobError::Permanent {
                        reason: "job_payload_invalid",
                        message: format!("the payload does not fit {}: {err}", J::KIND),
                    })?;
                job.run(context).await
            })
        });
        let prepare = Arc::new(|payload: serde_json::Value| {
            let job: J = serde_json::from_value(payload.clone())
                .map_err(|err| format!("the payload does not fit {}: {err}", J::KIND))?;
            Ok(NewJob {
                payload,
                ..new_job(&job)
            })
        });
        self.kinds.insert(
            J::KIND,
            Registered {
                handler,
                prepare,
                timeout: J::TIMEOUT,
            },
        );
    }

    /// The job to enqueue for `kind` with `payload` (its tenant lane and dedupe key taken from
    /// the typed payload), or why it cannot be: an unknown kind, a payload that does not fit.
    ///
    /// # Errors
    /// What is wrong, for the operator.
    pub fn prepare(&self, kind: &str, payload: serde_json::Value) -> Result<NewJob, String> {
        let registered = self.kinds.get(kind).ok_or_else(|| {
            format!(
                "no job kind `{kind}`; fix: use one of {}",
                self.kinds().join(", ")
            )
        })?;
        (registered.prepare)(payload)
    }

    /// A kind by name.
    pub fn get(&self, kind: &str) -> Option<&Registered> {
        self.kinds.get(kind)
    }

    /// The registered kind names.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = self.kinds.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_goes_back_to_the_queue_with_its_wait() {
        let throttled = GraphError::Throttled {
            retry_after: Duration::from_secs(7),
            code: "TooManyRequests".into(),
        };
        match JobError::from(throttled) {
            JobError::Retry { reason, after, .. } => {
                assert_eq!((reason, after), ("throttled", Some(Duration::from_secs(7))))
            }
            other => panic!("{other:?}"),
        }
        let denied = GraphError::Forbidden {
            code: "ErrorAccessDenied".into(),
            access_policy: true,
        };
        assert_eq!(denied.reason_code(), "access_policy_denied");
        assert!(matches!(JobError::from(denied), JobError::Permanent { .. }));
    }
}
