"""Server bootstrap every service shares: interceptor, health, reflection,
size limits, metrics and graceful shutdown on SIGTERM."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, cast

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from iclaim.common.errors import IclaimError, Internal, Unauthenticated
from iclaim.common.metrics import RPC_LATENCY, RPC_REQUESTS, start_metrics_server

log = structlog.get_logger("iclaim.server")

# Envelopes are capped at 1 MiB (PROTOCOL.md §4); leave room for the other fields.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]
CLIENT_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

PRINCIPAL_HEADER = "x-iclaim-principal"
ROLE_HEADER = "x-iclaim-role"
REASON_TRAILER = "x-iclaim-reason"

# grpc.RpcMethodHandler is typed for the sync server (plain callables, grpc.ServicerContext,
# Iterator); under grpc.aio the same fields hold coroutine functions and async generators
# that take an aio context. These name what the aio server really hands us.
_AioContext: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_AioUnaryUnary: TypeAlias = Callable[[Any, _AioContext], Awaitable[Any]]
_AioUnaryStream: TypeAlias = Callable[[Any, _AioContext], AsyncIterator[Any]]


@dataclass(frozen=True)
class Caller:
    """The principal the gateway verified (never a client-supplied claim)."""

    code: str
    role: str  # "hospital" | "insurer"


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    code, role = md.get(PRINCIPAL_HEADER, ""), md.get(ROLE_HEADER, "")
    if not code or role not in ("hospital", "insurer"):
        raise Unauthenticated("caller identity missing", reason="IDENTITY_MISSING")
    return Caller(code=code, role=role)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: IclaimError) -> None:
    status = rpc_status.to_status(err.to_status())
    trailing = tuple(status.trailing_metadata) + ((REASON_TRAILER, err.reason),)
    await context.abort(status.code, status.details, trailing_metadata=trailing)


def _request_ids(request: Any) -> dict[str, str]:
    """Binds the request's transaction id (when it has one) to every log line."""
    tid = getattr(request, "transaction_id", "")
    return {"transaction_id": tid} if isinstance(tid, str) and tid else {}


def _method_parts(full: str) -> tuple[str, str]:
    _, _, rest = full.partition("/")
    service, _, method = rest.partition("/")
    return service, method


@contextlib.asynccontextmanager
async def _guarded(
    service: str, method: str, context: grpc.aio.ServicerContext[Any, Any], bind: dict[str, str]
) -> AsyncIterator[None]:
    """One RPC: log context, IclaimError -> status with ErrorInfo, a crash ->
    INTERNAL (never UNKNOWN), and the RPC metrics, for unary and streams alike."""
    start = time.perf_counter()
    code = "OK"
    with structlog.contextvars.bound_contextvars(**bind):
        try:
            yield
        except IclaimError as err:
            code = err.code.name
            log.info("rpc_error", code=code, reason=err.reason, error=err.message)
            await _abort(context, err)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("rpc_crash")
            await _abort(context, Internal("internal error", reason="INTERNAL"))
        finally:
            RPC_REQUESTS.labels(service, method, code).inc()
            RPC_LATENCY.labels(service, method).observe(time.perf_counter() - start)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Maps IclaimError to status+ErrorInfo, binds log context, records metrics."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, method = _method_parts(details.method)
        if service.startswith("grpc."):
            return handler
        md = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        bind = {"rpc": details.method, "client": md.get(PRINCIPAL_HEADER, "")}

        if handler.unary_unary:
            inner = cast(_AioUnaryUnary, handler.unary_unary)

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with _guarded(service, method, context, {**bind, **_request_ids(request)}):
                    return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        if handler.unary_stream:
            inner_stream = cast(_AioUnaryStream, handler.unary_stream)

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async with _guarded(service, method, context, {**bind, **_request_ids(request)}):
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def new_server(extra_interceptors: Iterable[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    return grpc.aio.server(
        interceptors=[ServiceInterceptor(), *extra_interceptors],
        options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=2000,
    )


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health.aio.HealthServicer:
    names = list(service_names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection(server, [*names, health.SERVICE_NAME])
    return health_servicer


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_reflection(server: grpc.aio.Server, service_names: list[str]) -> None:
    """Server reflection under both v1alpha and v1 (§2).

    grpcio-reflection ships only v1alpha; v1's messages are the same fields
    under another package name, so one servicer answers both."""
    servicer = reflection_aio.ReflectionServicer(
        [*service_names, reflection.SERVICE_NAME, REFLECTION_V1]
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, server
    )  # grpcio-reflection ships no stub for its generated module
    v1 = grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))


async def mark_serving(health_servicer: health.aio.HealthServicer, names: Iterable[str]) -> None:
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def run_until_signal(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    *,
    grace: float = 5.0,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT, then drains: NOT_SERVING, stop(grace), cleanup."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting_down", grace_s=grace)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace)
    if on_stop is not None:
        await on_stop()
    log.info("stopped")


class ServingApp(Protocol):
    """What a service's build_server returns: a server not yet started."""

    @property
    def server(self) -> grpc.aio.Server: ...
    @property
    def port(self) -> int: ...
    @property
    def health(self) -> health.aio.HealthServicer: ...
    @property
    def cleanup(self) -> Callable[[], Awaitable[None]]: ...

    async def start(self) -> None: ...


async def serve_app(app: ServingApp, listen_addr: str, metrics_port: int) -> None:
    """/metrics, start, one log line, then serve until SIGTERM and drain."""
    bound_metrics = start_metrics_server(metrics_port)
    await app.start()
    log.info("serving", addr=listen_addr, port=app.port, metrics_port=bound_metrics)
    await run_until_signal(app.server, app.health, on_stop=app.cleanup)
