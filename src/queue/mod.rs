//! The durable work queue: enqueue with dedupe, fair batch claims with leases judged by the
//! database clock, completion fenced by the lease token, retries with exponential backoff and
//! full jitter stored on the row, dead letter after the last attempt, a reaper for expired
//! leases, and pruning of finished jobs.
//!
//! Owns `jobs`. Invariants: a dedupe key is unique among unfinished jobs of a kind, a window
//! key among all jobs of a kind for at least [`REDELIVERY_WINDOW`] after it was taken; a job
//! leaves `running` only through its current lease token (a worker whose lease was taken over
//! cannot overwrite the new owner's result) or through the reaper once the lease expired; a
//! claim serves tenants round-robin (the oldest job of each tenant first), so one tenant's
//! backlog cannot starve another; PostgreSQL claimers skip each other's locked rows.
//!
//! Its parts: the lane walk in `claims.rs`, batch inserts in `batch_insert.rs`, the SQL that
//! differs by dialect in `sql.rs`, wake-ups in `work_signal.rs`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::store::{with_pool, write_tx, Store, StoreError};

mod batch_insert;
mod claims;
mod sql;
mod work_signal;

pub use batch_insert::{BatchWriter, EncodedJob, JobRow};
pub use work_signal::WorkSignal;

use batch_insert::{bind_columns, json_array, new_job_id};
use claims::{claim_postgres, LaneConn, Lease};
use sql::{INSERT_BATCH_SQLITE, REAP_POSTGRES, REAP_SQLITE, RENEW_POSTGRES, RENEW_SQLITE};
use work_signal::forward_notifications;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for `run_at`.
    Available,
    /// Leased by a worker.
    Running,
    /// Done.
    Succeeded,
    /// Failed permanently (not retried).
    Failed,
    /// Out of attempts.
    Dead,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "available" => JobState::Available,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "dead" => JobState::Dead,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Stable kind name.
    pub kind: String,
    /// JSON payload.
    pub payload: serde_json::Value,
    /// The tenant the job works for (fairness lane); empty for none.
    pub tenant_id: String,
    /// Unique among unfinished jobs of the kind.
    pub dedupe_key: Option<String>,
    /// Higher runs first within a tenant.
    pub priority: i64,
    /// Earliest start (Unix ms); now when `None`.
    pub run_at: Option<i64>,
    /// Attempts before dead letter.
    pub max_attempts: u32,
}

impl NewJob {
    /// This job as the row a batch insert reads (see [`EncodedJob`]), with a new id.
    pub fn encode(&self) -> EncodedJob {
        self.row().encode_at(crate::clock::now_unix_ms())
    }

    fn row(&self) -> JobRow<'_, serde_json::Value> {
        JobRow {
            kind: &self.kind,
            payload: &self.payload,
            tenant_id: &self.tenant_id,
            dedupe_key: self.dedupe_key.as_deref(),
            priority: self.priority,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
        }
    }
}

/// How long a window key ([`EncodedJob::within_window`]) stays taken: Graph redelivers a
/// notification it did not see answered for up to 4 hours; an hour more covers its 10-minute
/// retry slots and clock skew.
pub const REDELIVERY_WINDOW: Duration = Duration::from_secs(5 * 3600);

/// What enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job.
    Created(String),
    /// An unfinished job with the same dedupe key exists; its id.
    Deduplicated(String),
}

impl Enqueued {
    /// The job id either way.
    pub fn id(&self) -> &str {
        match self {
            Enqueued::Created(id) | Enqueued::Deduplicated(id) => id,
        }
    }
}

/// A leased job.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// Tenant lane.
    pub tenant_id: String,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The fencing token of this lease.
    pub lease_token: String,
}

macro_rules! select_jobs {
    ($tail:literal) => {
        concat!(
            "SELECT id, kind, tenant_id, state, attempts, max_attempts, run_at, last_reason, last_message FROM jobs ",
            $tail
        )
    };
}

type InfoRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

fn job_info(
    (id, kind, tenant_id, state, attempts, max_attempts, run_at, last_reason, last_message): InfoRow,
) -> JobInfo {
    JobInfo {
        id,
        kind,
        tenant_id,
        state,
        attempts,
        max_attempts,
        run_at,
        last_reason,
        last_message,
    }
}

/// A job as `queue list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobInfo {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Tenant lane.
    pub tenant_id: String,
    /// State.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// Earliest next start (Unix ms).
    pub run_at: i64,
    /// Last failure's reason code.
    pub last_reason: Option<String>,
    /// Last failure's sanitized message.
    pub last_message: Option<String>,
}

/// The queue's depth for one kind (`Queue::depth_by_kind`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KindDepth {
    /// Job kind.
    pub kind: String,
    /// Available jobs (due or later).
    pub waiting: i64,
    /// Running jobs.
    pub running: i64,
    /// Dead letters.
    pub dead: i64,
    /// How long the oldest due job has waited, ms.
    pub oldest_due_ms: i64,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The payload is not JSON.
    #[error("job {0} has a payload that is not JSON")]
    Payload(String),
}

impl From<sqlx::Error> for QueueError {
    fn from(err: sqlx::Error) -> Self {
        QueueError::Store(StoreError::from(err))
    }
}

impl QueueError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            QueueError::Store(err) => err.reason_code(),
            QueueError::Payload(_) => "job_payload_invalid",
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// What the reaper did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Jobs returned to `available`.
    pub rescued: usize,
    /// Jobs dead-lettered (no attempts left).
    pub dead: usize,
}

/// The queue over a store.
#[derive(Debug, Clone)]
pub struct Queue {
    store: Store,
    /// The lane (tenant) this process served last: the next claim starts after it, so claims
    /// go round the tenants. Shared by clones; each process has its own.
    cursor: Arc<Mutex<Option<String>>>,
    /// Signalled when this process adds ready work, so its idle claimer wakes at once.
    added: Arc<Notify>,
}

/// The PostgreSQL channel the `jobs_added` trigger notifies (migration 0008).
const JOBS_CHANNEL: &str = "tenantd_jobs";

impl Queue {
    /// A queue on `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cursor: Arc::default(),
            added: Arc::default(),
        }
    }

    /// A signal for an idle claimer. On PostgreSQL it listens on its own connection; when that
    /// cannot be had it falls back to polling alone (logged).
    pub async fn work_signal(&self) -> WorkSignal {
        let notified = Arc::new(Notify::new());
        let mut listener = None;
        if let Some(pool) = self.store.postgres() {
            let listened = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen(JOBS_CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            match listened.await {
                Ok(connected) => {
                    listener = Some(tokio::spawn(forward_notifications(
                        connected,
                        notified.clone(),
                    )));
                }
                Err(err) => {
                    tracing::warn!(error = %StoreError::from(err), "cannot listen for new jobs; polling only");
                }
            }
        }
        WorkSignal {
            added: self.added.clone(),
            notified,
            listener,
        }
    }

    /// Wakes this process's idle claimer: ready work was added.
    fn wake(&self) {
        self.added.notify_one();
    }

    /// Enqueues a job; with a dedupe key, an unfinished job of the same kind and key is
    /// returned instead of a second one.
    ///
    /// # Errors
    /// The database failed.
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, QueueError> {
        let id = new_job_id();
        let now = crate::clock::now_unix_ms();
        const INSERT: &str = "INSERT INTO jobs (id, kind, payload, tenant_id, dedupe_key, priority, run_at, max_attempts, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (kind, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('available', 'running') DO NOTHING";
        let payload = job.payload.to_string();
        let inserted = write_tx!(self.store, |pool| sqlx::query(INSERT)
            .bind(&id)
            .bind(&job.kind)
            .bind(&payload)
            .bind(&job.tenant_id)
            .bind(job.dedupe_key.as_deref())
            .bind(job.priority)
            .bind(job.run_at.unwrap_or(now))
            .bind(i64::from(job.max_attempts.max(1)))
            .bind(now)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        if inserted == 1 {
            self.wake();
            return Ok(Enqueued::Created(id));
        }
        const EXISTING: &str = "SELECT id FROM jobs WHERE kind = $1 AND dedupe_key = $2 AND state IN ('available', 'running')";
        let existing: Option<String> = with_pool!(self.store, |pool| sqlx::query_scalar(EXISTING)
            .bind(&job.kind)
            .bind(job.dedupe_key.as_deref())
            .fetch_optional(pool)
            .await?);
        // The other job may have finished in between: enqueue again.
        match existing {
            Some(existing) => Ok(Enqueued::Deduplicated(existing)),
            None => Box::pin(self.enqueue(job)).await,
        }
    }

    /// Enqueues many jobs in one transaction per 1,000 (bulk work and benchmarks). Jobs whose
    /// dedupe key is taken are skipped. Returns how many were inserted.
    ///
    /// # Errors
    /// The database failed.
    pub async fn enqueue_many(&self, jobs: &[NewJob]) -> Result<u64, QueueError> {
        let now = crate::clock::now_unix_ms();
        let mut inserted = 0;
        for chunk in jobs.chunks(1000) {
            let rows: Vec<EncodedJob> = chunk.iter().map(|job| job.row().encode_at(now)).collect();
            inserted += if let Some(pool) = self.store.sqlite() {
                let _turn = self.store.sqlite_write_turn().await;
                sqlx::query(INSERT_BATCH_SQLITE)
                    .bind(json_array(&rows))
                    .execute(pool)
                    .await?
                    .rows_affected()
            } else if let Some(pool) = self.store.postgres() {
                bind_columns(&rows).execute(pool).await?.rows_affected()
            } else {
                unreachable!("a store has one of the two pools")
            };
        }
        if inserted > 0 {
            self.wake();
        }
        Ok(inserted)
    }

    /// A writer of batches for one busy submitter (the webhook intake); see [`BatchWriter`].
    pub fn batch_writer(&self) -> BatchWriter {
        BatchWriter::new(self.clone())
    }

    /// Marks jobs done in one transaction (group commit: the worker pool gathers the jobs that
    /// finished while the previous batch was being written), each fenced by its own lease
    /// token. Returns, in order, whether each was still held (a lost lease discards the result).
    ///
    /// # Errors
    /// The database failed.
    pub async fn complete_each(&self, jobs: &[ClaimedJob]) -> Result<Vec<bool>, QueueError> {
        // One statement per claim (its jobs share a lease token), the ids as one array
        // parameter: the plan is a primary-key lookup whatever the batch size. (A join against
        // `unnest` of ids and tokens got a generic plan that scanned the whole table.)
        const SQLITE: &str = "UPDATE jobs SET state = 'succeeded', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, \
             finished_at = $1, updated_at = $2 WHERE state = 'running' AND lease_token = $3 AND id IN (SELECT value FROM json_each($4)) \
             RETURNING id";
        const POSTGRES: &str = "UPDATE jobs SET state = 'succeeded', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, \
             finished_at = $1, updated_at = $2 WHERE state = 'running' AND lease_token = $3 AND id = ANY($4::text[]) \
             RETURNING id";
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut claims: Vec<(&str, Vec<&str>)> = Vec::new();
        for job in jobs {
            match claims
                .iter_mut()
                .find(|(token, _)| *token == job.lease_token)
            {
                Some((_, ids)) => ids.push(&job.id),
                None => claims.push((&job.lease_token, vec![&job.id])),
            }
        }
        let now = crate::clock::now_unix_ms();
        let mut done: HashSet<String> = HashSet::with_capacity(jobs.len());
        if let Some(pool) = self.store.sqlite() {
            let _turn = self.store.sqlite_write_turn().await;
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            for (token, ids) in claims {
                let ids = serde_json::to_string(&ids).expect("strings serialize");
                let completed: Vec<String> = sqlx::query_scalar(SQLITE)
                    .bind(now)
                    .bind(now)
                    .bind(token)
                    .bind(ids)
                    .fetch_all(&mut *tx)
                    .await?;
                done.extend(completed);
            }
            tx.commit().await?;
        } else if let Some(pool) = self.store.postgres() {
            let mut tx = pool.begin().await?;
            for (token, ids) in claims {
                let completed: Vec<String> = sqlx::query_scalar(POSTGRES)
                    .bind(now)
                    .bind(now)
                    .bind(token)
                    .bind(&ids)
                    .fetch_all(&mut *tx)
                    .await?;
                done.extend(completed);
            }
            tx.commit().await?;
        } else {
            unreachable!("a store has one of the two pools")
        }
        Ok(jobs.iter().map(|job| done.contains(&job.id)).collect())
    }

    /// Leases up to `limit` ready jobs to `owner` for `lease`, tenants round-robin: each
    /// claim starts at the tenant after the one the previous claim ended on and gives every
    /// tenant with ready jobs an equal share, each tenant's highest priority and oldest first.
    ///
    /// # Errors
    /// The database failed, or a payload is not JSON.
    pub async fn claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let terms = Lease {
            owner,
            token: &token,
            millis: millis(lease),
            now: crate::clock::now_unix_ms(),
        };
        let start = self.cursor.lock().expect("cursor lock").clone();
        let (rows, last) = if let Some(pool) = self.store.sqlite() {
            let _turn = self.store.sqlite_write_turn().await;
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let walked = LaneConn::Sqlite(&mut tx).walk(start, limit, &terms).await?;
            tx.commit().await?;
            walked
        } else if let Some(pool) = self.store.postgres() {
            claim_postgres(pool, start, limit, &terms).await?
        } else {
            unreachable!("a store has one of the two pools")
        };
        *self.cursor.lock().expect("cursor lock") = last;
        rows.into_iter()
            .map(|(id, kind, payload, tenant_id, attempts, max_attempts)| {
                let payload =
                    serde_json::from_str(&payload).map_err(|_| QueueError::Payload(id.clone()))?;
                Ok(ClaimedJob {
                    id,
                    kind,
                    payload,
                    tenant_id,
                    attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                    max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
                    lease_token: token.clone(),
                })
            })
            .collect()
    }

    /// Extends a lease; false when it was lost (reaped or taken over).
    ///
    /// # Errors
    /// The database failed.
    pub async fn renew(&self, job: &ClaimedJob, lease: Duration) -> Result<bool, QueueError> {
        let affected = write_tx!(self.store, RENEW_SQLITE, RENEW_POSTGRES, |conn, sql| {
            sqlx::query(sql)
                .bind(millis(lease))
                .bind(&job.id)
                .bind(&job.lease_token)
                .execute(conn)
                .await?
                .rows_affected()
        });
        Ok(affected == 1)
    }

    /// Marks a job done; false when the lease was lost (the result is discarded).
    ///
    /// # Errors
    /// The database failed.
    pub async fn complete(&self, job: &ClaimedJob) -> Result<bool, QueueError> {
        Ok(self.complete_each(std::slice::from_ref(job)).await?[0])
    }

    /// Records a failed attempt: back to `available` at `now + delay`, or `dead` when no
    /// attempts are left. False when the lease was lost.
    ///
    /// # Errors
    /// The database failed.
    pub async fn retry(
        &self,
        job: &ClaimedJob,
        reason: &str,
        message: &str,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        const SQL: &str = "UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'available' END, \
             finished_at = CASE WHEN attempts >= max_attempts THEN CAST($1 AS BIGINT) ELSE NULL END, \
             run_at = $2, last_reason = $3, last_message = $4, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = $5 \
             WHERE id = $6 AND lease_token = $7 AND state = 'running'";
        let now = crate::clock::now_unix_ms();
        let affected = write_tx!(self.store, |pool| sqlx::query(SQL)
            .bind(now)
            .bind(now.saturating_add(millis(delay)))
            .bind(reason)
            .bind(message)
            .bind(now)
            .bind(&job.id)
            .bind(&job.lease_token)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }

    /// Records a permanent failure (not retried). False when the lease was lost.
    ///
    /// # Errors
    /// The database failed.
    pub async fn fail(
        &self,
        job: &ClaimedJob,
        reason: &str,
        message: &str,
    ) -> Result<bool, QueueError> {
        const SQL: &str = "UPDATE jobs SET state = 'failed', finished_at = $1, last_reason = $2, last_message = $3, \
             lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = $4 \
             WHERE id = $5 AND lease_token = $6 AND state = 'running'";
        let now = crate::clock::now_unix_ms();
        let affected = write_tx!(self.store, |pool| sqlx::query(SQL)
            .bind(now)
            .bind(reason)
            .bind(message)
            .bind(now)
            .bind(&job.id)
            .bind(&job.lease_token)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }

    /// Gives a job back without counting the attempt (shutdown before it ran to the end).
    ///
    /// # Errors
    /// The database failed.
    pub async fn release(&self, job: &ClaimedJob) -> Result<bool, QueueError> {
        const SQL: &str = "UPDATE jobs SET state = 'available', attempts = attempts - 1, lease_owner = NULL, lease_token = NULL, \
             lease_expires_at = NULL, updated_at = $1 WHERE id = $2 AND lease_token = $3 AND state = 'running'";
        let affected = write_tx!(self.store, |pool| sqlx::query(SQL)
            .bind(crate::clock::now_unix_ms())
            .bind(&job.id)
            .bind(&job.lease_token)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }

    /// Returns jobs whose lease expired to `available`, or dead-letters them when they are out
    /// of attempts.
    ///
    /// # Errors
    /// The database failed.
    pub async fn reap(&self) -> Result<Reaped, QueueError> {
        let now = crate::clock::now_unix_ms();
        let states: Vec<String> = write_tx!(self.store, REAP_SQLITE, REAP_POSTGRES, |conn, sql| {
            sqlx::query_scalar(sql)
                .bind(now)
                .bind(now)
                .fetch_all(conn)
                .await?
        });
        Ok(Reaped {
            rescued: states.iter().filter(|s| *s == "available").count(),
            dead: states.iter().filter(|s| *s == "dead").count(),
        })
    }

    /// Frees the window keys whose window closed, then deletes finished jobs older than
    /// `retention`. Returns how many were deleted.
    ///
    /// # Errors
    /// The database failed.
    pub async fn prune(&self, retention: Duration) -> Result<u64, QueueError> {
        // Freed, not kept for the retention: `jobs_window` then holds a few hours of keys,
        // not a week of them (Graph's etags are random, so a big index costs a page a row).
        const FREE_WINDOWS: &str =
            "UPDATE jobs SET window_key = NULL WHERE window_key IS NOT NULL AND created_at < $1";
        // Rows still holding a window key stay, whatever the retention.
        const SQL: &str = "DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'dead', 'cancelled') AND finished_at < $1 \
             AND window_key IS NULL";
        let cutoff = crate::clock::now_unix_ms().saturating_sub(millis(retention));
        let window_cutoff = crate::clock::now_unix_ms().saturating_sub(millis(REDELIVERY_WINDOW));
        write_tx!(self.store, |pool| sqlx::query(FREE_WINDOWS)
            .bind(window_cutoff)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(write_tx!(self.store, |pool| sqlx::query(SQL)
            .bind(cutoff)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Job counts by state.
    ///
    /// # Errors
    /// The database failed.
    pub async fn stats(&self) -> Result<Vec<(String, i64)>, QueueError> {
        const SQL: &str = "SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state";
        Ok(with_pool!(self.store, |pool| sqlx::query_as(SQL)
            .fetch_all(pool)
            .await?))
    }

    /// Per kind: jobs waiting (available), running, dead, and how long the oldest due one has
    /// waited (ms, 0 when none is due), for `tenantd status`.
    ///
    /// # Errors
    /// The database failed.
    pub async fn depth_by_kind(&self) -> Result<Vec<KindDepth>, QueueError> {
        const SQL: &str = "SELECT kind, \
             SUM(CASE WHEN state = 'available' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), \
             MIN(CASE WHEN state = 'available' AND run_at <= $1 THEN run_at END) \
             FROM jobs WHERE state IN ('available', 'running', 'dead') GROUP BY kind ORDER BY kind";
        let now = crate::clock::now_unix_ms();
        let rows: Vec<(String, i64, i64, i64, Option<i64>)> =
            with_pool!(self.store, |pool| sqlx::query_as(SQL)
                .bind(now)
                .fetch_all(pool)
                .await?);
        Ok(rows
            .into_iter()
            .map(|(kind, waiting, running, dead, oldest)| KindDepth {
                kind,
                waiting,
                running,
                dead,
                oldest_due_ms: oldest.map_or(0, |run_at| (now - run_at).max(0)),
            })
            .collect())
    }

    /// The `limit` most recently updated jobs that carry a failure reason (retrying, failed or
    /// dead), newest first.
    ///
    /// # Errors
    /// The database failed.
    pub async fn recent_failures(&self, limit: u32) -> Result<Vec<JobInfo>, QueueError> {
        const SQL: &str =
            select_jobs!("WHERE last_reason IS NOT NULL ORDER BY updated_at DESC, id LIMIT $1");
        let rows: Vec<InfoRow> = with_pool!(self.store, |pool| sqlx::query_as(SQL)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?);
        Ok(rows.into_iter().map(job_info).collect())
    }

    /// The newest job of `kind` per tenant lane.
    ///
    /// # Errors
    /// The database failed.
    pub async fn latest_per_tenant(&self, kind: &str) -> Result<Vec<JobInfo>, QueueError> {
        const SQL: &str = select_jobs!(
            "WHERE kind = $1 AND created_at = (SELECT MAX(created_at) FROM jobs AS newer \
             WHERE newer.kind = jobs.kind AND newer.tenant_id = jobs.tenant_id) ORDER BY tenant_id"
        );
        let rows: Vec<InfoRow> = with_pool!(self.store, |pool| sqlx::query_as(SQL)
            .bind(kind)
            .fetch_all(pool)
            .await?);
        Ok(rows.into_iter().map(job_info).collect())
    }

    /// Job counts by kind and state.
    ///
    /// # Errors
    /// The database failed.
    pub async fn stats_by_kind(&self) -> Result<Vec<(String, String, i64)>, QueueError> {
        const SQL: &str =
            "SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state ORDER BY kind, state";
        Ok(with_pool!(self.store, |pool| sqlx::query_as(SQL)
            .fetch_all(pool)
            .await?))
    }

    /// Jobs that are due (available with `run_at` reached) or running, in any worker: zero
    /// when the queue has nothing to do until a retry or a schedule comes due.
    ///
    /// # Errors
    /// The database failed.
    pub async fn due_or_running(&self) -> Result<i64, QueueError> {
        const SQL: &str = "SELECT COUNT(*) FROM jobs WHERE state = 'running' OR (state = 'available' AND run_at <= $1)";
        let now = crate::clock::now_unix_ms();
        let (count,): (i64,) = with_pool!(self.store, |pool| sqlx::query_as(SQL)
            .bind(now)
            .fetch_one(pool)
            .await?);
        Ok(count)
    }

    /// Jobs in a state, oldest first, at most `limit`.
    ///
    /// # Errors
    /// The database failed.
    pub async fn list(&self, state: JobState, limit: u32) -> Result<Vec<JobInfo>, QueueError> {
        const SQL: &str = select_jobs!("WHERE state = $1 ORDER BY updated_at, id LIMIT $2");
        let rows: Vec<InfoRow> = with_pool!(self.store, |pool| sqlx::query_as(SQL)
            .bind(state.as_str())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?);
        Ok(rows.into_iter().map(job_info).collect())
    }

    /// One job, if it (still) exists: finished jobs are pruned after the retention.
    ///
    /// # Errors
    /// The database failed.
    pub async fn get(&self, id: &str) -> Result<Option<JobInfo>, QueueError> {
        const SQL: &str = select_jobs!("WHERE id = $1");
        let row: Option<InfoRow> = with_pool!(self.store, |pool| sqlx::query_as(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await?);
        Ok(row.map(job_info))
    }

    /// Makes a dead, failed or cancelled job available again now, with fresh attempts. False
    /// when no such job exists in one of those states.
    ///
    /// # Errors
    /// The database failed.
    pub async fn retry_now(&self, id: &str) -> Result<bool, QueueError> {
        const SQL: &str = "UPDATE jobs SET state = 'available', attempts = 0, run_at = $1, finished_at = NULL, updated_at = $2 \
             WHERE id = $3 AND state IN ('dead', 'failed', 'cancelled')";
        let now = crate::clock::now_unix_ms();
        let retried = write_tx!(self.store, |pool| sqlx::query(SQL)
            .bind(now)
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected())
            == 1;
        if retried {
            self.wake();
            // Operators run this from another process: tell the daemons (the trigger only
            // covers inserts).
            if let Some(pool) = self.store.postgres() {
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(JOBS_CHANNEL)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(retried)
    }

    /// Cancels a job that has not started. False when it is not available.
    ///
    /// # Errors
    /// The database failed.
    pub async fn cancel(&self, id: &str) -> Result<bool, QueueError> {
        const SQL: &str = "UPDATE jobs SET state = 'cancelled', finished_at = $1, updated_at = $2 WHERE id = $3 AND state = 'available'";
        let now = crate::clock::now_unix_ms();
        Ok(write_tx!(self.store, |pool| sqlx::query(SQL)
            .bind(now)
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected())
            == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in [
            JobState::Available,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Dead,
            JobState::Cancelled,
        ] {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
        assert_eq!(JobState::parse("zombie"), None);
    }
}
