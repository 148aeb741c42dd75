"""The delivery layer's endpoint cache (services/insurer_adapter/endpoints.py):
one registry read per insurer per TTL, what it makes of the registry's answer."""

from __future__ import annotations

from dataclasses import replace

import pytest

from iclaim_hub.registry.model import EndpointKey as RegistryEndpointKey
from iclaim_hub.registry.model import Principal
from services.insurer_adapter.endpoints import MAX_TTL_S, EndpointCache
from services.insurer_adapter.model import EndpointKey

AIA = Principal("AIA", "insurer", "AIA", delivery_mode="grpc", endpoint="claims.aia.example:443")
TLI = Principal("TLI", "insurer", "Thai Life", delivery_mode="pull")
HOSPITAL = Principal("10670", "hospital", "Khon Kaen")


class Registry:
    def __init__(self) -> None:
        self.entries: dict[str, tuple[Principal, RegistryEndpointKey | None]] = {
            "AIA": (AIA, RegistryEndpointKey("AIA", "ep-1", b"a" * 32)),
            "TLI": (TLI, RegistryEndpointKey("TLI", "ep-2", b"t" * 32)),
            "10670": (HOSPITAL, None),
        }
        self.reads: list[str] = []

    async def principal_and_endpoint_key(
        self, code: str
    ) -> tuple[Principal, RegistryEndpointKey | None] | None:
        self.reads.append(code)
        return self.entries.get(code)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_one_registry_read_per_insurer_per_ttl() -> None:
    registry, clock = Registry(), Clock()
    cache = EndpointCache(registry, ttl_s=3.0, clock=clock)
    first = await cache.get("AIA")
    assert first is not None and first.key == EndpointKey("ep-1", b"a" * 32)
    assert (first.mode, first.target, first.available) == ("grpc", "claims.aia.example:443", True)
    clock.now += 2.9
    assert await cache.get("AIA") is first
    assert registry.reads == ["AIA"]

    registry.entries["AIA"] = (AIA, RegistryEndpointKey("AIA", "ep-3", b"b" * 32))  # rotated
    clock.now += 0.2  # past the TTL
    again = await cache.get("AIA")
    assert again is not None and again.key == EndpointKey("ep-3", b"b" * 32)
    assert registry.reads == ["AIA", "AIA"]

    cache.invalidate("AIA")
    await cache.get("AIA")
    assert registry.reads == ["AIA", "AIA", "AIA"]


async def test_what_is_made_of_the_registry_answer() -> None:
    registry = Registry()
    registry.entries["MTL"] = (replace(AIA, code="MTL", suspended=True), None)
    cache = EndpointCache(registry, ttl_s=1.0, clock=Clock())
    pull = await cache.get("TLI")
    # A pull insurer is not pushed to: no key is carried, whatever the registry holds.
    assert pull is not None and pull.mode == "pull" and pull.key is None and not pull.pushable
    suspended = await cache.get("MTL")
    assert suspended is not None and not suspended.available and suspended.key is None
    assert await cache.get("10670") is None  # not an insurer
    assert await cache.get("NOPE") is None
    assert registry.reads.count("NOPE") == 1 and await cache.get("NOPE") is None
    assert registry.reads.count("NOPE") == 1  # an unknown code is cached too, for the TTL


def test_the_ttl_is_bounded() -> None:
    EndpointCache(Registry(), ttl_s=MAX_TTL_S)
    for bad in (0.0, MAX_TTL_S + 0.1):
        with pytest.raises(ValueError):
            EndpointCache(Registry(), ttl_s=bad)
