//! Workers: claim jobs in batches, run each with its kind's timeout while renewing the lease,
//! and record the outcome (done, retry with backoff or the job's Retry-After, permanent
//! failure). The reaper returns expired leases and dead-letters exhausted jobs.
//!
//! Owns no tables. Invariants: a worker never sleeps on a throttled job (it goes back to the
//! queue with its `run_at`); on stop it claims nothing more, lets running jobs finish within
//! the grace period and then releases the rest without counting the attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::Heartbeat;
use crate::jobs::{JobContext, JobError, Registry};
use crate::queue::{backoff, ClaimedJob, Queue};

/// Retry backoff base and ceiling.
const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_CAP: Duration = Duration::from_secs(3600);

/// A pool of workers in this process.
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
}

impl WorkerPool {
    /// Claims and runs jobs until `stop`; then waits for running jobs up to the grace period and
    /// releases what is left.
    pub async fn run(self, stop: CancellationToken, heartbeat: Heartbeat) {
        let slots = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let running = TaskTracker::new();
        let release = CancellationToken::new();
        let this = Arc::new(self);
        loop {
            heartbeat.beat();
            if stop.is_cancelled() {
                break;
            }
            let free = slots.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                match this
                    .queue
                    .claim(
                        &this.owner,
                        u32::try_from(free).unwrap_or(u32::MAX),
                        this.lease,
                    )
                    .await
                {
                    Ok(claimed) => claimed,
                    Err(err) => {
                        tracing::warn!(error = %err, reason = err.reason_code(), "claiming jobs failed");
                        Vec::new()
                    }
                }
            };
            let idle = claimed.is_empty();
            for job in claimed {
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let (pool, release) = (this.clone(), release.clone());
                running.spawn(async move {
                    pool.execute(job, release).await;
                    drop(permit);
                });
            }
            if idle {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(this.poll) => {}
                }
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
        }
    }

    async fn execute(&self, job: ClaimedJob, release: CancellationToken) {
        let started = Instant::now();
        let Some(kind) = self.registry.get(&job.kind) else {
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
        let run = kind.run(job.payload.clone(), self.context.clone());
        let renew_every = self.lease / 3;
        let mut renewals =
            tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
        let timeout = tokio::time::sleep(kind.timeout);
        tokio::pin!(run, timeout);
        let outcome = loop {
            tokio::select! {
                result = &mut run => break Some(result),
                () = &mut timeout => break Some(Err(JobError::Retry { reason: "job_timeout", message: format!("ran longer than {:?}", kind.timeout), after: None })),
                () = release.cancelled() => break None,
                _ = renewals.tick() => {
                    match self.queue.renew(&job, self.lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(job.id = %job.id, job.kind = %job.kind, "lease lost; abandoning the attempt");
                            record(&job.kind, "lease_lost", started);
                            return;
                        }
                        Err(err) => tracing::warn!(job.id = %job.id, error = %err, "lease renewal failed"),
                    }
                }
            }
        };
        let recorded = match outcome {
            None => self.queue.release(&job).await.map(|_| "released"),
            Some(Ok(())) => self.queue.complete(&job).await.map(|_| "succeeded"),
            Some(Err(JobError::Retry {
                reason,
                message,
                after,
            })) => {
                let delay =
                    backoff(job.attempt, BACKOFF_BASE, BACKOFF_CAP).max(after.unwrap_or_default());
                tracing::info!(job.id = %job.id, job.kind = %job.kind, reason, attempt = job.attempt, "job will be retried");
                self.queue
                    .retry(&job, reason, &message, delay)
                    .await
                    .map(|_| {
                        if job.attempt >= job.max_attempts {
                            "dead"
                        } else {
                            "retried"
                        }
                    })
            }
            Some(Err(JobError::Permanent { reason, message })) => {
                tracing::warn!(job.id = %job.id, job.kind = %job.kind, reason, "job failed permanently");
                self.queue
                    .fail(&job, reason, &message)
                    .await
                    .map(|_| "failed")
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

fn record(kind: &str, outcome: &'static str, started: Instant) {
    metrics::counter!(crate::metrics::names::JOBS, "kind" => kind.to_string(), "outcome" => outcome).increment(1);
    metrics::histogram!(crate::metrics::names::JOB_DURATION, "kind" => kind.to_string())
        .record(started.elapsed().as_secs_f64());
}
