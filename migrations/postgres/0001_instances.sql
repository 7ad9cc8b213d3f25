-- Daemon instances sharing this database, owned by src/instance.rs. One row per process start;
-- `last_seen_at` is refreshed while it runs, `stopped_at` set on a clean shutdown.
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    hostname     TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    version      TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    stopped_at   TIMESTAMPTZ
);
