"""A short-TTL read-through view of the registry, so key rotation, revocation,
suspension, endpoint changes and health reach every replica within `ttl_s`
(at most MAX_TTL_S, inside §11's 5 s) without a restart."""

from __future__ import annotations

import asyncio
import time

from iclaim_hub.registry.model import EndpointKey, InsurerHealth, Principal
from iclaim_hub.registry.store import RegistryStore

DEFAULT_TTL_S = 2.0
MAX_TTL_S = 4.0  # §11: changes reach every replica within 5 s


class DirectoryCache:
    def __init__(self, store: RegistryStore, ttl_s: float = DEFAULT_TTL_S) -> None:
        if not 0 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"registry cache TTL must be 0-{MAX_TTL_S:g} s")
        self._store = store
        self._ttl = ttl_s
        self._loaded_at = -1e9
        self._by_code: dict[str, Principal] = {}
        self._healths: dict[str, InsurerHealth] = {}
        self._lock = asyncio.Lock()
        # Endpoint keys are read one insurer at a time (secrets are opened only
        # for insurers something pushes to): code -> (read at, key).
        self._endpoint_keys: dict[str, tuple[float, EndpointKey | None]] = {}

    def _fresh(self, loaded_at: float) -> bool:
        return time.monotonic() - loaded_at < self._ttl

    async def _refresh(self) -> None:
        if self._fresh(self._loaded_at):
            return
        async with self._lock:
            if self._fresh(self._loaded_at):
                return
            principals = await self._store.principals()
            healths = await self._store.healths()
            self._by_code = {p.code: p for p in principals}
            self._healths = healths
            self._loaded_at = time.monotonic()

    async def get(self, code: str) -> Principal | None:
        await self._refresh()
        return self._by_code.get(code)

    async def insurers(self) -> list[Principal]:
        await self._refresh()
        return sorted((p for p in self._by_code.values() if p.role == "insurer"), key=lambda p: p.code)

    async def healths(self) -> dict[str, InsurerHealth]:
        """registry.insurer_health by insurer code (insurers without a row are absent)."""
        await self._refresh()
        return dict(self._healths)

    async def endpoint_key(self, code: str) -> EndpointKey | None:
        """The insurer's current endpoint key; a rotation shows within the TTL."""
        cached = self._endpoint_keys.get(code)
        if cached is not None and self._fresh(cached[0]):
            return cached[1]
        # Only insurers in the registry get an entry, so the cache stays bounded.
        principal = await self.get(code)
        if principal is None or principal.role != "insurer":
            return None
        key = await self._store.endpoint_key(code)
        self._endpoint_keys[code] = (time.monotonic(), key)
        return key
