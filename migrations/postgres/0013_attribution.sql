-- Delegated actions and the attribution lookback (src/attribution.rs): mail and events tenantd
-- sent or created as a signed-in user, inbound replies linked to them, and each tenant's
-- lookback window. Times are Unix seconds.
CREATE TABLE delegated_actions (
    id                  TEXT PRIMARY KEY NOT NULL,
    tenant_id           TEXT NOT NULL,
    connection_id       TEXT NOT NULL,
    user_id             TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('mail', 'event')),
    request_id          TEXT,
    state               TEXT NOT NULL CHECK (state IN ('prepared', 'done')),
    graph_id            TEXT NOT NULL,
    internet_message_id TEXT,
    conversation_id     TEXT,
    subject             TEXT,
    created_at          BIGINT NOT NULL,
    done_at             BIGINT
);
CREATE UNIQUE INDEX delegated_actions_request ON delegated_actions (tenant_id, kind, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX delegated_actions_conversation ON delegated_actions (tenant_id, conversation_id);
CREATE INDEX delegated_actions_message ON delegated_actions (tenant_id, internet_message_id);
CREATE INDEX delegated_actions_created ON delegated_actions (created_at);
CREATE TABLE attribution_links (
    tenant_id   TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    action_id   TEXT NOT NULL REFERENCES delegated_actions (id) ON DELETE CASCADE,
    matched_by  TEXT NOT NULL CHECK (matched_by IN ('conversation', 'in_reply_to')),
    from_address TEXT,
    received_at TEXT,
    linked_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX attribution_links_action ON attribution_links (action_id);
CREATE TABLE attribution_settings (
    tenant_id     TEXT PRIMARY KEY NOT NULL,
    lookback_days BIGINT NOT NULL CHECK (lookback_days IN (30, 60, 90)),
    updated_at    BIGINT NOT NULL
);
