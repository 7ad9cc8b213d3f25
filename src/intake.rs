//! Notification intake: the webhook listener hands accepted notifications here and answers
//! Graph only after they are committed to the queue. Requests that arrive together share one
//! transaction (group commit), so ingest is not bound by one fsync per request.
//!
//! Owns no tables (it writes through the queue). Invariants: a submitter hears "committed" only
//! after the transaction holding its jobs committed; a failed write is reported to every
//! submitter of that batch (the listener answers 5xx and Graph redelivers); nothing is dropped.

use tokio::sync::{mpsc, oneshot};

use crate::queue::{EncodedJob, Queue};

/// Most requests gathered into one transaction.
const MAX_REQUESTS_PER_COMMIT: usize = 256;

type Submission = (Vec<EncodedJob>, oneshot::Sender<Result<(), IntakeError>>);

/// Why notifications could not be committed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum IntakeError {
    /// The queue's database failed; the sender should retry.
    #[error("the notifications could not be written to the queue")]
    Unavailable,
    /// The intake stopped (shutdown).
    #[error("the intake is stopped")]
    Stopped,
}

/// The submitting side, cloned into every request handler.
#[derive(Clone, Debug)]
pub struct Intake {
    submissions: mpsc::Sender<Submission>,
}

impl Intake {
    /// An intake writing to `queue`, and the task that writes (the caller runs it; it ends when
    /// every [`Intake`] clone is gone, after writing what it holds). The writing itself runs on
    /// a thread of its own (see [`on_own_thread`]); the task waits for it.
    pub fn new(queue: Queue) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (submissions, received) = mpsc::channel(MAX_REQUESTS_PER_COMMIT * 4);
        (Self { submissions }, on_own_thread(write(queue, received)))
    }

    /// Commits `jobs` to the queue (jobs whose dedupe key is taken are skipped) and returns once
    /// they are durable.
    ///
    /// # Errors
    /// [`IntakeError`] when they could not be written.
    pub async fn submit(&self, jobs: Vec<EncodedJob>) -> Result<(), IntakeError> {
        let (done, committed) = oneshot::channel();
        self.submissions
            .send((jobs, done))
            .await
            .map_err(|_| IntakeError::Stopped)?;
        committed.await.map_err(|_| IntakeError::Stopped)?
    }
}

/// Runs `writer` to its end on a thread of its own with a single-threaded runtime, or here
/// when no thread can be started. Group commit is only as fast as the writer turns around
/// between batches: on the shared runtime, the writer's wake-up after each commit queued
/// behind the very request handlers waiting for it (measured: 34,000 vs 37,000 durable 202s/s
/// at 64 connections; docs/PERFORMANCE.md).
async fn on_own_thread<F>(writer: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handed = std::sync::Arc::new(std::sync::Mutex::new(Some(writer)));
    let (ended, end) = oneshot::channel::<()>();
    let on_thread = handed.clone();
    let spawned = std::thread::Builder::new()
        .name("tenantd-intake".into())
        .spawn(move || {
            let Some(writer) = on_thread.lock().ok().and_then(|mut held| held.take()) else {
                return;
            };
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(writer),
                Err(err) => {
                    tracing::error!(error = %err, reason = "intake_thread_failed", "the notification intake could not start its runtime; it stops");
                }
            }
            let _ = ended.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = end.await;
        }
        Err(err) => {
            tracing::warn!(error = %err, reason = "intake_thread_failed", "the notification intake runs on the shared runtime: no thread of its own could be started");
            let writer = handed.lock().ok().and_then(|mut held| held.take());
            if let Some(writer) = writer {
                writer.await;
            }
        }
    }
}

async fn write(queue: Queue, mut received: mpsc::Receiver<Submission>) {
    let mut writer = queue.batch_writer();
    let mut batch = Vec::with_capacity(MAX_REQUESTS_PER_COMMIT);
    let mut rows = Vec::new();
    let mut waiting = Vec::with_capacity(MAX_REQUESTS_PER_COMMIT);
    while received
        .recv_many(&mut batch, MAX_REQUESTS_PER_COMMIT)
        .await
        > 0
    {
        for (jobs, done) in batch.drain(..) {
            rows.extend(jobs);
            waiting.push(done);
        }
        let outcome = writer.insert(&rows).await.map(|_| ()).map_err(|err| {
            tracing::error!(error = %err, reason = err.reason_code(), jobs = rows.len(), "notifications could not be queued; Graph will redeliver them");
            IntakeError::Unavailable
        });
        rows.clear();
        for done in waiting.drain(..) {
            let _ = done.send(outcome);
        }
    }
}
