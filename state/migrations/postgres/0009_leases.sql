-- PostgreSQL twin of ../sqlite/0009_leases.sql. `expires_at` is in
-- milliseconds of the database server's clock, so replicas whose clocks
-- disagree still agree on who holds a lease.
CREATE TABLE job_leases (
    job_id      TEXT PRIMARY KEY NOT NULL REFERENCES jobs (id),
    owner       TEXT NOT NULL,
    generation  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX job_leases_by_owner ON job_leases (owner);
ALTER TABLE step_events ADD COLUMN generation BIGINT;
ALTER TABLE job_events ADD COLUMN generation BIGINT;
