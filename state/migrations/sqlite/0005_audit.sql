-- Every operator action (and every submission) with who, what and why.
CREATE TABLE audit (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    job_id        TEXT,
    sovereign_id  TEXT,
    detail        TEXT NOT NULL
) STRICT;
CREATE INDEX audit_by_job ON audit (job_id, id);
