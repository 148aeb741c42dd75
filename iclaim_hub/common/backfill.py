"""Changes a migration leaves to housekeeping: rows stored before a release,
rewritten after start-up in bounded batches instead of inside the migration.

A migration runs in one transaction while a replica starts. Over a table of
millions of rows one UPDATE would hold its row locks and WAL for minutes and
outlast the start-up probe: the pod is killed, the transaction rolled back,
and the rolling upgrade never ends. So the migration only registers the
backfill (a row in its schema's `backfills` table) and the service walks the
table's primary key from that row's cursor, one batch a transaction, to the
end; then the backfill is done for good, because rows written since need
nothing: the write path makes the same change, and where a replica of the
release before may still write during a rolling upgrade, the migration adds
a trigger that makes it too. Replicas share the cursor: the row's lock gives
each batch to one of them, the others wait their turn. A step locks the rows
it changes in key order, as the hot path's writers do, so it never deadlocks
with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
import structlog

from iclaim_hub.common.metrics import BACKFILL_FAILURES, BACKFILL_ROWS

log = structlog.get_logger("iclaim_hub.backfill")

# Rows a transaction: small enough that the hot path's writes interleave.
BATCH = 2_000
# Between batches: the backfill takes a bounded share of the database.
PAUSE_S = 0.05
# After a failed batch (the database restarting) or while another replica
# holds the cursor.
RETRY_S = 30.0


class Progress(enum.Enum):
    MOVED = "moved"  # a batch done, more to walk
    BUSY = "busy"  # another replica holds the cursor
    DONE = "done"  # walked to the end (or never registered)


@dataclass(frozen=True)
class Backfill:
    """`step` is one statement over the batch after the cursor: parameters
    ($1 the last key walked, $2 the batch size, then `args`), one row back
    with `last` (the batch's highest key, NULL when empty), `seen` (rows in the
    batch) and `changed` (rows it rewrote)."""

    schema: str  # a fixed name of ours
    name: str  # a fixed name of ours: it is a metric label
    step: str
    args: Sequence[object] = ()


async def run_batch(pool: asyncpg.Pool, backfill: Backfill, limit: int) -> tuple[Progress, int]:
    """One batch in one transaction, the cursor moved with it."""
    table = f'"{backfill.schema}".backfills'
    async with pool.acquire() as conn, conn.transaction():
        cursor = await conn.fetchrow(
            f"SELECT after_key, done_at FROM {table} WHERE name = $1 FOR UPDATE SKIP LOCKED", backfill.name
        )
        if cursor is None:
            registered = await conn.fetchval(f"SELECT true FROM {table} WHERE name = $1", backfill.name)
            return (Progress.BUSY if registered else Progress.DONE), 0
        if cursor["done_at"] is not None:
            return Progress.DONE, 0
        row = await conn.fetchrow(backfill.step, cursor["after_key"], limit, *backfill.args)
        finished = row["seen"] < limit
        await conn.execute(
            f"UPDATE {table} SET after_key = coalesce($2, after_key),"
            " done_at = CASE WHEN $3 THEN now() END WHERE name = $1",
            backfill.name,
            row["last"],
            finished,
        )
        return (Progress.DONE if finished else Progress.MOVED), int(row["changed"])


async def walk(
    one_batch: Callable[[], Awaitable[tuple[Progress, int]]],
    name: str,
    *,
    pause_s: float = PAUSE_S,
    retry_s: float = RETRY_S,
) -> int:
    """Batches until the backfill is done; returns the rows this process changed.
    A failed batch (the database restarting) is counted and tried again."""
    total = 0
    while True:
        try:
            progress, changed = await one_batch()
        except Exception as exc:
            BACKFILL_FAILURES.labels(name).inc()
            log.warning("backfill_failed", backfill=name, error=type(exc).__name__)
            await asyncio.sleep(retry_s)
            continue
        if changed:
            BACKFILL_ROWS.labels(name).inc(changed)
            total += changed
        if progress is Progress.DONE:
            if total:
                log.info("backfill_done", backfill=name, changed=total)
            return total
        await asyncio.sleep(retry_s if progress is Progress.BUSY else pause_s)


class BackfillTask:
    """Walks one backfill in the background from start-up until it is done."""

    def __init__(self, pool: asyncpg.Pool, backfill: Backfill, *, batch: int = BATCH) -> None:
        self.backfill = backfill
        self._pool = pool
        self._batch = batch
        self._task: asyncio.Task[int] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(
            walk(lambda: run_batch(self._pool, self.backfill, self._batch), self.backfill.name)
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
