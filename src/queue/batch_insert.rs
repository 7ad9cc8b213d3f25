//! Batch inserts into the queue: a job encoded as the row a batch insert reads
//! ([`EncodedJob`], from a [`JobRow`]) and the [`BatchWriter`] that commits batches of them on
//! a connection of its own.
//!
//! Owns no table of its own (it writes `jobs`, which the queue owns). Invariants: a batch is
//! one statement and one transaction; a taken dedupe or window key skips its row, never fails
//! the batch; `insert` returns `Ok` only once the batch is committed.

use serde::Serialize;

use super::sql::{INSERT_BATCH_POSTGRES, INSERT_BATCH_SQLITE};
use super::{Queue, QueueError};
use crate::store::DedicatedConnection;

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

    pub(super) fn encode_at(&self, now: i64) -> EncodedJob {
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
pub(super) fn new_job_id() -> String {
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
pub(super) fn json_array(rows: &[EncodedJob]) -> String {
    serde_json::to_string(rows).expect("job rows serialize")
}

/// `rows` bound column by column to [`INSERT_BATCH_POSTGRES`].
pub(super) fn bind_columns<'q>(
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

impl BatchWriter {
    /// A writer for `queue`; its connection is opened on first use.
    pub(super) fn new(queue: Queue) -> Self {
        Self {
            queue,
            connection: None,
        }
    }
}
