"""How to reach each insurer (mode, endpoint, CA, mTLS, current endpoint key),
read from the registry through a short-TTL cache, so an operator's change
(`iclaim admin insurer set`, `rotate-endpoint-key`) reaches every replica
within the TTL (<= 4 s, §11: visible within 5 s). Pure: the registry is a
protocol."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from iclaim_hub.registry.model import EndpointKey as RegistryEndpointKey
from iclaim_hub.registry.model import Principal
from services.insurer_adapter.model import Endpoint, EndpointKey

MAX_TTL_S = 4.0


class EndpointRegistry(Protocol):
    async def principal_and_endpoint_key(
        self, code: str
    ) -> tuple[Principal, RegistryEndpointKey | None] | None: ...


class EndpointCache:
    def __init__(
        self, registry: EndpointRegistry, ttl_s: float = 3.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"endpoint cache TTL must be within 0..{MAX_TTL_S} s")
        self._registry = registry
        self._ttl = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, Endpoint | None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def invalidate(self, insurer_code: str | None = None) -> None:
        """The next read goes to the registry (after an admin change on this
        replica, or a failed push that may be due to a stale key)."""
        if insurer_code is None:
            self._entries.clear()
        else:
            self._entries.pop(insurer_code, None)

    async def get(self, insurer_code: str) -> Endpoint | None:
        """None: not an insurer in the registry. Raises what the registry
        raises when it cannot be read (the caller retries later)."""
        entry = self._entries.get(insurer_code)
        if entry is not None and self._clock() - entry[0] < self._ttl:
            return entry[1]
        lock = self._locks.setdefault(insurer_code, asyncio.Lock())
        async with lock:
            entry = self._entries.get(insurer_code)
            if entry is not None and self._clock() - entry[0] < self._ttl:
                return entry[1]
            endpoint = await self._load(insurer_code)
            self._entries[insurer_code] = (self._clock(), endpoint)
            return endpoint

    async def _load(self, code: str) -> Endpoint | None:
        # One statement for both (a commit each every TTL per busy insurer adds up).
        found = await self._registry.principal_and_endpoint_key(code)
        if found is None or found[0].role != "insurer":
            return None
        principal, registry_key = found
        mode = principal.delivery_mode or "pull"
        key = registry_key if mode in ("grpc", "webhook") else None
        return Endpoint(
            insurer_code=code,
            mode=mode,
            target=principal.endpoint,
            ca_pem=principal.endpoint_ca_pem,
            mtls=principal.endpoint_mtls,
            # A suspended insurer is not pushed to either: its claims wait.
            available=principal.available and not principal.suspended,
            key=None if key is None else EndpointKey(key.key_id, key.secret),
        )
