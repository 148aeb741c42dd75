"""Signs checkpoints of the log with the service's Ed25519 note key.

The key is generated at first start and stored sealed under ICLAIM_MASTER_KEY.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from iclaim.audit.note import Checkpoint, NoteSigner, sign_checkpoint
from iclaim_hub.crypto.secretbox import SecretBox
from services.audit_log import metrics, proofs
from services.audit_log.domain import StoredCheckpoint

log = structlog.get_logger("audit_log.checkpointer")


class KeyStore(Protocol):
    async def signing_key(self, name: str) -> tuple[bytes, bytes] | None:
        """(public key, sealed private key)."""

    async def add_signing_key(self, name: str, public: bytes, sealed: bytes) -> None:
        """Keeps an existing key of that name."""


class CheckpointStore(proofs.NodeReader, Protocol):
    async def tree_size(self) -> int: ...

    async def latest_checkpoint(self) -> StoredCheckpoint | None: ...

    async def add_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        """Keeps an existing checkpoint of that size; returns the stored one."""


def _context(name: str) -> str:
    return f"audit-checkpoint-key:{name}"


async def load_or_create_signer(store: KeyStore, box: SecretBox, name: str) -> NoteSigner:
    stored = await store.signing_key(name)
    if stored is None:
        fresh = NoteSigner.generate(name)
        raw = fresh.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        await store.add_signing_key(name, fresh.public_key, box.seal(raw, _context(name)))
        stored = await store.signing_key(name)  # another replica may have won the race
        assert stored is not None
        log.info("checkpoint_key_created", key_name=name)
    public, sealed = stored
    signer = NoteSigner(name, Ed25519PrivateKey.from_private_bytes(box.open(sealed, _context(name))))
    if signer.public_key != public:
        raise RuntimeError("stored checkpoint key pair does not match")
    return signer


class Checkpointer:
    def __init__(self, store: CheckpointStore, signer: NoteSigner, origin: str) -> None:
        self._store = store
        self._signer = signer
        self._origin = origin
        self._lock = asyncio.Lock()
        self._latest_at: float | None = None
        metrics.CHECKPOINT_AGE.set_function(self._age)

    def _age(self) -> float:
        return 0.0 if self._latest_at is None else max(time.time() - self._latest_at, 0.0)

    @property
    def verifier_key(self) -> str:
        return self._signer.verifier_key()

    def _seen(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        self._latest_at = cp.signed_at.timestamp()
        metrics.CHECKPOINT_SIZE.set(cp.tree_size)
        return cp

    async def latest(self) -> StoredCheckpoint:
        cp = await self._store.latest_checkpoint()
        return self._seen(cp) if cp is not None else await self.sign_now()

    async def sign_now(self) -> StoredCheckpoint:
        """Signs the current tree unless the latest checkpoint already covers it."""
        async with self._lock:
            size = await self._store.tree_size()
            metrics.TREE_SIZE.set(size)
            latest = await self._store.latest_checkpoint()
            if latest is not None and latest.tree_size >= size:
                return self._seen(latest)
            root = await proofs.root_at(self._store, size)
            now = datetime.now(UTC)
            now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # note has ms
            note = sign_checkpoint(self._signer, Checkpoint(self._origin, size, root, now))
            cp = await self._store.add_checkpoint(StoredCheckpoint(size, root, now, note))
            log.info("checkpoint_signed", tree_size=size)
            return self._seen(cp)

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.sign_now()
            except Exception:  # keep signing later; the log itself is unaffected
                log.exception("checkpoint_failed")
            await asyncio.sleep(interval_s)
