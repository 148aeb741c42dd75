"""OpenTelemetry tracing for the hub, switched on by the standard environment.

Off by default: the global tracer stays OpenTelemetry's no-op one, no
interceptor is installed and nothing is exported. On when
OTEL_TRACES_EXPORTER names an exporter (`otlp` or `console`), or when
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (then
`otlp`); OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true keeps it off. The
OTLP exporter (gRPC) reads its own OTEL_EXPORTER_OTLP_* settings; the service
name is OTEL_SERVICE_NAME, else the package the process runs
(`services.claim_router` -> `iclaim-claim_router`).

The W3C trace context is the one vocabulary: `traceparent` in gRPC metadata and
HTTP headers, and in the rows of durable hand-offs (a claim in the router, a
delivery in the adapter, an outbox event), so work done later from a row joins
the trace of the call that stored it.

No gRPC here (pure modules may import this one); the interceptors are in
iclaim_hub.common.grpc_tracing.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Awaitable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

T = TypeVar("T")

TRACEPARENT = "traceparent"
# W3C trace context, version 00: what we store and send (never anything else).
TRACEPARENT_RE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
EXPORTERS = ("otlp", "console")

_W3C = TraceContextTextMapPropagator()
_enabled = False

tracer = trace.get_tracer("iclaim_hub")


class TracingConfigError(ValueError):
    pass


def exporter_name(env: Mapping[str, str] = os.environ) -> str | None:
    """The exporter the environment asks for, or None (tracing off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if name == "none":
        return None
    if not name:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return "otlp" if endpoint else None
    if name not in EXPORTERS:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)} or none")
    return name


def _default_service_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    package = (getattr(spec, "parent", "") or "").rsplit(".", 1)[-1]
    return f"iclaim-{package}" if package else "iclaim"


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    # Imported only when asked for: it pulls in the OTLP protos and a gRPC client.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(
    service_name: str | None = None,
    *,
    exporter: SpanExporter | None = None,
    env: Mapping[str, str] = os.environ,
) -> bool:
    """Once per process, before the server is built. With `exporter` (tests),
    tracing is on whatever the environment says. Returns whether it is on."""
    global _enabled
    if _enabled:
        return True
    if exporter is None:
        name = exporter_name(env)
        if name is None:
            return False
        exporter = _exporter(name)
    resource = Resource.create(
        {"service.name": env.get("OTEL_SERVICE_NAME") or service_name or _default_service_name()}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


def shutdown_tracing() -> None:
    """Flushes what is buffered (on a graceful stop)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if _enabled and callable(shutdown):
        shutdown()


def current_traceparent() -> str:
    """The current span as a W3C traceparent, "" when there is none (tracing off)."""
    if not _enabled:
        return ""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    value = carrier.get(TRACEPARENT, "")
    return value if TRACEPARENT_RE.fullmatch(value) else ""


def outgoing_headers() -> list[tuple[str, str]]:
    """traceparent (and tracestate) of the current span, for a call we make
    by hand (pushes to insurers); empty when tracing is off."""
    if not _enabled:
        return []
    carrier: dict[str, str] = {}
    inject(carrier)
    return sorted(carrier.items())


def context_of(traceparent: str) -> otel_context.Context | None:
    """The remote context a stored traceparent names, None if it names none."""
    if not traceparent or not TRACEPARENT_RE.fullmatch(traceparent):
        return None
    ctx = _W3C.extract({TRACEPARENT: traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def context_from_headers(headers: Mapping[str, str]) -> otel_context.Context:
    """The trace context a request's headers carry (ext_authz sees the
    client's headers, not gRPC metadata of its own)."""
    carrier: MutableMapping[str, str] = {k.lower(): v for k, v in headers.items() if k.lower() == TRACEPARENT}
    return extract(carrier)


@contextlib.contextmanager
def request_span(name: str, headers: Mapping[str, str]) -> Iterator[None]:
    """A SERVER span continuing the trace a request's headers carry (ext_authz
    gets the client's headers inside its CheckRequest, not as metadata)."""
    if not _enabled:
        yield
        return
    with tracer.start_as_current_span(
        name,
        context=context_from_headers(headers),
        kind=trace.SpanKind.SERVER,
        record_exception=False,  # exception text may quote what the caller sent
        set_status_on_exception=False,
    ):
        yield


@contextlib.contextmanager
def resumed(traceparent: str) -> Iterator[None]:
    """Work done now for a row stored earlier runs in the stored trace (no-op
    when the row has none or tracing is off)."""
    ctx = context_of(traceparent) if _enabled else None
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


async def within_trace(traceparent: str, work: Awaitable[T]) -> T:
    """`await work` in the trace a stored row names (see `resumed`)."""
    with resumed(traceparent):
        return await work


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: str = "",
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | bool] | None = None,
) -> Iterator[trace.Span]:
    """A span, child of the stored `parent` traceparent if given (the current
    span then becomes a link), else of the current span. No-op when off."""
    ctx = context_of(parent) if (parent and _enabled) else None
    links = []
    if ctx is not None:
        here = trace.get_current_span().get_span_context()
        if here.is_valid and here.trace_id != trace.get_current_span(ctx).get_span_context().trace_id:
            links.append(trace.Link(here))
    with tracer.start_as_current_span(
        name, context=ctx, kind=kind, attributes=dict(attributes or {}), links=links
    ) as current:
        yield current


def add_trace_ids(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: trace_id and span_id of the current span on every
    line (nothing when there is none: one context lookup when tracing is off)."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event
