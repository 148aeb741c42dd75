"""A claim the router hands off under its own lease (DeliverClaim with
`router_lease`, the kick right after SubmitClaim's insert) is pushed before
the adapter stores it: one commit fewer per claim taken at once. Its outcome
is stored afterwards: taken (reported in the batch), or waiting for a retry;
a push cut short by a stop is stored waiting. Without a lease long enough for
a push, the delivery is stored before the ack as always. Real TLS endpoints,
insurer_adapter in-process, real PostgreSQL, a fake router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from iclaim_hub.internal.v1 import insurer_adapter_pb2
from tests.support.delivery_endpoints import Harness, delivery_harness, wait_for


@pytest.fixture
async def h(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with delivery_harness(database_url, tmp_path) as harness:
        yield harness


def _leased(h: Harness, insurer: str, lease_s: int = 15) -> insurer_adapter_pb2.DeliverClaimRequest:
    request = h.request(insurer)
    request.router_lease.FromSeconds(lease_s)
    return request


async def _row_count(h: Harness, txid: str) -> int:
    return int(
        await h.pool.fetchval("SELECT count(*) FROM adapter.deliveries WHERE transaction_id = $1", txid)
    )


async def _taken_row(h: Harness, txid: str) -> asyncpg.Record:
    """The row once written taken (it does not exist until the push ends)."""

    async def taken() -> bool:
        return await h.states([txid]) == {txid: "taken"}

    await wait_for(taken, what="the row written taken")
    return await h.row(txid)


async def test_a_claim_under_the_routers_lease_is_pushed_then_stored_taken(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("PFIRST")
    stub = await h.start_adapter()
    request = _leased(h, "PFIRST")
    endpoint.hold.add(request.transaction_id)  # the first push hangs until the adapter's timeout
    response = await stub.DeliverClaim(request, timeout=5)
    assert not response.duplicate
    await wait_for(lambda: bool(endpoint.received), what="the first push")
    # In flight, and nothing stored: the router's lease is its only record.
    assert await _row_count(h, request.transaction_id) == 0

    row = await _taken_row(h, request.transaction_id)  # timed out, stored waiting, pushed again, taken
    assert row["attempts"] == 2 and row["report_state"] == "done" and row["last_error"] is None
    # The second push was sent from the row stored waiting; taken, it keeps no envelope.
    assert all(request.envelope.encode() in r.body for r in endpoint.received)
    assert row["envelope"] == "" and len(row["envelope_sha256"]) == 64
    assert (
        row["claim_ref"] == request.claim_ref and row["billed_amount_satang"] == request.billed_amount_satang
    )
    assert row["submitted_at"] == request.submitted_at.ToDatetime().replace(tzinfo=row["submitted_at"].tzinfo)
    assert row["lease_owner"] is None and row["expires_at"] > row["received_at"]
    assert [r.transaction_id for r in endpoint.received] == [request.transaction_id] * 2
    assert [c.transaction_id for c in h.reports.calls] == [request.transaction_id]


async def test_taken_at_once_it_is_written_once_taken_and_reported_once(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("PFONCE")
    stub = await h.start_adapter()
    requests = [_leased(h, "PFONCE") for _ in range(5)]
    for request in requests:
        await stub.DeliverClaim(request, timeout=5)
    txids = [r.transaction_id for r in requests]

    async def all_taken() -> bool:
        return await h.states(txids) == {t: "taken" for t in txids}

    await wait_for(all_taken, what="rows written taken")
    rows = [await h.row(t) for t in txids]
    assert all(r["attempts"] == 1 and r["report_state"] == "done" for r in rows)
    assert sorted(endpoint.taken_ids()) == sorted(txids)
    assert sorted(c.transaction_id for c in h.reports.calls) == sorted(txids)  # each reported once


async def test_a_report_the_router_refused_is_stored_pending_for_the_outbox(h: Harness) -> None:
    await h.grpc_endpoint("PFREF")
    stub = await h.start_adapter()
    request = _leased(h, "PFREF")
    h.reports.refuse = {request.transaction_id}
    await stub.DeliverClaim(request, timeout=5)
    row = await _taken_row(h, request.transaction_id)
    assert row["report_kind"] == "taken"
    h.reports.refuse = set()

    async def reported() -> bool:
        return (await h.row(request.transaction_id))["report_state"] == "done"

    await wait_for(reported, what="the outbox's report")


async def test_without_a_lease_long_enough_for_a_push_it_is_stored_before_the_ack(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("PFSHORT")
    stub = await h.start_adapter()  # pushes time out after 2 s: a 4 s lease is too short
    with capture_logs() as logs:
        for request in (
            h.request("PFSHORT"),
            _leased(h, "PFSHORT", lease_s=4),
            _leased(h, "PFSHORT", lease_s=4),
        ):
            endpoint.hold.add(request.transaction_id)
            await stub.DeliverClaim(request, timeout=5)
            assert await _row_count(h, request.transaction_id) == 1
    # The operator is told once that the push timeout rules this path out.
    told = [e for e in logs if e["event"] == "push_first_off"]
    assert len(told) == 1 and told[0]["router_lease_s"] == 4 and told[0]["log_level"] == "warning"


async def test_a_push_cut_short_by_a_stop_is_stored_waiting(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("PFSTOP")
    stub = await h.start_adapter()
    request = _leased(h, "PFSTOP")
    endpoint.hold.add(request.transaction_id)
    await stub.DeliverClaim(request, timeout=5)
    await wait_for(lambda: bool(endpoint.received), what="the held push")
    assert await _row_count(h, request.transaction_id) == 0
    await h.stop_adapter()
    row = await h.row(request.transaction_id)
    assert row["state"] == "waiting" and row["lease_owner"] is None  # due at once, for any replica

    await h.start_adapter()
    await _taken_row(h, request.transaction_id)
