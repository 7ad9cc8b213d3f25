//! The wall clock as the database stores it: seconds (audit, connections, subscriptions, runs)
//! or milliseconds (the queue) since the Unix epoch. The lowest layer: every module may read it.
//!
//! Owns no tables. Invariants: a clock before 1970 reads as 0 and one past `i64` saturates, so
//! no caller handles an error for a time it cannot act on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch (zero for a clock set before it).
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    i64::try_from(since_epoch().as_secs()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    i64::try_from(since_epoch().as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_milliseconds_read_the_same_clock() {
        let (seconds, millis) = (now_unix(), now_unix_ms());
        // After 2020 and within a second of each other.
        assert!(seconds > 1_577_836_800, "{seconds}");
        assert!(
            (millis / 1000 - seconds).abs() <= 1,
            "{millis} vs {seconds}"
        );
    }
}
