"""Relays the router's outbox to the audit log and billing until acknowledged.

Both receivers deduplicate (audit by event_id, billing by transaction_id), so
a crash between send and mark-sent only causes a harmless resend. A sent
batch is marked by the statement that reads the next one (one commit a round,
not two), at most GATHER_S (or IDLE_S) after it was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import grpc
import structlog

from iclaim_hub.internal.v1 import (
    audit_log_pb2,
    audit_log_pb2_grpc,
    billing_intake_pb2,
    billing_intake_pb2_grpc,
)
from iclaim_hub.common import tracing
from services.claim_router.events import TOPIC_AUDIT, TOPIC_BILLING
from services.claim_router.model import OutboxEvent

log = structlog.get_logger("claim_router.relay")

SEND_TIMEOUT_S = 5.0
IDLE_S = 0.5
BATCH = 200
# After a batch that was not full, the next one gathers this long: under load
# the loop would otherwise go round for every few events, each round a query,
# a call and a commit (mark-sent), plus the audit log's append commit. The
# events are already durable; only their arrival downstream waits.
GATHER_S = 0.25


_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


async def _send_or_drop(call: Awaitable[object], *, topic: str) -> None:
    """Retryable failures propagate (the batch stays unsent); a permanent
    rejection is logged and dropped so it cannot wedge the outbox."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        if err.code() in _RETRYABLE:
            raise
        log.error("relay_event_rejected", topic=topic, code=err.code().name)


Batch = list[OutboxEvent]


class OutboxStore(Protocol):
    async def outbox_next(self, topic: str, limit: int, sent: Sequence[int]) -> Batch:
        """Marks `sent` as sent and returns the next unsent events, in one statement."""

    async def outbox_mark_sent(self, ids: Sequence[int]) -> None: ...


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStore,
        audit_channel: grpc.aio.Channel | None,
        billing_channel: grpc.aio.Channel | None,
    ) -> None:
        self._store = store
        self._audit = audit_log_pb2_grpc.AuditLogServiceStub(audit_channel) if audit_channel else None
        self._billing = (
            billing_intake_pb2_grpc.BillingIntakeServiceStub(billing_channel) if billing_channel else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        # topic -> events acknowledged downstream, marked sent with the next read.
        self._unmarked: dict[str, list[int]] = {}

    def start(self) -> None:
        if self._audit is not None:
            self._tasks.append(asyncio.create_task(self._loop(TOPIC_AUDIT, self._send_audit)))
        if self._billing is not None:
            self._tasks.append(asyncio.create_task(self._loop(TOPIC_BILLING, self._send_billing)))

    async def _loop(self, topic: str, send: Callable[[Batch], Awaitable[None]]) -> None:
        backoff = IDLE_S
        while True:
            try:
                batch = await self._store.outbox_next(topic, BATCH, self._unmarked.get(topic, []))
                self._unmarked[topic] = []
                if batch:
                    await send(batch)
                    self._unmarked[topic] = [e.id for e in batch]
                    backoff = IDLE_S
                    if len(batch) < BATCH:
                        await asyncio.sleep(GATHER_S)
                    continue
                await asyncio.sleep(IDLE_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("relay_failed", topic=topic, error=type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _send_audit(self, batch: Batch) -> None:
        assert self._audit is not None
        # One call for the batch: it belongs to no single claim's trace.
        events = [audit_log_pb2.AuditEvent.FromString(e.payload) for e in batch]
        try:
            await self._audit.Append(audit_log_pb2.AppendRequest(events=events), timeout=SEND_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            if err.code() in _RETRYABLE:
                raise
            # One bad event must not block the rest: send singly, drop the rejected.
            for event in events:
                await _send_or_drop(
                    self._audit.Append(audit_log_pb2.AppendRequest(events=[event]), timeout=SEND_TIMEOUT_S),
                    topic=TOPIC_AUDIT,
                )

    async def _send_billing(self, batch: Batch) -> None:
        billing = self._billing
        assert billing is not None

        async def singly(event: OutboxEvent) -> None:
            request = billing_intake_pb2.RecordClaimDecisionRequest.FromString(event.payload)
            with tracing.resumed(event.traceparent):
                await _send_or_drop(
                    billing.RecordClaimDecision(request, timeout=SEND_TIMEOUT_S), topic=TOPIC_BILLING
                )

        # A traced claim's decision goes on its own, in the trace it was emitted
        # in (billing's intake joins the claim's trace); the rest in one call.
        together = [e for e in batch if not e.traceparent]
        for event in batch:
            if event.traceparent:
                await singly(event)
        if not together:
            return
        request = billing_intake_pb2.RecordClaimDecisionsRequest(
            decisions=[billing_intake_pb2.RecordClaimDecisionRequest.FromString(e.payload) for e in together]
        )
        try:
            answer = await billing.RecordClaimDecisions(request, timeout=SEND_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            # UNIMPLEMENTED: a billing not yet upgraded (rolling deploy); any other
            # refusal for good of the whole call: send singly, dropping only the refused.
            if err.code() in _RETRYABLE and err.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            for event in together:
                await singly(event)
            return
        for refused in answer.refused:
            log.error("relay_event_rejected", topic=TOPIC_BILLING, reason=refused.reason)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        unmarked = [event_id for ids in self._unmarked.values() for event_id in ids]
        if unmarked:
            try:
                await self._store.outbox_mark_sent(unmarked)
            except Exception as exc:  # sent again after the restart: deduplicated downstream
                log.warning("relay_mark_sent_failed", error=type(exc).__name__)
