//! `sweep_subscriptions`: deletes the subscriptions Graph holds for tenantd's notification URL
//! that no row knows: orphans, which notify until they expire. They come from a create whose
//! answer was lost (a timeout after Graph made it, a crash before its id was committed and
//! the row unwanted before another attempt could adopt it). Run at start-up and every six
//! hours, one at a time; per app-only connection one `GET /subscriptions`.
//!
//! Owns no tables. Invariant: Graph is listed *before* the rows are read, so a subscription a
//! create is making right now is either in neither (made after the list) or its row already
//! shows it (its id, or `creating` from before the POST): a sweep never deletes a create in
//! flight. Subscriptions at other notification URLs (another deployment of the same app) are
//! never touched.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};
use crate::graph::GraphError;
use crate::subscriptions;
use crate::vault::connections::{AuthMode, Connection, Status};

/// Sweep every app-only connection's Graph subscriptions for orphans.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SweepSubscriptions {}

/// App-only connections swept at once.
const SWEEP_CONCURRENCY: usize = 8;

/// What one connection's sweep found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Swept {
    deleted: usize,
    failed: usize,
}

impl Job for SweepSubscriptions {
    const KIND: &'static str = "sweep_subscriptions";
    const ONE_AT_A_TIME: bool = true;
    const MAX_ATTEMPTS: u32 = 3;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

    fn dedupe_key(&self) -> Option<String> {
        Some(Self::KIND.into())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        use futures_util::stream::{self, StreamExt};
        // Without a public URL tenantd never created a subscription: nothing can be ours.
        let Some(public_url) = context.public_url.clone() else {
            return Ok(());
        };
        let url = format!("{}/webhooks/graph", public_url.trim_end_matches('/'));
        let connections: Vec<Connection> = crate::vault::connections::list(&context.store, None)
            .await
            .map_err(JobError::database)?
            .into_iter()
            .filter(|c| c.auth_mode == AuthMode::App && c.status == Status::Active)
            .collect();
        let swept_connections = connections.len();
        let (context, url) = (&context, url.as_str());
        // Owned connections into the stream: a closure over borrowed ones is not `Send` for
        // every lifetime, which the worker's spawned future needs.
        let results: Vec<Result<Swept, JobError>> = stream::iter(connections)
            .map(|connection| async move { sweep_connection(context, &connection, url).await })
            .buffer_unordered(SWEEP_CONCURRENCY)
            .collect()
            .await;
        let mut total = Swept::default();
        for result in results {
            let swept = result?;
            total.deleted += swept.deleted;
            total.failed += swept.failed;
        }
        tracing::info!(
            job.kind = Self::KIND,
            connections = swept_connections,
            deleted = total.deleted,
            failed = total.failed,
            "swept Graph's subscriptions for orphans"
        );
        Ok(())
    }
}

/// Whether `listed` (one of Graph's subscriptions) is an orphan: at our notification URL, with
/// an id no row holds, and not what a create in flight may be making (same resource).
fn is_orphan(
    listed: &serde_json::Value,
    url: &str,
    known: &HashSet<String>,
    creating: &[String],
) -> bool {
    let ours = listed["notificationUrl"]
        .as_str()
        .is_some_and(|at| at.trim_end_matches('/') == url);
    let Some(id) = listed["id"].as_str() else {
        return false;
    };
    let resource = listed["resource"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('/');
    let in_flight = creating.iter().any(|wanted| {
        wanted
            .trim_start_matches('/')
            .eq_ignore_ascii_case(resource)
    });
    ours && !known.contains(&id.to_ascii_lowercase()) && !in_flight
}

async fn sweep_connection(
    context: &JobContext,
    connection: &Connection,
    url: &str,
) -> Result<Swept, JobError> {
    // First Graph, then the rows (the module's invariant).
    let listed = match context.graph.list_subscriptions(connection).await {
        Ok(listed) => listed,
        Err(err) => {
            // The connection's own status tells the operator (the token service warns once);
            // the next sweep tries again.
            tracing::debug!(connection = %connection.id, reason = err.reason_code(), "cannot list Graph's subscriptions; not swept");
            return Ok(Swept::default());
        }
    };
    let rows = subscriptions::list(&context.store, Some(&connection.tenant_id))
        .await
        .map_err(JobError::database)?;
    let known: HashSet<String> = rows
        .iter()
        .filter_map(|row| row.graph_id.as_deref())
        .map(str::to_ascii_lowercase)
        .collect();
    let creating: Vec<String> = rows
        .iter()
        .filter(|row| row.graph_id.is_none() && row.reason.as_deref() == Some("creating"))
        .map(|row| row.resource.clone())
        .collect();
    let mut swept = Swept::default();
    for orphan in listed
        .iter()
        .filter(|listed| is_orphan(listed, url, &known, &creating))
    {
        let Some(id) = orphan["id"].as_str() else {
            continue;
        };
        match context.graph.delete_subscription(connection, id).await {
            Ok(()) | Err(GraphError::NotFound { .. }) => {
                metrics::counter!(crate::metrics::names::SUBSCRIPTION_RENEWALS, "result" => "orphan_deleted")
                    .increment(1);
                swept.deleted += 1;
                tracing::warn!(connection = %connection.id, graph_subscription = id, resource = orphan["resource"].as_str().unwrap_or_default(), "deleted a subscription at Graph that no row knows (an orphan a lost create left)");
            }
            Err(err) => {
                swept.failed += 1;
                tracing::warn!(connection = %connection.id, graph_subscription = id, reason = err.reason_code(), "could not delete an orphaned subscription at Graph; the next sweep tries again");
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::json;

    use super::is_orphan;

    const URL: &str = "https://tenantd.example.com/webhooks/graph";

    #[test]
    fn only_unknown_subscriptions_at_our_url_and_not_being_created_are_orphans() {
        let known: HashSet<String> = ["aaaaaaaa-0000-0000-0000-000000000001".to_string()].into();
        let creating = vec!["users/u2/messages".to_string()];
        let listed = |id: &str, url: &str, resource: &str| json!({"id": id, "notificationUrl": url, "resource": resource});
        // Known, in Graph's upper case.
        assert!(!is_orphan(
            &listed(
                "AAAAAAAA-0000-0000-0000-000000000001",
                URL,
                "users/u1/messages"
            ),
            URL,
            &known,
            &creating
        ));
        // Unknown at our URL: an orphan (a trailing slash is the same URL).
        assert!(is_orphan(
            &listed("b", URL, "users/u1/messages"),
            URL,
            &known,
            &creating
        ));
        assert!(is_orphan(
            &listed("b", &format!("{URL}/"), "/Users/u1/messages"),
            URL,
            &known,
            &creating
        ));
        // Another deployment's URL: not ours to delete.
        assert!(!is_orphan(
            &listed(
                "c",
                "https://other.example.com/webhooks/graph",
                "users/u1/messages"
            ),
            URL,
            &known,
            &creating
        ));
        // A create in flight for this resource (any case, leading slash): left alone.
        assert!(!is_orphan(
            &listed("d", URL, "/Users/U2/Messages"),
            URL,
            &known,
            &creating
        ));
        // No id: nothing to delete.
        assert!(!is_orphan(
            &json!({"notificationUrl": URL, "resource": "users/u1/messages"}),
            URL,
            &known,
            &creating
        ));
    }
}
