-- Wakes idle claimers of every instance when jobs are inserted, by tenantd or by another
-- system inserting into `jobs` in its own transaction (the notification goes out at commit).
-- One notification per statement, not per row; claimers still poll, so a lost one only costs
-- latency. The channel name is `JOBS_CHANNEL` in src/queue.rs.
CREATE FUNCTION tenantd_jobs_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tenantd_jobs', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_added AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION tenantd_jobs_added();
