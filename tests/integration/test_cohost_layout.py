"""The cohost layout (ICLAIM_HUB_LAYOUT=cohost): the router and the insurer
adapter in one process, calling each other in-process. Claims of every delivery
mode are decided through it, operators reach the AdminService, and killing the
one process outright loses and duplicates no acknowledged claim."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import uuid
from collections.abc import AsyncIterator

import pytest

from bench.load import claims_load
from iclaim.client.hospital import HospitalClient
from iclaim.v1 import claim_service_pb2 as pb
from iclaim_ops.devstack.stack import ROUTER_ADAPTER
from tests.support.audit_trail import entries_once_decided, router_changes
from tests.support.claims import states_once_approved, submit
from tests.support.stack import RunningStack, run_admin, running_stack_in

pytestmark = pytest.mark.integration
S = pb.ClaimState


@pytest.fixture(scope="module")
async def cohost_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    redis_db = int(os.environ.get("ICLAIM_TEST_COHOST_REDIS_DB", "8"))
    async with running_stack_in(tmp_path_factory.mktemp("cohost"), redis_db=redis_db, layout="cohost") as s:
        yield s


async def test_one_process_serves_router_and_adapter(cohost_stack: RunningStack) -> None:
    names = set(cohost_stack.stack.pids())
    assert ROUTER_ADAPTER.name in names
    assert not names & {"claim_router", "insurer_adapter"}


async def test_claims_of_every_delivery_mode_are_decided(cohost_stack: RunningStack) -> None:
    result = await claims_load(cohost_stack.credentials_path, 40, 4, uuid.uuid4().hex[:8])
    assert result["claims"] == 40 and result["undecided"] == 0
    # The sandbox has gRPC push, webhook and pull insurers; the load spreads over all.
    assert set(result["by_mode"]) == {"grpc", "webhook", "pull"}


async def test_operators_reach_the_admin_service(cohost_stack: RunningStack) -> None:
    # The adapter's AdminService, on its own port, with the token only this process holds.
    listed = await run_admin(cohost_stack, "deliveries", "list", "--state", "failed")
    assert listed == {"deliveries": []}


async def test_killing_the_process_loses_and_duplicates_no_claim(cohost_stack: RunningStack) -> None:
    stack = cohost_stack.stack
    acked: list[pb.Claim] = []
    async with HospitalClient(cohost_stack.creds()) as client:

        async def one(n: int) -> None:
            r = f"COHOST-{secrets.token_hex(4)}-{n}"
            acked.append(await submit(client, "AIA", "POL-COHOST", 3_000 + n, wait_s=0, claim_ref=r))

        await asyncio.gather(*(one(n) for n in range(12)))
        # Killed at once, some claims handed off and pushed, others not yet.
        await stack.kill(ROUTER_ADAPTER.name, signal.SIGKILL)
        await stack.restart(ROUTER_ADAPTER.name)
        ids = [c.transaction_id for c in acked]
        states = await states_once_approved(client, ids)
        assert all(s == S.CLAIM_STATE_APPROVED for s in states), states

    # Each claim's state changes in the audit log exactly once: decided once,
    # whether its decision came before the kill (a push answer) or after it.
    for t in ids:
        changes = router_changes(await entries_once_decided(cohost_stack, t))
        assert changes.count("CLAIM_STATE_RECEIVED") == 1, (t, changes)
        assert changes.count("CLAIM_STATE_APPROVED") == 1, (t, changes)
        assert changes.count("CLAIM_STATE_DELIVERED") <= 1, (t, changes)
