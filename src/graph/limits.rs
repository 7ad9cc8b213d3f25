//! Client-side limits in front of Graph: a per-tenant pace that adapts, a per-mailbox
//! concurrency limit (Outlook allows 4 per app and mailbox) and a global concurrency cap.
//!
//! The pace hands out evenly spaced send times at the tenant's current rate. A 429 holds every
//! request of that tenant until its Retry-After has passed (so one 429 is not followed by a
//! burst of others), and lowers the rate by a quarter, at most once per cool-down (the requests
//! already in flight at the old rate answer 429 too). Successes raise the rate again: quickly
//! far below the rate of the last 429, slowly near it, so a steady load settles just under the
//! tenant's budget with few 429s. A governor limiter at the configured rate is the hard cap.
//!
//! Owns no tables. Invariants: the rate stays within [1, configured] requests per second; no
//! request of a tenant is sent before that tenant's Retry-After has passed; time spent waiting
//! in the limits is measured.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// After a 429 the rate becomes this share of what it was.
const DECREASE: f64 = 0.75;
/// Further 429s within this time (or the Retry-After, if longer) do not lower the rate again.
const DECREASE_COOL_DOWN: Duration = Duration::from_secs(2);
/// Requests per second gained per second of successes, far from and near the last 429's rate.
const CLIMB_FAST: f64 = 2.0;
const CLIMB_SLOW: f64 = 0.25;
/// "Near" the last 429's rate: above this share of it.
const NEAR: f64 = 0.9;

/// Limits of one process.
pub struct Limits {
    max_rate: f64,
    mailbox_concurrency: usize,
    global: Arc<Semaphore>,
    tenants: Mutex<HashMap<String, Arc<TenantRate>>>,
    mailboxes: Mutex<HashMap<(String, String), Arc<Semaphore>>>,
}

/// A tenant's adaptive pace.
pub struct TenantRate {
    state: Mutex<Pace>,
    max: f64,
    /// The configured rate as a hard cap.
    cap: DefaultDirectRateLimiter,
}

struct Pace {
    /// Requests per second now.
    rate: f64,
    /// The rate when the last 429 came.
    last_throttled_at_rate: Option<f64>,
    /// The next free send time.
    next_slot: Instant,
    /// Nothing is sent before this (the latest Retry-After).
    blocked_until: Instant,
    /// When the rate was last lowered.
    lowered_at: Option<Instant>,
}

impl TenantRate {
    fn new(max: f64) -> Self {
        let now = Instant::now();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let per_second = NonZeroU32::new(max.ceil().max(1.0) as u32).expect("at least one");
        Self {
            state: Mutex::new(Pace {
                rate: max,
                last_throttled_at_rate: None,
                next_slot: now,
                blocked_until: now,
                lowered_at: None,
            }),
            max,
            cap: RateLimiter::direct(Quota::per_second(per_second)),
        }
    }

    fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current rate in requests per second.
    pub fn rate(&self) -> f64 {
        self.pace().rate
    }

    /// Reserves the next send time: evenly spaced at the current rate, never before the latest
    /// Retry-After.
    fn reserve(&self) -> Instant {
        let mut pace = self.pace();
        let slot = Instant::now().max(pace.next_slot).max(pace.blocked_until);
        pace.next_slot = slot + Duration::from_secs_f64(1.0 / pace.rate);
        slot
    }

    /// A 429 with `retry_after`: hold the tenant's requests until then; lower the rate unless it
    /// was lowered within the cool-down.
    pub fn throttled(&self, retry_after: Duration) {
        let now = Instant::now();
        let mut pace = self.pace();
        pace.blocked_until = pace.blocked_until.max(now + retry_after);
        let cool_down = DECREASE_COOL_DOWN.max(retry_after);
        if pace
            .lowered_at
            .is_none_or(|at| now.duration_since(at) >= cool_down)
        {
            pace.last_throttled_at_rate = Some(pace.rate);
            pace.rate = (pace.rate * DECREASE).clamp(1.0, self.max);
            pace.lowered_at = Some(now);
        }
    }

    /// A success: the rate climbs, slowly near the rate of the last 429.
    pub fn succeeded(&self) {
        let mut pace = self.pace();
        if pace.rate >= self.max {
            return;
        }
        let near = pace
            .last_throttled_at_rate
            .is_some_and(|at| pace.rate >= at * NEAR && pace.rate <= at / NEAR);
        let per_second = if near { CLIMB_SLOW } else { CLIMB_FAST };
        // Successes arrive `rate` times a second.
        pace.rate = (pace.rate + per_second / pace.rate).clamp(1.0, self.max);
    }

    /// Waits for this request's send time (again if a 429 came meanwhile), then the cap.
    async fn ready(&self) {
        loop {
            let slot = self.reserve();
            tokio::time::sleep_until(slot).await;
            if self.pace().blocked_until <= Instant::now() {
                break;
            }
        }
        self.cap.until_ready().await;
    }
}

/// What a request holds while it runs.
pub struct Permit {
    _global: OwnedSemaphorePermit,
    _mailbox: Option<OwnedSemaphorePermit>,
    /// Time spent waiting for the limits.
    pub waited: Duration,
}

impl Limits {
    /// Limits with `rate` requests per second per tenant, `mailbox` concurrent requests per
    /// mailbox and `global` concurrent requests in all.
    pub fn new(rate: u32, mailbox: u32, global: u32) -> Self {
        Self {
            max_rate: f64::from(rate.max(1)),
            mailbox_concurrency: usize::try_from(mailbox.max(1)).unwrap_or(4),
            global: Arc::new(Semaphore::new(usize::try_from(global.max(1)).unwrap_or(64))),
            tenants: Mutex::new(HashMap::new()),
            mailboxes: Mutex::new(HashMap::new()),
        }
    }

    /// A tenant's adaptive rate.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantRate> {
        self.tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(TenantRate::new(self.max_rate)))
            .clone()
    }

    /// Waits for the tenant's pace, then the mailbox's slot (if any) and a global slot.
    pub async fn acquire(&self, tenant: &str, mailbox: Option<&str>) -> Permit {
        let started = std::time::Instant::now();
        // The pace first, so a tenant waiting out a Retry-After holds no global slot.
        self.tenant(tenant).ready().await;
        let mailbox = match mailbox {
            Some(mailbox) => {
                let semaphore = self
                    .mailboxes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((tenant.to_string(), mailbox.to_ascii_lowercase()))
                    .or_insert_with(|| Arc::new(Semaphore::new(self.mailbox_concurrency)))
                    .clone();
                Some(semaphore.acquire_owned().await.expect("never closed"))
            }
            None => None,
        };
        let global = self
            .global
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        Permit {
            _global: global,
            _mailbox: mailbox,
            waited: started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_429_lowers_the_rate_once_per_cool_down_and_it_climbs_back_slowly_near_it() {
        let rate = TenantRate::new(100.0);
        rate.throttled(Duration::from_millis(100));
        assert!((rate.rate() - 75.0).abs() < 1e-9);
        // The requests in flight at the old rate answer 429 too: no further drop.
        rate.throttled(Duration::from_millis(100));
        rate.throttled(Duration::from_millis(100));
        assert!((rate.rate() - 75.0).abs() < 1e-9, "once per cool-down");
        tokio::time::advance(DECREASE_COOL_DOWN).await;
        rate.throttled(Duration::ZERO);
        assert!(
            (rate.rate() - 56.25).abs() < 1e-9,
            "again after the cool-down"
        );
        // Far below the last 429's rate (75 → 56): quick climb, about 2 rps per second.
        let mut successes = 0;
        while rate.rate() < 75.0 * NEAR {
            rate.succeeded();
            successes += 1;
        }
        let far = successes;
        // Near it: about 0.25 rps per second, eight times slower.
        let start = rate.rate();
        successes = 0;
        while rate.rate() < start + 5.0 {
            rate.succeeded();
            successes += 1;
        }
        assert!(
            f64::from(successes) / 5.0 > 6.0 * f64::from(far) / (75.0 * NEAR - 56.25),
            "slower near the last 429: {successes} successes for 5 rps, {far} for {:.1}",
            75.0 * NEAR - 56.25
        );
        for _ in 0..1_000_000 {
            rate.succeeded();
        }
        assert!(
            (rate.rate() - 100.0).abs() < 1e-9,
            "never above the configured rate"
        );
        let floor = TenantRate::new(4.0);
        for _ in 0..20 {
            floor.throttled(Duration::ZERO);
            tokio::time::advance(DECREASE_COOL_DOWN).await;
        }
        assert!((floor.rate() - 1.0).abs() < 1e-9, "never below 1 rps");
    }

    #[tokio::test(start_paused = true)]
    async fn send_times_are_spaced_by_the_rate_and_wait_out_retry_after() {
        let rate = TenantRate::new(10.0);
        let start = Instant::now();
        let slots: Vec<Duration> = (0..5).map(|_| rate.reserve() - start).collect();
        let expected: Vec<Duration> = (0..5).map(|n| Duration::from_millis(100 * n)).collect();
        assert_eq!(slots, expected, "100 ms apart at 10 rps");
        rate.throttled(Duration::from_secs(3));
        let after = rate.reserve() - start;
        assert!(
            after >= Duration::from_secs(3),
            "{after:?}: not before Retry-After"
        );
        // A request that reserved its slot (300 ms from now) before the 429 waits for the
        // Retry-After too.
        let early = TenantRate::new(10.0);
        for _ in 0..3 {
            early.reserve();
        }
        let waiting = {
            let early = Arc::new(early);
            let waiter = early.clone();
            let task = tokio::spawn(async move {
                waiter.ready().await;
                Instant::now()
            });
            tokio::task::yield_now().await;
            early.throttled(Duration::from_secs(5));
            task
        };
        let sent = waiting.await.unwrap();
        assert!(sent - start >= Duration::from_secs(5), "{:?}", sent - start);
    }

    #[tokio::test]
    async fn a_mailbox_gets_at_most_its_concurrency() {
        let limits = Arc::new(Limits::new(1000, 4, 64));
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(limits.acquire("t", Some("adele@x")).await);
        }
        let blocked = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("t", Some("ADELE@x")),
        )
        .await;
        assert!(blocked.is_err(), "a fifth request waits");
        assert!(
            tokio::time::timeout(
                Duration::from_millis(50),
                limits.acquire("t", Some("alex@x"))
            )
            .await
            .is_ok(),
            "other mailboxes are free"
        );
        held.pop();
        assert!(tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("t", Some("adele@x"))
        )
        .await
        .is_ok());
    }
}
