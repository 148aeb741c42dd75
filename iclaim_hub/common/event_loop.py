"""The event loop a service runs on: uvloop (libuv), or the standard asyncio
loop with ICLAIM_EVENT_LOOP=asyncio. uvloop took about 7 % off the hub's CPU
per claim with grpc.aio 1.85 (`make bench`); the switch is there for a
platform without it or to rule it out when chasing a problem."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from iclaim_hub.common.config import env_choice

T = TypeVar("T")

LOOPS = ("UVLOOP", "ASYNCIO")


def chosen_loop() -> str:
    """UVLOOP or ASYNCIO, from ICLAIM_EVENT_LOOP (a ConfigError otherwise)."""
    return env_choice("ICLAIM_EVENT_LOOP", "uvloop", LOOPS)


def run(main: Coroutine[Any, Any, T]) -> T:
    if chosen_loop() == "UVLOOP":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
