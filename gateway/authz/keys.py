"""Signing keys from the registry, cached briefly.

The TTL bounds how long a revoked key or a suspended principal keeps working
(at most 5 s), and also caches misses so unknown (client, key) pairs cannot
turn into one database query per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog

from iclaim.errors import Unavailable
from iclaim_hub.registry.model import SigningKey

log = structlog.get_logger("gateway.authz.keys")

MAX_TTL_S = 5.0
# Below the 5 s promise, leaving room for the registry read that refreshes an entry.
DEFAULT_TTL_S = 4.0


class KeyLookup(Protocol):
    async def signing_key(self, code: str, key_id: str) -> SigningKey | None: ...


class CachedKeys:
    def __init__(
        self,
        lookup: KeyLookup,
        *,
        is_outage: Callable[[BaseException], bool],
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"key cache TTL must be within 0..{MAX_TTL_S} s")
        self._lookup = lookup
        # Given by the wiring (the registry's driver decides what an outage is),
        # so this module stays free of database imports.
        self._is_outage = is_outage
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[float, SigningKey | None]] = {}

    async def signing_key(self, code: str, key_id: str) -> SigningKey | None:
        now = self._clock()
        hit = self._entries.get((code, key_id))
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            key = await self._lookup.signing_key(code, key_id)
        except Exception as exc:
            # An outage (connection lost or refused, the lookup's own timeout) is
            # retryable; anything else is a bug and crashes the check, where the
            # server logs its type and Envoy refuses the call.
            if not (self._is_outage(exc) or isinstance(exc, TimeoutError)):
                raise
            log.warning("registry_unavailable", error=type(exc).__name__)
            raise Unavailable("registry unavailable", reason="REGISTRY_UNAVAILABLE") from exc
        if len(self._entries) >= self._max:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= self._max:
                self._entries.clear()
        self._entries[(code, key_id)] = (now + self._ttl, key)
        return key
