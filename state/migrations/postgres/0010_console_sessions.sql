-- PostgreSQL twin of ../sqlite/0010_console_sessions.sql: a session opened
-- on one replica is valid on every replica.
CREATE TABLE console_sessions (
    id_sha256     TEXT PRIMARY KEY NOT NULL,
    actor         TEXT NOT NULL,
    role          TEXT NOT NULL,
    token_sha256  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    ended_at      BIGINT
);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
