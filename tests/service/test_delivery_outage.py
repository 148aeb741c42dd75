"""Isolation and outages (docs/protocol.md §10.4, §10.5): an endpoint that is
down, one that accepts TCP and never answers, and two replicas sharing the
work. Real TLS endpoints written in the test, real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.support.delivery_endpoints import FAST, Harness, SilentServer, delivery_harness, wait_for


@pytest.fixture
async def h(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with delivery_harness(database_url, tmp_path) as harness:
        yield harness


async def _attempts(h: Harness, txids: list[str]) -> int:
    return int(
        await h.pool.fetchval(
            "SELECT coalesce(sum(attempts), 0) FROM adapter.deliveries"
            " WHERE transaction_id = ANY($1::text[])",
            txids,
        )
    )


def _gauge(name: str, insurer: str) -> float:
    return REGISTRY.get_sample_value(name, {"insurer": insurer}) or 0.0


async def test_health_degrades_then_goes_down_after_five_consecutive_failures(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("FIVEINS", start=False)  # registered, nobody listens
    stub = await h.start_adapter(delivery=replace(FAST, max_inflight=1, probe_s=60.0))
    [txid] = await h.deliver(stub, "FIVEINS")
    seen: list[tuple[str, int]] = []

    async def down() -> bool:
        row = await h.registry.health("FIVEINS")
        if row is not None and (not seen or seen[-1] != (row.health, row.consecutive_failures)):
            seen.append((row.health, row.consecutive_failures))
        return row is not None and row.health == "down"

    await wait_for(down, what="health down")
    assert seen[-1] == ("down", 5)
    assert all(health == "degraded" and 1 <= n <= 4 for health, n in seen[:-1])
    # DOWN: no push until the probe (60 s here), so the attempts stop at five.
    await asyncio.sleep(0.5)
    assert (await h.row(txid))["attempts"] == 5
    assert REGISTRY.get_sample_value("iclaim_delivery_circuit_state", {"insurer": "FIVEINS"}) == 3
    assert endpoint.received == []


async def test_endpoint_down_claims_wait_then_every_claim_is_taken_once(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("DOWNINS", start=False)
    probe_s = 0.5
    stub = await h.start_adapter(delivery=replace(FAST, probe_s=probe_s, timeout_s=1.0))
    txids = await h.deliver(stub, "DOWNINS", 20)

    async def down() -> bool:
        row = await h.registry.health("DOWNINS")
        return row is not None and row.health == "down" and row.consecutive_failures >= 5

    await wait_for(down, what="health down")
    assert set((await h.states(txids)).values()) == {"waiting"}
    assert h.reports.calls == []
    await wait_for(lambda: _gauge("iclaim_delivery_backlog", "DOWNINS") == 20, what="backlog gauge")
    await wait_for(lambda: _gauge("iclaim_delivery_backlog_oldest_seconds", "DOWNINS") > 0, what="age")
    assert _gauge("iclaim_delivery_circuit_state", "DOWNINS") == 3
    # While DOWN only one probe per probe_s goes out (without the circuit, 20
    # claims backing off at most 0.2 s would make ~200 attempts in these 2 s).
    before = await _attempts(h, txids)
    await asyncio.sleep(2.0)
    assert await _attempts(h, txids) - before <= 2.0 / probe_s + 2

    # The endpoint comes back; it records one push and never answers it.
    held = txids[7]
    endpoint.hold = {held}
    before = await _attempts(h, txids)
    await endpoint.start(endpoint.port)
    await wait_for(lambda: sorted(h.reports.acked("taken")) == sorted(txids), what="all taken")

    async def all_taken() -> bool:  # the router is told first, then the row is marked
        return set((await h.states(txids)).values()) == {"taken"}

    await wait_for(all_taken, what="rows taken")
    # The first probe after the endpoint is back reaches it (at most one probe was
    # already failing): pushes do not sit out a stale connection's reconnect backoff.
    retried = await _attempts(h, txids) - before - len(txids)
    assert retried <= 1 + 1  # the held push's resend, and a probe in flight at the restart

    async def healthy() -> bool:
        row = await h.registry.health("DOWNINS")
        return row is not None and (row.health, row.consecutive_failures) == ("healthy", 0)

    await wait_for(healthy, what="health back")
    await wait_for(lambda: _gauge("iclaim_delivery_backlog", "DOWNINS") == 0, what="backlog drained")
    assert _gauge("iclaim_delivery_backlog_oldest_seconds", "DOWNINS") == 0
    assert _gauge("iclaim_delivery_circuit_state", "DOWNINS") == 1
    received = Counter(r.transaction_id for r in endpoint.received)
    assert all(r.verified for r in endpoint.received)
    assert set(received) == set(txids)
    unanswered = {r.transaction_id for r in endpoint.received if not r.answered}
    # Duplicates only where the endpoint never sent its answer.
    assert {t for t, n in received.items() if n > 1} == unanswered == {held}
    assert received[held] == 2
    assert Counter(h.reports.acked("taken")) == Counter(txids)  # each reported once


async def test_an_endpoint_that_never_answers_does_not_hold_up_other_insurers(h: Harness) -> None:
    silent = SilentServer()
    await silent.start()
    h.endpoints.append(silent)
    await h.add_insurer("SILENTG", "grpc", f"127.0.0.1:{silent.port}")
    await h.add_insurer("SILENTW", "webhook", f"https://127.0.0.1:{silent.port}/claims")
    others = [await h.grpc_endpoint(f"FASTG{i}") for i in range(5)]
    others += [await h.webhook_endpoint(f"FASTW{i}") for i in range(5)]  # type: ignore[misc]
    # Attempts to the silent insurers would hang 30 s each: anything queued
    # behind them would not finish before this test gives up waiting.
    cap = 4
    stub = await h.start_adapter(delivery=replace(FAST, max_inflight=cap, timeout_s=30.0, lease_s=60.0))
    stuck = await h.deliver(stub, "SILENTG", 2 * cap) + await h.deliver(stub, "SILENTW", 2 * cap)
    await wait_for(lambda: silent.connections >= 2, what="both silent lanes connecting")

    fast = [txid for i in range(5) for txid in await h.deliver(stub, f"FASTG{i}", 3)]
    fast += [txid for i in range(5) for txid in await h.deliver(stub, f"FASTW{i}", 3)]
    await wait_for(lambda: set(fast) <= set(h.reports.acked("taken")), timeout=20, what="others taken")
    for endpoint in others:
        assert len(endpoint.taken_ids()) == 3

    # Meanwhile the silent lanes are still in their first attempts, capped at `cap` each.
    rows = await h.pool.fetch(
        "SELECT insurer_code, state, attempts, last_error FROM adapter.deliveries"
        " WHERE transaction_id = ANY($1::text[])",
        stuck,
    )
    assert all(r["state"] == "waiting" and r["last_error"] is None for r in rows)
    per_insurer = Counter(r["insurer_code"] for r in rows if r["attempts"] == 1)
    assert per_insurer == {"SILENTG": cap, "SILENTW": cap}
    assert not set(stuck) & set(h.reports.acked())


async def test_two_replicas_push_each_claim_once(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("TWOREP")
    stubs = [await h.start_adapter(), await h.start_adapter()]
    txids = []
    for i in range(30):
        request = h.request("TWOREP")
        # Each claim reaches both replicas (a router retry landing elsewhere).
        await asyncio.gather(*(s.DeliverClaim(request, timeout=5) for s in (stubs[i % 2], stubs[1 - i % 2])))
        txids.append(request.transaction_id)
    await wait_for(lambda: sorted(set(h.reports.acked("taken"))) == sorted(txids), what="all taken")
    await asyncio.sleep(0.3)
    assert Counter(endpoint.taken_ids()) == Counter(txids)
    assert Counter(h.reports.acked("taken")) == Counter(txids)
