-- The event stream's rows lose their per-row foreign key to `jobs`. It
-- was checked for every row (an index probe into `jobs`: 100k tofu lines
-- cost 100k probes, 15% of the P2 figure), and it is redundant: the store
-- writes events only with the job's `job_event_heads` row in the same
-- transaction, and that row still references `jobs`, so an append for an
-- unknown job still fails whole. Jobs are never deleted.
--
-- SQLite cannot drop a constraint: the table is rebuilt, rows kept.
CREATE TABLE job_events_new (
    job_id      TEXT NOT NULL,
    id          INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    generation  INTEGER,
    PRIMARY KEY (job_id, id)
) STRICT, WITHOUT ROWID;
INSERT INTO job_events_new (job_id, id, at, kind, body, generation)
    SELECT job_id, id, at, kind, body, generation FROM job_events;
DROP TABLE job_events;
ALTER TABLE job_events_new RENAME TO job_events;
