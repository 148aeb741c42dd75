"""§10.1: the clearinghouse signs every push like a client signs a gateway call
(§3, the same string-to-sign and HMAC as the SDK's signer), with the reserved
client code ICLAIM and the insurer's endpoint key; the same five names are gRPC
metadata or HTTP headers."""

from __future__ import annotations

import secrets
import time

from iclaim.crypto import signing
from services.insurer_adapter.domain import PUSH_CLIENT
from services.insurer_adapter.model import EndpointKey


def signed_headers(
    key: EndpointKey, method_line: str, body: bytes, now: int | None = None
) -> list[tuple[str, str]]:
    """x-iclaim-client/key-id/timestamp/nonce/signature for one push; a fresh
    nonce and timestamp each time, so a resend is a new signature."""
    ts = int(time.time()) if now is None else now
    nonce = secrets.token_urlsafe(24)
    signature = signing.sign(key.secret, PUSH_CLIENT, key.key_id, method_line, ts, nonce, body)
    return [
        (signing.H_CLIENT, PUSH_CLIENT),
        (signing.H_KEY_ID, key.key_id),
        (signing.H_TIMESTAMP, str(ts)),
        (signing.H_NONCE, nonce),
        (signing.H_SIGNATURE, signature),
    ]
