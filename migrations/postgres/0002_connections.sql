-- Tenant connections (src/connections.rs), their encrypted tokens (src/connections.rs) and the
-- audit trail (src/audit.rs). Secrets are vault ciphertexts bound to their row; times are Unix
-- seconds so both dialects read them the same way.
CREATE TABLE connections (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    auth_mode       TEXT NOT NULL CHECK (auth_mode IN ('app', 'delegated')),
    user_id         TEXT NOT NULL DEFAULT '',
    user_name       TEXT,
    label           TEXT,
    is_default      BIGINT NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    authority       TEXT NOT NULL,
    client_secret   TEXT,
    status          TEXT NOT NULL DEFAULT 'active' CHECK (status IN
                    ('active', 'consent_required', 'interaction_required', 'needs_reconsent', 'error', 'disabled')),
    reason          TEXT,
    last_token_at   BIGINT,
    last_failure_at BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX connections_identity ON connections (tenant_id, client_id, auth_mode, user_id);
CREATE UNIQUE INDEX connections_one_default ON connections (tenant_id) WHERE is_default = 1;

CREATE TABLE connection_tokens (
    connection_id TEXT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    resource      TEXT NOT NULL,
    token         TEXT NOT NULL,
    expires_at    BIGINT,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (connection_id, resource)
);

CREATE TABLE audit_log (
    id            BIGSERIAL PRIMARY KEY,
    at            BIGINT NOT NULL,
    actor         TEXT NOT NULL,
    event         TEXT NOT NULL,
    tenant_id     TEXT,
    connection_id TEXT,
    reason        TEXT
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, at);
