-- The step journal: append-only. A step's state is derived from its events by
-- the transition function in `journal.rs`; nothing here is ever updated.
CREATE TABLE step_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    node        TEXT NOT NULL,
    event       TEXT NOT NULL,
    body        TEXT NOT NULL,
    at          INTEGER NOT NULL
) STRICT;
CREATE INDEX step_events_by_node ON step_events (job_id, node, seq);
CREATE TRIGGER step_events_append_only_update BEFORE UPDATE ON step_events
BEGIN SELECT RAISE(ABORT, 'step_events is append-only'); END;
CREATE TRIGGER step_events_append_only_delete BEFORE DELETE ON step_events
BEGIN SELECT RAISE(ABORT, 'step_events is append-only'); END;
