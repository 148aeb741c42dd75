"""Housekeeping: rows that have done their job, removed in bounded batches on a
timer, so a table's size follows the traffic of a kept window, not of every day
since the hub started.

What goes where is each store's call (the router's relayed outbox events, the
adapter's finished deliveries); this module only paces the removal and reports
it. A pass that fails (the database restarting) is retried at the next one:
nothing depends on a row being gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from iclaim_hub.common.metrics import PURGE_FAILURES, ROWS_PURGED

log = structlog.get_logger("iclaim_hub.purge")

# Rows a statement: each batch its own transaction, so a long backlog never holds
# locks or WAL for long, and the hot path's writes interleave with it.
BATCH = 5_000
DEFAULT_EVERY_S = 600.0
MAX_EVERY_S = 86_400.0


async def remove_in_batches(delete: Callable[[int], Awaitable[int]], batch: int = BATCH) -> int:
    """Calls `delete(limit)` until it removes fewer than `batch`; returns the total."""
    total = 0
    while True:
        removed = await delete(batch)
        total += removed
        if removed < batch:
            return total


class Purge:
    """One table's housekeeping: a pass at start, then one every `every_s`.
    `one_pass` removes what is due and returns how many rows went."""

    def __init__(self, table: str, one_pass: Callable[[], Awaitable[int]], every_s: float) -> None:
        self.table = table  # a fixed name of ours: it is a metric label
        self._one_pass = one_pass
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        removed = await self._one_pass()
        ROWS_PURGED.labels(self.table).inc(removed)
        if removed:
            log.info("rows_purged", table=self.table, count=removed)
        return removed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                PURGE_FAILURES.labels(self.table).inc()
                log.warning("purge_failed", table=self.table, error=type(exc).__name__)
            await asyncio.sleep(self._every_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
