"""The shared interceptor: typed errors keep their code and reason, crashes are
INTERNAL with a reason (never UNKNOWN), for unary and streaming handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from iclaim.errors import NotFound, error_info_of
from iclaim_hub.common.server import new_server

SERVICE = "test.v1.Probe"


async def boom_unary(request: bytes, context: Any) -> bytes:
    if request == b"typed":
        raise NotFound("nothing here", reason="THING_NOT_FOUND")
    if request == b"crash":
        raise ValueError("a bug")
    return request


async def boom_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    if request == b"typed":
        raise NotFound("gone", reason="THING_NOT_FOUND")
    raise RuntimeError("a bug")


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = new_server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(boom_unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(boom_stream),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


def _reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_info_of(status)
    assert info is not None and info.domain == "iclaim.v1"
    return info.reason


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"typed", grpc.StatusCode.NOT_FOUND, "THING_NOT_FOUND"),
        (b"crash", grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
async def test_unary_errors_are_mapped(
    channel: grpc.aio.Channel, payload: bytes, code: grpc.StatusCode, reason: str
) -> None:
    assert await channel.unary_unary(f"/{SERVICE}/Unary")(b"ok") == b"ok"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(f"/{SERVICE}/Unary")(payload)
    assert err.value.code() == code
    assert _reason(err.value) == reason
    assert ("x-iclaim-reason", reason) in tuple(err.value.trailing_metadata() or ())


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"typed", grpc.StatusCode.NOT_FOUND, "THING_NOT_FOUND"),
        (b"crash", grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
async def test_stream_errors_are_mapped_after_items(
    channel: grpc.aio.Channel, payload: bytes, code: grpc.StatusCode, reason: str
) -> None:
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for item in channel.unary_stream(f"/{SERVICE}/Stream")(payload):
            got.append(item)
    assert got == [b"first"]
    assert err.value.code() == code
    assert _reason(err.value) == reason
