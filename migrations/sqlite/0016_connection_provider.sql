-- The identity provider a connection's tokens come from (src/vault/connections.rs). Every
-- connection is Microsoft's today; a second provider (Google Workspace, seeds 001 and 002)
-- would widen the check and add its own token client beside src/vault/identity.rs.
ALTER TABLE connections ADD COLUMN provider TEXT NOT NULL DEFAULT 'microsoft'
    CHECK (provider IN ('microsoft'));
