"""A channel to services in the same process: a generated stub built on it
calls the service's guarded handler directly (the same guard, errors, metrics
and log context as over the wire), with no HTTP/2, no serialisation and no
wakeup of gRPC's threads.

For hub services hosted in one process (iclaim_ops.cohost): the router and the
insurer adapter each call the other several times a claim.

What the wire would have given and this keeps: a deadline (DEADLINE_EXCEEDED),
status with trailing metadata (an `AioRpcError`, as callers already catch),
UNIMPLEMENTED for a method nobody serves, UNAVAILABLE before the other side
serves; the bound request id and, tracing on, a CLIENT span whose context goes
as traceparent (iclaim_hub.common.grpc_tracing, as the channels' interceptor).
What it does not: the request is the caller's object, not a copy, so a handler
must not change it (none does; the hub's handlers read requests) and the size
limit of the receiving server is not applied (callers already bound what one
call carries: iclaim_hub.common.handoff).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, cast

import grpc

from iclaim_hub.common import grpc_tracing

Handlers = Mapping[str, "grpc.RpcMethodHandler[Any, Any]"]


class _Aborted(grpc.aio.AbortError):
    """Raised by the local context's abort(): the guard lets AbortError through."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str | bytes]]
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = tuple(trailing)


class _LocalContext:
    """The part of grpc.aio.ServicerContext the hub's handlers use."""

    def __init__(self, metadata: Sequence[tuple[str, str | bytes]], deadline: float | None) -> None:
        self._metadata = tuple(metadata)
        self._deadline = deadline
        self.trailing: tuple[tuple[str, str | bytes], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing = tuple(metadata)

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    def peer(self) -> str:
        return "local"

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        raise _Aborted(code, details, trailing_metadata)


def _error(
    code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str | bytes]] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*trailing),
        details=details,
    )


class _UnaryUnary:
    def __init__(self, channel: LocalChannel, method: str) -> None:
        self._channel = channel
        self._method = method

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        **_: Any,
    ) -> Coroutine[Any, Any, Any]:
        # Awaited where it is made, as every hub caller does with a grpc.aio call.
        return self._channel.call(self._method, request, timeout, metadata or ())


class LocalChannel:
    """A grpc.aio channel stand-in for generated stubs (unary-unary methods).
    Its handlers are served once `serve()` has been given them: until then
    every call is UNAVAILABLE, as a peer not yet listening would be."""

    def __init__(self) -> None:
        self._handlers: Handlers | None = None

    def serve(self, handlers: Handlers) -> None:
        self._handlers = handlers

    def stop(self) -> None:
        self._handlers = None

    def unary_unary(self, method: str, *_: Any, **__: Any) -> _UnaryUnary:
        return _UnaryUnary(self, method)

    async def close(self) -> None:
        self.stop()

    async def call(
        self,
        method: str,
        request: Any,
        timeout: float | None,
        metadata: Sequence[tuple[str, str | bytes]],
    ) -> Any:
        handlers = self._handlers
        if handlers is None:
            raise _error(grpc.StatusCode.UNAVAILABLE, "not serving yet")
        handler = handlers.get(method)
        if handler is None or handler.unary_unary is None:
            raise _error(grpc.StatusCode.UNIMPLEMENTED, "method not found")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with grpc_tracing.client_span(method) as span:
            context = _LocalContext((*metadata, *grpc_tracing.outgoing_metadata()), deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    # Duck-typed: the hub's handlers use only what _LocalContext has.
                    answer = await handler.unary_unary(request, cast(Any, context))
            except _Aborted as aborted:
                error = _error(aborted.code, aborted.details, aborted.trailing)
            except TimeoutError:
                error = _error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            else:
                if span is not None:
                    span.finish(grpc.StatusCode.OK)
                return answer
            if span is not None:
                span.finish(error.code())
            raise error
