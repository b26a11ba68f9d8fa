-- PostgreSQL twin of ../sqlite/0001_sovereigns.sql: same tables, columns
-- and constraints (the store's tests check both schemas match).
CREATE TABLE sovereigns (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    fqdn        TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX sovereigns_live_fqdn ON sovereigns (fqdn) WHERE status <> 'destroyed';
