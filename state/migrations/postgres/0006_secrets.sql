-- PostgreSQL twin of ../sqlite/0006_secrets.sql: age-encrypted blobs only.
CREATE TABLE secrets (
    owner       TEXT NOT NULL,
    name        TEXT NOT NULL,
    ciphertext  BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (owner, name)
);
