-- Everything heartbeat provisioning created in a tenant (src/heartbeat.rs), so cleanup removes
-- exactly that and a resumed run skips the steps it already did. `step` names the step of a
-- run that made the object (`user:demo01@contoso.onmicrosoft.com`, `mail:3`); `owner` is the
-- user whose mailbox, drive or calendar holds it; `attributed_to` is who Graph says did it
-- (`application:<id>` or `user:<address>`). Times are Unix seconds; removal is marked.
CREATE TABLE provisioned_objects (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    step          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('user', 'license', 'mail', 'file', 'event', 'chat')),
    graph_id      TEXT NOT NULL,
    owner         TEXT NOT NULL DEFAULT '',
    attributed_to TEXT,
    created_at    INTEGER NOT NULL,
    removed_at    INTEGER
) STRICT;
CREATE UNIQUE INDEX provisioned_objects_step ON provisioned_objects (tenant_id, run_id, step);
CREATE INDEX provisioned_objects_tenant ON provisioned_objects (tenant_id, removed_at);
