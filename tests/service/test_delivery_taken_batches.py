"""Taken pushes go to the router a window at a time (ReportTakenBatch, one
commit there) and are then written taken in one UPDATE; a push the router
refused in the batch is written with its report pending and sent again
through the outbox; against a router without ReportTakenBatch (a rolling
upgrade) each is reported on its own. Real TLS endpoints, insurer_adapter
in-process, real PostgreSQL, a fake of the router's DeliveryReportService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from iclaim_hub.internal.v1 import delivery_report_pb2, delivery_report_pb2_grpc
from services.insurer_adapter.model import PendingReport, ReportKind
from services.insurer_adapter.router_reports import RouterReports
from tests.support.delivery_endpoints import Harness, delivery_harness, wait_for
from tests.support.one_servicer import serving


@pytest.fixture
async def h(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with delivery_harness(database_url, tmp_path) as harness:
        yield harness


async def _rows(h: Harness, txids: list[str]) -> dict[str, tuple[str, str]]:
    rows = await h.pool.fetch(
        "SELECT transaction_id, state, report_state FROM adapter.deliveries"
        " WHERE transaction_id = ANY($1::text[])",
        txids,
    )
    return {r["transaction_id"]: (r["state"], r["report_state"]) for r in rows}


async def test_pushes_taken_together_are_reported_in_one_batch(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("BATCHINS")
    stub = await h.start_adapter()
    txids = await h.deliver(stub, "BATCHINS", 6)

    async def all_done() -> bool:
        return set((await _rows(h, txids)).values()) == {("taken", "done")}

    await wait_for(all_done, what="rows taken, reports done")
    assert sorted(endpoint.taken_ids()) == sorted(txids)
    reported = [txid for batch in h.reports.batches for txid in batch]
    assert sorted(reported) == sorted(txids)  # each once
    assert len(h.reports.batches) < len(txids)  # not one call each
    assert all(c.kind == "taken" for c in h.reports.calls)


async def test_a_report_refused_in_the_batch_goes_through_the_outbox(h: Harness) -> None:
    await h.grpc_endpoint("BATCHREF")
    stub = await h.start_adapter()
    first = h.request("BATCHREF")
    h.reports.refuse = {first.transaction_id}
    await stub.DeliverClaim(first, timeout=5)

    async def reported_alone() -> bool:
        singles = [c for c in h.reports.calls if c.transaction_id == first.transaction_id]
        return len(singles) >= 2 and singles[-1].code == grpc.StatusCode.OK

    # Refused in its batch, then sent on its own by the outbox (which the fake acks).
    await wait_for(reported_alone, what="the outbox's own report")

    async def done() -> bool:
        return (await _rows(h, [first.transaction_id]))[first.transaction_id] == ("taken", "done")

    await wait_for(done, what="report done")
    assert [first.transaction_id] in h.reports.batches


class OldRouter(delivery_report_pb2_grpc.DeliveryReportServiceServicer):
    """A router from before ReportTakenBatch: the base class answers it UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.taken: list[str] = []

    async def ReportTaken(self, request: Any, context: Any) -> Any:
        if request.transaction_id.endswith("x"):
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such claim")
        self.taken.append(request.transaction_id)
        return delivery_report_pb2.ReportTakenResponse()


async def test_an_older_router_gets_one_report_each() -> None:
    old = OldRouter()
    async with serving(delivery_report_pb2_grpc.add_DeliveryReportServiceServicer_to_server, old) as channel:
        at = datetime.now(UTC)
        reports = [PendingReport(f"txn_{n}", "INS", ReportKind.TAKEN, at, 1) for n in ("a", "b", "x")]
        acked = await RouterReports(channel, 5.0).report_taken_many(reports)
    assert acked == {"txn_a", "txn_b"}
    assert sorted(old.taken) == ["txn_a", "txn_b"]


async def test_an_unreachable_router_acknowledges_nothing() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        at = datetime.now(UTC)
        report = PendingReport("txn_a", "INS", ReportKind.TAKEN, at, 1)
        assert await RouterReports(channel, 0.5).report_taken_many([report]) == set()
