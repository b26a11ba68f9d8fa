-- Secrets as age-encrypted blobs, addressed by owner (a sovereign or job id)
-- and name. The plaintext never reaches this table.
CREATE TABLE secrets (
    owner       TEXT NOT NULL,
    name        TEXT NOT NULL,
    ciphertext  BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
) STRICT;
