//! Cron schedules that only enqueue: each fire time becomes one job (dedupe key
//! `schedule:<name>:<fire time>`, or the kind's own key for kinds that run one at a time, such
//! as `reconcile_subscriptions`), however many instances tick; schedules follow their IANA
//! time zone across daylight-saving changes; after downtime the latest missed fire is enqueued
//! once, not every missed one.
//!
//! Owns `schedules`. Invariants: a schedule's `last_fire_at` only moves forward, through a
//! conditional UPDATE, so exactly one instance enqueues each fire time; fire times are computed
//! in the schedule's zone (`cron.rs`), never a fixed offset.
//! Why not tokio-cron-scheduler: docs/decisions/0008-scheduler.md.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::cron::{CronProblem, CronSchedule};
use crate::jobs::heartbeat_run::HeartbeatRun;
use crate::jobs::prune_attribution::PruneAttribution;
use crate::jobs::prune_jobs::PruneJobs;
use crate::jobs::reconcile_subscriptions::ReconcileSubscriptions;
use crate::jobs::sweep_subscriptions::SweepSubscriptions;
use crate::jobs::token_sweep::TokenSweep;
use crate::jobs::Job;
use crate::queue::{NewJob, Queue, QueueError};
use crate::store::{with_pool, write_tx, Store, StoreError};

/// Why a schedule is invalid or a tick failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("schedule `{name}`: `{expression}` is not a cron expression with seconds ({reason}); fix: six fields, e.g. \"0 */20 8-18 * * Mon-Fri\"")]
    Cron {
        /// Schedule name.
        name: String,
        /// The expression.
        expression: String,
        /// The parser's words.
        reason: String,
    },
    /// Unknown time zone.
    #[error("schedule `{name}`: `{zone}` is not an IANA time zone; fix: use a name such as \"Europe/Berlin\" or \"UTC\"")]
    Zone {
        /// Schedule name.
        name: String,
        /// The zone.
        zone: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Enqueueing failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<sqlx::Error> for ScheduleError {
    fn from(err: sqlx::Error) -> Self {
        ScheduleError::Store(StoreError::from(err))
    }
}

/// One schedule.
pub struct Schedule {
    /// Stable name.
    pub name: String,
    when: CronSchedule,
    job: Box<dyn Fn() -> NewJob + Send + Sync>,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("name", &self.name)
            .field("when", &self.when)
            .finish_non_exhaustive()
    }
}

/// The job a schedule enqueues, built from a [`Job`].
pub fn job_of<J: Job + Clone>(job: J) -> impl Fn() -> NewJob + Send + Sync {
    move || {
        let mut new = crate::jobs::new_job(&job);
        // Kinds that run one at a time keep their own key (see `Scheduler::tick`).
        if !J::ONE_AT_A_TIME {
            new.dedupe_key = None;
        }
        new
    }
}

impl Schedule {
    /// A schedule firing at `expression` (cron with seconds) in `zone`.
    ///
    /// # Errors
    /// [`ScheduleError::Cron`] or [`ScheduleError::Zone`], naming the schedule and the fix.
    pub fn new(
        name: &str,
        expression: &str,
        zone: &str,
        job: impl Fn() -> NewJob + Send + Sync + 'static,
    ) -> Result<Self, ScheduleError> {
        let when = CronSchedule::parse(expression, zone).map_err(|problem| match problem {
            CronProblem::Cron(reason) => ScheduleError::Cron {
                name: name.into(),
                expression: expression.into(),
                reason,
            },
            CronProblem::Zone => ScheduleError::Zone {
                name: name.into(),
                zone: zone.into(),
            },
        })?;
        Ok(Self {
            name: name.into(),
            when,
            job: Box::new(job),
        })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.when.next_after(after)
    }

    /// The latest fire time in `(last, now]`, if any: after downtime only the newest missed fire
    /// is returned, so it is caught up once.
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.when.due(last, now)
    }
}

/// The built-in schedules: subscription reconcile every minute, the orphan sweep every six
/// hours, token sweep every two minutes, pruning (finished jobs, the attribution lookback) hourly.
pub fn builtin(retention_hours: u64, public_url: Option<String>) -> Vec<Schedule> {
    vec![
        Schedule::new(
            "reconcile_subscriptions",
            "0 * * * * *",
            "UTC",
            job_of(ReconcileSubscriptions { public_url }),
        )
        .expect("valid built-in schedule"),
        // Orphans at Graph (a create whose answer was lost) are rare: four sweeps a day.
        Schedule::new(
            "sweep_subscriptions",
            "0 23 */6 * * *",
            "UTC",
            job_of(SweepSubscriptions {}),
        )
        .expect("valid built-in schedule"),
        Schedule::new("token_sweep", "0 */2 * * * *", "UTC", job_of(TokenSweep {}))
            .expect("valid built-in schedule"),
        Schedule::new(
            "prune_jobs",
            "0 7 * * * *",
            "UTC",
            job_of(PruneJobs { retention_hours }),
        )
        .expect("valid built-in schedule"),
        Schedule::new(
            "prune_attribution",
            "0 17 * * * *",
            "UTC",
            job_of(PruneAttribution {}),
        )
        .expect("valid built-in schedule"),
    ]
}

/// One schedule per `[[heartbeat]]` scenario (`heartbeat:<tenant>`), each fire a new
/// [`HeartbeatRun`] with its own run id. Scenarios were validated with the configuration; one
/// that still does not parse is logged and left out rather than stopping the daemon.
pub fn heartbeats(scenarios: &[crate::config::HeartbeatConfig]) -> Vec<Schedule> {
    scenarios
        .iter()
        .filter_map(|scenario| {
            let name = format!("heartbeat:{}", scenario.tenant.trim().to_ascii_lowercase());
            let fire = scenario.clone();
            let made = Schedule::new(&name, &scenario.schedule, &scenario.timezone, move || {
                let job = HeartbeatRun::new(&fire);
                NewJob {
                    tenant_id: job.tenant_id.clone(),
                    // One job per fire time: the tick gives it the fire's key.
                    dedupe_key: None,
                    ..crate::jobs::new_job(&job)
                }
            });
            made.map_err(|err| tracing::error!(error = %err, "heartbeat schedule left out"))
                .ok()
        })
        .collect()
}

/// Enqueues due fire times.
pub struct Scheduler {
    store: Store,
    queue: Queue,
    schedules: Vec<Schedule>,
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 0).single().unwrap_or_default()
}

impl Scheduler {
    /// A scheduler of `schedules`.
    pub fn new(store: Store, queue: Queue, schedules: Vec<Schedule>) -> Self {
        Self {
            store,
            queue,
            schedules,
        }
    }

    /// Enqueues every schedule's due fire time as of `now`; returns how many jobs it enqueued.
    /// A schedule seen for the first time starts at `now` (no backfill).
    ///
    /// # Errors
    /// The database or the queue failed.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<usize, ScheduleError> {
        let mut enqueued = 0;
        for schedule in &self.schedules {
            const REGISTER: &str = "INSERT INTO schedules (name, last_fire_at, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";
            const LAST: &str = "SELECT last_fire_at FROM schedules WHERE name = $1";
            const ADVANCE: &str = "UPDATE schedules SET last_fire_at = $1, updated_at = $2 WHERE name = $3 AND last_fire_at = $4";
            let now_s = now.timestamp();
            write_tx!(self.store, |pool| {
                sqlx::query(REGISTER)
                    .bind(&schedule.name)
                    .bind(now_s)
                    .bind(now_s)
                    .execute(pool)
                    .await?;
            });
            let last: i64 = with_pool!(self.store, |pool| sqlx::query_scalar(LAST)
                .bind(&schedule.name)
                .fetch_one(pool)
                .await?);
            let Some(fire) = schedule.due(at(last), now) else {
                continue;
            };
            let won = write_tx!(self.store, |pool| sqlx::query(ADVANCE)
                .bind(fire.timestamp())
                .bind(now_s)
                .bind(&schedule.name)
                .bind(last)
                .execute(pool)
                .await?
                .rows_affected());
            if won != 1 {
                continue; // Another instance took this tick.
            }
            let mut job = (schedule.job)();
            // A kind that runs one at a time (reconcile, pruning) keeps its own key, so a fire
            // while one is unfinished (the start-up run, a slow earlier fire) is that one;
            // other kinds get one job per fire time.
            if job.dedupe_key.is_none() {
                job.dedupe_key = Some(format!("schedule:{}:{}", schedule.name, fire.timestamp()));
            }
            if let Err(err) = self.queue.enqueue(&job).await {
                // Give the tick back so the next tick (here or elsewhere) enqueues it.
                write_tx!(self.store, |pool| {
                    sqlx::query(ADVANCE)
                        .bind(last)
                        .bind(now_s)
                        .bind(&schedule.name)
                        .bind(fire.timestamp())
                        .execute(pool)
                        .await?;
                });
                return Err(err.into());
            }
            enqueued += 1;
        }
        Ok(enqueued)
    }

    /// How long until the soonest next fire, at most `cap`.
    pub fn sleep_until_next(&self, now: DateTime<Utc>, cap: Duration) -> Duration {
        self.schedules
            .iter()
            .filter_map(|s| s.next_after(now))
            .min()
            .and_then(|next| (next - now).to_std().ok())
            .map_or(cap, |wait| wait.min(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn noop() -> NewJob {
        job_of(crate::jobs::noop::Noop::default())()
    }

    #[test]
    fn bad_expressions_and_zones_name_the_schedule_and_the_fix() {
        let err = Schedule::new("heartbeat", "*/20 8-18 * * Mon-Fri", "UTC", noop).unwrap_err();
        assert!(
            err.to_string().contains("heartbeat") && err.to_string().contains("six fields"),
            "{err}"
        );
        let err = Schedule::new("heartbeat", "0 0 * * * *", "Mars/Olympus", noop).unwrap_err();
        assert!(err.to_string().contains("IANA"), "{err}");
    }

    #[test]
    fn a_local_time_stays_local_across_daylight_saving_changes() {
        let daily = Schedule::new("daily", "0 0 10 * * *", "Europe/Berlin", noop).unwrap();
        // Summer (UTC+2): 10:00 local is 08:00Z. Winter (UTC+1): 09:00Z.
        assert_eq!(
            daily.next_after(utc("2026-10-24T12:00:00Z")),
            Some(utc("2026-10-25T09:00:00Z")),
            "the day of the change"
        );
        assert_eq!(
            daily.next_after(utc("2026-10-23T12:00:00Z")),
            Some(utc("2026-10-24T08:00:00Z"))
        );
        assert_eq!(
            daily.next_after(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T08:00:00Z")),
            "spring forward"
        );
    }

    #[test]
    fn a_skipped_or_repeated_hour_fires_once() {
        let night = Schedule::new("night", "0 30 2 * * *", "Europe/Berlin", noop).unwrap();
        // 2026-03-29 02:30 does not exist in Berlin: it fires once, at 03:00 local (01:00Z).
        assert_eq!(
            night.next_after(utc("2026-03-28T23:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        // 2026-10-25 02:30 happens twice: it fires at the first one (00:30Z) and not again.
        let first = night.next_after(utc("2026-10-24T23:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        assert_eq!(night.next_after(first), Some(utc("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn after_downtime_only_the_newest_missed_fire_is_due() {
        let every_two = Schedule::new("sweep", "0 */2 * * * *", "UTC", noop).unwrap();
        assert_eq!(
            every_two.due(utc("2026-01-01T10:00:00Z"), utc("2026-01-01T10:01:59Z")),
            None
        );
        assert_eq!(
            every_two.due(utc("2026-01-01T10:00:00Z"), utc("2026-01-01T10:02:00Z")),
            Some(utc("2026-01-01T10:02:00Z"))
        );
        assert_eq!(
            every_two.due(utc("2026-01-01T10:00:00Z"), utc("2026-01-01T13:03:30Z")),
            Some(utc("2026-01-01T13:02:00Z")),
            "three hours down: one catch-up"
        );
        let every_second = Schedule::new("fast", "* * * * * *", "UTC", noop).unwrap();
        assert_eq!(
            every_second.due(utc("2026-01-01T00:00:00Z"), utc("2026-01-03T00:00:00Z")),
            Some(utc("2026-01-03T00:00:00Z")),
            "long outages stay bounded"
        );
    }

    #[test]
    fn the_built_in_schedules_parse() {
        let schedules = builtin(168, None);
        assert_eq!(schedules.len(), 5);
        assert!(schedules.iter().all(|s| s.next_after(Utc::now()).is_some()));
    }
}
