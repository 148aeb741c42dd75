"""A short-TTL read-through view of the registry, so key rotation, revocation
and suspension reach every replica within `ttl_s` without a restart."""

from __future__ import annotations

import asyncio
import time

from iclaim_hub.registry.model import Principal
from iclaim_hub.registry.store import RegistryStore

DEFAULT_TTL_S = 2.0


class DirectoryCache:
    def __init__(self, store: RegistryStore, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._store = store
        self._ttl = ttl_s
        self._loaded_at = -1e9
        self._by_code: dict[str, Principal] = {}
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        if time.monotonic() - self._loaded_at < self._ttl:
            return
        async with self._lock:
            if time.monotonic() - self._loaded_at < self._ttl:
                return
            principals = await self._store.principals()
            self._by_code = {p.code: p for p in principals}
            self._loaded_at = time.monotonic()

    async def get(self, code: str) -> Principal | None:
        await self._refresh()
        return self._by_code.get(code)

    async def insurers(self) -> list[Principal]:
        await self._refresh()
        return sorted((p for p in self._by_code.values() if p.role == "insurer"), key=lambda p: p.code)
