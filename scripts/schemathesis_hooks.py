"""What schemathesis must be told about /openapi.json beyond JSON Schema.

The document states two request rules that JSON Schema has no keyword for
(docs/api.md, "The OpenAPI document is the contract"):

- `format: age-recipient`: `age1` and the bech32 encoding of a 32-byte
  X25519 key, checksum included. A fuzzer that only reads the pattern would
  draw strings whose checksum is wrong; this strategy draws real recipients.
- Custodians' recipients are distinct. `uniqueItems` compares whole items;
  a uniqueness by one property has no keyword, so generated bodies that
  repeat a recipient are dropped here.

Loaded by scripts/schemathesis through SCHEMATHESIS_HOOKS. Nothing else is
filtered or relaxed: every check of `--checks all` runs as written.
"""

import schemathesis
from hypothesis import strategies as st

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
GENERATOR = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]


def _polymod(values):
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= GENERATOR[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp):
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _to_5bit(data):
    acc, bits, out = 0, 0, []
    for b in data:
        acc = (acc << 8) | b
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def age_recipient(key: bytes) -> str:
    """The bech32 (BIP 173) encoding age uses for an X25519 public key."""
    hrp = "age"
    data = _to_5bit(key)
    polymod = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[d] for d in data + checksum)


schemathesis.openapi.format(
    "age-recipient", st.binary(min_size=32, max_size=32).map(age_recipient)
)


@schemathesis.hook
def filter_body(context, body):
    custody = body.get("custody") if isinstance(body, dict) else None
    custodians = custody.get("custodians") if isinstance(custody, dict) else None
    if not isinstance(custodians, list):
        return True
    recipients = [c.get("recipient") for c in custodians if isinstance(c, dict)]
    recipients = [r for r in recipients if isinstance(r, str)]
    return len(recipients) == len(set(recipients))
