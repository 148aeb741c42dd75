"""A waiting PullClaims reads the database when a claim is announced or when
a leased claim's lease ends, not every second: an idle pull insurer's long
polls cost the hub nothing between those; nor does the poll that follows a
pulled claim, when nothing more was there. Real PostgreSQL and LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence

import asyncpg
import pytest

from iclaim_hub.common.db import create_pool
from services.claim_router.model import ClaimRecord, Event, Leased
from services.claim_router.store import PgClaimStore
from services.claim_router.usecases import ClaimRouter
from services.claim_router.watch import ChangeHub
from tests.support.router_records import claim_record

LEASE_S = 1.0


class CountingStore(PgClaimStore):
    def __init__(self, pool: asyncpg.Pool, hub: ChangeHub) -> None:
        super().__init__(pool, waiters=hub)
        self.leases = 0
        self.lease_end_reads = 0

    async def next_pull_offer_s(self, insurer_code: str) -> float | None:
        self.lease_end_reads += 1
        return await super().next_pull_offer_s(insurer_code)

    async def lease_pull(
        self,
        insurer_code: str,
        limit: int,
        lease_s: float,
        on_delivered: Callable[[ClaimRecord], Sequence[Event]],
    ) -> Leased:
        self.leases += 1
        return await super().lease_pull(insurer_code, limit, lease_s, on_delivered)


@pytest.fixture
async def parts(database_url: str) -> AsyncIterator[tuple[CountingStore, ClaimRouter, asyncpg.Pool]]:
    pool = await create_pool(database_url, max_size=4)
    hub = ChangeHub(database_url)
    store = CountingStore(pool, hub)
    await store.migrate()
    await hub.start()
    router = ClaimRouter(store, directory=None, push=None, changes=hub, pull_lease_s=LEASE_S)  # type: ignore[arg-type]
    yield store, router, pool
    await hub.close()
    await pool.close()


async def test_an_idle_pull_reads_once(
    long_leases: tuple[CountingStore, ClaimRouter, asyncpg.Pool],
) -> None:
    store, router, _ = long_leases
    # This replica's first poll for AIA notes it as a poller (and looks again
    # after a second: see test_router_announce_elsewhere); the steady state after.
    assert await router.pull("AIA", 10, (0, 0)) == []
    store.leases = store.lease_end_reads = 0
    assert await router.pull("AIA", 10, (3, 500_000_000)) == []
    # The read when the wait begins; nothing announced and no lease to end, so
    # none at its end (it read every second before: five; then two).
    assert (store.leases, store.lease_end_reads) == (1, 1)


async def test_a_lease_end_read_holds_for_a_lease_length(
    long_leases: tuple[CountingStore, ClaimRouter, asyncpg.Pool],
) -> None:
    """No lease taken after the read, by any replica, can end within a lease
    length of it: polls that wait over seconds read when leases end once."""
    store, router, _ = long_leases
    claim = claim_record("PULLWAIT4", mode="pull")
    await store.insert(claim, [])
    assert len(await router.pull("AIA", 10, (0, 0))) == 1
    for _ in range(5):
        assert await router.pull("AIA", 10, (0, 500_000_000)) == []
    assert store.lease_end_reads == 1  # once a second before: three


async def test_a_claim_whose_lease_ends_during_the_wait_is_offered_then(
    parts: tuple[CountingStore, ClaimRouter, asyncpg.Pool],
) -> None:
    store, router, _ = parts
    claim = claim_record("PULLWAIT1", mode="pull")
    await store.insert(claim, [])
    first = await router.pull("AIA", 10, (0, 0))
    assert [c.transaction_id for c in first] == [claim.transaction_id]
    store.leases = 0
    # Not decided: offered again once its lease ends, within this wait.
    again = await router.pull("AIA", 10, (5, 0))
    assert [c.transaction_id for c in again] == [claim.transaction_id]
    assert store.leases == 2  # the empty read, then the one at the lease's end


async def test_a_claim_stored_by_another_replica_wakes_the_wait(
    parts: tuple[CountingStore, ClaimRouter, asyncpg.Pool],
) -> None:
    store, router, pool = parts
    elsewhere = PgClaimStore(pool)  # another replica: heard only by notification
    claim = claim_record("PULLWAIT2", mode="pull")

    async def insert_later() -> None:
        await asyncio.sleep(0.3)
        await elsewhere.insert(claim, [])

    inserting = asyncio.create_task(insert_later())
    async with asyncio.timeout(5):  # woken by the announcement, not at the 10 s end
        got = await router.pull("AIA", 10, (10, 0))
    await inserting
    assert [c.transaction_id for c in got] == [claim.transaction_id]
    assert store.leases == 2


async def test_back_to_back_polls_read_when_leases_end_once_a_second(
    parts: tuple[CountingStore, ClaimRouter, asyncpg.Pool],
) -> None:
    """Under load each pulled claim is followed by a poll that finds nothing;
    when the next lease ends is read at most once a second, not by each."""
    store, router, _ = parts
    claim = claim_record("PULLWAIT3", mode="pull")
    await store.insert(claim, [])
    assert len(await router.pull("AIA", 10, (0, 0))) == 1
    for _ in range(4):
        assert await router.pull("AIA", 10, (0, 100_000_000)) == []
    # Its own lease is known without a read; at most one read in a second.
    assert store.lease_end_reads <= 1


@pytest.fixture
async def long_leases(
    parts: tuple[CountingStore, ClaimRouter, asyncpg.Pool],
) -> tuple[CountingStore, ClaimRouter, asyncpg.Pool]:
    """The router with production's lease length: a lease-end read stays good for a minute."""
    store, router, pool = parts
    return store, dataclasses.replace(router, pull_lease_s=60.0), pool


async def _heard(router: ClaimRouter, insurer_code: str, at_least: int) -> None:
    for _ in range(100):
        if router.changes.pull_heard(insurer_code) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("announcement not heard")


async def test_the_poll_after_a_pulled_claim_reads_nothing(
    long_leases: tuple[CountingStore, ClaimRouter, asyncpg.Pool],
) -> None:
    """Under load every pulled claim is followed by a poll; when the lease that
    took the claim found nothing more and nothing was announced since, that
    poll knows there is nothing without a read."""
    store, router, _ = long_leases
    assert await router.pull("AIA", 10, (0, 100_000_000)) == []  # a wait: the lease ends are read
    claim = claim_record("QUIET1", mode="pull")
    await store.insert(claim, [])
    await _heard(router, "AIA", 1)
    assert len(await router.pull("AIA", 10, (0, 0))) == 1
    store.leases = 0
    for _ in range(3):
        assert await router.pull("AIA", 10, (0, 100_000_000)) == []
    assert store.leases == 0
    # A claim announced since (here: stored by another replica) is read and offered.
    other = claim_record("QUIET2", mode="pull")
    await PgClaimStore(store._pool).insert(other, [])
    await _heard(router, "AIA", 2)
    assert [c.transaction_id for c in await router.pull("AIA", 10, (0, 0))] == [other.transaction_id]
    assert store.leases == 1


async def test_a_full_answer_is_not_taken_for_all_there_is(
    long_leases: tuple[CountingStore, ClaimRouter, asyncpg.Pool],
) -> None:
    store, router, _ = long_leases
    assert await router.pull("AIA", 10, (0, 100_000_000)) == []
    claims = [claim_record(f"QUIETFULL{n}", mode="pull") for n in range(3)]
    for claim in claims:
        await store.insert(claim, [])
    await _heard(router, "AIA", 3)
    assert len(await router.pull("AIA", 2, (0, 0))) == 2  # as many as asked for: maybe more
    assert [c.transaction_id for c in await router.pull("AIA", 2, (0, 0))] == [claims[2].transaction_id]


class AnnouncedDuringLease(CountingStore):
    """A claim is stored (and its announcement heard) while the lease that
    misses it runs: the lease's 'nothing more' must not be believed."""

    late: ClaimRecord | None = None

    async def lease_pull(
        self,
        insurer_code: str,
        limit: int,
        lease_s: float,
        on_delivered: Callable[[ClaimRecord], Sequence[Event]],
    ) -> Leased:
        leased = await super().lease_pull(insurer_code, limit, lease_s, on_delivered)
        if self.late is not None:
            await PgClaimStore(self._pool).insert(self.late, [])
            self.late = None
            await asyncio.sleep(0.3)  # its announcement heard before this lease returns
        return leased


async def test_a_claim_announced_while_a_lease_runs_is_offered_to_the_next_poll(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, max_size=4)
    hub = ChangeHub(database_url)
    store = AnnouncedDuringLease(pool, hub)
    await store.migrate()
    await hub.start()
    try:
        router = ClaimRouter(store, directory=None, push=None, changes=hub, pull_lease_s=60.0)  # type: ignore[arg-type]
        assert await router.pull("AIA", 10, (0, 100_000_000)) == []  # a wait: the lease ends are read
        await pool.execute("SELECT pg_notify('iclaim_pull_ready', 'AIA')")  # a claim elsewhere, taken
        await _heard(router, "AIA", 1)
        late = store.late = claim_record("QUIETLATE", mode="pull")
        assert await router.pull("AIA", 10, (0, 0)) == []  # read before the claim was stored
        assert [c.transaction_id for c in await router.pull("AIA", 10, (0, 0))] == [late.transaction_id]
    finally:
        await hub.close()
        await pool.close()
