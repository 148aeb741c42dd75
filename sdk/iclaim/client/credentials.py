"""A principal's credentials: who it is, its signing key, its decryption key."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iclaim.crypto.envelope import ProtectedHeader, key_for_kid
from iclaim.crypto.signing import b64url_decode

DEV_CREDENTIALS = Path(".iclaim/dev/credentials.json")


@dataclass(frozen=True)
class Credentials:
    gateway: str
    ca_cert: Path | None
    code: str
    key_id: str
    # Left out of repr (and so of logs and tracebacks): the signing secret and
    # the private key (its "d").
    secret: bytes = field(repr=False)
    encryption_private_jwk: dict[str, Any] = field(repr=False)
    # Keys this principal had before a rotation: envelopes sealed to one of
    # them while it was still published (§5) must still open.
    previous_encryption_private_jwks: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    def decryption_key_for(self, header: ProtectedHeader) -> dict[str, Any]:
        return key_for_kid((self.encryption_private_jwk, *self.previous_encryption_private_jwks), header)


def load_dev_credentials(code: str | None = None, path: Path | None = None) -> Credentials:
    """Reads `.iclaim/dev/credentials.json` (written by `make run`) for one
    principal: a hospital or TESTPULL; the first hospital by default."""
    data = json.loads((path or DEV_CREDENTIALS).read_text())
    entries = [*data.get("hospitals", []), *data.get("insurers", [])]
    if code is None:
        entry = data["hospitals"][0]
    else:
        matches = [e for e in entries if e["code"] == code]
        if not matches:
            raise KeyError(f"no credentials for {code} in {path or DEV_CREDENTIALS}")
        entry = matches[0]
    ca = data.get("ca_cert")
    return Credentials(
        gateway=data["gateway"],
        ca_cert=Path(ca) if ca else None,
        code=entry["code"],
        key_id=entry["key_id"],
        secret=b64url_decode(entry["secret"]),
        encryption_private_jwk=entry["encryption_private_jwk"],
        previous_encryption_private_jwks=tuple(entry.get("previous_encryption_private_jwks", [])),
    )
