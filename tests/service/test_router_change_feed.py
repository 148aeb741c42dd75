"""A claim's change is announced with its new state (NOTIFY "<id> <state>"),
so SubmitClaim's wait reads nothing until the claim is settled; a change
announced the previous release's way (the bare id, on the old channel, still
sent and heard during a rolling upgrade) is read instead. Real PostgreSQL."""

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
from services.claim_router.store import LEGACY_NOTIFY_CHANNEL, NOTIFY_CHANNEL, PgClaimStore
from services.claim_router.usecases import ClaimRouter
from services.claim_router.watch import ChangeHub
from tests.support.router_records import claim_record


class CountingStore(PgClaimStore):
    def __init__(self, pool: asyncpg.Pool, hub: ChangeHub | None = None) -> None:
        super().__init__(pool, waiters=hub)
        self.reads: list[str] = []

    async def state_of(self, transaction_id: str) -> State | None:
        self.reads.append("state_of")
        return await super().state_of(transaction_id)

    async def get(self, transaction_id: str) -> ClaimRecord | None:
        self.reads.append("get")
        return await super().get(transaction_id)


@pytest.fixture
async def parts(database_url: str) -> AsyncIterator[tuple[CountingStore, ChangeHub, asyncpg.Pool]]:
    pool = await create_pool(database_url, max_size=4)
    store = CountingStore(pool)
    await store.migrate()
    hub = ChangeHub(database_url)
    await hub.start()
    yield store, hub, pool
    await hub.close()
    await pool.close()


def _to(state: State) -> Any:
    def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
        return cur.with_changes(state=state), []

    return mutate


@contextlib.asynccontextmanager
async def _claim_channels(database_url: str) -> AsyncIterator[list[tuple[str, str]]]:
    """What both claim channels announce while the block runs, as (channel, payload)."""
    heard: list[tuple[str, str]] = []
    conn = await asyncpg.connect(database_url)
    try:
        for channel in (NOTIFY_CHANNEL, LEGACY_NOTIFY_CHANNEL):
            await conn.add_listener(channel, lambda _c, _p, ch, payload: heard.append((ch, payload)))
        yield heard
    finally:
        await conn.close()


async def _once_heard(heard: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """`heard` once it holds `count` announcements (or after 5 s)."""
    for _ in range(100):
        if len(heard) >= count:
            break
        await asyncio.sleep(0.05)
    return heard


async def test_the_wait_reads_only_the_settled_claim(
    parts: tuple[CountingStore, ChangeHub, asyncpg.Pool],
) -> None:
    store, hub, pool = parts
    router = ClaimRouter(store, directory=None, push=None, changes=hub)  # type: ignore[arg-type]
    writer = PgClaimStore(pool)  # the insurer's side: its reads are not the wait's
    claim = claim_record("FEED1")
    with hub.claim_changes(claim.transaction_id) as changes:
        await store.insert(claim, [])

        async def insurer() -> None:
            await asyncio.sleep(0.2)
            await writer.transition(claim.transaction_id, _to(State.DELIVERED))
            await asyncio.sleep(0.2)
            await writer.transition(claim.transaction_id, _to(State.APPROVED))

        deciding = asyncio.create_task(insurer())
        store.reads.clear()
        settled = await router._wait_settled(claim.transaction_id, 10.0, changes, State.RECEIVED)
        await deciding
    assert settled is not None and settled.state == State.APPROVED
    # DELIVERED's and APPROVED's announcements carried their states.
    assert store.reads == ["get"]


async def test_a_decision_written_here_is_answered_without_a_read(
    parts: tuple[CountingStore, ChangeHub, asyncpg.Pool],
) -> None:
    _, hub, pool = parts
    store = CountingStore(pool, hub)  # this replica's store: its writes reach its waiters
    router = ClaimRouter(store, directory=None, push=None, changes=hub)  # type: ignore[arg-type]
    claim = claim_record("FEED4")
    with hub.claim_changes(claim.transaction_id) as changes:
        await store.insert(claim, [])

        async def insurer() -> None:
            await asyncio.sleep(0.2)
            await store.transition(claim.transaction_id, _to(State.APPROVED))

        deciding = asyncio.create_task(insurer())
        settled = await router._wait_settled(claim.transaction_id, 10.0, changes, State.RECEIVED)
        await deciding
    assert store.reads == ["get"]  # the insurer side's read before its write, none by the wait
    assert settled == await PgClaimStore(pool).get(claim.transaction_id)
    assert settled is not None and settled.envelope == "" and settled.envelope_bytes == 1


async def test_a_record_in_hand_is_dropped_when_another_change_is_announced(
    parts: tuple[CountingStore, ChangeHub, asyncpg.Pool],
) -> None:
    _, hub, pool = parts
    store = CountingStore(pool, hub)
    router = ClaimRouter(store, directory=None, push=None, changes=hub)  # type: ignore[arg-type]
    elsewhere = PgClaimStore(pool)  # another replica: heard only by notification
    claim = claim_record("FEED5")
    await store.insert(claim, [])
    with hub.claim_changes(claim.transaction_id) as changes:
        await store.transition(claim.transaction_id, _to(State.APPROVED))
        assert changes.record is not None and changes.record.state == State.APPROVED
        await elsewhere.transition(claim.transaction_id, _to(State.PAID))
        for _ in range(100):  # both announcements heard (APPROVED's keeps it, PAID's drops it)
            if changes.state == State.PAID:
                break
            await asyncio.sleep(0.05)
        assert changes.record is None
        store.reads.clear()
        settled = await router._wait_settled(claim.transaction_id, 10.0, changes, State.PAID)
    assert settled is not None and settled.state == State.PAID
    assert store.reads == ["get"]


async def test_an_announcement_that_does_not_say_costs_a_state_read_only(
    parts: tuple[CountingStore, ChangeHub, asyncpg.Pool],
) -> None:
    _, hub, pool = parts
    store = CountingStore(pool, hub)
    router = ClaimRouter(store, directory=None, push=None, changes=hub)  # type: ignore[arg-type]
    claim = claim_record("FEED6")
    await store.insert(claim, [])
    with hub.claim_changes(claim.transaction_id) as changes:
        await store.transition(claim.transaction_id, _to(State.DENIED))
        await pool.execute("SELECT pg_notify($1, $2)", LEGACY_NOTIFY_CHANNEL, claim.transaction_id)
        for _ in range(100):  # the write's own two announcements, then the bare one
            if changes.state is None:
                break
            await asyncio.sleep(0.05)
        assert changes.state is None and changes.record is not None
        store.reads.clear()
        settled = await router._wait_settled(claim.transaction_id, 10.0, changes, None)
    assert store.reads == ["state_of"]
    assert settled == await PgClaimStore(pool).get(claim.transaction_id)


async def test_a_change_announced_the_old_way_is_read(
    parts: tuple[CountingStore, ChangeHub, asyncpg.Pool],
) -> None:
    store, hub, pool = parts
    router = ClaimRouter(store, directory=None, push=None, changes=hub)  # type: ignore[arg-type]
    claim = claim_record("FEED2")
    await store.insert(claim, [])
    with hub.claim_changes(claim.transaction_id) as changes:

        async def old_router() -> None:
            await asyncio.sleep(0.2)
            await pool.execute(
                "UPDATE router.claims SET state = $2 WHERE transaction_id = $1",
                claim.transaction_id,
                int(State.DENIED),
            )
            await pool.execute("SELECT pg_notify($1, $2)", LEGACY_NOTIFY_CHANNEL, claim.transaction_id)

        deciding = asyncio.create_task(old_router())
        store.reads.clear()
        settled = await router._wait_settled(claim.transaction_id, 10.0, changes, State.RECEIVED)
        await deciding
    assert settled is not None and settled.state == State.DENIED
    assert store.reads == ["state_of", "get"]


async def test_writes_announce_on_both_channels(
    parts: tuple[CountingStore, ChangeHub, asyncpg.Pool], database_url: str
) -> None:
    store, _, _ = parts
    async with _claim_channels(database_url) as heard:
        claim = claim_record("FEED3")
        await store.insert(claim, [])
        await store.transition(claim.transaction_id, _to(State.PENDING_REVIEW))
        await store.transition_many([claim.transaction_id], _to(State.APPROVED))
        tid = claim.transaction_id
        # The insert announces nothing on these: no one waits for RECEIVED.
        expected = [
            (LEGACY_NOTIFY_CHANNEL, tid),
            (NOTIFY_CHANNEL, f"{tid} {int(State.PENDING_REVIEW)}"),
            (LEGACY_NOTIFY_CHANNEL, tid),
            (NOTIFY_CHANNEL, f"{tid} {int(State.APPROVED)}"),
        ]
        assert await _once_heard(heard, len(expected)) == expected


async def test_a_pull_lease_stores_and_announces_each_delivered_claim(
    parts: tuple[CountingStore, ChangeHub, asyncpg.Pool], database_url: str
) -> None:
    store, _, pool = parts
    async with _claim_channels(database_url) as heard:
        claims = [claim_record(f"PULLFEED{n}", "pull") for n in range(3)]
        for claim in claims:
            await store.insert(claim, [])
        leased = await store.lease_pull(
            "AIA", 10, 60.0, lambda rec: [("audit", f"{rec.claim_ref}-a".encode()), ("billing", b"b")]
        )
        assert [r.claim_ref for r in leased] == [c.claim_ref for c in claims]
        # Offered again after its lease, a claim already delivered emits nothing.
        await pool.execute("UPDATE router.claims SET lease_until = now() - interval '1 s'")
        assert len(await store.lease_pull("AIA", 10, 60.0, lambda rec: [("audit", b"again")])) == 3
        expected = [
            announced
            for rec in leased
            for announced in (
                (LEGACY_NOTIFY_CHANNEL, rec.transaction_id),
                (NOTIFY_CHANNEL, f"{rec.transaction_id} {int(State.DELIVERED)}"),
            )
        ]
        assert await _once_heard(heard, len(expected)) == expected
    outbox = await pool.fetch("SELECT topic, payload FROM router.outbox ORDER BY id")
    assert [(r["topic"], bytes(r["payload"])) for r in outbox] == [
        event for c in claims for event in (("audit", f"{c.claim_ref}-a".encode()), ("billing", b"b"))
    ]
