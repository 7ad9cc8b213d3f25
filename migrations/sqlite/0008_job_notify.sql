-- PostgreSQL wakes idle claimers with a NOTIFY trigger here. SQLite has no cross-process
-- notification: a daemon wakes its own claimer in process and polls for jobs other processes
-- add. Nothing to change; the migration exists so both dialects keep the same numbering.
SELECT 1;
