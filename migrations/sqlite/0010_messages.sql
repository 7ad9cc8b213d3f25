-- Mail tenantd learned about through change notifications (src/mailbox.rs): the fields an
-- operator or the attribution lookback needs, not bodies. Deletes are marked, not removed.
-- Times are Unix seconds.
CREATE TABLE messages (
    tenant_id           TEXT NOT NULL,
    message_id          TEXT NOT NULL,
    user_id             TEXT NOT NULL,
    subscription_id     TEXT NOT NULL,
    folder_id           TEXT,
    subject             TEXT,
    from_address        TEXT,
    received_at         TEXT,
    internet_message_id TEXT,
    conversation_id     TEXT,
    preview             TEXT,
    deleted             INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    updated_at          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
) STRICT;
CREATE INDEX messages_conversation ON messages (tenant_id, conversation_id);
