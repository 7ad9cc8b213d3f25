//! Client-side limits in front of Graph: a per-tenant pace that adapts, a per-mailbox
//! concurrency limit (Outlook allows 4 per app and mailbox) and a global concurrency cap.
//!
//! The pace hands out evenly spaced send times at the tenant's current rate. A 429 holds every
//! request of that tenant until its Retry-After has passed (so one 429 is not followed by a
//! burst of others), and lowers the rate at most once per cool-down (the requests already in
//! flight at the old rate answer 429 too): by 3 % when it was probing near the rate of the
//! previous 429, by a quarter otherwise. Successes raise the rate again: quickly far below the
//! rate of the last 429, more and more slowly near it, so a steady load settles just under the
//! tenant's budget with rare 429s. A governor limiter at the configured rate is the hard cap.
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

/// After a 429 the rate becomes this share of what it was...
const DECREASE: f64 = 0.75;
/// ...or this share when it was probing near the rate of the previous 429.
const STEP_BACK: f64 = 0.97;
/// Further 429s within this time (or the Retry-After, if longer) do not lower the rate again.
const DECREASE_COOL_DOWN: Duration = Duration::from_secs(2);
/// "Near" the rate of the previous 429: within this factor of it, either way.
const NEAR: f64 = 0.9;
/// Climb without a previous 429, in requests per second per second.
const CLIMB: f64 = 2.0;
/// Climb as a share of the previous 429's rate per second: below 90 % of it, between 90 and
/// 97 %, and from 97 % up (the budget is close: probe it slowly, so that 429s are rare).
const CLIMB_FAR: f64 = 0.02;
const CLIMB_CLOSER: f64 = 0.005;
const CLIMB_PROBING: f64 = 0.0006;

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
            // Probing just above the rate of the previous 429 only needs a step back below it;
            // a 429 anywhere else means the budget moved: back off by a quarter.
            let probing = pace
                .last_throttled_at_rate
                .is_some_and(|at| pace.rate >= at * NEAR && pace.rate <= at / NEAR);
            let factor = if probing { STEP_BACK } else { DECREASE };
            pace.last_throttled_at_rate = Some(pace.rate);
            pace.rate = (pace.rate * factor).clamp(1.0, self.max);
            pace.lowered_at = Some(now);
        }
    }

    /// A success: the rate climbs, slower the closer it is to the rate of the last 429, and
    /// fast again once well past it (the budget grew).
    pub fn succeeded(&self) {
        let mut pace = self.pace();
        if pace.rate >= self.max {
            return;
        }
        let per_second = match pace.last_throttled_at_rate {
            None => CLIMB,
            Some(at) if pace.rate < at * NEAR || pace.rate > at / NEAR => CLIMB_FAR * at,
            Some(at) if pace.rate < at * STEP_BACK => CLIMB_CLOSER * at,
            Some(at) => CLIMB_PROBING * at,
        };
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

    /// Successes needed to climb from `from` to `to` requests per second.
    fn successes_to_climb(rate: &TenantRate, to: f64) -> u32 {
        let mut successes = 0;
        while rate.rate() < to {
            rate.succeeded();
            successes += 1;
        }
        successes
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_lowers_the_rate_once_per_cool_down_and_it_climbs_back_slower_near_it() {
        let rate = TenantRate::new(200.0);
        rate.throttled(Duration::from_millis(100));
        assert!((rate.rate() - 150.0).abs() < 1e-9, "a quarter down");
        // The requests in flight at the old rate answer 429 too: no further drop.
        rate.throttled(Duration::from_millis(100));
        rate.throttled(Duration::from_millis(100));
        assert!((rate.rate() - 150.0).abs() < 1e-9, "once per cool-down");
        tokio::time::advance(DECREASE_COOL_DOWN).await;
        rate.throttled(Duration::ZERO);
        assert!(
            (rate.rate() - 112.5).abs() < 1e-9,
            "again after the cool-down, a quarter down (150 is not near 200)"
        );
        // The last 429 came at 150. Successes arrive `rate` times a second, so the successes
        // needed for a climb, divided by the rate, approximate its seconds.
        let far = f64::from(successes_to_climb(&rate, 150.0 * NEAR)) / 135.0 / (135.0 - 112.5);
        let closer =
            f64::from(successes_to_climb(&rate, 150.0 * STEP_BACK)) / 145.5 / (145.5 - 135.0);
        let probing = f64::from(successes_to_climb(&rate, 150.0)) / 150.0 / (150.0 - 145.5);
        // Seconds per request-per-second of climb: 1 / (share × 150).
        assert!((far - 1.0 / (CLIMB_FAR * 150.0)).abs() < 0.05, "{far}");
        assert!(
            (closer - 1.0 / (CLIMB_CLOSER * 150.0)).abs() < 0.1,
            "{closer}"
        );
        assert!(
            (probing - 1.0 / (CLIMB_PROBING * 150.0)).abs() < 0.5,
            "{probing}"
        );
        // A 429 while probing at the last one's rate: a small step back.
        tokio::time::advance(DECREASE_COOL_DOWN).await;
        let probing_at = rate.rate();
        rate.throttled(Duration::ZERO);
        assert!(
            (rate.rate() - probing_at * STEP_BACK).abs() < 1e-9,
            "{}",
            rate.rate()
        );
        for _ in 0..1_000_000 {
            rate.succeeded();
        }
        assert!(
            (rate.rate() - 200.0).abs() < 1e-9,
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
