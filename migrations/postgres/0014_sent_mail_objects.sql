-- Heartbeat mail really sent by a delegated staff user is recorded as `sent_mail` (graph_id is
-- the message's internetMessageId, owner the mailbox holding a copy).
ALTER TABLE provisioned_objects DROP CONSTRAINT provisioned_objects_kind_check;
ALTER TABLE provisioned_objects ADD CONSTRAINT provisioned_objects_kind_check
    CHECK (kind IN ('user', 'license', 'mail', 'sent_mail', 'file', 'event', 'chat'));
