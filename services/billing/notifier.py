"""Delivers PAID notices from the outbox to ClaimSettlementService.MarkClaimPaid,
retrying with backoff until the claim router acknowledges (MarkClaimPaid is
idempotent, so a redelivery after a lost acknowledgement is harmless)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import grpc
import structlog

from iclaim_hub.common.db import is_connection_lost
from iclaim_hub.internal.v1 import decision_intake_pb2, decision_intake_pb2_grpc
from services.billing import metrics

log = structlog.get_logger("iclaim.billing.notifier")


class PaidOutbox(Protocol):
    async def due_outbox(self) -> list[tuple[str, int]]: ...
    async def outbox_delivered(self, transaction_id: str) -> None: ...
    async def outbox_failed(self, transaction_id: str, error: str, retry_in_s: float) -> None: ...


def backoff_s(attempts: int) -> float:
    return float(min(60.0, 0.5 * 2 ** min(attempts, 8)))


class PaidNotifier:
    def __init__(
        self,
        store: PaidOutbox,
        channel: grpc.aio.Channel,
        *,
        deadline_s: float = 5.0,
        poll_s: float = 1.0,
    ) -> None:
        self._store = store
        self._stub = decision_intake_pb2_grpc.ClaimSettlementServiceStub(channel)
        self._deadline = deadline_s
        self._poll = poll_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def drain_once(self) -> int:
        """Delivers what is due now; returns how many were acknowledged."""
        done = 0
        for tx, attempts in await self._store.due_outbox():
            try:
                await self._stub.MarkClaimPaid(
                    decision_intake_pb2.MarkClaimPaidRequest(transaction_id=tx),
                    timeout=self._deadline,
                )
            except grpc.aio.AioRpcError as err:
                delay = backoff_s(attempts)
                metrics.PAID_NOTICES.labels("retry").inc()
                log.warning("mark_paid_failed", transaction_id=tx, code=err.code().name, retry_in_s=delay)
                await self._store.outbox_failed(tx, f"{err.code().name}: {err.details()}", delay)
                continue
            await self._store.outbox_delivered(tx)
            metrics.PAID_NOTICES.labels("ok").inc()
            done += 1
        return done

    async def run(self) -> None:
        while True:
            try:
                await self.drain_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the loop alive, try again shortly
                if is_connection_lost(exc):
                    log.warning("outbox_drain_failed", error=type(exc).__name__)
                else:
                    log.exception("outbox_drain_failed")
            with contextlib.suppress(TimeoutError):  # not wait_for: it can lose a cancel (3.11)
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            self._wake.clear()
