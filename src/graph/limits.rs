//! Client-side limits in front of Graph: a learned pace per tenant and Graph service, a
//! per-mailbox concurrency limit (Outlook allows 4 per app and mailbox) and a global
//! concurrency cap.
//!
//! Graph keeps a budget per app, tenant and service (identity, Outlook, files, Teams, the
//! subscription API: learn.microsoft.com/graph/throttling-limits) and publishes few of them
//! exactly, so the pace learns each one instead of being told:
//! - It starts low and, while the pace is what holds requests back, every success adds one
//!   request per second: the rate doubles each second until Graph signals.
//! - A 429 holds every request of that tenant and service until its Retry-After (so one 429 is
//!   not followed by a burst of others) and lowers the rate at most once per cool-down (the
//!   requests in flight at the old rate answer 429 too). The new rate is measured, not guessed:
//!   a 429 means the budget is spent, so between two 429s Graph admitted exactly what the budget
//!   gave back, and the successes between them over the time between them are its rate; the
//!   pace goes to 97 % of that. Without such a measure (the first 429, or an interval in which
//!   the pace was not what held requests back) the rate halves out of the start, drops by a
//!   quarter, or by 3 % when it was probing near the last 429's rate.
//! - `x-ms-throttle-limit-percentage` (identity answers, sent once more than 0.8 of the limit
//!   is used) says the budget is nearly spent before a 429 does: no climbing while it comes, and
//!   5 % less once a second while it keeps rising. Practitioners report it missing even while
//!   429s come, so the 429 path does not depend on it.
//! - Successes climb again: quickly far below the last 429's rate, more and more slowly near
//!   it, so a steady load settles just under the budget with rare 429s.
//! - `graph.requests_per_second`, when the operator sets one, is a hard cap (a governor
//!   limiter); unset, the only ceiling is Graph's per-app limit (130,000 per 10 s).
//!
//! Owns no tables. Invariants: the rate stays within [1, cap]; no request of a tenant and
//! service is sent before its Retry-After has passed; time spent waiting in the limits is
//! measured.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The rate a tenant and service start at, in requests per second.
pub const START_RATE: f64 = 5.0;
/// The ceiling without an operator's cap: Graph's global limit per app, 130,000 requests per
/// 10 s.
const GRAPH_APP_LIMIT: f64 = 13_000.0;
/// Out of the start, the first 429 halves the rate (it doubled every second until then)...
const START_DECREASE: f64 = 0.5;
/// ...later ones without a measure take a quarter off...
const DECREASE: f64 = 0.75;
/// ...or this share when probing near the rate of the previous 429, and a measured budget is
/// paced at this share of itself.
const STEP_BACK: f64 = 0.97;
/// Further 429s within this time (or the Retry-After, if longer) do not lower the rate again.
const DECREASE_COOL_DOWN: Duration = Duration::from_secs(2);
/// A budget is measured over at least this long...
const MEASURE_MIN: Duration = Duration::from_secs(1);
/// ...and only when the pace held back at least this share of the successes between the two
/// 429s (else demand, not the budget, set the pace).
const MEASURE_BOUND_SHARE: f64 = 0.9;
/// While Graph reports more than 0.8 of the limit used and the share keeps rising, the rate
/// drops by this share, at most once per this long.
const LOAD_STEP_BACK: f64 = 0.95;
const LOAD_COOL_DOWN: Duration = Duration::from_secs(1);
/// "Near" the rate of the previous 429: within this factor of it, either way.
const NEAR: f64 = 0.9;
/// Climb as a share of the previous 429's rate per second: below 90 % of it, between 90 and
/// 97 %, and from 97 % up (the budget is close: probe it slowly, so that 429s are rare).
const CLIMB_FAR: f64 = 0.02;
const CLIMB_CLOSER: f64 = 0.005;
const CLIMB_PROBING: f64 = 0.0006;

/// The Graph service whose budget a request of this endpoint family counts against.
pub fn service_of(family: &str) -> &'static str {
    match family {
        "users" | "licenses" | "groups" | "applications" => "identity",
        "mail" | "calendar" => "outlook",
        "drive" | "drive_upload" => "files",
        "teams" => "teams",
        "subscriptions" => "subscriptions",
        "devportal" => "devportal",
        _ => "other",
    }
}

/// Limits of one process.
pub struct Limits {
    cap: Option<f64>,
    mailbox_concurrency: usize,
    global: Arc<Semaphore>,
    paces: Mutex<HashMap<(String, &'static str), Arc<TenantRate>>>,
    mailboxes: Mutex<HashMap<(String, String), Arc<Semaphore>>>,
}

/// The learned pace of one tenant and service.
pub struct TenantRate {
    state: Mutex<Pace>,
    max: f64,
    /// The operator's cap, if any.
    cap: Option<DefaultDirectRateLimiter>,
}

struct Pace {
    /// Requests per second now.
    rate: f64,
    /// Doubling each second until the first signal.
    starting: bool,
    /// The rate when the last 429 came (or the budget measured then).
    last_throttled_at_rate: Option<f64>,
    /// The next free send time.
    next_slot: Instant,
    /// Nothing is sent before this (the latest Retry-After).
    blocked_until: Instant,
    /// When a 429 last lowered the rate.
    lowered_at: Option<Instant>,
    /// When Graph's load header last lowered it (apart: a load step must not hold off the
    /// 429's larger one).
    load_lowered_at: Option<Instant>,
    /// Successes so far, and those of them the pace held back (demand was above the rate).
    successes: u64,
    bound: u64,
    /// The last 429 that lowered the rate: when, and the two counts then.
    last_throttle: Option<(Instant, u64, u64)>,
    /// The share of the limit Graph reported when the rate was last lowered for it.
    load_at_step_back: Option<f64>,
}

impl TenantRate {
    fn new(cap: Option<f64>) -> Self {
        let now = Instant::now();
        let max = cap.unwrap_or(GRAPH_APP_LIMIT);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let cap = cap.map(|cap| {
            let per_second = NonZeroU32::new(cap.ceil().max(1.0) as u32).expect("at least one");
            RateLimiter::direct(Quota::per_second(per_second))
        });
        Self {
            state: Mutex::new(Pace {
                rate: START_RATE.min(max),
                starting: true,
                last_throttled_at_rate: None,
                next_slot: now,
                blocked_until: now,
                lowered_at: None,
                load_lowered_at: None,
                successes: 0,
                bound: 0,
                last_throttle: None,
                load_at_step_back: None,
            }),
            max,
            cap,
        }
    }

    fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current rate in requests per second.
    pub fn rate(&self) -> f64 {
        self.pace().rate
    }

    /// Takes the next send time if it has come (and no Retry-After holds the requests);
    /// otherwise says when to look again. Send times are not reserved ahead: with 64 requests
    /// waiting, slots handed out at the old rate would keep a climb from taking effect for
    /// 64 slots.
    fn try_take(&self) -> Result<(), Instant> {
        let now = Instant::now();
        let mut pace = self.pace();
        let free = pace.next_slot.max(pace.blocked_until);
        if free > now {
            return Err(free);
        }
        let interval = Duration::from_secs_f64(1.0 / pace.rate);
        // A waiter woken a little late keeps the spacing (timers fire late by up to a
        // millisecond, 5 % of a 20 ms interval); after a pause the pace starts from now.
        let base = if now.duration_since(free) < interval {
            free
        } else {
            now
        };
        pace.next_slot = base + interval;
        Ok(())
    }

    /// A 429 with `retry_after`: hold the requests until then; lower the rate unless it was
    /// lowered within the cool-down.
    pub fn throttled(&self, retry_after: Duration) {
        let now = Instant::now();
        let mut pace = self.pace();
        pace.blocked_until = pace.blocked_until.max(now + retry_after);
        let cool_down = DECREASE_COOL_DOWN.max(retry_after);
        if pace
            .lowered_at
            .is_some_and(|at| now.duration_since(at) < cool_down)
        {
            return;
        }
        let old = pace.rate;
        // What Graph admitted since the previous 429, if the pace (not demand) set the pace.
        #[allow(clippy::cast_precision_loss)]
        let measured = pace.last_throttle.and_then(|(at, successes, bound)| {
            let seconds = now.duration_since(at);
            let admitted = (pace.successes - successes) as f64;
            let held_back = (pace.bound - bound) as f64;
            (seconds >= MEASURE_MIN
                && admitted > 0.0
                && held_back >= MEASURE_BOUND_SHARE * admitted)
                .then(|| admitted / seconds.as_secs_f64())
        });
        let (rate, budget) = match measured {
            // Never higher on a 429 than before it.
            Some(budget) => (budget.min(old) * STEP_BACK, budget.min(old)),
            None if pace.starting => (old * START_DECREASE, old),
            None => {
                // Probing just above the rate of the previous 429 only needs a step back
                // below it; a 429 anywhere else means the budget moved: a quarter off.
                let probing = pace
                    .last_throttled_at_rate
                    .is_some_and(|at| old >= at * NEAR && old <= at / NEAR);
                (old * if probing { STEP_BACK } else { DECREASE }, old)
            }
        };
        pace.rate = rate.clamp(1.0, self.max);
        pace.last_throttled_at_rate = Some(budget);
        pace.starting = false;
        pace.lowered_at = Some(now);
        pace.last_throttle = Some((now, pace.successes, pace.bound));
    }

    /// A success, with the share of the limit Graph reported used (identity answers carry it
    /// above 0.8): near the limit the rate holds, or steps back while the share rises; else it
    /// climbs, as long as the pace is what holds requests back: doubling at the start, then
    /// slower the closer it is to the rate of the last 429, and fast again once well past it.
    /// `held_back`: the request waited for its send time (demand was above the rate).
    pub fn succeeded(&self, load: Option<f64>, held_back: bool) {
        let now = Instant::now();
        let mut pace = self.pace();
        pace.successes += 1;
        if held_back {
            pace.bound += 1;
        }
        if let Some(load) = load.filter(|load| *load >= 0.8) {
            let rising = pace.load_at_step_back.is_none_or(|at| load > at);
            let cooled = pace
                .load_lowered_at
                .is_none_or(|at| now.duration_since(at) >= LOAD_COOL_DOWN);
            if rising && cooled {
                let old = pace.rate;
                // Out of the start (the rate doubled every second) the header ends it as a
                // 429 would; later, small steps while the share keeps rising.
                let factor = if pace.starting {
                    START_DECREASE
                } else {
                    LOAD_STEP_BACK
                };
                pace.last_throttled_at_rate = Some(old);
                pace.rate = (old * factor).clamp(1.0, self.max);
                pace.load_lowered_at = Some(now);
                pace.load_at_step_back = Some(load);
                pace.starting = false;
            }
            return;
        }
        pace.load_at_step_back = None;
        if !held_back || pace.rate >= self.max {
            return;
        }
        let per_second = match pace.last_throttled_at_rate {
            _ if pace.starting => pace.rate,
            None => pace.rate,
            Some(at) if pace.rate < at * NEAR || pace.rate > at / NEAR => CLIMB_FAR * at,
            Some(at) if pace.rate < at * STEP_BACK => CLIMB_CLOSER * at,
            Some(at) => CLIMB_PROBING * at,
        };
        // Successes arrive `rate` times a second.
        pace.rate = (pace.rate + per_second / pace.rate).clamp(1.0, self.max);
    }

    /// Waits for this request's send time (again if a 429 came meanwhile), then the cap.
    /// Returns whether the pace held the request back.
    async fn ready(&self) -> bool {
        let mut held_back = false;
        while let Err(at) = self.try_take() {
            held_back = true;
            tokio::time::sleep_until(at).await;
        }
        if let Some(cap) = &self.cap {
            cap.until_ready().await;
        }
        held_back
    }
}

/// What a request holds while it runs.
pub struct Permit {
    _global: OwnedSemaphorePermit,
    _mailbox: Option<OwnedSemaphorePermit>,
    /// Time spent waiting for the limits.
    pub waited: Duration,
    /// Whether the pace held the request back (demand was above the rate).
    pub held_back: bool,
}

impl Limits {
    /// Limits with at most `cap` requests per second per tenant and service (learned when
    /// `None`), `mailbox` concurrent requests per mailbox and `global` concurrent requests in
    /// all.
    pub fn new(cap: Option<u32>, mailbox: u32, global: u32) -> Self {
        Self {
            cap: cap.map(|cap| f64::from(cap.max(1))),
            mailbox_concurrency: usize::try_from(mailbox.max(1)).unwrap_or(4),
            global: Arc::new(Semaphore::new(usize::try_from(global.max(1)).unwrap_or(64))),
            paces: Mutex::new(HashMap::new()),
            mailboxes: Mutex::new(HashMap::new()),
        }
    }

    /// The learned pace of `tenant` for a Graph `service` ([`service_of`]).
    pub fn pace(&self, tenant: &str, service: &'static str) -> Arc<TenantRate> {
        self.paces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tenant.to_string(), service))
            .or_insert_with(|| Arc::new(TenantRate::new(self.cap)))
            .clone()
    }

    /// Waits for the tenant's pace for `service`, then the mailbox's slot (if any) and a
    /// global slot.
    pub async fn acquire(
        &self,
        tenant: &str,
        service: &'static str,
        mailbox: Option<&str>,
    ) -> Permit {
        let started = std::time::Instant::now();
        // The pace first, so a tenant waiting out a Retry-After holds no global slot.
        let held_back = self.pace(tenant, service).ready().await;
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
            held_back,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Successes (each held back by the pace) needed to climb to `to` requests per second.
    fn successes_to_climb(rate: &TenantRate, to: f64) -> u32 {
        let mut successes = 0;
        while rate.rate() < to {
            rate.succeeded(None, true);
            successes += 1;
        }
        successes
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_starts_low_doubles_each_second_and_halves_at_the_first_429() {
        let rate = TenantRate::new(None);
        assert!(close(rate.rate(), START_RATE));
        // Successes the pace did not hold back say nothing about the budget: no climb.
        for _ in 0..100 {
            rate.succeeded(None, false);
        }
        assert!(
            close(rate.rate(), START_RATE),
            "demand, not the pace, was the limit"
        );
        // Held back, each success adds one per second: `rate` successes a second double it.
        for _ in 0..5 {
            rate.succeeded(None, true);
        }
        assert!(close(rate.rate(), 10.0), "{}", rate.rate());
        rate.throttled(Duration::from_secs(1));
        assert!(close(rate.rate(), 5.0), "halved: {}", rate.rate());
        // The requests in flight at the old rate answer 429 too: no further drop.
        rate.throttled(Duration::from_secs(1));
        assert!(close(rate.rate(), 5.0), "once per cool-down");
        // Out of the start, successes climb by a share of the 429's rate per second.
        rate.succeeded(None, true);
        assert!(
            close(rate.rate(), 5.0 + CLIMB_FAR * 10.0 / 5.0),
            "{}",
            rate.rate()
        );
        let capped = TenantRate::new(Some(8.0));
        for _ in 0..1_000 {
            capped.succeeded(None, true);
        }
        assert!(close(capped.rate(), 8.0), "never above the operator's cap");
        let floor = TenantRate::new(None);
        for _ in 0..20 {
            floor.throttled(Duration::ZERO);
            tokio::time::advance(DECREASE_COOL_DOWN).await;
        }
        assert!(close(floor.rate(), 1.0), "never below 1 rps");
    }

    #[tokio::test(start_paused = true)]
    async fn between_two_429s_the_pace_measures_the_budget_graph_admitted() {
        let rate = TenantRate::new(None);
        for _ in 0..75 {
            rate.succeeded(None, true);
        }
        assert!(close(rate.rate(), 80.0));
        rate.throttled(Duration::from_secs(1));
        assert!(close(rate.rate(), 40.0), "halved out of the start");
        // Graph admits 20 a second for 3 s (Retry-After included), then says 429 again.
        for _ in 0..3 {
            for _ in 0..20 {
                rate.succeeded(None, true);
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let before = rate.rate();
        rate.throttled(Duration::from_secs(1));
        assert!(
            close(rate.rate(), 20.0 * STEP_BACK),
            "97 % of the measured 20/s, not a share of {before}: {}",
            rate.rate()
        );
        // Near the measured budget the climb is slow: from 97 % to 100 % of it takes
        // 1 / CLIMB_PROBING seconds per request per second of it (a third of a minute per 1 %).
        let successes = successes_to_climb(&rate, 20.0);
        #[allow(clippy::cast_precision_loss)]
        let seconds = f64::from(successes) / 20.0;
        assert!(seconds > 40.0, "{seconds} s");
        // An interval in which the pace held nothing back measures demand (here 2/s), not
        // the budget: a probing step back instead.
        tokio::time::advance(DECREASE_COOL_DOWN).await;
        rate.throttled(Duration::ZERO);
        let reference = rate.rate();
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..10 {
            rate.succeeded(None, false);
        }
        rate.throttled(Duration::ZERO);
        assert!(
            close(rate.rate(), reference * STEP_BACK),
            "{} after {reference}",
            rate.rate()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn graphs_load_header_stops_the_climb_and_steps_back_while_it_rises() {
        let rate = TenantRate::new(None);
        for _ in 0..15 {
            rate.succeeded(None, true);
        }
        assert!(close(rate.rate(), 20.0));
        rate.succeeded(Some(0.85), true);
        assert!(
            close(rate.rate(), 10.0),
            "it ends the start as a 429 would: {}",
            rate.rate()
        );
        rate.succeeded(Some(0.9), true);
        assert!(close(rate.rate(), 10.0), "once a second");
        tokio::time::advance(LOAD_COOL_DOWN).await;
        rate.succeeded(Some(0.84), true);
        assert!(
            close(rate.rate(), 10.0),
            "falling: the step back works, hold"
        );
        rate.succeeded(Some(0.9), true);
        assert!(
            close(rate.rate(), 10.0 * LOAD_STEP_BACK),
            "rising again: a small step"
        );
        for _ in 0..100 {
            rate.succeeded(Some(0.81), true);
        }
        assert!(
            close(rate.rate(), 10.0 * LOAD_STEP_BACK),
            "no climb while the header comes"
        );
        rate.succeeded(None, true);
        assert!(rate.rate() > 10.0 * LOAD_STEP_BACK, "below 0.8 it climbs");
        assert!(
            rate.rate() < 10.0 * LOAD_STEP_BACK + 0.1,
            "slowly: {}",
            rate.rate()
        );
        // A 429 just after a load step still lowers the rate.
        let before = rate.rate();
        rate.throttled(Duration::from_secs(1));
        assert!(
            rate.rate() < before * 0.98,
            "{} after {before}",
            rate.rate()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_measure_429s_step_back_by_where_they_come() {
        let rate = TenantRate::new(Some(200.0));
        for _ in 0..10_000 {
            rate.succeeded(None, true);
        }
        assert!(close(rate.rate(), 200.0));
        rate.throttled(Duration::from_millis(100));
        assert!(close(rate.rate(), 100.0), "halved out of the start");
        tokio::time::advance(DECREASE_COOL_DOWN).await;
        rate.throttled(Duration::ZERO);
        assert!(
            close(rate.rate(), 75.0),
            "a quarter off: 100 is not near the 200 of the last 429 (and no success between \
             them to measure)"
        );
        // The last 429 came at 100. Successes arrive `rate` times a second, so the successes
        // needed for a climb, divided by the rate, approximate its seconds.
        let far = f64::from(successes_to_climb(&rate, 100.0 * NEAR)) / 90.0 / (90.0 - 75.0);
        let closer = f64::from(successes_to_climb(&rate, 100.0 * STEP_BACK)) / 97.0 / (97.0 - 90.0);
        let probing = f64::from(successes_to_climb(&rate, 100.0)) / 100.0 / (100.0 - 97.0);
        // Seconds per request-per-second of climb: 1 / (share × 100).
        assert!((far - 1.0 / (CLIMB_FAR * 100.0)).abs() < 0.05, "{far}");
        assert!(
            (closer - 1.0 / (CLIMB_CLOSER * 100.0)).abs() < 0.1,
            "{closer}"
        );
        assert!(
            (probing - 1.0 / (CLIMB_PROBING * 100.0)).abs() < 0.5,
            "{probing}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn send_times_are_spaced_by_the_rate_and_wait_out_retry_after() {
        let rate = Arc::new(TenantRate::new(None));
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..5 {
            rate.ready().await;
            sent.push(Instant::now() - start);
        }
        let expected: Vec<Duration> = (0..5).map(|n| Duration::from_millis(200 * n)).collect();
        assert_eq!(sent, expected, "200 ms apart at the start's 5 rps");
        rate.throttled(Duration::from_secs(3));
        rate.ready().await;
        let after = Instant::now() - start;
        assert!(
            after >= Duration::from_millis(800) + Duration::from_secs(3),
            "{after:?}: not before Retry-After"
        );
        // Requests already waiting when the 429 comes wait for its Retry-After too, and count
        // as held back.
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let waiter = rate.clone();
                tokio::spawn(async move {
                    let held_back = waiter.ready().await;
                    (Instant::now(), held_back)
                })
            })
            .collect();
        tokio::task::yield_now().await;
        let throttled_at = Instant::now();
        rate.throttled(Duration::from_secs(5));
        for waiter in waiting {
            let (sent, held_back) = waiter.await.unwrap();
            assert!(
                sent - throttled_at >= Duration::from_secs(5),
                "{:?}",
                sent - throttled_at
            );
            assert!(held_back);
        }
        let idle = TenantRate::new(None);
        assert!(!idle.ready().await, "a free slot holds nothing back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_climb_takes_effect_at_once_however_many_requests_wait() {
        let rate = Arc::new(TenantRate::new(None));
        let sent = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let waiters: Vec<_> = (0..64)
            .map(|_| {
                let (rate, sent) = (rate.clone(), sent.clone());
                tokio::spawn(async move {
                    rate.ready().await;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                })
            })
            .collect();
        tokio::task::yield_now().await;
        // The rate jumps from 5 to 100 per second while 64 requests wait.
        while rate.rate() < 100.0 {
            rate.succeeded(None, true);
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        let by_then = sent.load(std::sync::atomic::Ordering::Relaxed);
        // At 5/s (slots handed out ahead) about 5 would be sent; at 100/s about 64.
        assert!(by_then >= 50, "{by_then} of 64 sent in 0.8 s");
        for waiter in waiters {
            waiter.await.unwrap();
        }
    }

    #[test]
    fn endpoint_families_count_against_their_graph_service() {
        for (family, service) in [
            ("users", "identity"),
            ("licenses", "identity"),
            ("mail", "outlook"),
            ("calendar", "outlook"),
            ("drive", "files"),
            ("drive_upload", "files"),
            ("teams", "teams"),
            ("subscriptions", "subscriptions"),
            ("batch", "other"),
        ] {
            assert_eq!(service_of(family), service, "{family}");
        }
    }

    #[tokio::test]
    async fn a_mailbox_gets_at_most_its_concurrency() {
        let limits = Arc::new(Limits::new(None, 4, 64));
        // A pace that has climbed far, so only the mailbox limit holds requests back here.
        let pace = limits.pace("t", "outlook");
        while pace.rate() < 1_000.0 {
            pace.succeeded(None, true);
        }
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(limits.acquire("t", "outlook", Some("adele@x")).await);
        }
        let blocked = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("t", "outlook", Some("ADELE@x")),
        )
        .await;
        assert!(blocked.is_err(), "a fifth request waits");
        assert!(
            tokio::time::timeout(
                Duration::from_millis(50),
                limits.acquire("t", "outlook", Some("alex@x"))
            )
            .await
            .is_ok(),
            "other mailboxes are free"
        );
        held.pop();
        assert!(tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("t", "outlook", Some("adele@x"))
        )
        .await
        .is_ok());
    }
}
