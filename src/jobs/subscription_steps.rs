//! The Graph-side steps on one subscription that several jobs share: create it (adopting what
//! an interrupted create made), see whether its row still exists, record that Graph lost it.
//! `reconcile_subscriptions`, `resync_subscription` and `graph_lifecycle` call them; they call
//! no job, so the three jobs need not call each other.
//!
//! Owns no tables (rows are written through `subscriptions.rs`). Invariant: the intent to create
//! is recorded before Graph's POST, so a crash in between is adopted, not created twice.

use serde_json::json;

use super::{JobContext, JobError};
use crate::clock::now_unix;
use crate::graph::GraphError;
use crate::subscriptions::{self, Subscription};
use crate::vault::connections::Connection;

pub(super) fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(super) fn expiry_of(answer: &serde_json::Value, asked: i64) -> i64 {
    answer["expirationDateTime"]
        .as_str()
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .map_or(asked, |at| at.timestamp())
}

pub(super) fn endpoint(public_url: &str, path: &str) -> String {
    format!("{}{path}", public_url.trim_end_matches('/'))
}

/// What happened to one subscription, for the metric.
pub(super) fn count(result: &'static str) {
    metrics::counter!(crate::metrics::names::SUBSCRIPTION_RENEWALS, "result" => result)
        .increment(1);
}

/// What an attempt to create a subscription at Graph came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Creation {
    /// Graph created it and its id is recorded.
    Created,
    /// Another job is creating it right now.
    InProgress,
    /// Graph refused or failed (recorded on the row with this reason; retried later).
    Failed(&'static str),
    /// No `listener.public_url`: Graph would have nowhere to post.
    NoPublicUrl,
}

/// Creates `subscription` at Graph (Graph first runs the validation handshake against the
/// public listener) and records its id, unless another job is creating it.
pub(super) async fn create_subscription(
    context: &JobContext,
    subscription: &Subscription,
    connection: &Connection,
    public_url: Option<&str>,
) -> Result<Creation, JobError> {
    let Some(public_url) = public_url else {
        subscriptions::record_failed(&context.store, &subscription.id, "public_url_missing")
            .await
            .map_err(JobError::database)?;
        return Ok(Creation::NoPublicUrl);
    };
    // An earlier attempt claimed the creation (`creating`, recorded before its POST) and never
    // recorded the result: Graph may have created it before the crash.
    let interrupted = subscription.reason.as_deref() == Some("creating");
    if !subscriptions::begin_create(&context.store, &subscription.id)
        .await
        .map_err(JobError::database)?
    {
        return Ok(Creation::InProgress);
    }
    let client_state = match subscriptions::client_state(
        &context.store,
        &context.keys,
        &subscription.id,
    )
    .await
    {
        Ok(client_state) => client_state,
        Err(subscriptions::SubscriptionError::Store(err)) => return Err(JobError::database(err)),
        // Sealed with a key this daemon does not hold (a CLI run with another key file):
        // a human must act, so the row says why and the log says it once.
        Err(err) => {
            let reason = err.reason_code();
            if repeats(subscription, reason) {
                tracing::debug!(subscription = %subscription.id, reason, "a subscription's clientState still cannot be opened");
            } else {
                tracing::warn!(
                    subscription = %subscription.id,
                    reason,
                    error = %err,
                    "a subscription's clientState cannot be opened with secrets.key_file; it is not created. Fix: `tenantd keys verify` names the key it needs; add that key to the key file, or delete the subscription and create it again"
                );
            }
            subscriptions::record_failed(&context.store, &subscription.id, reason)
                .await
                .map_err(JobError::database)?;
            count("create_failed");
            return Ok(Creation::Failed(reason));
        }
    };
    if interrupted {
        if let Some(adopted) =
            adopt(context, subscription, connection, public_url, &client_state).await?
        {
            return Ok(adopted);
        }
    }
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
            Ok(Creation::Created)
        }
        Err(err) => {
            let reason = err.reason_code();
            // A human may need to act: WARN when the failure is new, not every minute after.
            if repeats(subscription, reason) {
                tracing::debug!(subscription = %subscription.id, reason, "creating a subscription failed again");
            } else {
                tracing::warn!(subscription = %subscription.id, reason, "creating a subscription failed");
            }
            subscriptions::record_failed(&context.store, &subscription.id, reason)
                .await
                .map_err(JobError::database)?;
            count("create_failed");
            Ok(Creation::Failed(reason))
        }
    }
}

/// After an interrupted create: the subscription Graph made for this one (same resource and
/// notification URL, and the same clientState where Graph shows it), recorded instead of
/// creating another, which would be an orphan notifying until it expires. `None` when Graph
/// has none (or cannot be asked: then a new one is created, as before).
async fn adopt(
    context: &JobContext,
    subscription: &Subscription,
    connection: &Connection,
    public_url: &str,
    client_state: &str,
) -> Result<Option<Creation>, JobError> {
    let listed = match context.graph.list_subscriptions(connection).await {
        Ok(listed) => listed,
        Err(err) => {
            tracing::warn!(subscription = %subscription.id, reason = err.reason_code(), "cannot list Graph's subscriptions to adopt one an interrupted attempt made; creating a new one");
            return Ok(None);
        }
    };
    let url = endpoint(public_url, "/webhooks/graph");
    let made_for_this = |candidate: &&serde_json::Value| {
        let same_resource = candidate["resource"].as_str().is_some_and(|r| {
            r.trim_start_matches('/')
                .eq_ignore_ascii_case(subscription.resource.trim_start_matches('/'))
        });
        let same_url = candidate["notificationUrl"].as_str() == Some(url.as_str());
        let same_state = candidate["clientState"]
            .as_str()
            .is_none_or(|state| state == client_state);
        same_resource && same_url && same_state
    };
    // The one that lives longest is kept; any other an interrupted attempt left is deleted.
    let mut made: Vec<&serde_json::Value> = listed.iter().filter(made_for_this).collect();
    made.sort_by_key(|candidate| std::cmp::Reverse(expiry_of(candidate, 0)));
    let Some((ours, extra)) = made.split_first() else {
        return Ok(None);
    };
    let Some(graph_id) = ours["id"].as_str() else {
        return Ok(None);
    };
    subscriptions::record_created(
        &context.store,
        &subscription.id,
        graph_id,
        &connection.id,
        expiry_of(ours, now_unix()),
    )
    .await
    .map_err(JobError::database)?;
    for orphan in extra
        .iter()
        .filter_map(|candidate| candidate["id"].as_str())
    {
        match context.graph.delete_subscription(connection, orphan).await {
            Ok(()) | Err(GraphError::NotFound { .. }) => count("orphan_deleted"),
            Err(err) => {
                tracing::warn!(subscription = %subscription.id, reason = err.reason_code(), "could not delete a duplicate an interrupted attempt left at Graph; it lapses at its expiry");
            }
        }
    }
    tracing::warn!(subscription = %subscription.id, "adopted the subscription an interrupted attempt created at Graph instead of creating another");
    count("adopted");
    Ok(Some(Creation::Created))
}

/// The subscription, or `None` once it was deleted (its late jobs have nothing to do).
pub(super) async fn still_there(
    context: &JobContext,
    id: &str,
) -> Result<Option<subscriptions::Subscription>, JobError> {
    match subscriptions::get(&context.store, id).await {
        Ok(subscription) => Ok(Some(subscription)),
        Err(subscriptions::SubscriptionError::NotFound(_)) => Ok(None),
        Err(err) => Err(JobError::database(err)),
    }
}

/// Graph answered 404 for the subscription: marked removed, so reconcile creates it again.
pub(super) async fn lost_at_graph(
    context: &JobContext,
    subscription: &subscriptions::Subscription,
) -> Result<(), JobError> {
    subscriptions::record_removed(&context.store, &subscription.id, "subscription_not_found")
        .await
        .map_err(JobError::database)
}

/// Whether `subscription` failed for `reason` already (a repeat is logged at DEBUG: a failure
/// that needs a human is a WARN once per change of state).
fn repeats(subscription: &Subscription, reason: &str) -> bool {
    subscription.status == "failed" && subscription.reason.as_deref() == Some(reason)
}
