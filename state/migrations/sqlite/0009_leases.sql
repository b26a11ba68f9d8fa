-- Leases on job runs. The SQLite store has one writer (the data dir's lock)
-- and never fills this table; the table is here so both dialects hold one
-- schema. On PostgreSQL a replica drives a job only while it holds the
-- job's lease; `generation` grows with every new holder, and every journal
-- and event row carries the generation it was written under (NULL: written
-- by the single SQLite daemon), so a write of a stale holder is refused.
CREATE TABLE job_leases (
    job_id      TEXT PRIMARY KEY NOT NULL REFERENCES jobs (id),
    owner       TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;
ALTER TABLE step_events ADD COLUMN generation INTEGER;
ALTER TABLE job_events ADD COLUMN generation INTEGER;
