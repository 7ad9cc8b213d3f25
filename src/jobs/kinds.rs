//! The one registration list of every job kind, apart from the queue machinery in `mod.rs`,
//! so `mod.rs` names no kind and each kind's file imports `Job` from it without a cycle.
//!
//! Owns no tables. Invariant: a kind missing here is unknown to the workers (its jobs fail
//! as `unknown_job_kind`), so every kind of this folder is registered.

use super::{
    bot_delete, bot_provision, connection_check, delegated_event, delegated_send_mail,
    graph_lifecycle, graph_notification, heartbeat_cleanup, heartbeat_run, noop, prune_attribution,
    prune_jobs, reconcile_subscriptions, resync_subscription, sweep_subscriptions, token_sweep,
    Registry,
};

impl Registry {
    /// The one registration list of every job kind.
    pub fn standard() -> Self {
        let mut registry = Self::default();
        registry.register::<bot_delete::BotDelete>();
        registry.register::<bot_provision::BotProvision>();
        registry.register::<connection_check::ConnectionCheck>();
        registry.register::<delegated_event::DelegatedEvent>();
        registry.register::<delegated_send_mail::DelegatedSendMail>();
        registry.register::<graph_lifecycle::GraphLifecycle>();
        registry.register::<graph_notification::GraphNotification>();
        registry.register::<heartbeat_cleanup::HeartbeatCleanup>();
        registry.register::<heartbeat_run::HeartbeatRun>();
        registry.register::<noop::Noop>();
        registry.register::<prune_attribution::PruneAttribution>();
        registry.register::<prune_jobs::PruneJobs>();
        registry.register::<reconcile_subscriptions::ReconcileSubscriptions>();
        registry.register::<resync_subscription::ResyncSubscription>();
        registry.register::<sweep_subscriptions::SweepSubscriptions>();
        registry.register::<token_sweep::TokenSweep>();
        registry
    }
}
