"""Tells the router what happened to each delivery (DeliveryReportService):
taken, expired, redriven. Reports are rows of the adapter's database (an
outbox), leased while one is being sent and retried with backoff until the
router acknowledges, so a crash or a router outage only delays them.

Pure of transports: the store and the router are protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Awaitable
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol

import structlog

from services.insurer_adapter import metrics
from services.insurer_adapter.domain import DeliverySettings
from services.insurer_adapter.model import PendingReport, ReportKind

log = structlog.get_logger("iclaim.adapter.reporter")

BATCH = 64


class ReportStore(Protocol):
    async def lease_reports(self, owner: str, limit: int, lease_s: float) -> list[PendingReport]: ...

    async def mark_reported(self, report: PendingReport, owner: str) -> bool: ...

    async def retry_report(self, report: PendingReport, owner: str, delay_s: float) -> None: ...


class ReportSink(Protocol):
    async def report(self, report: PendingReport) -> str | None:
        """None when the router acknowledged; else why not (a status code name)."""


@dataclass(eq=False)
class Reporter:
    store: ReportStore
    sink: ReportSink
    settings: DeliverySettings
    _: KW_ONLY
    owner: str
    # A redriven delivery is pushed once the router knows: wake its lane.
    on_redriven: Callable[[str], None] = lambda code: None
    _wake: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def notify(self) -> None:
        """A report is pending: send it without waiting for the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        await _run_passes(self.send_due, self._wake, self.settings.poll_s, "report")

    async def send_due(self) -> bool:
        """One batch; True when it was full (there may be more due)."""
        batch = await self.store.lease_reports(self.owner, BATCH, self.settings.lease_s)
        if batch:
            await asyncio.gather(*(self._send(r) for r in batch))
        return len(batch) == BATCH

    async def _send(self, r: PendingReport) -> None:
        with structlog.contextvars.bound_contextvars(transaction_id=r.transaction_id):
            try:
                problem = await self.sink.report(r)
                if problem is None:
                    metrics.REPORTS.labels(r.kind.value, "acked").inc()
                    await self.store.mark_reported(r, self.owner)
                    log.info("delivery_reported", kind=r.kind.value, attempts=r.attempts)
                    if r.kind is ReportKind.REDRIVEN:
                        self.on_redriven(r.insurer_code)
                    return
                metrics.REPORTS.labels(r.kind.value, "retry").inc()
                delay = self.settings.backoff.delay(r.attempts)
                log.warning("report_retry", kind=r.kind.value, code=problem, retry_in_s=round(delay, 2))
                await self.store.retry_report(r, self.owner, delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not stored: the lease ends and it is sent again
                log.warning("report_not_stored", error=type(exc).__name__)


async def _run_passes(
    once: Callable[[], Awaitable[bool]], wake: asyncio.Event, poll_s: float, name: str
) -> None:
    """A pass that found a full batch runs again at once; otherwise wait for a
    wake-up or `poll_s` (work also comes due by time or from other replicas)."""
    while True:
        try:
            more = await once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is down, say: keep trying
            log.warning("pass_failed", loop=name, error=type(exc).__name__)
            more = False
        if more:
            continue
        with contextlib.suppress(TimeoutError):  # not wait_for: it can lose a cancel (3.11)
            async with asyncio.timeout(poll_s):
                await wake.wait()
        wake.clear()
