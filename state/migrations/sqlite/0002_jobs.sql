-- Jobs: provision, add-region, destroy. `request` has every secret removed
-- (secrets live in the `secrets` table, age-encrypted). `plan` is the
-- serialized phase/step DAG so a restarted daemon can rebuild the run from the
-- registry and this row alone. `status`/`mode` are a cache of the journal.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY NOT NULL,
    sovereign_id     TEXT NOT NULL REFERENCES sovereigns (id),
    kind             TEXT NOT NULL CHECK (kind IN ('provision', 'add-region', 'destroy')),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'running', 'paused', 'succeeded', 'failed', 'cancelled', 'abandoned')),
    mode             TEXT NOT NULL CHECK (mode IN ('forward', 'unwinding')),
    request          TEXT NOT NULL,
    plan             TEXT NOT NULL,
    options          TEXT NOT NULL,
    pause            TEXT,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
) STRICT;
CREATE INDEX jobs_by_sovereign ON jobs (sovereign_id, created_at);
CREATE INDEX jobs_in_flight ON jobs (status) WHERE status IN ('pending', 'running');
