"""The router's outbox relay: each event reaches its receiver, and a sent
batch is marked by the statement that reads the next one (one commit a round).
Real PostgreSQL; the receiver is a function that records what it is sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.claim_router import relay as relay_module
from services.claim_router.events import TOPIC_AUDIT
from services.claim_router.model import OutboxEvent
from services.claim_router.relay import OutboxRelay
from services.claim_router.store import PgClaimStore
from tests.support.router_records import claim_record, router_pool


class _Statements:
    """The pool, noting the first word of each statement the relay's store runs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.kinds: list[str] = []

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        self.kinds.append(sql.split()[0])
        return await self._pool.fetch(sql, *args)

    async def execute(self, sql: str, *args: object) -> str:
        self.kinds.append(sql.split()[0])
        return await self._pool.execute(sql, *args)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with router_pool(database_url) as p:
        yield p


async def _unsent(pool: asyncpg.Pool) -> list[bytes]:
    rows = await pool.fetch("SELECT payload FROM router.outbox WHERE sent_at IS NULL ORDER BY id")
    return [bytes(r["payload"]) for r in rows]


async def test_a_sent_batch_is_marked_by_the_next_read(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "GATHER_S", 0.05)
    monkeypatch.setattr(relay_module, "IDLE_S", 0.05)
    writer = PgClaimStore(pool)
    for n in range(3):
        await writer.insert(claim_record(f"RELAY{n}"), [(TOPIC_AUDIT, f"e{n}".encode())])
    store = PgClaimStore(pool)
    counted = _Statements(pool)
    store._pool = counted  # type: ignore[assignment]
    sent: list[list[bytes]] = []
    relay = OutboxRelay(store, None, None)
    received = asyncio.Event()

    async def send(batch: list[OutboxEvent]) -> None:
        sent.append([e.payload for e in batch])
        received.set()

    task = asyncio.create_task(relay._loop(TOPIC_AUDIT, send))
    await asyncio.wait_for(received.wait(), 5)
    # Sent, not yet marked: the next round's read marks it.
    for _ in range(100):
        if await _unsent(pool) == []:
            break
        await asyncio.sleep(0.02)
    assert await _unsent(pool) == []
    await writer.insert(claim_record("RELAY9"), [(TOPIC_AUDIT, b"e9")])
    for _ in range(100):
        if len(sent) == 2 and await _unsent(pool) == []:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent == [[b"e0", b"e1", b"e2"], [b"e9"]]
    # Each round one statement, which marks and reads: no mark-sent of its own.
    assert set(counted.kinds) == {"WITH"} and len(counted.kinds) >= 3


async def test_what_was_sent_but_not_yet_marked_is_marked_at_close(pool: asyncpg.Pool) -> None:
    writer = PgClaimStore(pool)
    await writer.insert(claim_record("RELAYC"), [(TOPIC_AUDIT, b"c")])
    relay = OutboxRelay(PgClaimStore(pool), None, None)
    relay._unmarked[TOPIC_AUDIT] = [await pool.fetchval("SELECT id FROM router.outbox")]
    await relay.close()
    assert await _unsent(pool) == []


async def test_a_failed_send_leaves_the_batch_unsent(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "IDLE_S", 0.05)
    writer = PgClaimStore(pool)
    await writer.insert(claim_record("RELAYF"), [(TOPIC_AUDIT, b"f")])
    relay = OutboxRelay(PgClaimStore(pool), None, None)
    tries = 0

    async def refuse(batch: list[OutboxEvent]) -> None:
        nonlocal tries
        tries += 1
        raise ConnectionError("receiver down")

    task = asyncio.create_task(relay._loop(TOPIC_AUDIT, refuse))
    for _ in range(100):
        if tries >= 2:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await relay.close()
    assert tries >= 2 and await _unsent(pool) == [b"f"]
