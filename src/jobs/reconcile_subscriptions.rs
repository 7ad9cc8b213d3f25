//! `reconcile_subscriptions`: makes Graph's subscriptions match the wanted ones. Creates
//! missing ones (Graph runs the validation handshake against the public listener first),
//! renews each before it lapses (within the last quarter of its life or 2 hours, whichever
//! comes first) with its resource's longest lifetime, creates again one that Graph no longer
//! has (404 on renewal), and deletes the ones no longer wanted. Scheduled every minute.

use serde::{Deserialize, Serialize};

use super::subscription_steps::{count, create_subscription, expiry_of, rfc3339};
use super::{Job, JobContext, JobError};
use crate::clock::now_unix;
use crate::graph::GraphError;
use crate::subscriptions::{self, Action, Subscription};
use crate::vault::connections::Connection;

/// Reconcile every subscription.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconcileSubscriptions {
    /// `listener.public_url`: where Graph posts; without it nothing can be created.
    #[serde(default)]
    pub public_url: Option<String>,
}

impl ReconcileSubscriptions {
    /// Throttling and outages are retried on the next tick.
    async fn create(
        &self,
        context: &JobContext,
        subscription: &Subscription,
        connection: &Connection,
    ) -> Result<(), JobError> {
        create_subscription(
            context,
            subscription,
            connection,
            self.public_url.as_deref(),
        )
        .await
        .map(drop)
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
                // Graph dropped it (expired, removed): create it again now; the resync reads
                // what changed while Graph had none once it exists (it creates it itself if
                // this attempt failed).
                super::subscription_steps::lost_at_graph(context, subscription).await?;
                count("recreated");
                self.create(context, subscription, connection).await?;
                super::resync_subscription::enqueue_resync(context, subscription).await
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
    const ONE_AT_A_TIME: bool = true;
    const MAX_ATTEMPTS: u32 = 3;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

    fn dedupe_key(&self) -> Option<String> {
        Some(Self::KIND.into())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        use futures_util::stream::{self, TryStreamExt};
        let now = now_unix();
        // A page at a time (memory stays flat with tens of thousands), several of a page at
        // once: each waits mostly on Graph (and Graph's handshake with our listener), so
        // thousands done one by one would outlast the job's timeout. All of them are polled
        // together by `try_for_each_concurrent`: none is left holding the store's write turn
        // unpolled. The Graph client's per-tenant pacing still applies.
        let mut after: Option<String> = None;
        loop {
            let page = subscriptions::page(&context.store, after.as_deref(), RECONCILE_PAGE)
                .await
                .map_err(JobError::database)?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.id.clone());
            stream::iter(page.iter().map(Ok))
                .try_for_each_concurrent(RECONCILE_CONCURRENCY, |subscription| {
                    self.reconcile_one(&context, subscription, now)
                })
                .await?;
        }
        publish_gauges(&context).await;
        Ok(())
    }
}

/// Subscriptions a reconcile works on at once.
const RECONCILE_CONCURRENCY: usize = 16;
/// Subscriptions a reconcile reads at a time.
const RECONCILE_PAGE: u32 = 500;

impl ReconcileSubscriptions {
    /// Brings one subscription in line: delete, forget, create or renew as its state asks.
    async fn reconcile_one(
        &self,
        context: &JobContext,
        subscription: &Subscription,
        now: i64,
    ) -> Result<(), JobError> {
        let connection = match super::subscription_connection(&context.store, subscription).await {
            Ok(connection) => connection,
            Err(err) => {
                subscriptions::record_failed(&context.store, &subscription.id, err.reason_code())
                    .await
                    .map_err(JobError::database)?;
                return Ok(());
            }
        };
        match (
            subscriptions::action(subscription, now),
            &subscription.graph_id,
        ) {
            (Action::Delete, Some(graph_id)) => {
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
            (Action::Forget, _) => subscriptions::forget(&context.store, &subscription.id)
                .await
                .map_err(JobError::database)?,
            (Action::Create, _) => self.create(context, subscription, &connection).await?,
            (Action::Renew, Some(graph_id)) => {
                self.renew(context, subscription, &connection, graph_id)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Subscriptions by status and the soonest expiry, for dashboards and alerts.
async fn publish_gauges(context: &JobContext) {
    let Ok((counts, soonest)) = subscriptions::status_counts(&context.store).await else {
        return;
    };
    for status in ["pending", "active", "failed", "removed"] {
        #[allow(clippy::cast_precision_loss)]
        let count = counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n) as f64;
        metrics::gauge!(crate::metrics::names::SUBSCRIPTIONS, "status" => status).set(count);
    }
    if let Some(soonest) = soonest {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(crate::metrics::names::SUBSCRIPTION_EXPIRY)
            .set((soonest - now_unix()) as f64);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use tokio::time::Instant;

    use crate::subscriptions::{self, Action, Subscription};

    fn wanted(resource: &str, include_resource_data: bool) -> Subscription {
        Subscription {
            id: resource.into(),
            tenant_id: "t".into(),
            resource: resource.into(),
            change_types: "created".into(),
            origin: "config".into(),
            wanted: true,
            graph_id: None,
            connection_id: None,
            expires_at: None,
            last_renewed_at: None,
            status: "pending".into(),
            reason: None,
            include_resource_data,
            encryption_certificate_id: None,
            encryption_certificate: None,
            delta_link: None,
        }
    }

    /// A month at the scheduler's pace, in paused time: reconcile fires when the built-in
    /// schedule says (every minute), decides with the same rule the job uses, and Graph (here
    /// a table of expiries with Graph's maximum lifetimes) never sees a subscription lapse.
    /// Each renewal comes in its window: within the last quarter or 2 hours (at most half
    /// its life), and not before.
    #[tokio::test(start_paused = true)]
    async fn subscriptions_are_renewed_before_they_lapse_at_the_schedulers_pace() {
        let schedules = crate::scheduler::builtin(168, None);
        let reconcile = schedules
            .iter()
            .find(|s| s.name == "reconcile_subscriptions")
            .expect("built in");
        // Graph's limits in minutes (graph-protocol.md §1.2).
        let mut subscriptions: Vec<(Subscription, u64)> = vec![
            (wanted("users/u/messages", false), 10_080),
            (wanted("users/u/messages?$select=subject", true), 1_440),
            (wanted("chats/getAllMessages", false), 4_320),
            (wanted("users/u/drive/root", false), 42_300),
            (wanted("communications/presences/p/presence", false), 60),
        ];
        let mut renewals = vec![0u32; subscriptions.len()];
        let start = Instant::now();
        let base = Utc.with_ymd_and_hms(2026, 3, 27, 23, 59, 45).unwrap();
        let wall = || base + (Instant::now() - start);
        let end = base + chrono::Duration::days(30);
        let mut last = wall();
        while wall() < end {
            let fire = reconcile.next_after(last).expect("every minute");
            tokio::time::sleep((fire - wall()).to_std().unwrap_or_default()).await;
            last = fire;
            let now = wall().timestamp();
            assert_eq!(now, fire.timestamp(), "woken at the fire time");
            for (n, (subscription, graph_max_minutes)) in subscriptions.iter_mut().enumerate() {
                let lifetime = subscriptions::max_lifetime(
                    &subscription.resource,
                    subscription.include_resource_data,
                );
                assert!(
                    lifetime.as_secs() <= *graph_max_minutes * 60,
                    "{}: never asks Graph for more than it allows",
                    subscription.resource
                );
                if let Some(expires) = subscription.expires_at {
                    assert!(now < expires, "{} lapsed", subscription.resource);
                }
                let asked = now + i64::try_from(lifetime.as_secs()).unwrap();
                match subscriptions::action(subscription, now) {
                    Action::Create => {
                        subscription.graph_id = Some("g".into());
                        subscription.expires_at = Some(asked);
                    }
                    Action::Renew => {
                        let left = subscription.expires_at.unwrap() - now;
                        let life = i64::try_from(lifetime.as_secs()).unwrap();
                        let window = (life / 4).max(2 * 3600).min(life / 2);
                        assert!(
                            left <= window && left > window - 120,
                            "{}: renewed with {left} s left, window {window} s",
                            subscription.resource
                        );
                        // An instance clock 10 minutes slow renews 10 minutes later than
                        // this: still before Graph's expiry, with a minute to spare.
                        assert!(
                            left > 11 * 60,
                            "{}: a clock 10 minutes slow would renew too late ({left} s left)",
                            subscription.resource
                        );
                        subscription.expires_at = Some(asked);
                        renewals[n] += 1;
                    }
                    Action::Keep => {}
                    other => panic!("{other:?} for a wanted subscription"),
                }
            }
        }
        // A month of renewals: 30 days over the time between renewals, each.
        for ((subscription, _), renewed) in subscriptions.iter().zip(&renewals) {
            let life = subscriptions::max_lifetime(
                &subscription.resource,
                subscription.include_resource_data,
            )
            .as_secs();
            let window = (life / 4).max(2 * 3600).min(life / 2);
            // Renewals come on minute ticks: the interval rounds up to a whole minute.
            let interval = (life - window).div_ceil(60) * 60;
            let expected = 30 * 24 * 3600 / interval;
            assert!(
                u64::from(*renewed).abs_diff(expected) <= 1,
                "{}: {renewed} renewals, about {expected} expected",
                subscription.resource
            );
        }
    }
}
