//! Cron expressions with seconds in an IANA time zone: parsing (each problem with its fix) and
//! fire times. Below config and the scheduler, which both read expressions through it.
//!
//! Owns no tables. Invariants: fire times are computed on the zone's local time (croner on
//! local time, chrono-tz for the zone), never a fixed offset, so a local time stays local
//! across daylight-saving changes; a skipped or repeated local hour fires once.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// What is wrong with an expression or a zone (for configuration and schedule messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronProblem {
    /// The cron expression does not parse.
    #[error("not a cron expression with seconds ({0})")]
    Cron(String),
    /// Unknown time zone.
    #[error("not an IANA time zone")]
    Zone,
}

impl CronProblem {
    /// How to fix it.
    pub fn fix(&self) -> &'static str {
        match self {
            CronProblem::Cron(_) => {
                "six fields with seconds first, e.g. \"0 */20 8-18 * * Mon-Fri\""
            }
            CronProblem::Zone => "use a name such as \"Europe/Berlin\" or \"UTC\"",
        }
    }
}

/// A parsed expression and its zone.
#[derive(Clone)]
pub struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

impl std::fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronSchedule")
            .field("cron", &self.cron.as_str())
            .field("zone", &self.zone.name())
            .finish()
    }
}

impl CronSchedule {
    /// Parses `expression` (six fields, seconds first) in `zone` (an IANA name).
    ///
    /// # Errors
    /// What is wrong, with [`CronProblem::fix`] to say how to fix it.
    pub fn parse(expression: &str, zone: &str) -> Result<Self, CronProblem> {
        let cron = Cron::new(expression)
            .with_seconds_required()
            .with_dom_and_dow()
            .parse()
            .map_err(|err| CronProblem::Cron(err.to_string()))?;
        let zone: Tz = zone.parse().map_err(|_| CronProblem::Zone)?;
        Ok(Self { cron, zone })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = after.with_timezone(&self.zone);
        for _ in 0..4 {
            let next = self
                .cron
                .find_next_occurrence(&from, false)
                .ok()?
                .with_timezone(&Utc);
            if next > after {
                return Some(next);
            }
            // In a repeated (fall-back) hour croner answers the first of the two wall-clock
            // times, which can lie before `after`: search on from an hour later.
            from = (from + chrono::Duration::hours(1)).with_timezone(&self.zone);
        }
        None
    }

    /// The latest fire time in `(last, now]`, if any: after downtime only the newest missed fire
    /// is returned, so it is caught up once.
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut due = None;
        let mut cursor = last;
        // Bounded: a every-second schedule after a long outage skips to the newest fire
        // through the loop below only up to this many steps, then jumps.
        for _ in 0..100_000 {
            match self.next_after(cursor) {
                Some(next) if next <= now => {
                    due = Some(next);
                    cursor = next;
                }
                _ => return due,
            }
        }
        // Very long outage of a very frequent schedule: the newest fire at or before `now`.
        self.next_after(now - chrono::Duration::seconds(1))
            .filter(|n| *n <= now)
            .or(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_say_what_and_how_to_fix() {
        let err = CronSchedule::parse("*/20 8-18 * * Mon-Fri", "UTC").unwrap_err();
        assert!(matches!(err, CronProblem::Cron(_)), "{err:?}");
        assert!(err.fix().contains("six fields"));
        let err = CronSchedule::parse("0 0 * * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(err, CronProblem::Zone);
        assert!(err.fix().contains("Europe/Berlin"));
        assert!(CronSchedule::parse("0 */20 8-18 * * Mon-Fri", "Europe/Berlin").is_ok());
    }
}
