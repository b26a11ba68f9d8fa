-- PostgreSQL twin of ../sqlite/0011_job_events_unreferenced.sql: the
-- per-row foreign key of the event stream goes; `job_event_heads`, written
-- in every append's transaction, keeps the reference to `jobs`.
ALTER TABLE job_events DROP CONSTRAINT IF EXISTS job_events_job_id_fkey;
