"""Secrets at rest: AES-256-GCM under a master key from the environment.

The associated data binds each ciphertext to its row, so a secret copied onto
another principal's row does not decrypt.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from iclaim.crypto.signing import b64url, b64url_decode
from iclaim_hub.common.config import ConfigError

MASTER_KEY_ENV = "ICLAIM_MASTER_KEY"
_VERSION = b"\x01"


class SecretBoxError(ValueError):
    pass


_BAD_MASTER_KEY = f"{MASTER_KEY_ENV} must be 32 bytes, base64url"


def check_master_key(key: bytes) -> None:
    """For a service's Config: refuse a wrong key before anything binds."""
    if len(key) != 32:
        raise ConfigError(_BAD_MASTER_KEY)


def master_key_from_env() -> bytes:
    """ICLAIM_MASTER_KEY (32 bytes, base64url), for a service's Config."""
    try:
        key = b64url_decode(os.environ.get(MASTER_KEY_ENV, ""))
    except ValueError as exc:
        raise ConfigError(_BAD_MASTER_KEY) from exc
    check_master_key(key)
    return key


class SecretBox:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise SecretBoxError("master key must be 32 bytes")
        self._aead = AESGCM(master_key)

    @classmethod
    def from_env(cls) -> SecretBox:
        return cls(master_key_from_env())

    @staticmethod
    def new_master_key() -> str:
        return b64url(os.urandom(32))

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if len(sealed) < 1 + 12 + 16 or sealed[:1] != _VERSION:
            raise SecretBoxError("sealed secret malformed")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], context.encode())
        except InvalidTag as exc:
            raise SecretBoxError("sealed secret does not open") from exc
