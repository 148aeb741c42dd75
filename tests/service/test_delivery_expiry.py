"""Expiry, redrive and the reports to the router (docs/protocol.md §10.4,
§11 `iclaim admin deliveries`): a claim nobody takes in time fails and the
router hears `expired`; redrive makes it wait again, tells the router first,
then pushes it; reports are retried until the router acknowledges them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from iclaim.errors import InvalidArgument
from iclaim_hub.internal.v1 import admin_pb2, admin_pb2_grpc
from tests.support.delivery_endpoints import ADMIN_TOKEN, FAST, Harness, delivery_harness, wait_for


@pytest.fixture
async def h(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with delivery_harness(database_url, tmp_path) as harness:
        yield harness


async def _report_recorded(h: Harness, txid: str) -> None:
    """The adapter has written down the router's acknowledgement, and with it
    let go of the report's lease. The router answers first: an adapter stopped
    in between leaves the lease held, and a redrive waits for it to end."""

    async def done() -> bool:
        return (await h.row(txid))["report_state"] == "done"

    await wait_for(done, what="report recorded")


def _expired(insurer: str) -> float:
    return (
        REGISTRY.get_sample_value("iclaim_delivery_pushes_total", {"insurer": insurer, "outcome": "expired"})
        or 0.0
    )


async def test_a_claim_nobody_takes_in_time_fails_and_redrive_delivers_it(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("EXPINS", start=False)  # down
    expired_before = _expired("EXPINS")
    stub = await h.start_adapter(delivery=replace(FAST, expiry_s=1.5))
    [txid] = await h.deliver(stub, "EXPINS")
    deliveries = h.app.deliveries
    assert deliveries is not None

    await wait_for(lambda: h.reports.acked("expired") == [txid], what="expired report")
    row = await h.row(txid)
    assert (row["state"], row["last_error"]) == ("failed", "GRPC_UNAVAILABLE")
    assert row["attempts"] >= 1
    assert _expired("EXPINS") - expired_before == 1
    [listed] = await deliveries.list_deliveries("EXPINS", "failed", 10)
    assert (listed.transaction_id, listed.state, listed.last_error) == (txid, "failed", "GRPC_UNAVAILABLE")
    assert listed.next_attempt_at is None
    assert await deliveries.list_deliveries("EXPINS", "waiting", 10) == []
    # Failed is final until an operator acts: no more attempts.
    attempts = row["attempts"]
    await asyncio.sleep(0.5)
    assert (await h.row(txid))["attempts"] == attempts

    await endpoint.start(endpoint.port)
    # Redriven deliveries get a new expiry; a long one here, so that the redrive
    # is not raced by the next expiry on a slow machine.
    await _report_recorded(h, txid)
    await h.stop_adapter()
    await h.start_adapter()
    deliveries = h.app.deliveries
    assert deliveries is not None
    other = h.request("EXPINS").transaction_id  # never delivered: not redriven
    assert await deliveries.redrive([txid, other, txid]) == [txid]
    await wait_for(lambda: h.reports.acked("taken") == [txid], what="taken after redrive")
    kinds = [c.kind for c in h.reports.calls if c.transaction_id == txid and c.code.name == "OK"]
    assert kinds == ["expired", "redriven", "taken"]
    redriven_at = next(c.at for c in h.reports.calls if c.kind == "redriven")
    # The router heard of the redrive before the insurer got the claim again.
    assert all(r.at > redriven_at for r in endpoint.received)
    assert endpoint.taken_ids() == [txid]
    row = await h.taken_row(txid)
    assert (row["state"], row["attempts"], row["last_error"]) == ("taken", 1, None)
    assert await deliveries.redrive([txid]) == []  # taken: nothing to redrive


async def test_deliveries_list_and_redrive_refuse_bad_input(h: Harness) -> None:
    await h.start_adapter()
    deliveries = h.app.deliveries
    assert deliveries is not None
    cases = [
        (deliveries.list_deliveries("aia", "", 10), "INSURER_CODE_INVALID"),
        (deliveries.list_deliveries("", "lost", 10), "STATE_INVALID"),
        (deliveries.list_deliveries("", "", -1), "LIMIT_INVALID"),
        (deliveries.list_deliveries("", "", 1001), "LIMIT_INVALID"),
        (deliveries.redrive([]), "TRANSACTION_ID_INVALID"),
        (deliveries.redrive(["not an id!"]), "TRANSACTION_ID_INVALID"),
        (deliveries.redrive([f"txn_{i:028x}" for i in range(1001)]), "TOO_MANY_TRANSACTION_IDS"),
    ]
    for call, reason in cases:
        with pytest.raises(InvalidArgument) as err:
            await call
        assert err.value.reason == reason


async def test_list_shows_waiting_deliveries_with_their_last_error(h: Harness) -> None:
    await h.grpc_endpoint("LISTINS", start=False)
    stub = await h.start_adapter(delivery=replace(FAST, max_inflight=1, probe_s=60))
    ids = await h.deliver(stub, "LISTINS", 3)
    deliveries = h.app.deliveries
    assert deliveries is not None

    async def all_tried() -> bool:
        # Tried to the end: attempts counts an attempt when it starts, last_error when it failed.
        listed = await deliveries.list_deliveries("LISTINS", "", 0)
        return len(listed) == 3 and all(d.attempts >= 1 and d.last_error for d in listed)

    await wait_for(all_tried, what="each tried")
    listed = await deliveries.list_deliveries("", "waiting", 2)
    assert [d.transaction_id for d in listed] == ids[:2]  # oldest first, limited
    assert all(d.last_error == "GRPC_UNAVAILABLE" and d.next_attempt_at is not None for d in listed)


async def test_reports_are_retried_until_the_router_acknowledges(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("REPINS")
    h.reports.fail_next = 3
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, "REPINS")
    await wait_for(lambda: h.reports.acked("taken") == [txid], what="acknowledged")
    assert [c.code.name for c in h.reports.calls] == ["UNAVAILABLE"] * 3 + ["OK"]
    assert len(endpoint.received) == 1  # the push was not repeated for the report

    await _report_recorded(h, txid)


async def test_pending_reports_survive_a_restart(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("DURINS")
    h.reports.fail_next = 10**6  # the router is down
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, "DURINS")
    await wait_for(lambda: len(h.reports.calls) >= 2, what="report attempts")
    await h.stop_adapter()
    assert (await h.row(txid))["report_state"] == "pending"

    h.reports.fail_next = 0
    await h.start_adapter()
    await wait_for(lambda: h.reports.acked("taken") == [txid], what="acknowledged after restart")
    assert len(endpoint.received) == 1


async def test_operators_list_and_redrive_through_the_admin_service(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("ADMINS", start=False)
    stub = await h.start_adapter(delivery=replace(FAST, expiry_s=1.0))
    [txid] = await h.deliver(stub, "ADMINS")
    await wait_for(lambda: h.reports.acked("expired") == [txid], what="expired")
    await _report_recorded(h, txid)
    await h.stop_adapter()
    await h.start_adapter()  # redriven deliveries get a new expiry: a long one now
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{h.app.port}")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    auth = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.ListDeliveries(admin_pb2.ListDeliveriesRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        listed = await admin.ListDeliveries(
            admin_pb2.ListDeliveriesRequest(insurer_code="ADMINS", state="failed"), metadata=auth, timeout=5
        )
        assert [(d.transaction_id, d.state, d.last_error) for d in listed.deliveries] == [
            (txid, "failed", "GRPC_UNAVAILABLE")
        ]
        await endpoint.start(endpoint.port)
        redriven = await admin.RedriveDeliveries(
            admin_pb2.RedriveDeliveriesRequest(transaction_ids=[txid]), metadata=auth, timeout=5
        )
        assert list(redriven.redriven) == [txid]
        await wait_for(lambda: h.reports.acked("taken") == [txid], what="taken after redrive")
    finally:
        await channel.close()
