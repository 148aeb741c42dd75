"""A throwaway gRPC server for one servicer (an older peer, a fake), and a
channel to it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc


@contextlib.asynccontextmanager
async def serving(
    add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any
) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)
