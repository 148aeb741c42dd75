"""Trace context and request id on the hub's gRPC calls.

Spans: a SERVER span per RPC (opened by the service interceptor,
iclaim_hub.common.server) continuing the caller's `traceparent`, and a CLIENT
span per internal call, its context sent as `traceparent`. Ours rather than
opentelemetry-instrumentation-grpc's: those record the status *details* (our
error messages may quote a claim_ref a caller sent) and wrap every servicer
context in a proxy. With tracing off nothing here runs but one flag check.

Request id: Envoy's `x-request-id`, bound to the log context only in the UUID
form Envoy generates (a client connecting from an internal address may send
its own, and caller text is never logged), and forwarded on the hub's internal
calls so the next service logs the same id.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Status, StatusCode

from iclaim_hub.common import tracing

REQUEST_ID_HEADER = "x-request-id"
# Envoy's generated id: a UUID (its version nibble may carry the trace reason).
REQUEST_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def request_id(value: object) -> str:
    """The request id in the form we log, "" for anything else."""
    return value if isinstance(value, str) and REQUEST_ID_RE.fullmatch(value) else ""


# Envoy's ext_authz Check carries no traceparent of its own: the authz opens its
# span from the client's headers inside the CheckRequest (tracing.request_span).
UNTRACED_SERVICES = frozenset({"envoy.service.auth.v3.Authorization"})


def _rpc_attributes(full_method: str) -> dict[str, str]:
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


class RpcSpan:
    """The SERVER span of one RPC; `code` is set by whoever learns the outcome."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def finish(self, code: str) -> None:
        if not self.span.is_recording():
            return
        grpc_status = (
            grpc.StatusCode[code] if code in grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN
        )
        self.span.set_attribute("rpc.grpc.status_code", grpc_status.value[0])
        # Server-side errors only (OTel's gRPC conventions); the code name, never a message.
        if code in ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"):
            self.span.set_status(Status(StatusCode.ERROR, code))


@contextlib.contextmanager
def server_span(full_method: str, metadata: Mapping[str, str]) -> Iterator[RpcSpan | None]:
    """Continues the caller's trace (its traceparent metadata) for one RPC;
    yields None with tracing off."""
    if not tracing.enabled() or _rpc_attributes(full_method)["rpc.service"] in UNTRACED_SERVICES:
        yield None
        return
    parent = extract({k: v for k, v in metadata.items() if k in ("traceparent", "tracestate")})
    with tracing.tracer.start_as_current_span(
        full_method.lstrip("/"),
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes=_rpc_attributes(full_method),
        record_exception=False,  # exception text may quote what the caller sent
        set_status_on_exception=False,
    ) as span:
        yield RpcSpan(span)


def _with_metadata(details: grpc.aio.ClientCallDetails, extra: Sequence[tuple[str, str]]) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in extra:
        metadata[key] = value
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def outgoing_metadata() -> list[tuple[str, str]]:
    """What an internal call carries without a channel's interceptor (an
    in-process call, iclaim_hub.common.local_channel): the bound request id and,
    tracing on, the current span's context as traceparent."""
    extra: list[tuple[str, str]] = []
    rid = request_id(structlog.contextvars.get_contextvars().get("request_id"))
    if rid:
        extra.append((REQUEST_ID_HEADER, rid))
    if tracing.enabled() and trace.get_current_span().get_span_context().is_valid:
        carrier: dict[str, str] = {}
        inject(carrier)
        extra.extend(carrier.items())
    return extra


class ClientSpan:
    """The CLIENT span of one internal call; `finish` records its status code."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def finish(self, code: grpc.StatusCode) -> None:
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            self.span.set_status(Status(StatusCode.ERROR, code.name))


@contextlib.contextmanager
def client_span(full_method: str) -> Iterator[ClientSpan | None]:
    """A CLIENT span, current inside the block, for a call made within a traced
    call; None with tracing off or from background loops (report senders, the
    audit relay), which work for no traced call and start no trace of their own."""
    if not tracing.enabled() or not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    with tracing.tracer.start_as_current_span(
        full_method.lstrip("/"),
        kind=trace.SpanKind.CLIENT,
        attributes=_rpc_attributes(full_method),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield ClientSpan(span)


class HubClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """The hub's internal unary calls: a CLIENT span whose context goes as
    traceparent (tracing on), and the bound request id."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        with client_span(name) as span:
            extra = outgoing_metadata()
            details = _with_metadata(client_call_details, extra) if extra else client_call_details
            call = await continuation(details, request)
            if span is not None:
                try:
                    code = await call.code()
                except grpc.aio.AioRpcError as err:  # raised by some call types instead of returned
                    code = err.code()
                span.finish(code)
            return call


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """For every channel between hub services."""
    return [HubClientInterceptor()]
