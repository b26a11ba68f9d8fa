-- PostgreSQL twin of ../sqlite/0004_job_events.sql.
CREATE TABLE job_events (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    id          BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (job_id, id)
);
CREATE TABLE job_event_heads (
    job_id      TEXT PRIMARY KEY NOT NULL REFERENCES jobs (id),
    last_id     BIGINT NOT NULL
);
