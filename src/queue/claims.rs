//! Claims: walking the tenants with ready jobs (lanes) and leasing each its share, on SQLite
//! inside the claim's immediate transaction, on PostgreSQL with `FOR UPDATE SKIP LOCKED`.
//!
//! Owns no table (the queue owns `jobs`). Invariants: a claim gives every lane it visits an
//! equal share of what is wanted, each lane's best jobs first, and visits a lane at most once
//! per walk before sharing the rest among the lanes that filled their share.

use std::collections::HashSet;

use super::sql::{CLAIM_POSTGRES, LANES_AFTER, LANES_FROM, TAKE_POSTGRES, TAKE_SQLITE};
use super::QueueError;

/// A leased row: id, kind, payload, tenant, attempts, max attempts.
pub(super) type ClaimRow = (String, String, String, String, i64, i64);

/// The lane a one-statement claim served last: of the lanes it took jobs from, the last in
/// the order it walked them (after `cursor` first, then from the start round to `cursor`).
fn last_served(cursor: &str, rows: &[ClaimRow]) -> Option<String> {
    rows.iter()
        .map(|row| row.3.as_str())
        .max_by_key(|lane| (*lane <= cursor, *lane))
        .map(str::to_string)
}

/// The claim's database handle: SQLite inside its immediate transaction, or the PostgreSQL pool.
pub(super) enum LaneConn<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a sqlx::PgPool),
}

/// What one claim asks for besides the lanes.
pub(super) struct Lease<'a> {
    pub(super) owner: &'a str,
    pub(super) token: &'a str,
    pub(super) millis: i64,
    pub(super) now: i64,
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
    pub(super) async fn walk(
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
pub(super) async fn claim_postgres(
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
