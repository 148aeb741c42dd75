"""A pull claim submitted while its insurer's PullClaims waits on the same
router is stored leased and handed to that poll in the submission's one
commit, instead of an insert and then the poll's lease. Real PostgreSQL,
the router over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from google.protobuf.duration_pb2 import Duration

from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2
from iclaim_hub.internal.v1 import audit_log_pb2
from services.claim_router.domain import State
from services.claim_router.events import state_change_events
from services.claim_router.store import PgClaimStore
from tests.support.router_env import H1, Env, running_env, submit
from tests.support.router_records import claim_record

S = pb.ClaimState
PULL = "TESTPULL"


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    async with running_env(database_url) as e:  # pull leases of 1 s
        yield e


async def _pull(env: Env, wait_s: float = 0) -> list[str]:
    answer = await env.insurer.PullClaims(
        insurer_service_pb2.PullClaimsRequest(max_claims=10, wait=Duration(seconds=int(wait_s))),
        metadata=env.md(PULL, "insurer"),
        timeout=20,
    )
    return [d.transaction_id for d in answer.deliveries if d.envelope]


async def _audited(env: Env, transaction_id: str) -> list[tuple[str, str]]:
    """(state, writer's transaction) of each audit event the outbox holds for the claim."""
    assert env.pool is not None
    rows = await env.pool.fetch(
        "SELECT payload, xmin::text AS tx FROM router.outbox WHERE topic = 'audit' ORDER BY id"
    )
    events = [(audit_log_pb2.AuditEvent.FromString(bytes(r["payload"])), r["tx"]) for r in rows]
    return [(e.outcome_reason, tx) for e, tx in events if e.transaction_id == transaction_id]


async def _poll_waiting(env: Env) -> asyncio.Task[list[str]]:
    poll = asyncio.create_task(_pull(env, wait_s=10))
    await _pull(env)  # notes this router as a poller; the waiting poll's first lease is done
    await asyncio.sleep(1.3)  # past the first short wait of a newly noted poll
    return poll


async def test_a_claim_submitted_while_a_poll_waits_is_handed_to_it_in_one_commit(env: Env) -> None:
    assert env.pool is not None
    poll = await _poll_waiting(env)
    claim = await submit(env, H1, PULL, "REF-HAND-1", 4_200)
    assert await asyncio.wait_for(poll, 5) == [claim.transaction_id]
    assert claim.state == S.CLAIM_STATE_DELIVERED  # the submission's answer: as stored
    row = await env.pool.fetchrow(
        "SELECT state, delivered_at IS NOT NULL AS delivered, taken_at IS NOT NULL AS taken,"
        " lease_until > now() AS leased, xmin::text AS tx FROM router.claims WHERE transaction_id = $1",
        claim.transaction_id,
    )
    assert row is not None and (row["state"], row["delivered"], row["taken"], row["leased"]) == (
        State.DELIVERED,
        True,
        True,
        True,
    )
    # Both state changes, once each, written by the claim's own insert: no lease after it.
    assert await _audited(env, claim.transaction_id) == [
        ("CLAIM_STATE_RECEIVED", row["tx"]),
        ("CLAIM_STATE_DELIVERED", row["tx"]),
    ]
    # Leased as a poll's lease: not offered again while it runs, offered after it.
    assert await _pull(env) == []
    await asyncio.sleep(1.2)
    assert await _pull(env) == [claim.transaction_id]
    assert [s for s, _ in await _audited(env, claim.transaction_id)] == [
        "CLAIM_STATE_RECEIVED",
        "CLAIM_STATE_DELIVERED",
    ]


async def test_with_no_poll_waiting_the_claim_is_stored_offered(env: Env) -> None:
    assert env.pool is not None
    claim = await submit(env, H1, PULL, "REF-HAND-2")
    assert claim.state == S.CLAIM_STATE_RECEIVED
    assert await _pull(env) == [claim.transaction_id]
    audited = await _audited(env, claim.transaction_id)
    assert [s for s, _ in audited] == ["CLAIM_STATE_RECEIVED", "CLAIM_STATE_DELIVERED"]
    assert audited[0][1] != audited[1][1]  # the lease, a commit of its own


async def test_a_resubmission_hands_nothing_and_the_poll_waits_on(database_url: str) -> None:
    async with running_env(database_url, pull_lease_s=3.0) as env:
        await _resubmission_hands_nothing(env)


async def _resubmission_hands_nothing(env: Env) -> None:
    envelope = env.envelope(H1, PULL, "REF-HAND-3", 10_000)
    first = await submit(env, H1, PULL, "REF-HAND-3", envelope=envelope)
    assert await _pull(env) == [first.transaction_id]  # leased (3 s)
    poll = await _poll_waiting(env)
    again = await submit(env, H1, PULL, "REF-HAND-3", envelope=envelope)
    assert again.transaction_id == first.transaction_id
    await asyncio.sleep(0.3)
    assert not poll.done()  # nothing handed: it still waits
    # The lease ends: the waiting poll is offered the claim then, delivered once.
    assert await asyncio.wait_for(poll, 5) == [first.transaction_id]
    assert [s for s, _ in await _audited(env, first.transaction_id)] == [
        "CLAIM_STATE_RECEIVED",
        "CLAIM_STATE_DELIVERED",
    ]


async def test_a_claim_stored_leased_for_a_poll_that_went_away_is_offered_when_the_lease_ends(
    env: Env,
) -> None:
    """What a poll cancelled between its reservation and the hand-off leaves:
    the claim stored leased and delivered. Lost to no one: its lease ends."""
    assert env.pool is not None
    store = PgClaimStore(env.pool)
    delivered = claim_record("FACADE01", "pull").with_changes(insurer_code=PULL, state=State.DELIVERED)
    events = state_change_events(delivered, actor=PULL, route="test")
    stored, created = await store.insert(delivered, events, pull_lease_s=1.0)
    assert created and stored.state == State.DELIVERED and stored.taken_at is not None
    assert await _pull(env) == []
    await asyncio.sleep(1.2)
    assert await _pull(env) == [stored.transaction_id]


async def test_only_a_delivered_pull_claim_is_stored_leased(env: Env) -> None:
    assert env.pool is not None
    store = PgClaimStore(env.pool)
    for rec in (
        claim_record("FACADE02", "pull"),  # RECEIVED
        claim_record("FACADE03", "grpc").with_changes(state=State.DELIVERED),
    ):
        with pytest.raises(ValueError):
            await store.insert(rec, [], pull_lease_s=1.0)
