-- Graph change-notification subscriptions (src/subscriptions.rs): the ones tenantd wants
-- (declared in configuration or by the CLI) and, once Graph created them, Graph's id and
-- expiry. The clientState is a vault ciphertext bound to its row. Times are Unix seconds.
CREATE TABLE subscriptions (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    resource         TEXT NOT NULL,
    change_types     TEXT NOT NULL,
    origin           TEXT NOT NULL CHECK (origin IN ('config', 'cli')),
    wanted           BIGINT NOT NULL DEFAULT 1 CHECK (wanted IN (0, 1)),
    client_state     TEXT NOT NULL,
    graph_id         TEXT,
    connection_id    TEXT,
    expires_at       BIGINT,
    last_renewed_at  BIGINT,
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN
                     ('pending', 'active', 'failed', 'removed')),
    reason           TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE UNIQUE INDEX subscriptions_graph_id ON subscriptions (graph_id) WHERE graph_id IS NOT NULL;
CREATE UNIQUE INDEX subscriptions_target ON subscriptions (tenant_id, resource, change_types);
