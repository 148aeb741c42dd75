"""How the cohost process stops: the router first (its hand-offs drain while the
adapter still serves), then the adapter, both within the one grace the process
was given, and neither service reachable in-process afterwards."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from iclaim_hub.common.local_channel import LocalChannel
from iclaim_ops.cohost import CohostApp


class FakeApp:
    def __init__(self, name: str, order: list[tuple[str, float]], takes_s: float) -> None:
        self.name = name
        self.order = order
        self.takes_s = takes_s
        self.port = 1

    async def stop(self, grace: float) -> None:
        self.order.append((self.name, grace))
        await asyncio.sleep(self.takes_s)


async def test_router_first_then_the_adapter_within_what_is_left_of_the_grace() -> None:
    order: list[tuple[str, float]] = []
    to_router, to_adapter = LocalChannel(), LocalChannel()
    to_router.serve({})
    to_adapter.serve({})
    app = CohostApp(
        FakeApp("router", order, 0.3),  # type: ignore[arg-type]
        FakeApp("adapter", order, 0.0),  # type: ignore[arg-type]
        to_router,
        to_adapter,
    )
    await app.stop(1.0)
    (first, router_grace), (second, adapter_grace) = order
    assert (first, second) == ("router", "adapter")
    assert router_grace == 1.0
    assert 0.0 < adapter_grace <= 0.7  # the 0.3 s (or more) the router's drain took came off it
    for channel in (to_router, to_adapter):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.call("/x.Y/Z", object(), 1.0, ())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_router_that_overruns_leaves_the_adapter_no_grace_not_a_negative_one() -> None:
    order: list[tuple[str, Any]] = []
    app = CohostApp(
        FakeApp("router", order, 0.2),  # type: ignore[arg-type]
        FakeApp("adapter", order, 0.0),  # type: ignore[arg-type]
        LocalChannel(),
        LocalChannel(),
    )
    await app.stop(0.05)
    assert order[1] == ("adapter", 0.0)
