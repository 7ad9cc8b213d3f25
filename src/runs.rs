//! Operation runs: operator-started operations (connection check now; inventory sync, heartbeat
//! run-now and bot provisioning as they land) recorded with type, tenant scope, state,
//! timestamps, outcome and reason code (seed 002, D-004 and D-006).
//!
//! Owns `operation_runs`. Invariants: at most one active (queued or running) run per tenant,
//! enforced by a unique partial index so it holds across instances; starting the same type
//! while one is active returns the active run; starting another type is refused as scope busy,
//! naming the active run.

use serde::Serialize;

use crate::clock::now_unix;
use crate::queue::{NewJob, Queue, QueueError};
use crate::store::{with_pool, write_tx, Store, StoreError};

/// One run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperationRun {
    /// Run id.
    pub id: String,
    /// Operation type, e.g. `connection_check`.
    pub kind: String,
    /// The tenant scope.
    pub tenant_id: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub state: String,
    /// The job doing the work.
    pub job_id: Option<String>,
    /// Outcome reason code.
    pub reason: Option<String>,
    /// Sanitized outcome message.
    pub message: Option<String>,
    /// Created (Unix seconds).
    pub created_at: i64,
    /// Started (Unix seconds).
    pub started_at: Option<i64>,
    /// Finished (Unix seconds).
    pub finished_at: Option<i64>,
}

/// What starting a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A new run, its job enqueued.
    New(OperationRun),
    /// The same type is already active for the scope: that run.
    Existing(OperationRun),
    /// Another type is active for the scope: refused.
    ScopeBusy(OperationRun),
}

/// Why a run operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Enqueueing the run's job failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<sqlx::Error> for RunError {
    fn from(err: sqlx::Error) -> Self {
        RunError::Store(StoreError::from(err))
    }
}

type Row = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
);

fn from_row(row: Row) -> OperationRun {
    let (id, kind, tenant_id, state, job_id, reason, message, created_at, started_at, finished_at) =
        row;
    OperationRun {
        id,
        kind,
        tenant_id,
        state,
        job_id,
        reason,
        message,
        created_at,
        started_at,
        finished_at,
    }
}

macro_rules! select_runs {
    ($tail:literal) => {
        concat!(
            "SELECT id, kind, tenant_id, state, job_id, reason, message, created_at, started_at, finished_at FROM operation_runs ",
            $tail
        )
    };
}

/// Starts a run of `kind` for `tenant_id` whose work is `job` (its payload gets `run_id`).
///
/// # Errors
/// The database or the queue failed.
pub async fn start(
    store: &Store,
    queue: &Queue,
    kind: &str,
    tenant_id: &str,
    mut job: NewJob,
) -> Result<Started, RunError> {
    // A run whose job ended unrecorded must not hold the scope.
    settle(store, queue).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    const INSERT: &str =
        "INSERT INTO operation_runs (id, kind, tenant_id, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id) WHERE state IN ('queued', 'running') DO NOTHING";
    let inserted = write_tx!(store, |pool| sqlx::query(INSERT)
        .bind(&id)
        .bind(kind)
        .bind(tenant_id)
        .bind(now_unix())
        .execute(pool)
        .await?
        .rows_affected());
    if inserted == 0 {
        let Some(active) = active(store, tenant_id).await? else {
            // The active run finished in between: try again.
            return Box::pin(start(store, queue, kind, tenant_id, job)).await;
        };
        return Ok(if active.kind == kind {
            Started::Existing(active)
        } else {
            Started::ScopeBusy(active)
        });
    }
    job.payload["run_id"] = serde_json::json!(id);
    match queue.enqueue(&job).await {
        Ok(enqueued) => {
            write_tx!(store, |pool| {
                sqlx::query("UPDATE operation_runs SET job_id = $1 WHERE id = $2")
                    .bind(enqueued.id())
                    .bind(&id)
                    .execute(pool)
                    .await?;
            });
        }
        Err(err) => {
            finish(
                store,
                &id,
                false,
                "enqueue_failed",
                "the run's job could not be queued",
            )
            .await?;
            return Err(err.into());
        }
    }
    Ok(Started::New(get(store, &id).await?.expect("just inserted")))
}

/// Ends active runs whose job ended without recording the run's outcome: dead-lettered after
/// its last retry, cancelled, timed out for good, or already pruned. Such a run would
/// otherwise stay `running` and keep its tenant's scope busy. Returns how many were ended.
///
/// # Errors
/// The database or the queue failed.
pub async fn settle(store: &Store, queue: &Queue) -> Result<u64, RunError> {
    const SQL: &str = select_runs!("WHERE state IN ('queued', 'running') AND job_id IS NOT NULL");
    let rows: Vec<Row> = with_pool!(store, |pool| sqlx::query_as(SQL).fetch_all(pool).await?);
    let mut settled = 0;
    for run in rows.into_iter().map(from_row) {
        let Some(job_id) = &run.job_id else { continue };
        let (reason, message) = match queue.get(job_id).await? {
            Some(job) if matches!(job.state.as_str(), "available" | "running" | "succeeded") => {
                // Still working, or it succeeded and records the run itself.
                continue;
            }
            Some(job) => (
                job.last_reason
                    .unwrap_or_else(|| format!("job_{}", job.state)),
                format!(
                    "the run's job ended {} after {} attempts{}",
                    job.state,
                    job.attempts,
                    job.last_message
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            ),
            None => (
                "job_lost".to_string(),
                "the run's job no longer exists".to_string(),
            ),
        };
        tracing::warn!(run = %run.id, kind = %run.kind, reason = %reason, "operation run ended with its job");
        finish(store, &run.id, false, &reason, &message).await?;
        settled += 1;
    }
    Ok(settled)
}

/// The active run of a tenant.
///
/// # Errors
/// The database failed.
pub async fn active(store: &Store, tenant_id: &str) -> Result<Option<OperationRun>, RunError> {
    const SQL: &str = select_runs!("WHERE tenant_id = $1 AND state IN ('queued', 'running')");
    let row: Option<Row> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?);
    Ok(row.map(from_row))
}

/// One run.
///
/// # Errors
/// The database failed.
pub async fn get(store: &Store, id: &str) -> Result<Option<OperationRun>, RunError> {
    const SQL: &str = select_runs!("WHERE id = $1");
    let row: Option<Row> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(id)
        .fetch_optional(pool)
        .await?);
    Ok(row.map(from_row))
}

/// The most recent runs, newest first.
///
/// # Errors
/// The database failed.
pub async fn list(store: &Store, limit: u32) -> Result<Vec<OperationRun>, RunError> {
    const SQL: &str = select_runs!("ORDER BY created_at DESC, id LIMIT $1");
    let rows: Vec<Row> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?);
    Ok(rows.into_iter().map(from_row).collect())
}

/// Marks a run running (its job started).
///
/// # Errors
/// The database failed.
pub async fn mark_running(store: &Store, id: &str) -> Result<(), RunError> {
    const SQL: &str = "UPDATE operation_runs SET state = 'running', started_at = $1 WHERE id = $2 AND state IN ('queued', 'running')";
    write_tx!(store, |pool| {
        sqlx::query(SQL)
            .bind(now_unix())
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Records a run's outcome.
///
/// # Errors
/// The database failed.
pub async fn finish(
    store: &Store,
    id: &str,
    succeeded: bool,
    reason: &str,
    message: &str,
) -> Result<(), RunError> {
    const SQL: &str = "UPDATE operation_runs SET state = $1, reason = $2, message = $3, finished_at = $4 WHERE id = $5 AND state IN ('queued', 'running')";
    let state = if succeeded { "succeeded" } else { "failed" };
    write_tx!(store, |pool| {
        sqlx::query(SQL)
            .bind(state)
            .bind(reason)
            .bind(message)
            .bind(now_unix())
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}
