//! `reconcile_subscriptions`: makes Graph's subscriptions match the wanted ones. Creates
//! missing ones (Graph runs the validation handshake against the public listener first),
//! renews each before it lapses (within the last quarter of its life or 2 hours, whichever
//! comes first) with its resource's longest lifetime, creates again one that Graph no longer
//! has (404 on renewal), and deletes the ones no longer wanted. Scheduled every minute.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Job, JobContext, JobError};
use crate::audit::now_unix;
use crate::connections::Connection;
use crate::graph::GraphError;
use crate::subscriptions::{self, Subscription};

/// Reconcile every subscription.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconcileSubscriptions {
    /// `listener.public_url`: where Graph posts; without it nothing can be created.
    #[serde(default)]
    pub public_url: Option<String>,
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn expiry_of(answer: &serde_json::Value, asked: i64) -> i64 {
    answer["expirationDateTime"]
        .as_str()
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .map_or(asked, |at| at.timestamp())
}

fn endpoint(public_url: &str, path: &str) -> String {
    format!("{}{path}", public_url.trim_end_matches('/'))
}

/// What happened to one subscription, for the metric.
fn count(result: &'static str) {
    metrics::counter!(crate::metrics::names::SUBSCRIPTION_RENEWALS, "result" => result)
        .increment(1);
}

impl ReconcileSubscriptions {
    async fn create(
        &self,
        context: &JobContext,
        subscription: &Subscription,
        connection: &Connection,
    ) -> Result<(), JobError> {
        let Some(public_url) = self.public_url.as_deref() else {
            subscriptions::record_failed(&context.store, &subscription.id, "public_url_missing")
                .await
                .map_err(JobError::database)?;
            return Ok(());
        };
        if !subscriptions::begin_create(&context.store, &subscription.id)
            .await
            .map_err(JobError::database)?
        {
            return Ok(());
        }
        let client_state =
            subscriptions::client_state(&context.store, &context.keys, &subscription.id)
                .await
                .map_err(JobError::database)?;
        let lifetime =
            subscriptions::max_lifetime(&subscription.resource, subscription.include_resource_data);
        let expires = now_unix() + i64::try_from(lifetime.as_secs()).unwrap_or(0);
        let mut body = json!({
            "changeType": subscription.change_types,
            "notificationUrl": endpoint(public_url, "/webhooks/graph"),
            "lifecycleNotificationUrl": endpoint(public_url, "/webhooks/graph/lifecycle"),
            "resource": subscription.resource,
            "expirationDateTime": rfc3339(expires),
            "clientState": client_state.as_str(),
        });
        if subscription.include_resource_data {
            // Graph encrypts each notification's resource for this certificate.
            body["includeResourceData"] = json!(true);
            body["encryptionCertificate"] = json!(subscription.encryption_certificate);
            body["encryptionCertificateId"] = json!(subscription.encryption_certificate_id);
        }
        match context.graph.create_subscription(connection, &body).await {
            Ok(answer) => {
                let Some(graph_id) = answer["id"].as_str() else {
                    return Err(JobError::Retry {
                        reason: "graph_answer_invalid",
                        message: "Graph's new subscription has no id".into(),
                        after: None,
                    });
                };
                subscriptions::record_created(
                    &context.store,
                    &subscription.id,
                    graph_id,
                    &connection.id,
                    expiry_of(&answer, expires),
                )
                .await
                .map_err(JobError::database)?;
                count("created");
                Ok(())
            }
            Err(err) => {
                let reason = err.reason_code();
                tracing::warn!(subscription = %subscription.id, reason, "creating a subscription failed");
                subscriptions::record_failed(&context.store, &subscription.id, reason)
                    .await
                    .map_err(JobError::database)?;
                count("create_failed");
                // Throttling and outages are retried on the next tick.
                Ok(())
            }
        }
    }

    async fn renew(
        &self,
        context: &JobContext,
        subscription: &Subscription,
        connection: &Connection,
        graph_id: &str,
    ) -> Result<(), JobError> {
        let lifetime =
            subscriptions::max_lifetime(&subscription.resource, subscription.include_resource_data);
        let expires = now_unix() + i64::try_from(lifetime.as_secs()).unwrap_or(0);
        match context
            .graph
            .renew_subscription(connection, graph_id, &rfc3339(expires))
            .await
        {
            Ok(answer) => {
                subscriptions::record_renewed(
                    &context.store,
                    &subscription.id,
                    expiry_of(&answer, expires),
                )
                .await
                .map_err(JobError::database)?;
                count("renewed");
                Ok(())
            }
            Err(GraphError::NotFound { .. }) => {
                // Graph dropped it (expired, removed): create it again now.
                subscriptions::record_removed(
                    &context.store,
                    &subscription.id,
                    "subscription_not_found",
                )
                .await
                .map_err(JobError::database)?;
                count("recreated");
                self.create(context, subscription, connection).await?;
                // Changes while Graph had no subscription were never notified.
                super::graph_lifecycle::enqueue_resync(context, subscription).await
            }
            Err(err) => {
                let reason = err.reason_code();
                tracing::warn!(subscription = %subscription.id, reason, "renewing a subscription failed");
                subscriptions::record_failed(&context.store, &subscription.id, reason)
                    .await
                    .map_err(JobError::database)?;
                count("renew_failed");
                Ok(())
            }
        }
    }
}

impl Job for ReconcileSubscriptions {
    const KIND: &'static str = "reconcile_subscriptions";
    const MAX_ATTEMPTS: u32 = 3;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

    fn dedupe_key(&self) -> Option<String> {
        Some(Self::KIND.into())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let all = subscriptions::list(&context.store, None)
            .await
            .map_err(JobError::database)?;
        let now = now_unix();
        for subscription in &all {
            let connection =
                match super::subscription_connection(&context.store, subscription).await {
                    Ok(connection) => connection,
                    Err(err) => {
                        subscriptions::record_failed(
                            &context.store,
                            &subscription.id,
                            err.reason_code(),
                        )
                        .await
                        .map_err(JobError::database)?;
                        continue;
                    }
                };
            match (&subscription.graph_id, subscription.wanted) {
                (Some(graph_id), false) => {
                    match context
                        .graph
                        .delete_subscription(&connection, graph_id)
                        .await
                    {
                        Ok(()) | Err(GraphError::NotFound { .. }) => {
                            subscriptions::forget(&context.store, &subscription.id)
                                .await
                                .map_err(JobError::database)?;
                            count("deleted");
                        }
                        Err(err) => {
                            tracing::warn!(subscription = %subscription.id, reason = err.reason_code(), "deleting a subscription failed");
                            count("delete_failed");
                        }
                    }
                }
                (None, false) => subscriptions::forget(&context.store, &subscription.id)
                    .await
                    .map_err(JobError::database)?,
                (None, true) => self.create(&context, subscription, &connection).await?,
                (Some(graph_id), true) => {
                    let lifetime = subscriptions::max_lifetime(
                        &subscription.resource,
                        subscription.include_resource_data,
                    );
                    let due = subscription
                        .expires_at
                        .is_none_or(|at| subscriptions::renewal_due(at, now, lifetime));
                    if due {
                        self.renew(&context, subscription, &connection, graph_id)
                            .await?;
                    }
                }
            }
        }
        publish_gauges(&context).await;
        Ok(())
    }
}

/// Subscriptions by status and the soonest expiry, for dashboards and alerts.
async fn publish_gauges(context: &JobContext) {
    let Ok(all) = subscriptions::list(&context.store, None).await else {
        return;
    };
    for status in ["pending", "active", "failed", "removed"] {
        #[allow(clippy::cast_precision_loss)]
        let count = all.iter().filter(|s| s.status == status).count() as f64;
        metrics::gauge!(crate::metrics::names::SUBSCRIPTIONS, "status" => status).set(count);
    }
    if let Some(soonest) = all
        .iter()
        .filter(|s| s.status == "active")
        .filter_map(|s| s.expires_at)
        .min()
    {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(crate::metrics::names::SUBSCRIPTION_EXPIRY)
            .set((soonest - now_unix()) as f64);
    }
}
