"""Pushes waiting deliveries to their insurers (docs/protocol.md §10.4, §10.5).

One lane per insurer (an asyncio task with its own in-flight cap and circuit),
never one queue for all: a dead or slow insurer holds only its own lane's
slots. A lane runs when woken (a new delivery, a push finished, the periodic
scan found due work) or when its DOWN circuit may probe. Each push works on a
leased row, so replicas share the work and a crash anywhere means the row is
pushed again once the lease ends (receivers deduplicate on transaction_id);
or, for a claim the router handed off under its own lease (start_unstored), on
no row at all until the push ends: the router's lease then does the same job.
The scan also expires deliveries and keeps the backlog gauges.

Pure of transports: the store, the registry, the pushers and the health sink
are protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog

from iclaim_hub.common.fields import copy_fields
from services.insurer_adapter import metrics
from services.insurer_adapter.domain import Circuit, DeliverySettings, Health, PushError
from services.insurer_adapter.reporter import ReportSink
from services.insurer_adapter.taken_marks import TakenMarks
from services.insurer_adapter.model import (
    Added,
    Backlog,
    Delivery,
    Endpoint,
    Lease,
    NewDelivery,
    PendingReport,
    AnswerOutcome,
    PushAnswer,
    PushResult,
    ReportKind,
)

log = structlog.get_logger("iclaim.adapter.dispatcher")

HEALTH_REPUBLISH_S = 1.0  # a changed failure count alone is published at most this often


class PushStore(Protocol):
    async def lease_due(
        self, insurer_code: str, owner: str, limit: int, lease_s: float, *, any_time: bool = False
    ) -> list[Delivery]: ...

    async def mark_taken(self, transaction_id: str, taken_at: datetime, *, reported: bool) -> bool: ...

    async def mark_failed_attempt(
        self, transaction_id: str, owner: str, error: str, delay_s: float
    ) -> str | None: ...

    async def add_delivery(
        self, d: NewDelivery, expiry_s: float, lease: Lease | None = None
    ) -> tuple[Added, Delivery | None]: ...

    async def add_taken_many(
        self, taken: Sequence[tuple[NewDelivery, datetime, bool]], expiry_s: float
    ) -> None: ...

    async def add_failed_attempt(
        self, d: NewDelivery, error: str, delay_s: float, expiry_s: float
    ) -> str | None: ...

    async def release(self, transaction_ids: Sequence[str], owner: str) -> None: ...

    async def release_leases(self, owner: str) -> None: ...

    async def make_due(self, insurer_code: str) -> None: ...

    async def expire_due(self) -> list[str]: ...

    async def backlog(self) -> list[Backlog]: ...


class Endpoints(Protocol):
    async def get(self, insurer_code: str) -> Endpoint | None: ...

    def invalidate(self, insurer_code: str | None = None) -> None: ...


class Pusher(Protocol):
    async def push(self, endpoint: Endpoint, delivery: Delivery) -> PushResult: ...


class AnswerSink(Protocol):
    async def record(self, insurer_code: str, answer: PushAnswer) -> AnswerOutcome: ...


class HealthSink(Protocol):
    async def set_push_health(self, code: str, health: str, consecutive_failures: int) -> None: ...


@dataclass
class _Lane:
    code: str
    circuit: Circuit
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Work may be due that no pass has leased yet (a delivery that found no
    # room, a full batch, the scan's backlog). A finished push wakes the lane
    # only then, or when its circuit has news: not a lease query per push
    # when every delivery was pushed inline.
    may_have_due: bool = False
    inflight: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Slots promised to deliveries being stored leased (reserve → start_leased).
    reserved: int = 0
    # Pushes in flight of deliveries not stored yet (start_unstored), by id.
    unstored: dict[str, NewDelivery] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    published: tuple[Health, int] | None = None
    published_at: float = -1e9


@dataclass(eq=False)
class Dispatcher:
    store: PushStore
    endpoints: Endpoints
    pusher: Pusher
    health: HealthSink
    settings: DeliverySettings
    _: KW_ONLY
    owner: str
    on_report: Callable[[], None]  # a report is pending: send it without waiting
    clock: Callable[[], float] = time.monotonic
    # Tells the router at once that a push was taken; None: only through the outbox.
    reports: ReportSink | None = None
    # Reports and writes "taken" in batches; None: a report and a write per push.
    taken_marks: TakenMarks | None = None
    # Records a decision an insurer answered a push with (§10.6); None: such a
    # push is not counted as taken, so the insurer posts the decision itself.
    answers: AnswerSink | None = None
    _lanes: dict[str, _Lane] = field(init=False, default_factory=dict)
    _scan_task: asyncio.Task[None] | None = field(init=False, default=None)
    _running: bool = field(init=False, default=False)

    # --- life cycle --------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._scan_task = asyncio.create_task(self._scan_loop())

    async def stop(self) -> None:
        self._running = False
        tasks = [t for t in (self._scan_task,) if t is not None]
        tasks += [lane.task for lane in self._lanes.values() if lane.task is not None]
        pushes = [t for lane in self._lanes.values() for t in lane.inflight.values()]
        cut_short = [d for lane in self._lanes.values() for d in lane.unstored.values()]
        for task in [*tasks, *pushes]:
            task.cancel()
        for task in [*tasks, *pushes]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.taken_marks is not None:  # before the leases go: taken rows are not pushed again
            await self.taken_marks.close()
        await self._store_cut_short(cut_short)
        try:  # cut-short attempts are due again at once, here or on another replica
            await self.store.release_leases(self.owner)
        except Exception as exc:  # the leases end by themselves
            log.warning("lease_release_failed", error=type(exc).__name__)

    async def _store_cut_short(self, deliveries: Sequence[NewDelivery]) -> None:
        """Pushes of deliveries not stored yet that stop() cut short: stored
        waiting, so they go at once (here or on another replica) rather than
        when the router's lease ends. Best effort: that lease still covers them."""
        for d in deliveries:
            try:
                await self.store.add_delivery(d, self.settings.expiry_s)
            except Exception as exc:
                log.warning("cut_short_push_not_stored", error=type(exc).__name__)
                return

    def notify(self, insurer_code: str) -> None:
        """A delivery for this insurer was just stored: push it now."""
        if self._running:
            lane = self._lane(insurer_code)
            lane.may_have_due = True
            lane.wake.set()

    def reserve(self, insurer_code: str) -> Lease | None:
        """A slot to push a just-received delivery at once, stored already
        leased: skips a wake-up and a lease round trip on the unloaded path.
        Only while the circuit is not DOWN (probes stay with the lane) and the
        lane has room. The caller then calls `start_leased` or `unreserve`."""
        if not self._running:
            return None
        lane = self._lane(insurer_code)
        if lane.circuit.health is Health.DOWN or self._free(lane) <= 0:
            return None
        lane.reserved += 1
        return Lease(self.owner, self.settings.lease_s)

    def unreserve(self, insurer_code: str) -> None:
        """The reserved slot was not used (a duplicate, a failed insert)."""
        lane = self._lane(insurer_code)
        lane.reserved = max(0, lane.reserved - 1)

    def start_leased(self, endpoint: Endpoint, delivery: Delivery) -> None:
        """Pushes a delivery stored leased to this dispatcher in a reserved slot."""
        lane = self._lane(delivery.insurer_code)
        lane.reserved = max(0, lane.reserved - 1)
        self._start(lane, endpoint, delivery)

    def start_unstored(self, endpoint: Endpoint, delivery: NewDelivery) -> None:
        """Pushes, in a reserved slot, a delivery not stored yet: the router's
        lease covers it until its outcome is stored (taken in the next batch,
        or waiting for a retry). One commit fewer per claim taken at once."""
        lane = self._lane(delivery.insurer_code)
        lane.reserved = max(0, lane.reserved - 1)
        lane.unstored[delivery.transaction_id] = delivery
        leased = copy_fields(Delivery, delivery, received_at=datetime.now(UTC), attempts=1)
        self._start(lane, endpoint, leased)

    def _free(self, lane: _Lane) -> int:
        return self.settings.max_inflight - len(lane.inflight) - lane.reserved

    def _start(self, lane: _Lane, endpoint: Endpoint, delivery: Delivery) -> None:
        probe = lane.circuit.started()
        task = asyncio.create_task(self._push(lane, endpoint, delivery, probe))
        lane.inflight[delivery.transaction_id] = task

    def _lane(self, code: str) -> _Lane:
        lane = self._lanes.get(code)
        if lane is None:
            lane = _Lane(code, Circuit(self.settings.probe_s))
            self._lanes[code] = lane
            # A fresh context: a lane outlives the RPC that happened to create
            # it, whose log bindings (rpc, transaction_id) must not leak into it.
            lane.task = asyncio.create_task(self._lane_loop(lane), context=contextvars.Context())
        return lane

    # --- the scan: expiry, backlog, waking lanes with due work --------------------
    async def _scan_loop(self) -> None:
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down, say: keep trying
                log.warning("delivery_scan_failed", error=type(exc).__name__)
            await asyncio.sleep(self.settings.poll_s)

    async def scan(self) -> None:
        expired = await self.store.expire_due()
        for code in expired:
            metrics.PUSHES.labels(code, "expired").inc()
        if expired:
            log.info("deliveries_expired", count=len(expired))
            self.on_report()
        backlog = {b.insurer_code: b for b in await self.store.backlog()}
        now = datetime.now(UTC)
        for code in set(backlog) | set(self._lanes):
            b = backlog.get(code)
            metrics.BACKLOG.labels(code).set(b.waiting if b else 0)
            oldest = (now - b.oldest).total_seconds() if b and b.oldest else 0.0
            metrics.BACKLOG_OLDEST.labels(code).set(max(0.0, oldest))
            if b is not None and b.waiting > 0:
                lane = self._lane(code)
                lane.may_have_due = True
                lane.wake.set()

    # --- one insurer's lane --------------------------------------------------------
    async def _lane_loop(self, lane: _Lane) -> None:
        while True:
            try:
                more = await self._lane_pass(lane)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("delivery_lane_failed", insurer=lane.code, error=type(exc).__name__)
                more = False
            await self._publish_health(lane)
            if more:
                continue
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that
            # lands as the event is set (a push ending while stop() cancels), and
            # the lane then outlives stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep_s(lane)):
                    await lane.wake.wait()
            lane.wake.clear()

    def _sleep_s(self, lane: _Lane) -> float | None:
        """Until a wake-up or the scan, except that a DOWN circuit wakes itself
        for its probe and an unpublished health is retried."""
        waits = [w for w in (lane.circuit.wait_s(self.clock()),) if w is not None]
        current = (lane.circuit.health, lane.circuit.failures)
        if current[0] is not Health.UNKNOWN and lane.published != current:
            waits.append(HEALTH_REPUBLISH_S)
        return min(waits) if waits else None

    async def _lane_pass(self, lane: _Lane) -> bool:
        """Starts what the cap and the circuit allow; True when there may be more."""
        endpoint = await self.endpoints.get(lane.code)
        if endpoint is None or not endpoint.pushable:
            return False  # pull, closed, or no endpoint key: deliveries wait (and may expire)
        slots = lane.circuit.slots(self.clock(), self._free(lane))
        if slots <= 0:
            return False
        down = lane.circuit.health is Health.DOWN
        batch = await self.store.lease_due(lane.code, self.owner, slots, self.settings.lease_s, any_time=down)
        for delivery in batch:
            self._start(lane, endpoint, delivery)
        lane.may_have_due = len(batch) == slots
        return len(batch) == slots and not down

    async def _push(self, lane: _Lane, endpoint: Endpoint, d: Delivery, probe: bool) -> None:
        with structlog.contextvars.bound_contextvars(transaction_id=d.transaction_id):
            try:
                started = self.clock()
                try:
                    result = await self.pusher.push(endpoint, d)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug in a pusher is a failed attempt, not a dead lane
                    log.error("push_crashed", insurer=lane.code, error=type(exc).__name__)
                    result = PushResult(False, PushError.INTERNAL.value)
                metrics.ATTEMPT_LATENCY.labels(lane.code).observe(self.clock() - started)
                # The circuit judges the endpoint: it answered, whatever becomes of its decision.
                closed = lane.circuit.record(result.taken, self.clock(), probe)
                if result.answer is not None:
                    result = await self._record_answer(lane.code, result.answer)
                elif result.error == PushError.ANSWER_DECISION_MALFORMED:
                    metrics.PUSH_ANSWERS.labels(lane.code, "malformed").inc()
                await self._settle(lane, d, result, closed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the outcome is lost: the lease ends and it is pushed again
                log.warning("push_outcome_not_stored", insurer=lane.code, error=type(exc).__name__)
            finally:
                lane.inflight.pop(d.transaction_id, None)
                lane.unstored.pop(d.transaction_id, None)
                circuit_news = lane.published != (lane.circuit.health, lane.circuit.failures)
                if lane.may_have_due or circuit_news:
                    lane.wake.set()

    async def _settle(self, lane: _Lane, d: Delivery, result: PushResult, closed: bool) -> None:
        unstored = lane.unstored.get(d.transaction_id)
        if result.taken:
            metrics.PUSHES.labels(lane.code, "taken").inc()
            taken_at = datetime.now(UTC)
            if self.taken_marks is not None:
                self.taken_marks.add(d.transaction_id, lane.code, taken_at, unstored, known=result.decided)
                log.info("claim_taken", insurer=lane.code, attempts=d.attempts)
            else:
                reported = result.decided or await self._report_taken(lane.code, d, taken_at)
                if unstored is None:
                    await self.store.mark_taken(d.transaction_id, taken_at, reported=reported)
                else:
                    await self.store.add_taken_many([(unstored, taken_at, reported)], self.settings.expiry_s)
                log.info("claim_taken", insurer=lane.code, attempts=d.attempts, reported=reported)
                if not reported:
                    self.on_report()
            await self._after_closed(lane, closed)
            return
        metrics.PUSHES.labels(lane.code, "failed").inc()
        # The registry may have changed (endpoint, CA, rotated key): read it afresh.
        self.endpoints.invalidate(lane.code)
        delay = self.settings.backoff.delay(d.attempts)
        if unstored is None:
            state = await self.store.mark_failed_attempt(d.transaction_id, self.owner, result.error, delay)
        else:
            state = await self.store.add_failed_attempt(unstored, result.error, delay, self.settings.expiry_s)
        log.info(
            "push_failed",
            insurer=lane.code,
            error=result.error,
            attempts=d.attempts,
            retry_in_s=round(delay, 2),
            health=lane.circuit.health.label,
        )
        if state == "failed":
            metrics.PUSHES.labels(lane.code, "expired").inc()
            log.info("delivery_expired", insurer=lane.code)
            self.on_report()
        # Also when the endpoint answered with a decision the router did not record.
        await self._after_closed(lane, closed)

    async def _after_closed(self, lane: _Lane, closed: bool) -> None:
        if closed:  # the endpoint is back: what sat out its backoff goes now
            log.info("insurer_circuit_closed", insurer=lane.code)
            await self.store.make_due(lane.code)

    async def _record_answer(self, code: str, answer: PushAnswer) -> PushResult:
        """The push's outcome once its answer's decision is relayed (§10.6):
        taken if the router recorded it, or kept an earlier decision (the first
        stands); else not taken, so the claim is pushed again and the insurer,
        finding it answered already, posts the decision and learns why."""
        outcome = (
            AnswerOutcome.UNRECORDED if self.answers is None else await self.answers.record(code, answer)
        )
        metrics.PUSH_ANSWERS.labels(code, outcome.value).inc()
        if outcome in (AnswerOutcome.RECORDED, AnswerOutcome.CONFLICT):
            if outcome is AnswerOutcome.CONFLICT:
                log.warning("push_answer_conflicts", insurer=code)
            # A decision recorded notes the claim taken at the router (the
            # earlier one, in a conflict, did too): nothing to report.
            return PushResult(True, decided=True)
        error = (
            PushError.ANSWER_DECISION_REFUSED
            if outcome is AnswerOutcome.REFUSED
            else PushError.ANSWER_DECISION_UNRECORDED
        )
        return PushResult(False, error.value)

    async def _report_taken(self, code: str, d: Delivery, taken_at: datetime) -> bool:
        """Reports a taken push straight away: one call instead of the outbox's
        lease, call and second write. Should this process die before the row
        says so, the push is repeated once its lease ends, the insurer
        deduplicates it, and the router's ReportTaken is idempotent."""
        if self.reports is None:
            return False
        report = PendingReport(d.transaction_id, code, ReportKind.TAKEN, taken_at, 1)
        problem = await self.reports.report(report)
        metrics.REPORTS.labels(ReportKind.TAKEN.value, "acked" if problem is None else "retry").inc()
        return problem is None

    async def _publish_health(self, lane: _Lane) -> None:
        health, failures = lane.circuit.health, lane.circuit.failures
        metrics.CIRCUIT.labels(lane.code).set(int(health))
        if health is Health.UNKNOWN or lane.published == (health, failures):
            return
        now = self.clock()
        same_health = lane.published is not None and lane.published[0] is health
        if same_health and now - lane.published_at < HEALTH_REPUBLISH_S:
            return
        try:
            await self.health.set_push_health(lane.code, health.label, failures)
        except Exception as exc:  # published on a later pass
            log.warning("health_publish_failed", insurer=lane.code, error=type(exc).__name__)
            return
        if lane.published is None or lane.published[0] is not health:
            log.info("insurer_health", insurer=lane.code, health=health.label, failures=failures)
        lane.published, lane.published_at = (health, failures), now
