-- Graph redelivers a change notification for up to 4 hours when it missed tenantd's 202
-- (concepts/change-notifications-delivery-webhooks.md). A job's `window_key` is unique among
-- all of its kind's rows, finished ones included, so a redelivery after the first job
-- finished is still one job; pruning frees the key once the window closed (src/queue.rs).
-- Subscription ids are GUIDs Graph writes in either case: kept lower-cased from now on.
ALTER TABLE jobs ADD COLUMN window_key TEXT;
CREATE UNIQUE INDEX jobs_window ON jobs (kind, window_key) WHERE window_key IS NOT NULL;
UPDATE subscriptions SET graph_id = lower(graph_id) WHERE graph_id IS NOT NULL;
