//! Subscription lifetimes: the longest Graph allows per resource, when a subscription is due
//! for renewal, and what reconcile does with each subscription.
//!
//! Owns no table. Invariant: tenantd never asks Graph for more than its documented maximum
//! (graph-protocol.md §1.2) and renews before the last quarter (or 2 hours) of a lifetime.

use super::Subscription;

/// The longest lifetime Graph allows for a subscription on `resource`, a few minutes short so
/// a create or renewal is never refused for asking too much (graph-protocol.md §1.2: Outlook
/// 10,080 min, or 1,440 with resource data; driveItem 42,300; directory 41,760; Teams chat and
/// channel messages 4,320; presence 60).
pub fn max_lifetime(resource: &str, include_resource_data: bool) -> std::time::Duration {
    let lower = resource.to_ascii_lowercase();
    let outlook = lower.starts_with("users/")
        && (lower.contains("/messages")
            || lower.contains("/events")
            || lower.contains("/contacts"));
    let minutes: u64 = if outlook && include_resource_data {
        // Outlook with resource data: under a day.
        1_440
    } else if lower.contains("/messages")
        && (lower.starts_with("chats") || lower.starts_with("teams"))
    {
        4_320
    } else if lower.contains("presence") {
        60
    } else if lower.contains("/messages")
        || lower.contains("/events")
        || lower.contains("/contacts")
    {
        10_080
    } else if lower.contains("/drive") || lower.starts_with("drives/") {
        42_300
    } else if lower.starts_with("chats") || lower.starts_with("teams") {
        4_320
    } else {
        41_760
    };
    std::time::Duration::from_secs((minutes - 5) * 60)
}

/// Whether a subscription expiring at `expires_at` should be renewed at `now`: within the last
/// quarter of its life or the last 2 hours, whichever comes first, but never in the first
/// half of its life (a one-hour presence subscription would otherwise be renewed at every
/// tick).
pub fn renewal_due(expires_at: i64, now: i64, lifetime: std::time::Duration) -> bool {
    let seconds = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    let ahead = (seconds / 4).max(2 * 3600).min(seconds / 2);
    expires_at - now <= ahead
}

/// What reconcile does with a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wanted and not at Graph: create it.
    Create,
    /// Wanted, at Graph, and due: renew it.
    Renew,
    /// No longer wanted but at Graph: delete it there, then the row.
    Delete,
    /// No longer wanted and not at Graph: remove the row.
    Forget,
    /// Wanted, at Graph, not due.
    Keep,
}

/// What reconcile does with `subscription` at `now` (Unix seconds).
pub fn action(subscription: &Subscription, now: i64) -> Action {
    match (&subscription.graph_id, subscription.wanted) {
        (Some(_), false) => Action::Delete,
        (None, false) => Action::Forget,
        (None, true) => Action::Create,
        (Some(_), true) => {
            let lifetime = max_lifetime(&subscription.resource, subscription.include_resource_data);
            if subscription
                .expires_at
                .is_none_or(|at| renewal_due(at, now, lifetime))
            {
                Action::Renew
            } else {
                Action::Keep
            }
        }
    }
}
