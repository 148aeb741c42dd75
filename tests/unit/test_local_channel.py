"""The in-process channel (iclaim_hub.common.local_channel): a generated stub on
it reaches the service's guarded handler and sees what a wire call would have
given it: the answer, the status and reason of an error as an AioRpcError,
DEADLINE_EXCEEDED, UNIMPLEMENTED and UNAVAILABLE, the request id, and within a
traced call a CLIENT span that the handler's SERVER span continues."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import REGISTRY

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from iclaim.errors import NotFound, reason_in_trailers
from iclaim_hub.common import grpc_tracing, tracing
from iclaim_hub.common.local_channel import LocalChannel
from iclaim_hub.common.server import HubServer, new_server
from iclaim_hub.internal.v1 import (
    delivery_report_pb2,
    delivery_report_pb2_grpc,
    insurer_adapter_pb2,
    insurer_adapter_pb2_grpc,
)

TID = "TX-local-1"
REQUEST_ID = "0b7e4a10-3c1f-4a8e-9d2b-5f6a7c8d9e0f"


class Reports(delivery_report_pb2_grpc.DeliveryReportServiceServicer):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, dict[str, str]]] = []

    async def ReportTaken(self, request: Any, context: Any) -> delivery_report_pb2.ReportTakenResponse:
        self.seen.append((request, dict(context.invocation_metadata())))
        if request.insurer_code == "MISSING":
            raise NotFound("no such claim", reason="CLAIM_NOT_FOUND")
        if request.insurer_code == "CRASH":
            raise ValueError("a bug")
        if request.insurer_code == "SLOW":
            await asyncio.sleep(5)
        return delivery_report_pb2.ReportTakenResponse()


@pytest.fixture
async def served() -> tuple[Reports, LocalChannel]:
    server = new_server()
    assert isinstance(server, HubServer)
    servicer = Reports()
    delivery_report_pb2_grpc.add_DeliveryReportServiceServicer_to_server(servicer, server)
    channel = LocalChannel()
    channel.serve(server.handlers)
    return servicer, channel


def _stub(channel: LocalChannel) -> Any:
    return delivery_report_pb2_grpc.DeliveryReportServiceStub(channel)  # type: ignore[arg-type]


def _taken(insurer: str) -> delivery_report_pb2.ReportTakenRequest:
    return delivery_report_pb2.ReportTakenRequest(transaction_id=TID, insurer_code=insurer)


def _handled(code: str) -> float:
    value = REGISTRY.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "iclaim_hub.internal.v1.DeliveryReportService",
            "grpc_method": "ReportTaken",
            "grpc_code": code,
        },
    )
    return value or 0.0


async def test_a_call_reaches_the_guarded_handler_and_is_counted(
    served: tuple[Reports, LocalChannel],
) -> None:
    servicer, channel = served
    before = _handled("OK")
    answer = await _stub(channel).ReportTaken(_taken("AIA"), timeout=5)
    assert isinstance(answer, delivery_report_pb2.ReportTakenResponse)
    assert [r.insurer_code for r, _ in servicer.seen] == ["AIA"]
    # Through the guard, so the bench counts it as an internal RPC as before.
    assert _handled("OK") == before + 1


@pytest.mark.parametrize(
    ("insurer", "code", "reason"),
    [
        ("MISSING", grpc.StatusCode.NOT_FOUND, "CLAIM_NOT_FOUND"),  # a typed error: its status and reason
        ("CRASH", grpc.StatusCode.INTERNAL, "INTERNAL"),  # a crash: INTERNAL, never UNKNOWN
    ],
)
async def test_an_error_arrives_as_its_status_and_reason(
    served: tuple[Reports, LocalChannel], insurer: str, code: grpc.StatusCode, reason: str
) -> None:
    _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stub(channel).ReportTaken(_taken(insurer), timeout=5)
    assert caught.value.code() == code
    assert reason_in_trailers(caught.value.trailing_metadata()) == reason


async def test_a_slow_handler_meets_the_callers_deadline(served: tuple[Reports, LocalChannel]) -> None:
    _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stub(channel).ReportTaken(_taken("SLOW"), timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_method_nobody_serves_is_unimplemented(served: tuple[Reports, LocalChannel]) -> None:
    _, channel = served
    stub = insurer_adapter_pb2_grpc.InsurerAdapterServiceStub(channel)  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeliverClaims(insurer_adapter_pb2.DeliverClaimsRequest(), timeout=5)
    # What the router's hand-off falls back on against an older adapter.
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_before_serving_and_after_stopping_calls_are_unavailable() -> None:
    channel = LocalChannel()
    with pytest.raises(grpc.aio.AioRpcError) as before:
        await _stub(channel).ReportTaken(_taken("AIA"), timeout=5)
    assert before.value.code() == grpc.StatusCode.UNAVAILABLE
    server = new_server()
    assert isinstance(server, HubServer)
    delivery_report_pb2_grpc.add_DeliveryReportServiceServicer_to_server(Reports(), server)
    channel.serve(server.handlers)
    await _stub(channel).ReportTaken(_taken("AIA"), timeout=5)
    await channel.close()
    with pytest.raises(grpc.aio.AioRpcError) as after:
        await _stub(channel).ReportTaken(_taken("AIA"), timeout=5)
    assert after.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_bound_request_id_goes_along(served: tuple[Reports, LocalChannel]) -> None:
    servicer, channel = served
    with structlog.contextvars.bound_contextvars(request_id=REQUEST_ID):
        await _stub(channel).ReportTaken(_taken("AIA"), timeout=5)
    await _stub(channel).ReportTaken(_taken("AIA"), timeout=5, metadata=(("x-other", "1"),))
    (_, first), (_, second) = servicer.seen
    assert first.get("x-request-id") == REQUEST_ID
    assert "x-request-id" not in second and second.get("x-other") == "1"


async def test_within_a_traced_call_it_opens_a_client_span_the_handler_continues(
    served: tuple[Reports, LocalChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_enabled", True)
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    _, channel = served
    with tracing.tracer.start_as_current_span("caller"):
        await _stub(channel).ReportTaken(_taken("AIA"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await _stub(channel).ReportTaken(_taken("MISSING"), timeout=5)
    by_kind: dict[SpanKind, list[Any]] = {}
    for s in exporter.get_finished_spans():
        by_kind.setdefault(s.kind, []).append(s)
    caller = by_kind[SpanKind.INTERNAL][0]
    ok, refused = by_kind[SpanKind.CLIENT]
    assert ok.parent.span_id == caller.context.span_id
    assert ok.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert refused.status.status_code == StatusCode.ERROR
    # Each handler's SERVER span continues its call's CLIENT span, in the caller's trace.
    servers = by_kind[SpanKind.SERVER]
    assert [s.parent.span_id for s in servers] == [ok.context.span_id, refused.context.span_id]
    assert {s.context.trace_id for s in (*servers, ok, refused)} == {caller.context.trace_id}


async def test_untraced_it_opens_no_span(served: tuple[Reports, LocalChannel]) -> None:
    _, channel = served
    with grpc_tracing.client_span("/x/Y") as span:
        assert span is None
    await _stub(channel).ReportTaken(_taken("AIA"), timeout=5)
