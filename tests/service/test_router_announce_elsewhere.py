"""A claim's change is announced (NOTIFY) only where a waiter on another replica
may need it: each announcement costs PostgreSQL a commit in every listening
backend. The replica that writes a change tells its own waiters in process.
Two router stores with their own ChangeHub stand for two replicas; a plain
LISTEN connection hears what is announced. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

from iclaim_hub.common.db import create_pool
from services.claim_router.domain import State
from services.claim_router.model import ClaimRecord, Event
from services.claim_router.store import NOTIFY_CHANNEL, PULL_NOTIFY_CHANNEL, PgClaimStore
from services.claim_router.usecases import ClaimRouter
from services.claim_router.watch import ChangeHub
from tests.support.router_records import claim_record


@contextlib.asynccontextmanager
async def _replica(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[tuple[PgClaimStore, ChangeHub]]:
    hub = ChangeHub(database_url)
    await hub.start()
    try:
        yield PgClaimStore(pool, waiters=hub), hub
    finally:
        await hub.close()


@pytest.fixture
async def replicas(database_url: str) -> AsyncIterator[tuple[Any, Any, asyncpg.Pool]]:
    pool = await create_pool(database_url, max_size=4)
    await PgClaimStore(pool).migrate()
    async with _replica(database_url, pool) as a, _replica(database_url, pool) as b:
        yield a, b, pool
    await pool.close()


@contextlib.asynccontextmanager
async def _announcements(database_url: str, channel: str = NOTIFY_CHANNEL) -> AsyncIterator[list[str]]:
    """What is announced on `channel` (claim states by default) while the block runs."""
    heard: list[str] = []
    conn = await asyncpg.connect(database_url)
    try:
        await conn.add_listener(channel, lambda _c, _p, _ch, payload: heard.append(payload))
        yield heard
    finally:
        await conn.close()


async def _settle() -> None:
    """Long enough for an announcement made to reach a listener."""
    await asyncio.sleep(0.3)


def _to(state: State) -> Any:
    def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
        return cur.with_changes(state=state), []

    return mutate


async def test_a_decision_written_where_its_submission_waits_is_told_in_process_only(
    replicas: tuple[Any, Any, asyncpg.Pool], database_url: str
) -> None:
    (store_a, hub_a), _, _ = replicas
    claim = claim_record("HERE1")
    async with _announcements(database_url) as heard:
        with hub_a.claim_changes(claim.transaction_id) as changes:
            await store_a.insert(claim, [], waits=True)
            await store_a.transition(claim.transaction_id, _to(State.DELIVERED))
            await store_a.transition(claim.transaction_id, _to(State.APPROVED))
            assert changes.record is not None and changes.record.state == State.APPROVED
        await _settle()
    assert heard == []


async def test_a_decision_written_on_another_replica_is_announced_to_the_waiting_one(
    replicas: tuple[Any, Any, asyncpg.Pool], database_url: str
) -> None:
    (store_a, hub_a), (store_b, _), _ = replicas
    claim = claim_record("THERE1")
    tid = claim.transaction_id
    async with _announcements(database_url) as heard:
        with hub_a.claim_changes(tid) as changes:
            await store_a.insert(claim, [], waits=True)
            # Not a decision: the submission's wait does not need it.
            await store_b.transition(tid, _to(State.DELIVERED))
            await store_b.transition(tid, _to(State.APPROVED))
            await asyncio.wait_for(changes.wait(), 5)
            assert changes.state == State.APPROVED and changes.record is None
        await _settle()
    assert heard == [f"{tid} {int(State.APPROVED)}"]


async def test_a_claim_no_submission_waits_for_is_announced_only_while_waited_for_elsewhere(
    replicas: tuple[Any, Any, asyncpg.Pool], database_url: str
) -> None:
    (store_a, _), (store_b, _), _ = replicas
    claim = claim_record("WATCHED1")
    tid = claim.transaction_id
    await store_a.insert(claim, [], waits=False)
    async with _announcements(database_url) as heard:
        await store_b.transition(tid, _to(State.DELIVERED))  # no one waits
        mine = await store_b.note_interest(tid)  # B's own wait: B tells it in process
        await store_b.transition(tid, _to(State.PENDING_REVIEW))
        interest = await store_a.note_interest(tid)  # a WatchClaim on A
        assert mine is not None and interest is not None
        await store_b.transition(tid, _to(State.APPROVED))
        await store_a.drop_interest(interest)
        await store_b.transition(tid, _to(State.PAID))
        await _settle()
    assert heard == [f"{tid} {int(State.APPROVED)}"]


async def test_a_pull_lease_tells_a_watch_here_and_announces_only_for_one_elsewhere(
    replicas: tuple[Any, Any, asyncpg.Pool], database_url: str
) -> None:
    (store_a, hub_a), _, _ = replicas
    here, elsewhere = claim_record("PULLHERE", "pull"), claim_record("PULLTHERE", "pull")
    for claim in (here, elsewhere):
        await store_a.insert(claim, [], waits=False)
    async with _announcements(database_url) as heard:
        watched_there = await PgClaimStore(store_a._pool, waiters=ChangeHub(database_url)).note_interest(
            elsewhere.transaction_id
        )
        assert watched_there is not None
        with hub_a.claim_changes(here.transaction_id) as changes:
            leased = await store_a.lease_pull("AIA", 10, 60.0, lambda rec: [])
            assert {r.transaction_id for r in leased} == {here.transaction_id, elsewhere.transaction_id}
            assert changes.is_set() and changes.state == State.DELIVERED
        await _settle()
    assert heard == [f"{elsewhere.transaction_id} {int(State.DELIVERED)}"]


async def test_a_claim_of_an_earlier_release_and_a_store_without_replica_announce_every_change(
    replicas: tuple[Any, Any, asyncpg.Pool], database_url: str
) -> None:
    (store_a, _), _, pool = replicas
    old, plain = claim_record("OLDREL1"), claim_record("PLAIN1")
    await store_a.insert(old, [], waits=True)
    await pool.execute("UPDATE router.claims SET waiter = NULL WHERE transaction_id = $1", old.transaction_id)
    await PgClaimStore(pool).insert(plain, [])
    async with _announcements(database_url) as heard:
        await store_a.transition(old.transaction_id, _to(State.DELIVERED))
        await PgClaimStore(pool).transition(plain.transaction_id, _to(State.DELIVERED))
        await _settle()
    assert heard == [f"{c.transaction_id} {int(State.DELIVERED)}" for c in (old, plain)]


async def test_a_watch_on_one_replica_sees_each_change_written_on_another(
    replicas: tuple[Any, Any, asyncpg.Pool],
) -> None:
    (store_a, hub_a), (store_b, _), pool = replicas
    router_a = ClaimRouter(store_a, directory=None, push=None, changes=hub_a)  # type: ignore[arg-type]
    claim = claim_record("BEEF01")  # its id must be well formed: the watch checks it
    await store_a.insert(claim, [], waits=False)
    seen: list[State] = []
    watch = router_a.watch(claim.hospital_code, claim.transaction_id)
    seen.append((await anext(watch)).state)
    assert await pool.fetchval("SELECT count(*) FROM router.claim_interest") == 1

    async def next_state() -> State:
        return (await asyncio.wait_for(anext(watch), 5)).state

    await store_b.transition(claim.transaction_id, _to(State.DELIVERED))
    seen.append(await next_state())
    await store_b.transition(claim.transaction_id, _to(State.APPROVED))
    seen.append(await next_state())
    with pytest.raises(StopAsyncIteration):
        await anext(watch)
    assert seen == [State.RECEIVED, State.DELIVERED, State.APPROVED]
    for _ in range(50):  # the interest row goes once the watch ends
        if await pool.fetchval("SELECT count(*) FROM router.claim_interest") == 0:
            break
        await asyncio.sleep(0.05)
    assert await pool.fetchval("SELECT count(*) FROM router.claim_interest") == 0


async def test_interest_rows_left_by_a_dead_replica_are_forgotten(
    replicas: tuple[Any, Any, asyncpg.Pool],
) -> None:
    (store_a, _), _, pool = replicas
    old = await store_a.note_interest("txn_" + "0" * 28)
    fresh = await store_a.note_interest("txn_" + "1" * 28)
    await pool.execute(
        "UPDATE router.claim_interest SET since = now() - interval '2 days' WHERE id = $1", old
    )
    assert await store_a.forget_old_interest(24 * 3600.0) == 1
    assert [r["id"] for r in await pool.fetch("SELECT id FROM router.claim_interest")] == [fresh]


async def test_a_pull_claim_is_announced_only_if_another_replica_polls_for_its_insurer(
    replicas: tuple[Any, Any, asyncpg.Pool], database_url: str
) -> None:
    (store_a, hub_a), (store_b, _), pool = replicas
    async with _announcements(database_url, PULL_NOTIFY_CHANNEL) as heard:
        with hub_a.pull_ready("AIA") as ready:
            await store_a.insert(claim_record("PULLA1", "pull"), [])  # no poller anywhere else
            assert ready.is_set() and hub_a.pull_heard("AIA") == 1  # told in process
        assert await store_a.note_pull_poller("AIA") is True  # A's own note: no reason to announce
        assert await store_a.note_pull_poller("AIA") is False  # renewed, not new
        await store_a.insert(claim_record("PULLA2", "pull"), [])
        assert await store_b.note_pull_poller("AIA") is True  # B polls for AIA
        await store_a.insert(claim_record("PULLA3", "pull"), [])
        await store_a.insert(claim_record("PULLA4", "pull").with_changes(insurer_code="MTL"), [])
        await pool.execute("UPDATE router.pull_pollers SET seen_at = now() - interval '91 s'")
        await store_a.insert(claim_record("PULLA5", "pull"), [])  # B's note too old
        assert await store_b.note_pull_poller("AIA") is True  # new again
        await _settle()
    assert heard == ["AIA"]


async def test_a_newly_noted_poll_looks_again_soon_for_a_claim_not_announced(
    replicas: tuple[Any, Any, asyncpg.Pool],
) -> None:
    """A claim stored elsewhere by a statement that began before this replica's
    note committed is not announced here: the poll's first wait is short."""
    (store_a, hub_a), _, pool = replicas
    router = ClaimRouter(store_a, directory=None, push=None, changes=hub_a)  # type: ignore[arg-type]
    claim = claim_record("PULLRACE", "pull")

    async def store_unannounced() -> None:
        await asyncio.sleep(0.2)  # after the poll's first lease found nothing
        await pool.execute(
            "INSERT INTO router.claims (transaction_id, hospital_code, insurer_code, claim_ref, state,"
            " billed_amount_satang, approved_amount_satang, envelope, envelope_sha256,"
            " decision_envelope, status_reason, delivery_mode, submitted_at, updated_at)"
            " VALUES ($1, '10670', 'AIA', $2, 1, 100, 0, 'e', $3, '', '', 'pull', now(), now())",
            claim.transaction_id,
            claim.claim_ref,
            "0" * 64,
        )

    storing = asyncio.create_task(store_unannounced())
    async with asyncio.timeout(5):  # at the first wait's end (1 s), not the poll's (20 s)
        got = await router.pull("AIA", 10, (20, 0))
    await storing
    assert [c.transaction_id for c in got] == [claim.transaction_id]
