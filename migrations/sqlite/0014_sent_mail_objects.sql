-- Heartbeat mail really sent by a delegated staff user is recorded as `sent_mail` (graph_id is
-- the message's internetMessageId, owner the mailbox holding a copy). SQLite cannot change a
-- CHECK constraint in place: the table is rebuilt with the same rows and indexes.
CREATE TABLE provisioned_objects_new (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    step          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('user', 'license', 'mail', 'sent_mail', 'file', 'event', 'chat')),
    graph_id      TEXT NOT NULL,
    owner         TEXT NOT NULL DEFAULT '',
    attributed_to TEXT,
    created_at    INTEGER NOT NULL,
    removed_at    INTEGER
) STRICT;
INSERT INTO provisioned_objects_new
    SELECT id, tenant_id, run_id, step, kind, graph_id, owner, attributed_to, created_at, removed_at
    FROM provisioned_objects;
DROP TABLE provisioned_objects;
ALTER TABLE provisioned_objects_new RENAME TO provisioned_objects;
CREATE UNIQUE INDEX provisioned_objects_step ON provisioned_objects (tenant_id, run_id, step);
CREATE INDEX provisioned_objects_tenant ON provisioned_objects (tenant_id, removed_at);
