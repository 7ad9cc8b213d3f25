-- Teams bots provisioned through a delegated connection (src/bots.rs, seed 004). Each step's
-- result is recorded as it lands, so a run that failed at a step resumes there and nothing is
-- created twice: the app registration is upserted by its uniqueName (`tenantd-bot-{id}`), the
-- package import replaces the same app id, the bot registration updates on 409. The client
-- secret is sealed by the vault and erased once shown. `package` holds an operator's own Teams
-- app package (its manifest's ids are set to the bot's when it is imported); none: generated.
CREATE TABLE bots (
    id                TEXT PRIMARY KEY NOT NULL,
    tenant_id         TEXT NOT NULL,
    connection_id     TEXT NOT NULL,
    name              TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    description       TEXT NOT NULL,
    single_tenant     INTEGER NOT NULL CHECK (single_tenant IN (0, 1)),
    state             TEXT NOT NULL DEFAULT 'provisioning'
                      CHECK (state IN ('provisioning', 'ready', 'failed', 'deleted')),
    step              TEXT,
    reason            TEXT,
    message           TEXT,
    user_name         TEXT,
    application_id    TEXT,
    app_id            TEXT,
    secret_key_id     TEXT,
    secret_sealed     TEXT,
    teams_app_id      TEXT,
    secret_name       TEXT NOT NULL DEFAULT 'tenantd bot',
    secret_days       INTEGER NOT NULL DEFAULT 730,
    package           BLOB,
    bot_registered    INTEGER NOT NULL DEFAULT 0 CHECK (bot_registered IN (0, 1)),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX bots_name ON bots (connection_id, name) WHERE state <> 'deleted';
