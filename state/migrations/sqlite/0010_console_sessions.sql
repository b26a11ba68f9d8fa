-- Console sign-ins (`/ui`). A session is a random secret held only in the
-- browser's HttpOnly cookie; the store keeps its SHA-256, never the secret,
-- and the SHA-256 of the token it was opened with, so a revoked or rotated
-- token ends its sessions. Rows are in the store, not in memory, so a
-- restarted daemon (kill -9 included) keeps its operators signed in.
CREATE TABLE console_sessions (
    id_sha256     TEXT PRIMARY KEY NOT NULL,
    actor         TEXT NOT NULL,
    role          TEXT NOT NULL,
    token_sha256  TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    ended_at      INTEGER
) STRICT;
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
