"""Enrolment of simulated insurers: each gets an X25519 key whose private half
the adapter keeps (sealed) and whose public half goes into the registry."""
from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import structlog

from iclaim.crypto.envelope import generate_encryption_key
from iclaim_hub.registry.store import RegistryStore
from services.insurer_adapter.store import KeyStore

log = structlog.get_logger("iclaim.adapter.keys")


def new_kid(insurer_code: str, now: datetime | None = None) -> str:
    day = (now or datetime.now(UTC)).strftime("%Y%m%d")
    return f"{insurer_code}-{day}-{secrets.token_hex(4)}"


async def enrol_simulated_insurers(registry: RegistryStore, keys: KeyStore) -> list[str]:
    """Idempotent: generates a key only for a simulated insurer without one, and
    (re)publishes ours wherever the registry's current key is not it (e.g. after
    a crash between storing and publishing). Returns the codes it changed."""
    changed: list[str] = []
    async with keys.enrolment_lock():
        insurers = [
            p for p in await registry.principals("insurer") if p.delivery_mode == "simulated"
        ]
        ours = await keys.current_keys()
        for p in insurers:
            key = ours.get(p.code)
            public: dict[str, Any]
            if key is None:
                kid = new_kid(p.code)
                private, public = generate_encryption_key(kid)
                await keys.add_key(p.code, kid, private, public)  # stored before published
            else:
                kid, public = key.kid, dict(key.public_jwk)
            current = p.current_key()
            if current is None or current.kid != kid:
                await registry.add_encryption_key(p.code, kid, public)
                changed.append(p.code)
    if changed:
        log.info("insurers_enrolled", count=len(changed))
    return changed
