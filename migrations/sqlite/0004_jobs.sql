-- The durable work queue (src/queue.rs). Times are Unix milliseconds; leases are judged by the
-- database clock. A dedupe key is unique among unfinished jobs of a kind.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY NOT NULL,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    tenant_id        TEXT NOT NULL DEFAULT '',
    dedupe_key       TEXT,
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    state            TEXT NOT NULL DEFAULT 'available' CHECK (state IN
                     ('available', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    last_reason      TEXT,
    last_message     TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
) STRICT;
CREATE UNIQUE INDEX jobs_dedupe ON jobs (kind, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('available', 'running');
CREATE INDEX jobs_ready ON jobs (state, run_at);
CREATE INDEX jobs_lease ON jobs (state, lease_expires_at);
CREATE INDEX jobs_finished ON jobs (state, finished_at);
