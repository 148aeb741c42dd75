"""Secrets at rest: AES-256-GCM under a master key from the environment.

The associated data binds each ciphertext to its row, so a secret copied onto
another principal's row does not decrypt.
"""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from iclaim.crypto.signing import b64url, b64url_decode

MASTER_KEY_ENV = "ICLAIM_MASTER_KEY"
_VERSION = b"\x01"


class SecretBoxError(ValueError):
    pass


class SecretBox:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise SecretBoxError("master key must be 32 bytes")
        self._aead = AESGCM(master_key)

    @classmethod
    def from_env(cls) -> SecretBox:
        raw = os.environ.get(MASTER_KEY_ENV, "")
        try:
            return cls(b64url_decode(raw))
        except ValueError as exc:
            raise SecretBoxError(f"{MASTER_KEY_ENV} must be 32 bytes, base64url") from exc

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
