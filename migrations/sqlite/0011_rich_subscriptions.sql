-- Rich notifications (includeResourceData) and resynchronization (src/subscriptions.rs): a
-- subscription with resource data carries its own encryption certificate (public, base64 DER)
-- and the certificate's RSA key (a vault ciphertext bound to its row); `delta_link` is where
-- the last resync of the subscription's resource stopped. With or without resource data are
-- two different wanted subscriptions of one target.
ALTER TABLE subscriptions ADD COLUMN include_resource_data INTEGER NOT NULL DEFAULT 0
    CHECK (include_resource_data IN (0, 1));
ALTER TABLE subscriptions ADD COLUMN encryption_certificate_id TEXT;
ALTER TABLE subscriptions ADD COLUMN encryption_certificate TEXT;
ALTER TABLE subscriptions ADD COLUMN encryption_key TEXT;
ALTER TABLE subscriptions ADD COLUMN delta_link TEXT;
DROP INDEX subscriptions_target;
CREATE UNIQUE INDEX subscriptions_target
    ON subscriptions (tenant_id, resource, change_types, include_resource_data);
