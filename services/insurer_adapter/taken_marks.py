"""Writes "taken" for pushes the router already acknowledged, a batch at a
time: one UPDATE and one commit for every push taken within a short window,
instead of one each.

Safe to defer because nothing waits on it: the router knows (its ReportTaken
committed first), and the row stays leased to this process meanwhile, so no
other worker pushes it. Should the process die before a batch is written, or
the write fail, the lease ends and the claim is pushed again: the insurer
deduplicates it and the router's ReportTaken is idempotent, the same as a
crash between push and mark always was. Pushes whose report did not get
through are not deferred (their pending report must be stored at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import structlog

log = structlog.get_logger("iclaim.adapter.taken_marks")

WINDOW_S = 0.1


class TakenStore(Protocol):
    async def mark_taken_reported(self, taken: Sequence[tuple[str, datetime]]) -> None: ...


class TakenMarks:
    def __init__(self, store: TakenStore, window_s: float = WINDOW_S) -> None:
        self._store = store
        self._window_s = window_s
        self._pending: list[tuple[str, datetime]] = []
        # The window's timer; None once it fired (its write may still be running).
        self._flusher: asyncio.Task[None] | None = None
        # One write at a time: close() waits for a write under way.
        self._writing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, transaction_id: str, taken_at: datetime) -> None:
        """Marks it taken (and reported) within the window."""
        self._pending.append((transaction_id, taken_at))
        if self._flusher is None:
            # A fresh context: the write is no one push's (no transaction_id in its logs).
            task = asyncio.create_task(self._flush_after_window(), context=contextvars.Context())
            self._flusher = task
            self._tasks.add(task)  # held until done, also past the window
            task.add_done_callback(self._tasks.discard)

    async def _flush_after_window(self) -> None:
        try:
            await asyncio.sleep(self._window_s)
        finally:
            self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Writes what is pending now (on stop, before the leases are released)."""
        async with self._writing:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await self._store.mark_taken_reported(batch)
            except asyncio.CancelledError:
                # Stopping: close() writes them (again, if this one got through:
                # the update only changes rows still waiting).
                self._pending[:0] = batch
                raise
            except Exception as exc:  # the leases end and those claims are pushed again
                log.warning("taken_marks_not_stored", count=len(batch), error=type(exc).__name__)

    async def close(self) -> None:
        """Writes what is pending now, without waiting out the window (but
        after a write already under way)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
