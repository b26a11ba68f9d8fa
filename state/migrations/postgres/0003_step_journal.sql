-- PostgreSQL twin of ../sqlite/0003_step_journal.sql: append-only, enforced
-- by a trigger as there.
CREATE TABLE step_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    node        TEXT NOT NULL,
    event       TEXT NOT NULL,
    body        TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX step_events_by_node ON step_events (job_id, node, seq);
CREATE FUNCTION step_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'step_events is append-only';
END;
$$;
CREATE TRIGGER step_events_append_only_update BEFORE UPDATE ON step_events
    FOR EACH ROW EXECUTE FUNCTION step_events_append_only();
CREATE TRIGGER step_events_append_only_delete BEFORE DELETE ON step_events
    FOR EACH ROW EXECUTE FUNCTION step_events_append_only();
