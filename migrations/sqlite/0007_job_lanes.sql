-- Claims walk the tenants with available jobs (lanes) through `jobs_lanes`, one probe per lane,
-- and take each lane's best jobs from it. Every index is partial on the states its queries
-- read, so a query on `available` jobs can only pick `jobs_lanes` (SQLite chose the old
-- (state, finished_at) index and sorted every available row), and each index holds only the
-- rows its query needs.
DROP INDEX jobs_ready;
DROP INDEX jobs_lease;
DROP INDEX jobs_finished;
CREATE INDEX jobs_lanes ON jobs (tenant_id, priority DESC, run_at, id) WHERE state = 'available';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at)
    WHERE state IN ('succeeded', 'failed', 'dead', 'cancelled');
