"""Reports and writes "taken" for pushes a batch at a time: every push the
insurers took within a short window goes to the router in one
ReportTakenBatch call (one commit there) and is then written in one UPDATE
here, instead of a call, a router commit and a write each.

Safe to defer because nothing waits on it: the insurer has the claim (a
decision implies taken at the router), and the row stays leased to this
process meanwhile, so no other worker pushes it. Should the process die
before a batch is written, or the write fail, the lease ends and the claim is
pushed again: the insurer deduplicates it and the router's report is
idempotent, the same as a crash between push and mark always was. A push made
before its delivery was stored has no row to lease: it is stored here, taken,
and until then the router's own lease brings it back the same way. A push the
router did not acknowledge is written with its report pending, for the
outbox to send (`on_unreported`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import structlog

from services.insurer_adapter import metrics
from services.insurer_adapter.domain import DeliverySettings
from services.insurer_adapter.model import NewDelivery, PendingReport, ReportKind

log = structlog.get_logger("iclaim.adapter.taken_marks")

WINDOW_S = 0.1


class TakenStore(Protocol):
    async def mark_taken_many(self, taken: Sequence[tuple[str, datetime, bool]]) -> None:
        """(transaction_id, taken_at, reported) each."""

    async def add_taken_many(
        self, taken: Sequence[tuple[NewDelivery, datetime, bool]], expiry_s: float
    ) -> None:
        """The same for deliveries pushed before they were stored."""


class TakenSink(Protocol):
    async def report_taken_many(self, reports: Sequence[PendingReport]) -> set[str]:
        """The transaction ids the router acknowledged; never raises."""


class TakenMarks:
    def __init__(
        self,
        store: TakenStore,
        router: TakenSink,
        on_unreported: Callable[[], None],
        window_s: float = WINDOW_S,
        expiry_s: float = DeliverySettings.expiry_s,
    ) -> None:
        self._store = store
        self._router = router
        self._on_unreported = on_unreported
        self._window_s = window_s
        self._expiry_s = expiry_s
        # transaction_id, insurer, taken_at, the delivery itself if not stored
        # yet, and whether the router knows already (no report)
        self._pending: list[tuple[str, str, datetime, NewDelivery | None, bool]] = []
        # The window's timer; None once it fired (its write may still be running).
        self._flusher: asyncio.Task[None] | None = None
        # One batch at a time: close() waits for a batch under way.
        self._writing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(
        self,
        transaction_id: str,
        insurer_code: str,
        taken_at: datetime,
        unstored: NewDelivery | None = None,
        *,
        known: bool = False,
    ) -> None:
        """Reports it taken and marks it so within the window (stores it, taken,
        if `unstored`: it was pushed before it was stored). `known`: the router
        knows already (it recorded the insurer's decision from the push's
        answer, which notes the claim taken): marked, not reported."""
        self._pending.append((transaction_id, insurer_code, taken_at, unstored, known))
        if self._flusher is None:
            # A fresh context: the batch is no one push's (no transaction_id in its logs).
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
        """Reports and writes what is pending now (on stop, before the leases
        are released)."""
        async with self._writing:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                reports = [
                    PendingReport(txid, code, ReportKind.TAKEN, at, 1)
                    for txid, code, at, _, known in batch
                    if not known
                ]
                reported = await self._router.report_taken_many(reports) if reports else set()
                acked = reported | {txid for txid, _, _, _, known in batch if known}
                stored = [(txid, at, txid in acked) for txid, _, at, new, _ in batch if new is None]
                # One row each: a statement's upsert may not touch a row twice.
                fresh = {
                    new.transaction_id: (new, at, new.transaction_id in acked)
                    for _, _, at, new, _ in batch
                    if new
                }
                if stored:
                    await self._store.mark_taken_many(stored)
                if fresh:
                    await self._store.add_taken_many(list(fresh.values()), self._expiry_s)
            except asyncio.CancelledError:
                # Stopping: close() sends them (again, if this one got through:
                # both sides are idempotent).
                self._pending[:0] = batch
                raise
            except Exception as exc:  # the leases end and those claims are pushed again
                log.warning("taken_marks_not_stored", count=len(batch), error=type(exc).__name__)
                return
            metrics.REPORTS.labels(ReportKind.TAKEN.value, "acked").inc(len(reported))
            if len(reported) < len(reports):
                metrics.REPORTS.labels(ReportKind.TAKEN.value, "retry").inc(len(reports) - len(reported))
                self._on_unreported()

    async def close(self) -> None:
        """Sends and writes what is pending now, without waiting out the window
        (but after a batch already under way)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
