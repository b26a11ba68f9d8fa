-- What the custodians hold: each row is one blob encrypted (age, ASCII
-- armor) to one custodian's recipient, never to the daemon. The daemon
-- cannot open any of it; it only hands it out (GET .../escrow).
-- `kind` names the secret (openbao-share, sealed-secrets-key, ...), `idx`
-- the part (or, for a whole copy, the custodian); `threshold` of `parts`
-- combine. `fingerprint` is the SHA-256 of the combined secret (or of its
-- public half), to check a recovery against.
CREATE TABLE escrow (
    sovereign_id  TEXT NOT NULL,
    kind          TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    custodian     INTEGER NOT NULL,
    label         TEXT NOT NULL,
    recipient     TEXT NOT NULL,
    armored       TEXT NOT NULL,
    threshold     INTEGER NOT NULL,
    parts         INTEGER NOT NULL,
    fingerprint   TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (sovereign_id, kind, idx)
) STRICT;
