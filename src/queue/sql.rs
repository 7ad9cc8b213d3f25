//! The queue's dialect-specific SQL: the statements whose text differs between SQLite and
//! PostgreSQL (the database clock, the lane walk, claims, lease renewal, the reaper, batch
//! inserts). The statements both dialects share stay beside their callers in `queue/mod.rs`.
//!
//! Owns no table (the queue owns `jobs`). Invariant: each pair states the same rule in both
//! dialects; lease times are judged by the database clock.

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
pub(super) const INSERT_BATCH_SQLITE: &str = concat!(
    "INSERT INTO jobs (id, kind, payload, tenant_id, dedupe_key, window_key, priority, run_at, max_attempts, created_at, updated_at) ",
    "SELECT value->>'id', value->>'kind', value->'payload', value->>'tenant_id', value->>'dedupe_key', ",
    "value->>'window_key', value->>'priority', value->>'run_at', value->>'max_attempts', value->>'now', value->>'now' ",
    "FROM jsonb_each($1) WHERE true ",
    "ON CONFLICT DO NOTHING"
);
pub(super) const INSERT_BATCH_POSTGRES: &str = concat!(
    "INSERT INTO jobs (id, kind, payload, tenant_id, dedupe_key, window_key, priority, run_at, max_attempts, created_at, updated_at) ",
    "SELECT id, kind, payload, tenant_id, dedupe_key, window_key, priority, run_at, max_attempts, now, now ",
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) ",
    "AS r(id, kind, payload, tenant_id, dedupe_key, window_key, priority, run_at, max_attempts, now) ",
    "ON CONFLICT DO NOTHING"
);

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
pub(super) const LANES_FROM: &str = lanes_sql!(">=");
pub(super) const LANES_AFTER: &str = lanes_sql!(">");

// One lane's share on SQLite (inside the claim's immediate transaction).
pub(super) const TAKE_SQLITE: &str = concat!(
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $1, lease_token = $2, ",
    "lease_expires_at = ", sqlite_now!(), " + $3, updated_at = $4 ",
    "WHERE id IN (SELECT id FROM jobs WHERE state = 'available' AND tenant_id = $5 ",
    "AND run_at <= ", sqlite_now!(), " ORDER BY priority DESC, run_at, id LIMIT $6) ",
    "RETURNING id, kind, payload, tenant_id, attempts, max_attempts"
);

// Every lane's share on PostgreSQL in one statement; claimers skip each other's locked rows.
pub(super) const TAKE_POSTGRES: &str = concat!(
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
pub(super) const CLAIM_POSTGRES: &str = concat!(
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

pub(super) const RENEW_SQLITE: &str = concat!(
    "UPDATE jobs SET lease_expires_at = ",
    sqlite_now!(),
    " + $1 ",
    "WHERE id = $2 AND lease_token = $3 AND state = 'running'"
);
pub(super) const RENEW_POSTGRES: &str = concat!(
    "UPDATE jobs SET lease_expires_at = ",
    postgres_now!(),
    " + $1 ",
    "WHERE id = $2 AND lease_token = $3 AND state = 'running'"
);

pub(super) const REAP_SQLITE: &str =
    concat!(
    "UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'available' END, ",
    "finished_at = CASE WHEN attempts >= max_attempts THEN CAST($1 AS INTEGER) ELSE NULL END, ",
    "last_reason = 'lease_expired', last_message = 'the worker stopped renewing its lease', ",
    "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = $2 ",
    "WHERE state = 'running' AND lease_expires_at < ", sqlite_now!(), " RETURNING state"
);
pub(super) const REAP_POSTGRES: &str =
    concat!(
    "UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'available' END, ",
    "finished_at = CASE WHEN attempts >= max_attempts THEN CAST($1 AS BIGINT) ELSE NULL END, ",
    "last_reason = 'lease_expired', last_message = 'the worker stopped renewing its lease', ",
    "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = $2 ",
    "WHERE state = 'running' AND lease_expires_at < ", postgres_now!(), " RETURNING state"
);
