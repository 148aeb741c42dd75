"""Durable hand-off of push claims (grpc and webhook insurers) to the delivery
layer, the insurer adapter (docs/protocol.md §10).

A committed claim stays due (delivered_at IS NULL) until the adapter has
acknowledged storing it; a lease hides it while one attempt is in flight, so a
crash anywhere means a later hand-off again, which the adapter deduplicates by
transaction_id. Claims kicked together go in one call (handoff_batches.py).
The acknowledgement only records the hand-off: the claim stays
RECEIVED until the adapter reports that the insurer took it
(DeliveryReportService/ReportTaken).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Protocol

import grpc
import structlog

from iclaim_hub.common import tracing
from iclaim_hub.common.db import is_connection_lost
from iclaim_hub.common.tracing import within_trace
from iclaim_hub.common.proto_time import timestamp
from iclaim_hub.internal.v1 import insurer_adapter_pb2, insurer_adapter_pb2_grpc
from services.claim_router.domain import PUSH_HANDOFF_LEASE_S
from services.claim_router.handoff_batches import BatchedHandOff
from services.claim_router.model import ClaimRecord

log = structlog.get_logger("claim_router.delivery")

DELIVER_TIMEOUT_S = 5.0
LEASE_S = PUSH_HANDOFF_LEASE_S
POLL_INTERVAL_S = 1.0
RETRY_DELAY_S = 1.0
BATCH = 32


class PushStore(Protocol):
    async def lease_push(self, limit: int, lease_s: float) -> list[ClaimRecord]: ...

    async def retry_push_later(self, transaction_id: str, delay_s: float) -> None: ...

    async def mark_handed_off(self, transaction_id: str) -> None: ...


class PushDeliverer:
    def __init__(self, store: PushStore, channel: grpc.aio.Channel) -> None:
        self._store = store
        self._handoff = BatchedHandOff(
            insurer_adapter_pb2_grpc.InsurerAdapterServiceStub(channel), DELIVER_TIMEOUT_S, tracing.enabled
        )
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def kick(self, rec: ClaimRecord) -> None:
        """Hands off a just-committed claim now instead of at the next poll. The
        insert leased it for this hand-off (PUSH_HANDOFF_LEASE_S), so the record
        in hand is sent as it is, and the hand-off is not recorded: the adapter's
        ReportTaken, normally within milliseconds, records it (one commit fewer
        per claim). Should the claim not be taken before the lease ends, the
        poller hands it off again (the adapter counts a duplicate) and records it.
        For the same reason the adapter may push it before storing it."""
        task = asyncio.create_task(self._guarded(self._deliver(rec, record=False)))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _run(self) -> None:
        while True:
            await self._pass()
            # New claims are kicked at once; the poll picks up retries and leftovers.
            await asyncio.sleep(POLL_INTERVAL_S)

    async def _pass(self) -> None:
        """One delivery pass. A failure is logged, not raised: whatever the pass
        leased and could not finish is due again when its lease ends."""
        await self._guarded(self._deliver_due())

    @staticmethod
    async def _guarded(work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:
            if is_connection_lost(exc):
                log.warning("delivery_pass_failed", error=type(exc).__name__)
            else:
                log.exception("delivery_loop_error")

    async def _deliver_due(self) -> None:
        leased = await self._store.lease_push(BATCH, LEASE_S)
        if leased:
            await asyncio.gather(*(within_trace(rec.traceparent, self._deliver(rec)) for rec in leased))

    async def _deliver(self, rec: ClaimRecord, *, record: bool = True) -> None:
        request = insurer_adapter_pb2.DeliverClaimRequest(
            transaction_id=rec.transaction_id,
            hospital_code=rec.hospital_code,
            insurer_code=rec.insurer_code,
            claim_ref=rec.claim_ref,
            billed_amount_satang=rec.billed_amount_satang,
            envelope=rec.envelope,
            submitted_at=timestamp(rec.submitted_at),
        )
        if not record:
            # Not recorded here: the insert's lease is the claim's safety net
            # until ReportTaken, so the adapter need not store it before pushing.
            request.router_lease.FromSeconds(int(LEASE_S))
        if not await self._handoff.hand_off(request):
            await self._store.retry_push_later(rec.transaction_id, RETRY_DELAY_S)
            return
        if record:
            await self._store.mark_handed_off(rec.transaction_id)
        log.info("handed_off", transaction_id=rec.transaction_id, insurer=rec.insurer_code)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._inflight):
            task.cancel()
        await self._handoff.close()
