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
    /// every [`Intake`] clone is gone, after writing what it holds).
    pub fn new(queue: Queue) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (submissions, received) = mpsc::channel(MAX_REQUESTS_PER_COMMIT * 4);
        (Self { submissions }, write(queue, received))
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
