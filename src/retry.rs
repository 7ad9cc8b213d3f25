//! The one retry policy: exponential backoff with full jitter, a random delay in
//! `[0, min(cap, base · 2^(attempt−1))]` (AWS Architecture Blog, "Exponential Backoff And
//! Jitter"). The token service retries through backon with it; the Graph client and the queue
//! (whose attempts live in the database) ask it for the delay of attempt n.
//!
//! Owns no tables. Invariants: a delay never exceeds its attempt's ceiling nor the cap; jitter
//! comes from `rand`'s thread generator, so instances retrying the same failure spread out.

use std::time::Duration;

/// Backoff parameters: first ceiling, largest ceiling, and (for backon) how many retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    base: Duration,
    cap: Duration,
    max_times: u32,
}

impl RetryPolicy {
    /// Ceilings from `base`, doubling per attempt, up to `cap`; retried without end unless
    /// [`RetryPolicy::with_max_times`] says otherwise.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            max_times: u32::MAX,
        }
    }

    /// At most `times` retries when used as a backon builder.
    pub const fn with_max_times(self, times: u32) -> Self {
        Self {
            max_times: times,
            ..self
        }
    }

    /// The delay before retry `attempt` (1 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// The delays of one retried operation, for backon.
#[derive(Debug)]
pub struct RetryDelays {
    policy: RetryPolicy,
    attempt: u32,
}

impl Iterator for RetryDelays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.attempt >= self.policy.max_times {
            return None;
        }
        self.attempt += 1;
        Some(self.policy.delay(self.attempt))
    }
}

impl backon::BackoffBuilder for RetryPolicy {
    type Backoff = RetryDelays;

    fn build(self) -> RetryDelays {
        RetryDelays {
            policy: self,
            attempt: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn delays_stay_within_their_exponential_ceiling_and_spread_out() {
        let policy = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 1..=12 {
            let ceiling =
                (Duration::from_secs(1) * 2u32.pow(attempt - 1)).min(Duration::from_secs(60));
            for _ in 0..50 {
                let delay = policy.delay(attempt);
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} > {ceiling:?}"
                );
            }
        }
        let spread: std::collections::BTreeSet<u128> =
            (0..50).map(|_| policy.delay(10).as_millis()).collect();
        assert!(spread.len() > 10, "full jitter spreads retries out");
    }

    #[test]
    fn as_a_backon_builder_it_stops_after_its_retries() {
        let policy =
            RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2)).with_max_times(2);
        let delays: Vec<Duration> = policy.build().collect();
        assert_eq!(delays.len(), 2);
        assert!(delays[0] <= Duration::from_millis(200), "{delays:?}");
        assert!(delays[1] <= Duration::from_millis(400), "{delays:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn backon_retries_with_it_until_the_operation_succeeds() {
        use backon::Retryable;
        let tries = std::sync::atomic::AtomicU32::new(0);
        let policy =
            RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2)).with_max_times(2);
        let result = (|| async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < 2 {
                Err("transient")
            } else {
                Ok(n)
            }
        })
        .retry(policy)
        .await;
        assert_eq!(result, Ok(2));
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
