-- Cron schedules (src/scheduler.rs): the last fire time each schedule enqueued, so a tick is
-- enqueued once however many instances run and a missed tick is caught up once.
CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    last_fire_at BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
