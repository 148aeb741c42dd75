"""Which of a principal's listed encryption keys to seal to (docs/protocol.md §5)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from iclaim.v1 import claim_service_pb2 as pb


def sealing_jwk(keys: Sequence[pb.EncryptionKey], owner: str) -> dict[str, Any]:
    """The public JWK of the key marked `current`. During a rotation the previous
    key is still listed (and accepted for a grace period), so a client must not
    guess by position. A server from before the flag marks no key: then the last
    listed, because the hub lists a principal's keys oldest first."""
    if not keys:
        raise KeyError(f"{owner} has no encryption key")
    marked = [k for k in keys if k.current]
    chosen = marked[-1] if marked else keys[-1]
    return dict(json.loads(chosen.jwk))
