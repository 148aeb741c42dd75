"""Trace context inside one process (issue 11 item 6): every log line of a call
carries its trace id and Envoy's request id (never a caller's own text), and
the adapter stores a delivery's traceparent and sends it to the insurer with
each push (gRPC metadata, webhook header). Tracing is switched on for the
test only, with an in-memory exporter; the end-to-end trace across the
processes is tests/integration/test_tracing.py."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from iclaim_hub.common import logging as hub_logging
from iclaim_hub.common import tracing
from iclaim_hub.common.server import new_server
from tests.support.delivery_endpoints import Harness, delivery_harness, wait_for

SERVICE = "test.v1.Probe"
ENVOY_REQUEST_ID = "0b7c3e2a-9f1d-4c55-a1e0-6d2f8b9e4a11"
log = structlog.get_logger("test.probe")


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Tracing on for this test only: the module's flag and tracer, not the
    process-wide provider (which OpenTelemetry lets a process set once)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_enabled", True)
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    return exporter


@pytest.fixture
def lines() -> Iterator[list[dict[str, Any]]]:
    """What the services' processors put on a line (the renderer aside)."""
    saved = structlog.get_config()
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[*hub_logging.PROCESSORS, capture], cache_logger_on_first_use=False)
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)


async def probe(request: bytes, context: Any) -> bytes:
    log.info("probe_handled")
    return request


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = new_server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(probe)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


def _traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


async def test_a_log_line_carries_the_trace_id_and_envoys_request_id(
    spans: InMemorySpanExporter, lines: list[dict[str, Any]], channel: grpc.aio.Channel
) -> None:
    trace_id, traceparent = _traceparent()
    call = channel.unary_unary(f"/{SERVICE}/Unary")
    await call(b"x", metadata=(("traceparent", traceparent), ("x-request-id", ENVOY_REQUEST_ID)), timeout=5)

    handled = [line for line in lines if line["event"] == "probe_handled"]
    assert len(handled) == 1
    assert handled[0]["trace_id"] == trace_id
    assert handled[0]["request_id"] == ENVOY_REQUEST_ID
    # The call's SERVER span continues the caller's trace, and the line names it.
    (server_span,) = [s for s in spans.get_finished_spans() if s.name == f"{SERVICE}/Unary"]
    assert format(server_span.context.trace_id, "032x") == trace_id
    assert handled[0]["span_id"] == format(server_span.context.span_id, "016x")


async def test_a_request_id_that_is_not_envoys_form_is_not_logged(
    spans: InMemorySpanExporter, lines: list[dict[str, Any]], channel: grpc.aio.Channel
) -> None:
    caller_text = "Somchai Jaidee 081-234-5678"
    call = channel.unary_unary(f"/{SERVICE}/Unary")
    await call(b"x", metadata=(("x-request-id", caller_text),), timeout=5)

    handled = [line for line in lines if line["event"] == "probe_handled"]
    assert len(handled) == 1 and "request_id" not in handled[0]
    assert caller_text not in repr(lines)


async def test_without_tracing_a_line_has_no_trace_id(
    lines: list[dict[str, Any]], channel: grpc.aio.Channel
) -> None:
    _, traceparent = _traceparent()
    call = channel.unary_unary(f"/{SERVICE}/Unary")
    await call(b"x", metadata=(("traceparent", traceparent), ("x-request-id", ENVOY_REQUEST_ID)), timeout=5)
    (handled,) = [line for line in lines if line["event"] == "probe_handled"]
    assert "trace_id" not in handled and handled["request_id"] == ENVOY_REQUEST_ID


@pytest.fixture
async def h(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with delivery_harness(database_url, tmp_path) as harness:
        yield harness


@pytest.mark.parametrize("mode", ["grpc", "webhook"])
async def test_a_push_sends_the_claims_traceparent_to_the_insurer(
    spans: InMemorySpanExporter, h: Harness, mode: str
) -> None:
    endpoint = await (h.grpc_endpoint("TRACEINS") if mode == "grpc" else h.webhook_endpoint("TRACEINS"))
    stub = await h.start_adapter()  # after tracing is on: the push span is wired at build
    trace_id, traceparent = _traceparent()
    request = h.request("TRACEINS")
    await stub.DeliverClaim(request, metadata=(("traceparent", traceparent),), timeout=5)
    # The endpoint records the push before it answers; the span ends after.
    await wait_for(lambda: any(s.name == "insurer.push" for s in spans.get_finished_spans()), what="push")

    # The row keeps the DeliverClaim call's context, for pushes made later.
    stored = (await h.row(request.transaction_id))["traceparent"]
    assert stored.startswith(f"00-{trace_id}-")
    # The insurer got the push span's context: same trace, the push span as parent.
    sent = endpoint.received[0].headers["traceparent"]
    (push,) = [s for s in spans.get_finished_spans() if s.name == "insurer.push"]
    assert sent == f"00-{trace_id}-{format(push.context.span_id, '016x')}-01"
    assert push.attributes is not None and push.attributes["iclaim.insurer"] == "TRACEINS"
    assert endpoint.received[0].verified  # traceparent beside the signature does not break it
