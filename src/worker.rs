//! Workers: claim ahead (up to eight times the concurrency in hand, the next claim made while jobs
//! run, woken by the queue's work signal, polling as the fallback), run each with its kind's timeout while renewing the lease, and
//! record the outcome (done, retry with backoff or the job's Retry-After, permanent failure);
//! successes are recorded in batches, one transaction for all that finished meanwhile. The
//! reaper returns expired leases and dead-letters exhausted jobs.
//!
//! Owns no tables. Invariants: a worker never sleeps on a throttled job (it goes back to the
//! queue with its `run_at`); on stop it claims nothing more, lets running jobs finish within
//! the grace period and then releases the rest without counting the attempt; a second stop
//! signal releases them at once; a claimed job that never started (stop, or it waited past half
//! its lease behind slow jobs) is handed back without counting the attempt; a failure is logged
//! in full when a kind starts failing for a tenant or changes reason (WARN for dead letters and
//! permanent failures), at DEBUG while it repeats.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::{Liveness, TaskHealth};
use crate::jobs::{JobContext, JobError, Registry};
use crate::queue::{ClaimedJob, Queue, QueueError};
use crate::retry::RetryPolicy;

/// Most jobs in hand (running, waiting for a slot, asked for) as a multiple of the
/// concurrency: a claim is made when half a pool's worth or less is left waiting. Claims have
/// a fixed cost (round trips and a commit), so larger ones drain faster (docs/PERFORMANCE.md:
/// 2, 4 and 8 at concurrency 24 on PostgreSQL). The multiple in use adapts: it drops to 1 (no
/// more than the free slots) when a job waited too long for a slot, and doubles back up each
/// time a claim's jobs all started promptly.
const CLAIM_AHEAD: usize = 8;
/// Longest a claimed job waits for a slot (or half its lease, if shorter) before it is handed
/// back: a pool busy with slow jobs must not sit on work another instance could start.
const WAIT_FOR_SLOT: Duration = Duration::from_secs(2);
/// Claims at once: the next starts while the previous one's round trips are under way.
const CLAIMS_IN_FLIGHT: usize = 2;

/// Most successes recorded in one transaction.
const COMPLETION_BATCH: usize = 256;

/// A finished job and where to say whether its success was recorded (`Some(false)`: the lease
/// was lost; `None`: the write failed).
type Completion = (ClaimedJob, oneshot::Sender<Option<bool>>);

/// A failed job's next try: from up to 2 s after the first failure to up to an hour.
const JOB_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_secs(2), Duration::from_secs(3600));

/// A pool of workers in this process.
#[derive(Clone)]
pub struct WorkerPool {
    /// The queue.
    pub queue: Queue,
    /// Known kinds.
    pub registry: Arc<Registry>,
    /// What jobs may use.
    pub context: JobContext,
    /// Lease owner name (the instance id).
    pub owner: String,
    /// Jobs at once.
    pub concurrency: usize,
    /// Lease length.
    pub lease: Duration,
    /// Idle poll interval.
    pub poll: Duration,
    /// How long running jobs may finish after a stop.
    pub grace: Duration,
    /// Cancelled by a second stop signal: running jobs are handed back at once (released
    /// without counting the attempt) instead of being waited for.
    pub release_now: CancellationToken,
}

impl WorkerPool {
    /// Claims and runs jobs until `stop`; then waits for running jobs up to the grace period and
    /// releases what is left.
    pub async fn run(self, stop: CancellationToken, liveness: Liveness) {
        let concurrency = self.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let running = TaskTracker::new();
        let release = CancellationToken::new();
        let this = Arc::new(self);
        let signal = this.queue.work_signal().await;
        let (completions, finished) = mpsc::channel::<Completion>(COMPLETION_BATCH * 4);
        let recorder = tokio::spawn(record_completions(this.queue.clone(), finished));
        let failures = Arc::new(FailureLog::default());
        // Claimed jobs waiting for a slot. The next claim runs while jobs run, so a slot that
        // frees takes its next job from here at once instead of waiting for a claim's round
        // trips (one claim at a time kept slots idle most of the time: issue #17).
        let mut waiting: VecDeque<(ClaimedJob, Instant)> = VecDeque::new();
        // Claims in flight and the jobs they asked for.
        let mut claiming: tokio::task::JoinSet<(usize, Vec<ClaimedJob>)> =
            tokio::task::JoinSet::new();
        let mut asked = 0;
        // The last claim found nothing: wait for the work signal before claiming again.
        let mut drained = false;
        let mut ahead = CLAIM_AHEAD;
        let wait_limit = WAIT_FOR_SLOT.min(this.lease / 2);
        loop {
            liveness.beat();
            // Waited too long behind slow jobs (the lease might even lapse before it is
            // renewed): handed back, attempt not counted, for whoever is free, without waiting
            // for a slot here; claim no further ahead than the free slots for now. The oldest
            // claims are at the front; the loop comes round at least every poll.
            while waiting
                .front()
                .is_some_and(|(_, claimed_at)| claimed_at.elapsed() > wait_limit)
            {
                let (job, _) = waiting.pop_front().expect("checked");
                ahead = 1;
                let pool = this.clone();
                running.spawn(async move {
                    let _ = pool.queue.release(&job).await;
                });
            }
            let busy = concurrency - slots.available_permits();
            let in_hand = busy + waiting.len() + asked;
            if claiming.len() < CLAIMS_IN_FLIGHT
                && !drained
                && waiting.len() <= concurrency / 2
                && in_hand < concurrency * ahead
            {
                let want = concurrency * ahead - in_hand;
                asked += want;
                let pool = this.clone();
                claiming.spawn(async move {
                    let asked = want;
                    let want = u32::try_from(want).unwrap_or(u32::MAX);
                    match pool.queue.claim(&pool.owner, want, pool.lease).await {
                        Ok(claimed) => (asked, claimed),
                        Err(err) => {
                            tracing::warn!(error = %err, reason = err.reason_code(), "claiming jobs failed");
                            (asked, Vec::new())
                        }
                    }
                });
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(claimed) = claiming.join_next(), if !claiming.is_empty() => {
                    let (was_asked, claimed) = claimed.unwrap_or_default();
                    asked -= was_asked;
                    drained = claimed.is_empty();
                    if waiting.is_empty() && !drained {
                        // The previous claim's jobs have all started: claim more ahead.
                        ahead = (ahead * 2).min(CLAIM_AHEAD);
                    }
                    let at = Instant::now();
                    waiting.extend(claimed.into_iter().map(|job| (job, at)));
                }
                permit = slots.clone().acquire_owned(), if !waiting.is_empty() => {
                    let permit = permit.expect("the semaphore is never closed");
                    let (job, _) = waiting.pop_front().expect("guarded");
                    let pool = this.clone();
                    let (release, completions) = (release.clone(), completions.clone());
                    let failures = Arc::clone(&failures);
                    running.spawn(async move {
                        pool.execute(job, release, completions, permit, &failures).await;
                    });
                }
                () = signal.wait(this.poll), if drained && claiming.is_empty() => drained = false,
                // Beats while every slot is busy with long jobs.
                () = tokio::time::sleep(this.poll) => {}
            }
        }
        // Claimed but never started: handed back at once, attempts not counted.
        while let Some(claimed) = claiming.join_next().await {
            if let Ok((_, claimed)) = claimed {
                let at = Instant::now();
                waiting.extend(claimed.into_iter().map(|job| (job, at)));
            }
        }
        for (job, _) in waiting.drain(..) {
            if let Err(err) = this.queue.release(&job).await {
                tracing::warn!(job.id = %job.id, error = %err, "could not hand back a claimed job; its lease expires and the reaper returns it");
            }
        }
        running.close();
        tokio::select! {
            () = running.wait() => {}
            () = tokio::time::sleep(this.grace) => {
                tracing::warn!(jobs.left = running.len(), "grace period over; releasing unfinished jobs");
                release.cancel();
                running.wait().await;
            }
            () = this.release_now.cancelled() => {
                tracing::warn!(jobs.left = running.len(), "second stop signal; releasing unfinished jobs now (their attempts are not counted)");
                release.cancel();
                running.wait().await;
            }
        }
        drop(completions);
        if recorder.await.is_err() {
            tracing::error!("the completion recorder stopped abnormally; unrecorded jobs are retried after their lease");
        }
    }

    /// Claims and runs jobs until no job is due or running in any worker (the queue has
    /// nothing to do until a retry or a schedule comes due), then stops as [`WorkerPool::run`]
    /// does. For tests and one-shot runs, which want the queue's work done, not a clock's wait.
    ///
    /// # Errors
    /// The database failed while checking whether work is left.
    pub async fn run_until_empty(self) -> Result<(), QueueError> {
        let queue = self.queue.clone();
        let poll = self.poll;
        let stop = CancellationToken::new();
        let liveness = TaskHealth::default().register("run_until_empty", Duration::from_secs(3600));
        let pool = tokio::spawn(self.run(stop.clone(), liveness));
        let signal = queue.work_signal().await;
        let left = loop {
            match queue.due_or_running().await {
                Ok(0) => break Ok(()),
                Ok(_) => signal.wait(poll).await,
                Err(err) => break Err(err),
            }
        };
        stop.cancel();
        if pool.await.is_err() {
            tracing::error!("a worker pool stopped abnormally");
        }
        left
    }

    async fn execute(
        &self,
        job: ClaimedJob,
        release: CancellationToken,
        completions: mpsc::Sender<Completion>,
        slot: OwnedSemaphorePermit,
        failures: &FailureLog,
    ) {
        let started = Instant::now();
        let Some(kind) = self.registry.get(&job.kind) else {
            failures.log(&job, "unknown_job_kind", Failure::Permanent);
            let _ = self
                .queue
                .fail(
                    &job,
                    "unknown_job_kind",
                    &format!("no worker knows the kind `{}`", job.kind),
                )
                .await;
            record(&job.kind, "failed", started);
            return;
        };
        let mut context = self.context.clone();
        context.attempt = job.attempt;
        let run = kind.run(job.payload.clone(), context);
        // The lease is renewed by a future polled beside the job, never inside a `select!`
        // arm: an arm's await leaves the job unpolled, and a job in the middle of a SQLite
        // transaction holds the process's write turn while sqlx's connection thread waits
        // for the job to take its BEGIN/COMMIT acknowledgement. A renewal waiting for that
        // turn then waited forever, and every writer behind it (issue #17's wedge).
        let outcome = {
            let keep_lease = self.keep_lease(&job);
            let timeout = tokio::time::sleep(kind.timeout);
            tokio::pin!(run, timeout, keep_lease);
            tokio::select! {
                result = &mut run => Some(result),
                () = &mut timeout => Some(Err(JobError::Retry { reason: "job_timeout", message: format!("ran longer than {:?}", kind.timeout), after: None })),
                () = release.cancelled() => None,
                () = &mut keep_lease => {
                    tracing::warn!(job.id = %job.id, job.kind = %job.kind, "lease lost; abandoning the attempt");
                    record(&job.kind, "lease_lost", started);
                    return;
                }
            }
        };
        let held = |held: bool, outcome: &'static str| if held { outcome } else { "lease_lost" };
        let recorded = match outcome {
            None => self.queue.release(&job).await.map(|h| held(h, "released")),
            Some(Ok(())) => {
                failures.succeeded(&job);
                let kind = job.kind.clone();
                let (ack, recorded) = oneshot::channel();
                if completions.send((job, ack)).await.is_err() {
                    return;
                }
                // The job no longer runs: its slot may take the next job while the batch with
                // this success is written (the channel's capacity bounds what waits).
                drop(slot);
                // Otherwise the recorder logged the failure; the lease expires and the reaper
                // retries the job.
                if let Ok(Some(h)) = recorded.await {
                    record(&kind, held(h, "succeeded"), started);
                }
                return;
            }
            Some(Err(JobError::Retry {
                reason,
                message,
                after,
            })) => {
                let delay = JOB_RETRY.delay(job.attempt).max(after.unwrap_or_default());
                let (failure, outcome) = if job.attempt >= job.max_attempts {
                    (Failure::Exhausted, "dead")
                } else {
                    (Failure::Retried, "retried")
                };
                failures.log(&job, reason, failure);
                self.queue
                    .retry(&job, reason, &message, delay)
                    .await
                    .map(|h| held(h, outcome))
            }
            Some(Err(JobError::Permanent { reason, message })) => {
                failures.log(&job, reason, Failure::Permanent);
                self.queue
                    .fail(&job, reason, &message)
                    .await
                    .map(|h| held(h, "failed"))
            }
        };
        match recorded {
            Ok(outcome) => record(&job.kind, outcome, started),
            Err(err) => {
                tracing::error!(job.id = %job.id, error = %err, "could not record a job outcome; the lease will expire and the reaper retries it")
            }
        }
    }
}

impl WorkerPool {
    /// Renews `job`'s lease every third of its length; returns only when the lease is lost
    /// (another worker or the reaper took the job). A failed renewal is logged and tried
    /// again at the next tick: the lease still has two thirds left.
    async fn keep_lease(&self, job: &ClaimedJob) {
        let every = self.lease / 3;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.queue.renew(job, self.lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    tracing::warn!(job.id = %job.id, error = %err, "lease renewal failed");
                }
            }
        }
    }
}

/// How a job failed, as the log tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// It goes back to the queue for another attempt (throttling, a transient fault).
    Retried,
    /// Its last attempt failed: it is dead-lettered.
    Exhausted,
    /// It cannot work as it stands: a human has to act (consent, a key, the configuration).
    Permanent,
}

/// A kind's failing tenants, each with its last reason and how it failed.
type FailingTenants = HashMap<String, (&'static str, Failure)>;

/// The kinds and tenants whose jobs are failing, with the last reason: a failure is logged
/// when a kind starts failing for a tenant or fails differently (another reason, or retries
/// turned into dead letters), and at DEBUG while it repeats, so a failure that needs a human
/// is one WARN per change of state, not one line per retry. The first success after it says
/// so once. Only failing pairs are held, and a success removes its pair.
#[derive(Default)]
struct FailureLog {
    failing: std::sync::Mutex<HashMap<String, FailingTenants>>,
}

impl FailureLog {
    /// Notes `job`'s failure; whether the state changed (so it is logged in full).
    fn note(&self, kind: &str, tenant: &str, reason: &'static str, failure: Failure) -> bool {
        let mut failing = self.failing.lock().expect("failure log lock");
        let tenants = failing.entry(kind.to_string()).or_default();
        match tenants.get_mut(tenant) {
            Some(last) if *last == (reason, failure) => false,
            Some(last) => {
                *last = (reason, failure);
                true
            }
            None => {
                tenants.insert(tenant.to_string(), (reason, failure));
                true
            }
        }
    }

    /// Forgets the failure of `kind` for `tenant`; the reason it failed with, if it did.
    fn recover(&self, kind: &str, tenant: &str) -> Option<&'static str> {
        let mut failing = self.failing.lock().expect("failure log lock");
        if failing.is_empty() {
            return None;
        }
        let tenants = failing.get_mut(kind)?;
        let (reason, _) = tenants.remove(tenant)?;
        if tenants.is_empty() {
            failing.remove(kind);
        }
        Some(reason)
    }

    /// Logs `job`'s failure: in full when the state changed (WARN for dead letters and
    /// permanent failures, INFO for retries), else at DEBUG.
    fn log(&self, job: &ClaimedJob, reason: &'static str, failure: Failure) {
        let tenant = job.tenant_id.as_str();
        if !self.note(&job.kind, tenant, reason, failure) {
            tracing::debug!(job.id = %job.id, job.kind = %job.kind, tenant, reason, attempt = job.attempt, ?failure, "job failed again for the same reason");
            return;
        }
        let (id, kind, attempt) = (&job.id, &job.kind, job.attempt);
        match failure {
            Failure::Retried => {
                tracing::info!(job.id = %id, job.kind = %kind, tenant, reason, attempt, "job failed and will be retried (repeats for this kind, tenant and reason are logged at debug)")
            }
            Failure::Exhausted => {
                tracing::warn!(job.id = %id, job.kind = %kind, tenant, reason, attempt, "job failed its last attempt and is dead-lettered; `tenantd queue list` shows it, `tenantd queue retry ID` runs it again (repeats for this kind, tenant and reason are logged at debug)")
            }
            Failure::Permanent => {
                tracing::warn!(job.id = %id, job.kind = %kind, tenant, reason, "job failed permanently: it needs its cause fixed, then `tenantd queue retry ID` (`tenantd queue list --state failed` shows it; repeats for this kind, tenant and reason are logged at debug)")
            }
        }
    }

    /// Notes `job`'s success; logs once when its kind was failing for its tenant.
    fn succeeded(&self, job: &ClaimedJob) {
        if let Some(reason) = self.recover(&job.kind, &job.tenant_id) {
            tracing::info!(job.kind = %job.kind, tenant = %job.tenant_id, after = reason, "jobs of this kind succeed again for this tenant");
        }
    }
}

/// Records successes in batches: whatever finished while the previous batch was being written
/// goes into the next transaction, so a busy pool pays one commit for many jobs. Ends when
/// every sender is gone, after writing what it holds.
async fn record_completions(queue: Queue, mut finished: mpsc::Receiver<Completion>) {
    let mut batch = Vec::with_capacity(COMPLETION_BATCH);
    while finished.recv_many(&mut batch, COMPLETION_BATCH).await > 0 {
        let (jobs, acks): (Vec<ClaimedJob>, Vec<_>) = batch.drain(..).unzip();
        match queue.complete_each(&jobs).await {
            Ok(held) => {
                for (ack, held) in acks.into_iter().zip(held) {
                    let _ = ack.send(Some(held));
                }
            }
            Err(err) => {
                tracing::error!(jobs = jobs.len(), error = %err, reason = err.reason_code(), "could not record finished jobs; their leases will expire and the reaper retries them");
                for ack in acks {
                    let _ = ack.send(None);
                }
            }
        }
    }
}

fn record(kind: &str, outcome: &'static str, started: Instant) {
    metrics::counter!(crate::metrics::names::JOBS, "kind" => kind.to_string(), "outcome" => outcome).increment(1);
    metrics::histogram!(crate::metrics::names::JOB_DURATION, "kind" => kind.to_string())
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::{Failure, FailureLog};

    #[test]
    fn a_failure_is_logged_in_full_once_per_change_of_state() {
        let log = FailureLog::default();
        let tenant = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
        // Starts failing: in full; the same again: not.
        assert!(log.note("heartbeat_run", tenant, "throttled", Failure::Retried));
        assert!(!log.note("heartbeat_run", tenant, "throttled", Failure::Retried));
        // Another tenant or kind is its own state.
        assert!(log.note("heartbeat_run", "other", "throttled", Failure::Retried));
        assert!(log.note("connection_check", tenant, "throttled", Failure::Retried));
        // The same reason turned into a dead letter, then another reason: each a change.
        assert!(log.note("heartbeat_run", tenant, "throttled", Failure::Exhausted));
        assert!(log.note(
            "heartbeat_run",
            tenant,
            "consent_required",
            Failure::Permanent
        ));
        assert!(!log.note(
            "heartbeat_run",
            tenant,
            "consent_required",
            Failure::Permanent
        ));
        // A success says what it recovered from, once, and the next failure is new again.
        assert_eq!(
            log.recover("heartbeat_run", tenant),
            Some("consent_required")
        );
        assert_eq!(log.recover("heartbeat_run", tenant), None);
        assert!(log.note(
            "heartbeat_run",
            tenant,
            "consent_required",
            Failure::Permanent
        ));
        // Pairs that recover are dropped: nothing grows with successes.
        for (kind, tenant) in [
            ("heartbeat_run", tenant),
            ("heartbeat_run", "other"),
            ("connection_check", tenant),
        ] {
            assert!(log.recover(kind, tenant).is_some());
        }
        assert!(log.failing.lock().expect("lock").is_empty());
    }
}
