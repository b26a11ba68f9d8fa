-- The per-job event stream served over SSE. `id` is monotonic and gap-free
-- per job: it is allocated inside the writing transaction.
CREATE TABLE job_events (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    id          INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (job_id, id)
) STRICT, WITHOUT ROWID;
CREATE TABLE job_event_heads (
    job_id      TEXT PRIMARY KEY NOT NULL REFERENCES jobs (id),
    last_id     INTEGER NOT NULL
) STRICT;
