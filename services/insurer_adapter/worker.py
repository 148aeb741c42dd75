"""Background work of the simulated insurers, as asyncio tasks:

- decide: lease due deliveries, open/check/read/decide/seal, store the
  decisions durably (the outbox) before anything is sent;
- send: lease due outbox rows and call DecisionIntakeService.RecordDecision
  with a deadline, retrying with backoff until the router acknowledges.

Leases (lease_owner/lease_until, taken with FOR UPDATE SKIP LOCKED) keep two
replicas from working on the same row; an expired lease (a crash) frees it.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from iclaim.crypto.envelope import EnvelopeError, parse_protected_header
from iclaim_hub.internal.v1 import decision_intake_pb2, decision_intake_pb2_grpc
from iclaim_hub.registry.store import RegistryStore
from iclaim.v1 import claim_service_pb2
from services.insurer_adapter import metrics, simulator
from services.insurer_adapter.model import Delivery, PendingDecision
from services.insurer_adapter.processing import assess, seal_decisions
from services.insurer_adapter.store import DeliveryStore, KeyStore

log = structlog.get_logger("iclaim.adapter.worker")

_STATE = {
    simulator.APPROVED: claim_service_pb2.CLAIM_STATE_APPROVED,
    simulator.PARTIALLY_APPROVED: claim_service_pb2.CLAIM_STATE_PARTIALLY_APPROVED,
    simulator.DENIED: claim_service_pb2.CLAIM_STATE_DENIED,
    simulator.PENDING_REVIEW: claim_service_pb2.CLAIM_STATE_PENDING_REVIEW,
}
# Acknowledged: the router has it (ALREADY_EXISTS = same decision recorded before).
_ACK = {grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS}
# The router will never take it: retrying cannot help.
_PERMANENT = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
}


@dataclass(frozen=True)
class WorkerSettings:
    timing: simulator.Timing
    poll_s: float = 0.25
    batch: int = 32
    lease_s: float = 30.0
    rpc_deadline_s: float = 5.0
    retry_base_s: float = 0.2
    retry_max_s: float = 30.0
    enrol_interval_s: float = 30.0


class RetryLater(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def backoff(attempts: int, base: float, cap: float) -> float:
    """Exponential with full jitter on the upper half, never above `cap`."""
    ceiling = min(cap, base * float(2 ** max(0, min(attempts - 1, 30))))
    return ceiling / 2 + secrets.randbelow(1000) / 1000 * ceiling / 2


class Worker:
    def __init__(
        self,
        *,
        store: DeliveryStore,
        keys: KeyStore,
        registry: RegistryStore,
        router: decision_intake_pb2_grpc.DecisionIntakeServiceAsyncStub,
        settings: WorkerSettings,
        enrol: Callable[[], Awaitable[Any]],
    ) -> None:
        self._store = store
        self._keys = keys
        self._registry = registry
        self._router = router
        self._s = settings
        self._enrol = enrol
        self.owner = f"adapter-{secrets.token_hex(6)}"
        self._decide_wake = asyncio.Event()
        self._send_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._key_cache: dict[tuple[str, str], dict[str, Any]] = {}

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop("decide", self._decide_wake, self.decide_once)),
            asyncio.create_task(self._loop("send", self._send_wake, self.send_once)),
            asyncio.create_task(self._enrol_loop()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        try:
            await self._store.release_leases(self.owner)
        except Exception:  # the leases expire by themselves
            log.warning("lease_release_failed", exc_info=True)

    def notify(self) -> None:
        """A new delivery is committed: decide without waiting for the next poll."""
        self._decide_wake.set()

    async def _loop(
        self, name: str, wake: asyncio.Event, once: Callable[[], Awaitable[bool]]
    ) -> None:
        while True:
            try:
                more = await once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is down, say: keep trying
                log.warning("worker_pass_failed", loop=name, exc_info=True)
                more = False
            if more:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self._s.poll_s)
            wake.clear()

    async def _enrol_loop(self) -> None:
        # Picks up simulated insurers added to the registry after start-up.
        while True:
            await asyncio.sleep(self._s.enrol_interval_s)
            try:
                await self._enrol()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("enrolment_failed", exc_info=True)

    # --- deciding ------------------------------------------------------------------
    async def decide_once(self) -> bool:
        batch = await self._store.lease_due_deliveries(self.owner, self._s.batch, self._s.lease_s)
        if batch:
            await asyncio.gather(*(self._decide(d) for d in batch))
        return len(batch) == self._s.batch

    async def _private_jwk(self, delivery: Delivery) -> dict[str, Any] | None:
        try:
            kid = parse_protected_header(delivery.envelope).kid
        except EnvelopeError:
            return None
        cache_key = (delivery.insurer_code, kid)
        if cache_key not in self._key_cache:
            jwk = await self._keys.private_jwk(delivery.insurer_code, kid)
            if jwk is None:
                return None
            self._key_cache[cache_key] = jwk
        return self._key_cache[cache_key]

    async def _decide(self, d: Delivery) -> None:
        with structlog.contextvars.bound_contextvars(transaction_id=d.transaction_id):
            try:
                assessment = assess(d, await self._private_jwk(d), self._s.timing)
                if assessment.problem:
                    log.info("claim_document_invalid", problem=assessment.problem)
                hospital = await self._registry.principal(d.hospital_code)
                key = hospital.current_key() if hospital is not None else None
                if key is None:
                    raise RetryLater("HOSPITAL_KEY_MISSING")
                try:
                    sealed = seal_decisions(d, assessment.steps, key.public_jwk)
                except EnvelopeError as exc:
                    raise RetryLater(f"HOSPITAL_KEY_{exc.reason}") from exc
                if await self._store.record_decisions(d.transaction_id, self.owner, sealed):
                    final = sealed[-1]
                    log.info("claim_decided", insurer=d.insurer_code, state=final.state,
                             reason=final.reason_code, steps=len(sealed))
                    self._send_wake.set()
                else:
                    log.info("claim_decided_elsewhere")
            except asyncio.CancelledError:
                raise
            except RetryLater as exc:
                delay = backoff(d.process_attempts, self._s.retry_base_s, self._s.retry_max_s)
                log.warning("decide_postponed", reason=exc.reason, retry_in_s=round(delay, 2))
                await self._store.postpone_delivery(d.transaction_id, self.owner, delay, exc.reason)
            except Exception:
                delay = backoff(d.process_attempts, self._s.retry_base_s, self._s.retry_max_s)
                log.warning("decide_failed", retry_in_s=round(delay, 2), exc_info=True)
                with contextlib.suppress(Exception):
                    await self._store.postpone_delivery(
                        d.transaction_id, self.owner, delay, "INTERNAL"
                    )

    # --- sending -------------------------------------------------------------------
    async def send_once(self) -> bool:
        batch = await self._store.lease_due_decisions(self.owner, self._s.batch, self._s.lease_s)
        if batch:
            await asyncio.gather(*(self._send(d) for d in batch))
        return len(batch) == self._s.batch

    async def _send(self, d: PendingDecision) -> None:
        with structlog.contextvars.bound_contextvars(transaction_id=d.transaction_id):
            request = decision_intake_pb2.RecordDecisionRequest(
                transaction_id=d.transaction_id,
                insurer_code=d.insurer_code,
                state=_STATE[d.state],
                approved_amount_satang=d.approved_satang,
                decision_envelope=d.envelope,
                reason_code=d.reason_code,
            )
            code = grpc.StatusCode.OK
            detail = ""
            try:
                await self._router.RecordDecision(request, timeout=self._s.rpc_deadline_s)
            except grpc.aio.AioRpcError as exc:
                code, detail = exc.code(), exc.details() or ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a channel failure is retried like UNAVAILABLE
                code, detail = grpc.StatusCode.UNAVAILABLE, type(exc).__name__
            if code in _ACK:
                await self._store.mark_sent(d)
                metrics.DECISIONS.labels(d.state, "recorded").inc()
                if d.final:
                    latency = dt.datetime.now(dt.UTC) - d.received_at
                    metrics.DECISION_LATENCY.observe(max(0.0, latency.total_seconds()))
                log.info("decision_recorded", state=d.state, attempts=d.attempts)
            elif code in _PERMANENT:
                await self._store.mark_failed(d, code.name)
                metrics.DECISIONS.labels(d.state, "failed").inc()
                log.error("decision_rejected", state=d.state, code=code.name, detail=detail)
            else:
                delay = backoff(d.attempts, self._s.retry_base_s, self._s.retry_max_s)
                await self._store.mark_retry(d, self.owner, delay, code.name)
                metrics.DECISION_SEND_RETRIES.labels(code.name).inc()
                log.warning("decision_send_retry", code=code.name, attempts=d.attempts,
                            retry_in_s=round(delay, 2))
