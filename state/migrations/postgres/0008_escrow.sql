-- PostgreSQL twin of ../sqlite/0008_escrow.sql: blobs encrypted to the
-- custodians, never to the daemon.
CREATE TABLE escrow (
    sovereign_id  TEXT NOT NULL,
    kind          TEXT NOT NULL,
    idx           BIGINT NOT NULL,
    custodian     BIGINT NOT NULL,
    label         TEXT NOT NULL,
    recipient     TEXT NOT NULL,
    armored       TEXT NOT NULL,
    threshold     BIGINT NOT NULL,
    parts         BIGINT NOT NULL,
    fingerprint   TEXT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (sovereign_id, kind, idx)
);
