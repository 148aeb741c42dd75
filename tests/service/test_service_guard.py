"""The shared guard on every hub handler: typed errors keep their code and
reason, crashes are INTERNAL with a reason (never UNKNOWN), for unary and
streaming handlers, registered as generic handlers or as registered methods
(what the generated `add_*_to_server` does: those take precedence)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from iclaim.errors import NotFound, error_info_of
from iclaim_hub.common.server import _GuardedGenericHandler, new_server

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


def _handlers() -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    return {
        "Unary": grpc.unary_unary_rpc_method_handler(boom_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(boom_stream),
    }


@pytest.fixture(params=["generic", "registered"])
async def channel(request: pytest.FixtureRequest) -> AsyncIterator[grpc.aio.Channel]:
    server = new_server()
    if request.param == "generic":
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, _handlers()),))
    else:
        server.add_registered_method_handlers(SERVICE, _handlers())  # type: ignore[attr-defined]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


# A typed error and a crash, as the handler's payload asks, and what the caller sees.
_ERRORS = pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"typed", grpc.StatusCode.NOT_FOUND, "THING_NOT_FOUND"),
        (b"crash", grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)


def _reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_info_of(status)
    assert info is not None and info.domain == "iclaim.v1"
    return info.reason


@_ERRORS
async def test_unary_errors_are_mapped(
    channel: grpc.aio.Channel, payload: bytes, code: grpc.StatusCode, reason: str
) -> None:
    assert await channel.unary_unary(f"/{SERVICE}/Unary")(b"ok") == b"ok"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(f"/{SERVICE}/Unary")(payload)
    assert err.value.code() == code
    assert _reason(err.value) == reason
    assert ("x-iclaim-reason", reason) in tuple(err.value.trailing_metadata() or ())


@_ERRORS
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


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_generic_handlers_are_guarded_once_and_unknown_paths_are_not_kept() -> None:
    guarded = _GuardedGenericHandler(grpc.method_handlers_generic_handler(SERVICE, _handlers()))
    first = guarded.service(_Details(f"/{SERVICE}/Unary"))  # type: ignore[arg-type]
    assert first is not None and first.unary_unary is not boom_unary
    assert guarded.service(_Details(f"/{SERVICE}/Unary")) is first  # type: ignore[arg-type]
    for n in range(100):
        assert guarded.service(_Details(f"/{SERVICE}/Made{n}")) is None  # type: ignore[arg-type]
    assert list(guarded._guarded) == [f"/{SERVICE}/Unary"]


def test_grpc_services_are_not_guarded() -> None:
    handler = grpc.unary_unary_rpc_method_handler(boom_unary)
    guarded = _GuardedGenericHandler(
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler})
    )
    assert guarded.service(_Details("/grpc.health.v1.Health/Check")) is handler  # type: ignore[arg-type]
