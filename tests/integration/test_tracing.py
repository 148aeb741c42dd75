"""Issue 11 item 6: one trace per claim across the hub's processes.

The whole stack (real Envoy, authz, router, adapter, billing, the sandbox
insurers) exports with the real OTLP/gRPC exporter, switched on by the
standard environment, to a collector stub in this test. A claim submitted
through the gateway with a traceparent is one trace from the authz check to
billing's intake; every service logs its trace id and Envoy's request id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from iclaim.client.hospital import HospitalClient
from iclaim.v1 import claim_service_pb2 as pb
from tests.support.claims import fhir
from tests.support.delivery_endpoints import wait_for
from tests.support.stack import RunningStack, run_admin, running_stack_in
from tests.support.wire import raw_call

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBMIT = "/iclaim.v1.ClaimService/SubmitClaim"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# A caller's own x-request-id, in the very form we log: Envoy must replace it.
CALLER_REQUEST_ID = "11111111-2222-4333-8444-555555555555"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps (service.name, span) of every export."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []

    async def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (OTLP's name)
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.spans.extend((attrs.get("service.name", ""), s) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[tuple[str, str]]:
        """(service, span name) of every span of one trace."""
        return [(svc, s.name) for svc, s in self.spans if s.trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    sink = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield sink, port
    await server.stop(0)


@pytest.fixture(scope="module")
async def traced_stack(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[Collector, int]
) -> AsyncIterator[RunningStack]:
    env = {
        # The standard switches only: this is how an operator turns tracing on.
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector[1]}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        # A failed push is retried within a second (the durable-path test).
        "ICLAIM_DELIVERY_BACKOFF_BASE_S": "0.2",
        "ICLAIM_DELIVERY_BACKOFF_MAX_S": "1",
        "ICLAIM_DELIVERY_PROBE_S": "1",
        "ICLAIM_DELIVERY_TIMEOUT_S": "3",
    }
    async with running_stack_in(tmp_path_factory.mktemp("traced"), env, redis_db=10) as stack:
        yield stack


async def _submit(stack: RunningStack, insurer: str, traceparent: str, wait_s: int = 15) -> pb.Claim:
    async with HospitalClient(stack.creds()) as hospital:
        claim_ref = f"TR-{secrets.token_hex(5)}"
        envelope = await hospital.seal_claim(
            fhir(hospital.creds.code, insurer, claim_ref, "POL-OK-1", 5_000_00),
            insurer_code=insurer,
            claim_ref=claim_ref,
            amount_satang=5_000_00,
        )
    request = pb.SubmitClaimRequest(
        claim_ref=claim_ref, insurer_code=insurer, billed_amount_satang=5_000_00, envelope=envelope
    )
    request.decision_timeout.FromSeconds(wait_s)
    md = (("traceparent", traceparent), ("x-request-id", CALLER_REQUEST_ID))
    response = await raw_call(stack.creds(), SUBMIT, request, pb.SubmitClaimResponse, extra_md=md)
    return response.claim


async def _insurer_of_mode(stack: RunningStack, mode: int) -> str:
    async with HospitalClient(stack.creds()) as hospital:
        return next(i.code for i in await hospital.list_insurers() if i.delivery == mode and i.available)


EXPECTED = {
    ("iclaim-authz", "envoy.service.auth.v3.Authorization/Check"),
    ("iclaim-claim_router", "iclaim.v1.ClaimService/SubmitClaim"),
    ("iclaim-claim_router", "iclaim_hub.internal.v1.InsurerAdapterService/DeliverClaim"),
    ("iclaim-insurer_adapter", "iclaim_hub.internal.v1.InsurerAdapterService/DeliverClaim"),
    ("iclaim-insurer_adapter", "insurer.push"),
    ("iclaim-claim_router", "claim.decision"),
    ("iclaim-claim_router", "iclaim_hub.internal.v1.BillingIntakeService/RecordClaimDecision"),
    ("iclaim-billing", "iclaim_hub.internal.v1.BillingIntakeService/RecordClaimDecision"),
}


async def _until_trace_has(sink: Collector, trace_id: str) -> set[tuple[str, str]]:
    """The trace's spans once all EXPECTED arrived (batches export every 200 ms)."""
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: set(sink.trace(trace_id)) >= EXPECTED, timeout=30, what="the trace")
    return set(sink.trace(trace_id))


@pytest.mark.parametrize("mode", [pb.DELIVERY_MODE_GRPC, pb.DELIVERY_MODE_WEBHOOK], ids=["grpc", "webhook"])
async def test_a_claim_is_one_trace_from_the_gateway_to_billing(
    traced_stack: RunningStack, collector: tuple[Collector, int], mode: int
) -> None:
    sink = collector[0]
    insurer = await _insurer_of_mode(traced_stack, mode)
    trace_id = secrets.token_hex(16)
    claim = await _submit(traced_stack, insurer, f"00-{trace_id}-{secrets.token_hex(8)}-01")
    assert claim.state == pb.CLAIM_STATE_APPROVED

    seen = await _until_trace_has(sink, trace_id)
    assert seen >= EXPECTED, f"missing from the claim's trace: {sorted(EXPECTED - seen)}"
    # The push and the decision are this claim's, not another's that shares the trace.
    pushes = [s for svc, s in sink.spans if s.trace_id.hex() == trace_id and s.name == "insurer.push"]
    assert len(pushes) == 1

    # Every line the router logged for this claim carries the trace id and
    # Envoy's own request id (the caller's was replaced at the edge).
    lines = _log_lines(traced_stack, "claim_router", claim.transaction_id)
    assert lines, "the router logged nothing for the claim"
    assert all(line.get("trace_id") == trace_id for line in lines), lines
    submit_lines = [line for line in lines if line.get("rpc") == SUBMIT]
    assert submit_lines and all(UUID_RE.fullmatch(line.get("request_id", "")) for line in submit_lines)
    assert all(line["request_id"] != CALLER_REQUEST_ID for line in submit_lines)
    logs = (traced_stack.stack.logs_dir).glob("*.log")
    assert not any(CALLER_REQUEST_ID in p.read_text(errors="replace") for p in logs)


def _log_lines(stack: RunningStack, service: str, transaction_id: str) -> list[dict[str, Any]]:
    path: Path = stack.stack.logs_dir / f"{service}.log"
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("transaction_id") == transaction_id:
            lines.append(line)
    return lines


async def test_a_push_retried_later_still_joins_the_claims_trace(
    traced_stack: RunningStack, collector: tuple[Collector, int]
) -> None:
    """The durable path: the first push fails (the endpoint is moved away),
    the retry runs later from the stored delivery, outside the DeliverClaim
    call, and must find the claim's trace in the delivery's row."""
    sink = collector[0]
    insurer = await _insurer_of_mode(traced_stack, pb.DELIVERY_MODE_GRPC)
    endpoint = (await run_admin(traced_stack, "insurer", "set", insurer))["endpoint"]
    await run_admin(traced_stack, "insurer", "set", insurer, "--endpoint", "127.0.0.1:1")
    try:
        await asyncio.sleep(4)  # the adapter's endpoint cache (3 s) sees the dead endpoint
        trace_id = secrets.token_hex(16)
        claim = await _submit(traced_stack, insurer, f"00-{trace_id}-{secrets.token_hex(8)}-01", wait_s=0)
        await wait_for(lambda: bool(_pushes(sink, trace_id)), timeout=20, what="the first (failing) push")
    finally:
        await run_admin(traced_stack, "insurer", "set", insurer, "--endpoint", endpoint)
    async with HospitalClient(traced_stack.creds()) as hospital:

        async def decided() -> bool:
            return (await hospital.get_claim(claim.transaction_id)).state == pb.CLAIM_STATE_APPROVED

        await wait_for(decided, timeout=30, what="the decision once the endpoint is back")
    seen = await _until_trace_has(sink, trace_id)
    assert seen >= EXPECTED, f"missing from the claim's trace: {sorted(EXPECTED - seen)}"

    # The taken push's span ends when the insurer answers the push, which can
    # be after its decision reached the router and billing (their spans are
    # then already exported): wait for it rather than read the sink once.
    def taken() -> bool:
        return any(p.status.code != p.status.STATUS_CODE_ERROR for p in _pushes(sink, trace_id))

    await wait_for(taken, timeout=10, what="the push the insurer took")
    # Failed attempts and the one the insurer took, all in the claim's trace.
    assert len(_pushes(sink, trace_id)) >= 2


def _pushes(sink: Collector, trace_id: str) -> list[Any]:
    return [s for _, s in sink.spans if s.trace_id.hex() == trace_id and s.name == "insurer.push"]
