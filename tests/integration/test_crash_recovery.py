"""A claim acknowledged to a hospital is delivered exactly once, whatever dies."""

from __future__ import annotations

import asyncio
import secrets
import signal

import pytest

from iclaim.client.hospital import HospitalClient
from iclaim_ops.devstack.stack import SERVICES
from iclaim.v1 import claim_service_pb2 as pb
from tests.support.stack import RunningStack
from tests.support.claims import fhir, states_once_approved, submit

pytestmark = pytest.mark.integration
S = pb.ClaimState
ADAPTER = next(s for s in SERVICES if s.name == "insurer_adapter")


async def test_router_sigkilled_before_delivery_delivers_each_claim_once(
    running_stack: RunningStack,
) -> None:
    stack = running_stack.stack
    # The adapter is down, so acknowledged claims cannot have been delivered yet.
    await stack.kill("insurer_adapter", signal.SIGKILL)
    acked: list[pb.Claim] = []
    async with HospitalClient(running_stack.creds()) as client:
        for n in range(8):
            r = f"CRASH-{secrets.token_hex(4)}-{n}"
            acked.append(await submit(client, "AIA", "POL-CRASH", 1_000 + n, wait_s=0, claim_ref=r))
        assert all(c.state == S.CLAIM_STATE_RECEIVED for c in acked)
        await stack.kill("claim_router", signal.SIGKILL)
        await stack.restart("insurer_adapter")
        await stack.restart("claim_router")

        ids = [c.transaction_id for c in acked]
        states = await states_once_approved(client, ids)
        assert all(s == S.CLAIM_STATE_APPROVED for s in states), states

    conn = await running_stack.db()
    try:
        rows = await conn.fetch(
            "SELECT transaction_id, count(*) AS n FROM adapter.deliveries"
            " WHERE transaction_id = ANY($1::text[]) GROUP BY transaction_id",
            ids,
        )
    finally:
        await conn.close()
    assert {r["transaction_id"]: r["n"] for r in rows} == {t: 1 for t in ids}


async def test_killing_router_and_audit_mid_run_loses_and_duplicates_no_audit_entry(
    running_stack: RunningStack,
) -> None:
    """Claims flow while the audit service and then the router (a producer) are
    SIGKILLed; every claim's state changes end up in the log exactly once."""
    from tests.support.audit_trail import entries_once_decided, router_changes

    stack = running_stack.stack
    tids: list[str] = []
    async with HospitalClient(running_stack.creds()) as client:

        async def one(n: int) -> None:
            r = f"AUDK-{secrets.token_hex(4)}-{n}"
            claim = await client.submit_claim(
                fhir(client.creds.code, "BLA", r, "POL-AK", 2_000 + n),
                insurer_code="BLA",
                claim_ref=r,
                amount_satang=2_000 + n,
            )
            tids.append(claim.transaction_id)

        await asyncio.gather(*(one(n) for n in range(5)))
        await stack.kill("audit_log", signal.SIGKILL)
        await asyncio.gather(*(one(n) for n in range(5, 10)))
        await stack.restart("audit_log")
        await stack.kill("claim_router", signal.SIGKILL)
        await stack.restart("claim_router")
        await asyncio.gather(*(one(n) for n in range(10, 15)))
        for t in tids:
            for _ in range(200):
                if (await client.get_claim(t)).state == S.CLAIM_STATE_APPROVED:
                    break
                await asyncio.sleep(0.05)

    for t in tids:
        entries = await entries_once_decided(running_stack, t)
        changes = router_changes(entries)
        assert changes.count("CLAIM_STATE_RECEIVED") == 1, (t, changes)
        assert changes.count("CLAIM_STATE_APPROVED") == 1, (t, changes)
        # DELIVERED is skipped when the decision outruns the delivery receipt.
        assert changes.count("CLAIM_STATE_DELIVERED") <= 1, (t, changes)
        ids = [e.event.event_id for e in entries]
        assert len(ids) == len(set(ids))


async def test_sdk_watch_rides_through_a_router_restart(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    async with HospitalClient(running_stack.creds()) as client:
        r = f"WATCH-{secrets.token_hex(4)}"
        claim = await client.submit_claim(
            fhir(client.creds.code, "AZAY", r, "REVIEW-W", 3_000),
            insurer_code="AZAY",
            claim_ref=r,
            amount_satang=3_000,
        )
        seen: list[int] = []
        restarted = False
        async for update in client.watch_claim(claim.transaction_id, timeout_s=60):
            seen.append(update.state)
            if not restarted:
                restarted = True
                await stack.kill("claim_router", signal.SIGKILL)
                await stack.restart("claim_router")
        assert seen[-1] == S.CLAIM_STATE_APPROVED
        assert len(seen) == len(set(seen))  # each state once, across the reconnect
