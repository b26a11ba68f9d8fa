-- PostgreSQL twin of ../sqlite/0005_audit.sql.
CREATE TABLE audit (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            BIGINT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    job_id        TEXT,
    sovereign_id  TEXT,
    detail        TEXT NOT NULL
);
CREATE INDEX audit_by_job ON audit (job_id, id);
