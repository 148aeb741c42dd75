"""Crash safety (issue 9: "a crash anywhere means it is sent again"): a row
leased by a worker that died is pushed again once its lease ends, and an
adapter process SIGKILLed in the middle of a push loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iclaim.crypto.signing import b64url
from tests.support.delivery_endpoints import Harness, delivery_harness, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def h(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with delivery_harness(database_url, tmp_path) as harness:
        yield harness


async def _stored_while_closed(h: Harness, code: str) -> str:
    """A delivery stored by an adapter while its insurer is closed (so nothing is pushed)."""
    await h.registry.set_endpoint(code, available=False)
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, code)
    await h.stop_adapter()
    await h.registry.set_endpoint(code, available=True)
    return txid


async def test_a_lease_held_by_a_dead_worker_is_retaken_when_it_ends(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("LEASEINS")
    txid = await _stored_while_closed(h, "LEASEINS")
    # A worker leased it for a push and died: its lease runs one more second.
    lease_until = await h.pool.fetchval(
        "UPDATE adapter.deliveries SET lease_owner = 'adapter-dead', attempts = 1,"
        " lease_until = now() + interval '1 second' WHERE transaction_id = $1 RETURNING lease_until",
        txid,
    )
    await h.start_adapter()
    await wait_for(lambda: h.reports.acked("taken") == [txid], what="taken")

    async def reported() -> bool:
        return (await h.row(txid))["report_state"] == "done"

    await wait_for(reported, what="report done")
    row = await h.row(txid)
    assert row["taken_at"] >= lease_until  # not while the dead worker's lease held
    assert (row["attempts"], row["lease_owner"]) == (2, None)
    assert endpoint.taken_ids() == [txid]


async def test_an_adapter_killed_mid_push_loses_nothing(h: Harness, tmp_path: Path) -> None:
    endpoint = await h.grpc_endpoint("KILLINS")
    txid = await _stored_while_closed(h, "KILLINS")
    endpoint.hold = {txid}  # takes the first push in and never answers it
    env = {
        **os.environ,
        "ICLAIM_DATABASE_URL": h.database_url,
        "ICLAIM_MASTER_KEY": b64url(h.master_key),
        "ICLAIM_ROUTER_TARGET": f"127.0.0.1:{h.reports_port}",
        "ICLAIM_ADAPTER_ADDR": "127.0.0.1:0",
        "ICLAIM_ADAPTER_METRICS_PORT": "-1",
        "ICLAIM_DELIVERY_TIMEOUT_S": "3",
        "ICLAIM_DELIVERY_LEASE_S": "9.5",  # > timeout + 1 s + the 5 s report deadline
        "ICLAIM_DELIVERY_POLL_S": "0.05",
        "ICLAIM_ADMIN_TOKEN": "t" * 40,
    }
    log = (tmp_path / "adapter.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.insurer_adapter", cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        await wait_for(
            lambda: len(endpoint.received) == 1 or process.returncode is not None,
            timeout=60,
            what="the push in flight",
        )
        assert process.returncode is None, (tmp_path / "adapter.log").read_text()[-2000:]
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
    assert h.reports.calls == []
    row = await h.row(txid)
    assert (row["state"], row["lease_owner"] is not None) == ("waiting", True)

    await h.start_adapter()  # another replica, or the restart
    await wait_for(lambda: h.reports.acked("taken") == [txid], what="taken after the kill")
    assert [r.answered for r in endpoint.received] == [False, True]  # resent once, as unanswered
