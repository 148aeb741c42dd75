"""Request signing (docs/protocol.md §3): HMAC-SHA256 over a seven-line string.

Pure functions shared by the client SDK and the gateway's auth service.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

SCHEME = "ICLAIM-HMAC-SHA256"
H_CLIENT = "x-iclaim-client"
H_KEY_ID = "x-iclaim-key-id"
H_TIMESTAMP = "x-iclaim-timestamp"
H_NONCE = "x-iclaim-nonce"
H_SIGNATURE = "x-iclaim-signature"
H_SERVER_TIME = "x-iclaim-server-time"
AUTH_HEADERS = (H_CLIENT, H_KEY_ID, H_TIMESTAMP, H_NONCE, H_SIGNATURE)

SECRET_BYTES = 32
# Limits on each metadata value; anything else is MALFORMED_METADATA.
CLIENT_RE = re.compile(r"^(?:[0-9]{5}|[A-Z0-9_]{2,16})$")
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Canonical decimal only (no sign, no leading zeros): the string-to-sign carries
# the parsed value, so "0017..." would verify as "17..." and fail as BAD_SIGNATURE.
TIMESTAMP_RE = re.compile(r"^(?:0|[1-9][0-9]{0,11})$")
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
SIGNATURE_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # 32 bytes, base64url unpadded


class MalformedMetadata(ValueError):
    """An auth header is missing or not of its required form."""

    def __init__(self, header: str, problem: str) -> None:
        super().__init__(f"{header}: {problem}")
        self.header = header


@dataclass(frozen=True)
class AuthMetadata:
    client: str
    key_id: str
    timestamp: int
    nonce: str
    signature: bytes


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def string_to_sign(client: str, key_id: str, method: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    return "\n".join(
        [SCHEME, client, key_id, method, str(timestamp), nonce, hashlib.sha256(body).hexdigest()]
    ).encode("utf-8")


def sign(
    secret: bytes, client: str, key_id: str, method: str, timestamp: int, nonce: str, body: bytes
) -> str:
    mac = hmac.new(secret, string_to_sign(client, key_id, method, timestamp, nonce, body), hashlib.sha256)
    return b64url(mac.digest())


def verify(secret: bytes, meta: AuthMetadata, method: str, body: bytes) -> bool:
    expected = hmac.new(
        secret,
        string_to_sign(meta.client, meta.key_id, method, meta.timestamp, meta.nonce, body),
        hashlib.sha256,
    ).digest()
    return hmac.compare_digest(expected, meta.signature)


def parse_auth_metadata(headers: dict[str, str]) -> AuthMetadata:
    """Validates presence, form and size of every auth header; raises MalformedMetadata."""
    values: dict[str, str] = {}
    for name, pattern in (
        (H_CLIENT, CLIENT_RE),
        (H_KEY_ID, KEY_ID_RE),
        (H_TIMESTAMP, TIMESTAMP_RE),
        (H_NONCE, NONCE_RE),
        (H_SIGNATURE, SIGNATURE_RE),
    ):
        value = headers.get(name)
        if value is None:
            raise MalformedMetadata(name, "missing")
        if not pattern.fullmatch(value):
            raise MalformedMetadata(name, "malformed")
        values[name] = value
    try:
        signature = b64url_decode(values[H_SIGNATURE])
    except ValueError as exc:
        raise MalformedMetadata(H_SIGNATURE, "malformed") from exc
    return AuthMetadata(
        client=values[H_CLIENT],
        key_id=values[H_KEY_ID],
        timestamp=int(values[H_TIMESTAMP]),
        nonce=values[H_NONCE],
        signature=signature,
    )
