//! Client-side limits in front of Graph: a global concurrency cap, a per-mailbox concurrency
//! limit (Outlook allows 4 per app and mailbox), and a per-tenant rate (governor) that adapts:
//! halved after a 429, raised step by step after successes (AIMD), so a steady load settles just
//! under the tenant's budget.
//!
//! Owns no tables. Invariants: the rate stays within [1, configured] requests per second; time
//! spent waiting in the limiter is measured.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits of one process.
pub struct Limits {
    max_rate: f64,
    mailbox_concurrency: usize,
    global: Arc<Semaphore>,
    tenants: Mutex<HashMap<String, Arc<TenantRate>>>,
    mailboxes: Mutex<HashMap<(String, String), Arc<Semaphore>>>,
}

/// A tenant's adaptive rate.
pub struct TenantRate {
    state: Mutex<RateState>,
    max: f64,
}

struct RateState {
    /// The rate AIMD arrived at.
    rate: f64,
    /// The rate the limiter was built for (rebuilt only on a real change).
    built_for: f64,
    limiter: Arc<DefaultDirectRateLimiter>,
}

fn limiter(rate: f64) -> Arc<DefaultDirectRateLimiter> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let burst = NonZeroU32::new((rate / 4.0).ceil().max(1.0) as u32).expect("at least one");
    let quota = Quota::with_period(period)
        .expect("a positive period")
        .allow_burst(burst);
    Arc::new(RateLimiter::direct(quota))
}

impl TenantRate {
    fn new(max: f64) -> Self {
        Self {
            state: Mutex::new(RateState {
                rate: max,
                built_for: max,
                limiter: limiter(max),
            }),
            max,
        }
    }

    /// The current rate in requests per second.
    pub fn rate(&self) -> f64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rate
    }

    fn set(&self, rate: f64) {
        let rate = rate.clamp(1.0, self.max);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.rate = rate;
        // Rebuilding the limiter forgets its burst; only do it for a real change.
        let drift = (rate - state.built_for).abs() / state.built_for;
        if drift >= 0.05 || (rate == self.max && state.built_for != self.max) {
            state.built_for = rate;
            state.limiter = limiter(rate);
        }
    }

    /// Multiplicative decrease after a 429.
    pub fn throttled(&self) {
        self.set(self.rate() / 2.0);
    }

    /// Additive increase after a success: about two requests per second more per second of
    /// successes at the current rate.
    pub fn succeeded(&self) {
        let rate = self.rate();
        if rate < self.max {
            self.set(rate + 1.0 / rate.max(1.0) * 2.0);
        }
    }

    async fn ready(&self) {
        let limiter = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .limiter
            .clone();
        limiter.until_ready().await;
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

    /// Waits for a global slot, the mailbox's slot (if any) and the tenant's rate.
    pub async fn acquire(&self, tenant: &str, mailbox: Option<&str>) -> Permit {
        let started = Instant::now();
        let global = self
            .global
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
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
        self.tenant(tenant).ready().await;
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

    #[test]
    fn the_rate_halves_on_throttling_and_climbs_back() {
        let rate = TenantRate::new(20.0);
        rate.throttled();
        assert!((rate.rate() - 10.0).abs() < 1e-9);
        rate.throttled();
        rate.throttled();
        rate.throttled();
        rate.throttled();
        assert!((rate.rate() - 1.0).abs() < 1e-9, "never below 1 rps");
        let mut steps = 0;
        while rate.rate() < 20.0 && steps < 10_000 {
            rate.succeeded();
            steps += 1;
        }
        assert!(
            (rate.rate() - 20.0).abs() < 1e-9,
            "climbs back to the configured rate"
        );
        assert!(steps > 20, "additively, not at once: {steps}");
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
