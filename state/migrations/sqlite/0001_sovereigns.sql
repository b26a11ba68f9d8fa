-- A Sovereign: one customer platform, created by a provision job and
-- removed (tombstoned) by a destroy job. The fqdn is unique among live
-- Sovereigns; a destroyed one keeps its row for the audit trail.
CREATE TABLE sovereigns (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    fqdn        TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX sovereigns_live_fqdn ON sovereigns (fqdn) WHERE status <> 'destroyed';
