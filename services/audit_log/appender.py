"""Group commit for Append: concurrent requests share one durable transaction.

Each caller's future resolves only after the batch holding its events has
committed (tessera's AddFn contract).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from iclaim.audit.entry import AuditEntry
from iclaim.errors import Unavailable
from services.audit_log import metrics
from services.audit_log.domain import AppendOutcome, OffsetUpdate

log = structlog.get_logger("audit_log.appender")


class AppendStore(Protocol):
    async def append(
        self, entries: Sequence[AuditEntry], offset: OffsetUpdate | None = None
    ) -> AppendOutcome: ...


@dataclass(frozen=True)
class AppendResult:
    appended: int
    duplicates: int


@dataclass
class _Pending:
    entries: Sequence[AuditEntry]
    done: asyncio.Future[AppendResult]


async def timed_append(
    store: AppendStore, entries: Sequence[AuditEntry], source: str, offset: OffsetUpdate | None = None
) -> dict[str, int]:
    """Appends and records the metrics; returns event_id -> leaf index of the new entries."""
    start = time.perf_counter()
    outcome = await store.append(entries, offset)
    metrics.APPEND_LATENCY.observe(time.perf_counter() - start)
    metrics.ENTRIES_APPENDED.labels(source).inc(len(outcome.appended))
    metrics.DUPLICATES_DROPPED.labels(source).inc(outcome.duplicates)
    metrics.TREE_SIZE.set(outcome.tree_size)
    return outcome.appended


class Appender:
    def __init__(self, store: AppendStore, max_batch_entries: int = 2000) -> None:
        self._store = store
        self._max = max_batch_entries
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()

    async def append(self, entries: Sequence[AuditEntry]) -> AppendResult:
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(entries, fut))
        return await fut

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            count = len(batch[0].entries)
            while count < self._max and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                count += len(item.entries)
            live = [p for p in batch if not p.done.done()]  # callers may have gone
            try:
                appended = await timed_append(self._store, [e for p in live for e in p.entries], "rpc")
            except Exception as exc:
                # Nothing was committed: producers keep the events and retry.
                log.warning("append_batch_failed", error=type(exc).__name__)
                for p in live:
                    if not p.done.done():
                        p.done.set_exception(
                            Unavailable(
                                "audit log storage unavailable; retry",
                                reason="AUDIT_STORE_UNAVAILABLE",
                            )
                        )
                continue
            # Credit each event to the first request that carried it.
            credited: set[str] = set()
            for p in live:
                new = 0
                for e in p.entries:
                    if e.event_id in appended and e.event_id not in credited:
                        credited.add(e.event_id)
                        new += 1
                if not p.done.done():
                    p.done.set_result(AppendResult(new, len(p.entries) - new))
