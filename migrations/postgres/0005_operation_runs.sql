-- Operator-started operations (src/runs.rs): one active run per tenant scope at a time.
CREATE TABLE operation_runs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    job_id      TEXT,
    reason      TEXT,
    message     TEXT,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT
);
CREATE UNIQUE INDEX operation_runs_one_active ON operation_runs (tenant_id) WHERE state IN ('queued', 'running');
CREATE INDEX operation_runs_recent ON operation_runs (created_at);
