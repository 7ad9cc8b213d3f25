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

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::store::{with_pool, write_tx, DedicatedConnection, Store, StoreError};

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

/// A job to enqueue, borrowed, with a payload of any serializable type (rendered straight
/// into its row, never through a `serde_json::Value`).
#[derive(Debug, Clone, Copy)]
pub struct JobRow<'a, P: Serialize + ?Sized> {
    /// Stable kind name.
    pub kind: &'a str,
    /// The payload.
    pub payload: &'a P,
    /// The tenant lane; empty for none.
    pub tenant_id: &'a str,
    /// Unique among unfinished jobs of the kind.
    pub dedupe_key: Option<&'a str>,
    /// Higher runs first within a tenant.
    pub priority: i64,
    /// Earliest start (Unix ms); now when `None`.
    pub run_at: Option<i64>,
    /// Attempts before dead letter.
    pub max_attempts: u32,
}

impl<P: Serialize + ?Sized> JobRow<'_, P> {
    /// The row a batch insert reads, with a new id.
    pub fn encode(&self) -> EncodedJob {
        self.encode_at(crate::clock::now_unix_ms())
    }

    fn encode_at(&self, now: i64) -> EncodedJob {
        EncodedJob {
            id: new_job_id(),
            kind: self.kind.to_string(),
            payload: serde_json::value::to_raw_value(self.payload).expect("job payloads serialize"),
            tenant_id: self.tenant_id.to_string(),
            dedupe_key: self.dedupe_key.map(str::to_string),
            window_key: None,
            priority: self.priority,
            run_at: self.run_at.unwrap_or(now),
            max_attempts: i64::from(self.max_attempts.max(1)),
            now,
        }
    }
}

/// A new job id: a UUIDv7, so ids grow with time and inserting a job appends to the primary
/// key's index instead of writing a random page of it (at a few thousand jobs per second,
/// random ids cost the intake a page per job in the write-ahead log).
fn new_job_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A job ready for a batch insert: its id chosen and its payload serialized by whoever
/// submits it, so a single batch writer only assembles statements. Batches go in as one
/// statement whose text is the same for every batch size (one prepared statement): a JSON
/// array of rows on SQLite, one array per column on PostgreSQL (whose JSON functions refuse
/// `\u0000` in payloads, which text columns hold fine).
#[derive(Debug, Clone, Serialize)]
pub struct EncodedJob {
    id: String,
    kind: String,
    payload: Box<serde_json::value::RawValue>,
    tenant_id: String,
    dedupe_key: Option<String>,
    window_key: Option<String>,
    priority: i64,
    run_at: i64,
    max_attempts: i64,
    now: i64,
}

impl EncodedJob {
    /// Makes the dedupe key hold for [`REDELIVERY_WINDOW`] from now, also after the job
    /// finished (a `window_key`): for Graph's redeliveries, which come for up to 4 hours.
    pub fn within_window(mut self) -> Self {
        self.window_key = self.dedupe_key.take();
        self
    }
}

/// `rows` as one JSON array (SQLite's batch parameter).
fn json_array(rows: &[EncodedJob]) -> String {
    serde_json::to_string(rows).expect("job rows serialize")
}

/// `rows` bound column by column to [`INSERT_BATCH_POSTGRES`].
fn bind_columns<'q>(
    rows: &'q [EncodedJob],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(INSERT_BATCH_POSTGRES)
        .bind(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.payload.get()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.tenant_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.dedupe_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.window_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.priority).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.run_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.max_attempts).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.now).collect::<Vec<_>>())
}

// A batch of encoded jobs (`$1`, a JSON array) inserted by one statement; taken dedupe keys
// are skipped. `jsonb_each` hands each row over as JSONB, so reading its ten fields does not
// parse its text ten times. (`WHERE true` lets SQLite tell the upsert clause from a join
// constraint.)
//
// It runs on its own, as its own transaction: a statement is atomic, and outside an explicit
// transaction SQLite keeps no statement journal for it (inside `BEGIN … COMMIT` it copied
// every page the insert changed into one, in case the statement alone had to roll back),
// which made the intake's batches 9 % faster. Starting a write in autocommit waits on the
// busy handler like `BEGIN IMMEDIATE` does (a stale snapshot is retried, no read was made).
//
// Taken keys are either kind: a dedupe key among unfinished jobs, or a window key among all
// rows (`jobs_window`, migration 0015); `ON CONFLICT DO NOTHING` without a target skips both.
const INSERT_BATCH_SQLITE: &str = concat!(
    "INSERT INTO jobs (id, kind, payload, tenant_id, dedupe_key, window_key, priority, run_at, max_attempts, created_at, updated_at) ",
    "SELECT value->>'id', value->>'kind', value->'payload', value->>'tenant_id', value->>'dedupe_key', ",
    "value->>'window_key', value->>'priority', value->>'run_at', value->>'max_attempts', value->>'now', value->>'now' ",
    "FROM jsonb_each($1) WHERE true ",
    "ON CONFLICT DO NOTHING"
);
const INSERT_BATCH_POSTGRES: &str = concat!(
    "INSERT INTO jobs (id, kind, payload, tenant_id, dedupe_key, window_key, priority, run_at, max_attempts, created_at, updated_at) ",
    "SELECT id, kind, payload, tenant_id, dedupe_key, window_key, priority, run_at, max_attempts, now, now ",
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) ",
    "AS r(id, kind, payload, tenant_id, dedupe_key, window_key, priority, run_at, max_attempts, now) ",
    "ON CONFLICT DO NOTHING"
);

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

// The database clock in Unix milliseconds, per dialect.
macro_rules! sqlite_now {
    () => {
        "CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    };
}
macro_rules! postgres_now {
    () => {
        // Stable within a statement, so the planner can use it against an index.
        "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT"
    };
}

// Up to `$2` lanes (tenants with available jobs) in tenant order, starting after `$1` (or at
// `$1` for the first lane of a walk from the start): one index probe per lane, whatever the
// backlog, instead of ranking every ready row.
macro_rules! lanes_sql {
    ($first:literal) => {
        concat!(
            "WITH RECURSIVE lanes(tenant_id, n) AS (",
            "SELECT (SELECT tenant_id FROM jobs WHERE state = 'available' AND tenant_id ",
            $first,
            " $1 ORDER BY tenant_id LIMIT 1), 1 ",
            "UNION ALL SELECT (SELECT j.tenant_id FROM jobs j WHERE j.state = 'available' ",
            "AND j.tenant_id > lanes.tenant_id ORDER BY j.tenant_id LIMIT 1), n + 1 ",
            "FROM lanes WHERE lanes.tenant_id IS NOT NULL AND n < $2) ",
            "SELECT tenant_id FROM lanes WHERE tenant_id IS NOT NULL"
        )
    };
}
const LANES_FROM: &str = lanes_sql!(">=");
const LANES_AFTER: &str = lanes_sql!(">");

// One lane's share on SQLite (inside the claim's immediate transaction).
const TAKE_SQLITE: &str = concat!(
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $1, lease_token = $2, ",
    "lease_expires_at = ", sqlite_now!(), " + $3, updated_at = $4 ",
    "WHERE id IN (SELECT id FROM jobs WHERE state = 'available' AND tenant_id = $5 ",
    "AND run_at <= ", sqlite_now!(), " ORDER BY priority DESC, run_at, id LIMIT $6) ",
    "RETURNING id, kind, payload, tenant_id, attempts, max_attempts"
);

// Every lane's share on PostgreSQL in one statement; claimers skip each other's locked rows.
const TAKE_POSTGRES: &str = concat!(
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $1, lease_token = $2, ",
    "lease_expires_at = ", postgres_now!(), " + $3, updated_at = $4 ",
    // `= ANY(ARRAY(…))` runs the picking first and then updates by primary key; `IN (…)` let
    // the planner hash-join against a scan of the whole table (12 ms per claim at 100,000 rows).
    "WHERE id = ANY(ARRAY(SELECT picked.id FROM unnest($5::text[], $6::bigint[]) AS lane(tenant_id, quota) ",
    "CROSS JOIN LATERAL ",
    "(SELECT j.id FROM jobs j WHERE j.state = 'available' AND j.tenant_id = lane.tenant_id ",
    "AND j.run_at <= ", postgres_now!(), " ORDER BY j.priority DESC, j.run_at, j.id LIMIT lane.quota ",
    "FOR UPDATE SKIP LOCKED) picked)) ",
    "RETURNING id, kind, payload, tenant_id, attempts, max_attempts"
);

// The common PostgreSQL claim in one statement: up to `$6` lanes in order from after the
// cursor `$5` round to it, each its equal share of `$6` (the first lanes the remainder),
// taken as `TAKE_POSTGRES` does. When lanes have fewer ready jobs than their share, the claim
// goes on with the lane walk for the rest.
const CLAIM_POSTGRES: &str = concat!(
    "WITH RECURSIVE after_lanes(tenant_id, n) AS (",
    "SELECT (SELECT tenant_id FROM jobs WHERE state = 'available' AND tenant_id > $5 ORDER BY tenant_id LIMIT 1), 1 ",
    "UNION ALL SELECT (SELECT j.tenant_id FROM jobs j WHERE j.state = 'available' ",
    "AND j.tenant_id > a.tenant_id ORDER BY j.tenant_id LIMIT 1), n + 1 ",
    "FROM after_lanes a WHERE a.tenant_id IS NOT NULL AND n < $6), ",
    "start_lanes(tenant_id, n) AS (",
    "SELECT (SELECT tenant_id FROM jobs WHERE state = 'available' ORDER BY tenant_id LIMIT 1), 1 ",
    "UNION ALL SELECT (SELECT j.tenant_id FROM jobs j WHERE j.state = 'available' ",
    "AND j.tenant_id > s.tenant_id ORDER BY j.tenant_id LIMIT 1), n + 1 ",
    "FROM start_lanes s WHERE s.tenant_id IS NOT NULL AND s.tenant_id < $5 AND n < $6), ",
    "lanes AS (SELECT tenant_id, n AS pos FROM after_lanes WHERE tenant_id IS NOT NULL ",
    "UNION ALL SELECT tenant_id, $6 + n FROM start_lanes WHERE tenant_id IS NOT NULL AND tenant_id <= $5 ",
    "ORDER BY pos LIMIT $6), ",
    "shared AS (SELECT tenant_id, $6 / count(*) OVER () + ",
    "CASE WHEN row_number() OVER (ORDER BY pos) <= $6 % count(*) OVER () THEN 1 ELSE 0 END AS quota FROM lanes) ",
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $1, lease_token = $2, ",
    "lease_expires_at = ", postgres_now!(), " + $3, updated_at = $4 ",
    "WHERE id = ANY(ARRAY(SELECT picked.id FROM shared CROSS JOIN LATERAL ",
    "(SELECT j.id FROM jobs j WHERE j.state = 'available' AND j.tenant_id = shared.tenant_id ",
    "AND j.run_at <= ", postgres_now!(), " ORDER BY j.priority DESC, j.run_at, j.id LIMIT shared.quota ",
    "FOR UPDATE SKIP LOCKED) picked)) ",
    "RETURNING id, kind, payload, tenant_id, attempts, max_attempts"
);

/// The lane a one-statement claim served last: of the lanes it took jobs from, the last in
/// the order it walked them (after `cursor` first, then from the start round to `cursor`).
fn last_served(cursor: &str, rows: &[ClaimRow]) -> Option<String> {
    rows.iter()
        .map(|row| row.3.as_str())
        .max_by_key(|lane| (*lane <= cursor, *lane))
        .map(str::to_string)
}

const RENEW_SQLITE: &str = concat!(
    "UPDATE jobs SET lease_expires_at = ",
    sqlite_now!(),
    " + $1 ",
    "WHERE id = $2 AND lease_token = $3 AND state = 'running'"
);
const RENEW_POSTGRES: &str = concat!(
    "UPDATE jobs SET lease_expires_at = ",
    postgres_now!(),
    " + $1 ",
    "WHERE id = $2 AND lease_token = $3 AND state = 'running'"
);

const REAP_SQLITE: &str =
    concat!(
    "UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'available' END, ",
    "finished_at = CASE WHEN attempts >= max_attempts THEN CAST($1 AS INTEGER) ELSE NULL END, ",
    "last_reason = 'lease_expired', last_message = 'the worker stopped renewing its lease', ",
    "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = $2 ",
    "WHERE state = 'running' AND lease_expires_at < ", sqlite_now!(), " RETURNING state"
);
const REAP_POSTGRES: &str =
    concat!(
    "UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'available' END, ",
    "finished_at = CASE WHEN attempts >= max_attempts THEN CAST($1 AS BIGINT) ELSE NULL END, ",
    "last_reason = 'lease_expired', last_message = 'the worker stopped renewing its lease', ",
    "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = $2 ",
    "WHERE state = 'running' AND lease_expires_at < ", postgres_now!(), " RETURNING state"
);

/// Inserts batches of encoded jobs, each in one transaction, for a submitter that writes all
/// the time. It keeps a connection of its own (opened on first use, and again after a
/// failure) and sends each batch as one request: under load every hand-off to SQLite's thread
/// or round trip to PostgreSQL waits, and on SQLite the pool's connections would each read the
/// pages this writer keeps changing.
#[derive(Debug)]
pub struct BatchWriter {
    queue: Queue,
    connection: Option<DedicatedConnection>,
}

impl BatchWriter {
    /// Inserts `rows` in one transaction, skipping taken dedupe keys; returns how many were
    /// inserted. Once this returns `Ok`, they are committed.
    ///
    /// # Errors
    /// The database failed; nothing of the batch was committed.
    pub async fn insert(&mut self, rows: &[EncodedJob]) -> Result<u64, QueueError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let store = &self.queue.store;
        // This process's SQLite writers take turns; PostgreSQL needs no turn.
        let _turn = match store.sqlite() {
            Some(_) => Some(store.sqlite_write_turn().await),
            None => None,
        };
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self.connection.insert(store.open_dedicated().await?),
        };
        let inserted = match connection {
            DedicatedConnection::Sqlite(conn) => sqlx::query(INSERT_BATCH_SQLITE)
                .bind(json_array(rows))
                .execute(&mut *conn)
                .await
                .map(|done| done.rows_affected()),
            DedicatedConnection::Postgres(conn) => bind_columns(rows)
                .execute(&mut *conn)
                .await
                .map(|done| done.rows_affected()),
        };
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(err) => {
                // The failed statement rolled back on its own; the connection itself may be
                // broken (a PostgreSQL socket): the next batch opens a fresh one.
                self.connection = None;
                return Err(err.into());
            }
        };
        if inserted > 0 {
            self.queue.wake();
        }
        Ok(inserted)
    }
}

/// What the reaper did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Jobs returned to `available`.
    pub rescued: usize,
    /// Jobs dead-lettered (no attempts left).
    pub dead: usize,
}

type ClaimRow = (String, String, String, String, i64, i64);

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

/// Wakes an idle claimer when work may be ready: jobs added by this process, and on
/// PostgreSQL jobs added by any process or by other systems' own inserts (LISTEN/NOTIFY).
/// Notifications are hints; polling stays the fallback, so a lost one only costs latency.
pub struct WorkSignal {
    added: Arc<Notify>,
    notified: Arc<Notify>,
    /// Receives PostgreSQL notifications on its own connection; stopped when the signal drops.
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl WorkSignal {
    /// Waits until work may be ready or `timeout` passed.
    pub async fn wait(&self, timeout: Duration) {
        tokio::select! {
            () = self.added.notified() => {}
            () = self.notified.notified() => {}
            () = tokio::time::sleep(timeout) => {}
        }
    }

    /// Whether PostgreSQL notifications are being received.
    pub fn listens(&self) -> bool {
        self.listener.is_some()
    }
}

impl Drop for WorkSignal {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// Turns notifications into wake-ups. Runs in its own task so that a wait ending for another
/// reason never cancels a half-read notification; reconnects on the next receive after a loss.
async fn forward_notifications(mut listener: sqlx::postgres::PgListener, notified: Arc<Notify>) {
    loop {
        match listener.recv().await {
            Ok(_) => notified.notify_one(),
            Err(err) => {
                tracing::debug!(error = %StoreError::from(err), "job notifications interrupted; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The claim's database handle: SQLite inside its immediate transaction, or the PostgreSQL pool.
enum LaneConn<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a sqlx::PgPool),
}

/// What one claim asks for besides the lanes.
struct Lease<'a> {
    owner: &'a str,
    token: &'a str,
    millis: i64,
    now: i64,
}

impl LaneConn<'_> {
    /// Up to `count` lanes in tenant order, starting after `after` (or at the first lane).
    async fn lanes(
        &mut self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<String>, QueueError> {
        let (sql, bound) = match after {
            Some(after) => (LANES_AFTER, after),
            None => (LANES_FROM, ""),
        };
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        Ok(match self {
            LaneConn::Sqlite(conn) => {
                sqlx::query_scalar(sql)
                    .bind(bound)
                    .bind(count)
                    .fetch_all(&mut **conn)
                    .await?
            }
            LaneConn::Postgres(pool) => {
                sqlx::query_scalar(sql)
                    .bind(bound)
                    .bind(count)
                    .fetch_all(*pool)
                    .await?
            }
        })
    }

    /// Leases up to `want` ready jobs shared equally among `lanes` (the first lanes take the
    /// remainder), each lane's best first.
    async fn take(
        &mut self,
        lanes: &[String],
        want: usize,
        lease: &Lease<'_>,
    ) -> Result<Vec<ClaimRow>, QueueError> {
        let quotas: Vec<i64> = shares(lanes.len(), want)
            .map(|share| i64::try_from(share).unwrap_or(i64::MAX))
            .collect();
        match self {
            LaneConn::Sqlite(conn) => {
                let mut rows = Vec::new();
                for (lane, quota) in lanes.iter().zip(&quotas) {
                    let taken: Vec<ClaimRow> = sqlx::query_as(TAKE_SQLITE)
                        .bind(lease.owner)
                        .bind(lease.token)
                        .bind(lease.millis)
                        .bind(lease.now)
                        .bind(lane)
                        .bind(quota)
                        .fetch_all(&mut **conn)
                        .await?;
                    rows.extend(taken);
                }
                Ok(rows)
            }
            LaneConn::Postgres(pool) => Ok(sqlx::query_as(TAKE_POSTGRES)
                .bind(lease.owner)
                .bind(lease.token)
                .bind(lease.millis)
                .bind(lease.now)
                .bind(lanes)
                .bind(&quotas)
                .fetch_all(*pool)
                .await?),
        }
    }

    /// Walks the lanes once round from after `start`, giving each lane an equal share of what
    /// is still wanted, until `limit` jobs are leased or every lane was visited; then, while
    /// jobs are still wanted, shares them again among the lanes that filled their share (lanes
    /// with little or nothing ready leave their share to the others). Returns the jobs and the
    /// last lane visited (the next claim's start).
    async fn walk(
        &mut self,
        start: Option<String>,
        limit: usize,
        lease: &Lease<'_>,
    ) -> Result<(Vec<ClaimRow>, Option<String>), QueueError> {
        let mut rows = Vec::new();
        let mut visited = HashSet::new();
        let mut after = start.clone();
        let mut wrapped = start.is_none();
        let mut last = start.clone();
        let mut full = Vec::new();
        while rows.len() < limit {
            let want = limit - rows.len();
            let mut lanes = self.lanes(after.as_deref(), want).await?;
            let reached_end = lanes.len() < want;
            // Once round: stop at a lane this claim has served, or, after wrapping, at the lane
            // the previous claim ended on (served last this time).
            let mut round_done = false;
            if let Some(seen) = lanes.iter().position(|lane| visited.contains(lane)) {
                lanes.truncate(seen);
                round_done = true;
            }
            if wrapped {
                if let Some(end) = lanes.iter().position(|lane| Some(lane) == start.as_ref()) {
                    lanes.truncate(end + 1);
                    round_done = true;
                }
            }
            if !lanes.is_empty() {
                let taken = self.take(&lanes, want, lease).await?;
                full.extend(filled(&lanes, want, &taken));
                rows.extend(taken);
                last = lanes.last().cloned();
                visited.extend(lanes.iter().cloned());
                after.clone_from(&last);
            }
            if round_done || (reached_end && wrapped) {
                break;
            }
            if reached_end {
                wrapped = true;
                after = None;
            }
        }
        while rows.len() < limit && !full.is_empty() {
            let want = limit - rows.len();
            full.truncate(want);
            let taken = self.take(&full, want, lease).await?;
            full = filled(&full, want, &taken);
            rows.extend(taken);
        }
        Ok((rows, last))
    }
}

/// A PostgreSQL claim: one statement when the lanes have their shares ready (the common case
/// under load), the lane walk for whatever that statement could not fill.
async fn claim_postgres(
    pool: &sqlx::PgPool,
    start: Option<String>,
    limit: usize,
    lease: &Lease<'_>,
) -> Result<(Vec<ClaimRow>, Option<String>), QueueError> {
    let Some(cursor) = start.clone() else {
        return LaneConn::Postgres(pool).walk(start, limit, lease).await;
    };
    let mut rows: Vec<ClaimRow> = sqlx::query_as(CLAIM_POSTGRES)
        .bind(lease.owner)
        .bind(lease.token)
        .bind(lease.millis)
        .bind(lease.now)
        .bind(&cursor)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
    if rows.len() >= limit {
        let last = last_served(&cursor, &rows);
        return Ok((rows, last));
    }
    let (more, last) = LaneConn::Postgres(pool)
        .walk(start, limit - rows.len(), lease)
        .await?;
    rows.extend(more);
    Ok((rows, last))
}

/// `want` split among `lanes` as evenly as it goes, the first lanes taking the remainder.
fn shares(lanes: usize, want: usize) -> impl Iterator<Item = usize> {
    (0..lanes).map(move |n| want / lanes + usize::from(n < want % lanes))
}

/// The lanes that gave their whole share (they may have more ready).
fn filled(lanes: &[String], want: usize, taken: &[ClaimRow]) -> Vec<String> {
    lanes
        .iter()
        .zip(shares(lanes.len(), want))
        .filter(|(lane, share)| taken.iter().filter(|row| &row.3 == *lane).count() >= *share)
        .map(|(lane, _)| lane.clone())
        .collect()
}

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
        BatchWriter {
            queue: self.clone(),
            connection: None,
        }
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
