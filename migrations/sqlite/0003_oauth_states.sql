-- Pending browser flows (src/oauth.rs): authorization code + PKCE sign-ins and admin consents.
-- A state is single use and expires after 10 minutes; the PKCE verifier is a vault ciphertext.
CREATE TABLE oauth_states (
    state         TEXT PRIMARY KEY NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('authorize', 'consent')),
    tenant_id     TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    redirect_uri  TEXT NOT NULL,
    code_verifier TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    used_at       INTEGER
) STRICT;
