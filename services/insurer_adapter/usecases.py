"""The adapter's use cases: accept a claim the router delivers, enrol the
simulated insurers, decide due claims and report due decisions to the router.
No transport types here; storage, the registry and the router are the
protocols below.

Deciding and reporting work on leased rows (lease_owner/lease_until, taken with
FOR UPDATE SKIP LOCKED), so two replicas never work on the same row and an
expired lease (a crash) frees it. Decisions are stored (the outbox) before
anything is sent, and sent in seq order until the router acknowledges.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import structlog

from iclaim.crypto.envelope import (
    CLAIM_REF_MAX,
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    generate_encryption_key,
    parse_protected_header,
    sha256_hex,
)
from iclaim.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from iclaim_hub.registry.model import Principal
from services.insurer_adapter import metrics, simulator
from services.insurer_adapter.model import (
    Added,
    Delivery,
    DeliveryRequest,
    InsurerKey,
    NewDelivery,
    PendingDecision,
    SealedDecision,
    SendOutcome,
    SendResult,
    StorageUnavailable,
)
from services.insurer_adapter.processing import assess, seal_decisions

log = structlog.get_logger("iclaim.adapter")

_TXID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_INSURER = re.compile(r"^[A-Z0-9_]{2,16}$")
# MOPH hcodes are 5 digits; the router has authenticated the hospital, so stay lenient.
_HOSPITAL = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


# --- seams -------------------------------------------------------------------------
class DeliveryLog(Protocol):
    async def add_delivery(self, d: NewDelivery) -> Added: ...


class KeyStore(Protocol):
    async def current_keys(self) -> dict[str, InsurerKey]: ...

    async def add_key(
        self, insurer_code: str, kid: str, private_jwk: dict[str, Any], public_jwk: dict[str, Any]
    ) -> None: ...

    async def private_jwk(self, insurer_code: str, kid: str) -> dict[str, Any] | None: ...

    def enrolment_lock(self) -> AbstractAsyncContextManager[None]: ...


class WorkStore(Protocol):
    """The deliveries still to decide and the outbox of decisions to send."""

    async def lease_due_deliveries(self, owner: str, limit: int, lease_s: float) -> list[Delivery]: ...

    async def record_decisions(
        self, transaction_id: str, owner: str, decisions: Sequence[SealedDecision]
    ) -> bool: ...

    async def postpone_delivery(
        self, transaction_id: str, owner: str, delay_s: float, error: str
    ) -> None: ...

    async def lease_due_decisions(self, owner: str, limit: int, lease_s: float) -> list[PendingDecision]: ...

    async def mark_sent(self, d: PendingDecision) -> None: ...

    async def mark_retry(self, d: PendingDecision, owner: str, delay_s: float, error: str) -> None: ...

    async def mark_failed(self, d: PendingDecision, error: str) -> None: ...


class Directory(Protocol):
    async def principals(self, role: str | None = None) -> list[Principal]: ...

    async def principal(self, code: str) -> Principal | None: ...

    async def add_encryption_key(self, code: str, kid: str, public_jwk: dict[str, object]) -> None: ...


class DecisionIntake(Protocol):
    """The router's side of a decision report."""

    async def record(self, decision: PendingDecision) -> SendResult: ...


# --- enrolment ----------------------------------------------------------------------
def new_kid(insurer_code: str, now: dt.datetime | None = None) -> str:
    day = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d")
    return f"{insurer_code}-{day}-{secrets.token_hex(4)}"


class SimulatedInsurers:
    """Each simulated insurer gets an X25519 key whose private half the adapter
    keeps (sealed) and whose public half goes into the registry; this also knows
    which insurers the adapter holds keys for."""

    def __init__(self, directory: Directory, keys: KeyStore) -> None:
        self._directory = directory
        self._keys = keys
        self._codes: frozenset[str] = frozenset()
        self._refreshed = 0.0

    async def enrol(self) -> list[str]:
        """Idempotent: generates a key only for a simulated insurer without one, and
        (re)publishes ours wherever the registry's current key is not it (e.g. after
        a crash between storing and publishing). Returns the codes it changed."""
        changed: list[str] = []
        async with self._keys.enrolment_lock():
            insurers = [
                p for p in await self._directory.principals("insurer") if p.delivery_mode == "simulated"
            ]
            ours = await self._keys.current_keys()
            for p in insurers:
                key = ours.get(p.code)
                public: dict[str, Any]
                if key is None:
                    kid = new_kid(p.code)
                    private, public = generate_encryption_key(kid)
                    await self._keys.add_key(p.code, kid, private, public)  # stored before published
                else:
                    kid, public = key.kid, dict(key.public_jwk)
                current = p.current_key()
                if current is None or current.kid != kid:
                    await self._directory.add_encryption_key(p.code, kid, public)
                    changed.append(p.code)
        if changed:
            log.info("insurers_enrolled", count=len(changed))
        await self.refresh()
        return changed

    async def refresh(self) -> None:
        self._codes = frozenset(await self._keys.current_keys())
        self._refreshed = time.monotonic()

    async def serves(self, insurer_code: str) -> bool:
        # An unknown code re-reads the keys, at most once a second.
        if insurer_code not in self._codes and time.monotonic() - self._refreshed > 1.0:
            await self.refresh()
        return insurer_code in self._codes


# --- DeliverClaim -------------------------------------------------------------------
def checked(r: DeliveryRequest) -> NewDelivery:
    if not _TXID.match(r.transaction_id):
        raise InvalidArgument("transaction_id is missing or malformed", reason="TRANSACTION_ID_INVALID")
    if not _INSURER.match(r.insurer_code):
        raise InvalidArgument("insurer_code is malformed", reason="INSURER_CODE_INVALID")
    if not _HOSPITAL.match(r.hospital_code):
        raise InvalidArgument("hospital_code is malformed", reason="HOSPITAL_CODE_INVALID")
    if not r.claim_ref or len(r.claim_ref) > CLAIM_REF_MAX:
        raise InvalidArgument("claim_ref is missing or too long", reason="CLAIM_REF_INVALID")
    if r.billed_amount_satang < 0:
        raise InvalidArgument("billed_amount_satang is negative", reason="AMOUNT_INVALID")
    if not r.envelope:
        raise InvalidArgument("envelope is empty", reason="ENVELOPE_MISSING")
    if len(r.envelope.encode("utf-8")) > MAX_ENVELOPE_BYTES:
        raise InvalidArgument("envelope exceeds 1 MiB", reason="ENVELOPE_TOO_LARGE")
    return NewDelivery(**asdict(r), envelope_sha256=sha256_hex(r.envelope))


class ClaimIntake:
    def __init__(self, store: DeliveryLog, insurers: SimulatedInsurers, on_new: Callable[[], None]) -> None:
        self._store = store
        self._insurers = insurers
        self._on_new = on_new  # a new delivery is committed: decide it without waiting

    async def deliver(self, request: DeliveryRequest) -> bool:
        """Stores the claim for deciding; True when new, False for a redelivery."""
        delivery = checked(request)
        try:
            if not await self._insurers.serves(delivery.insurer_code):
                raise FailedPrecondition(
                    "insurer is not served by the simulator", reason="INSURER_NOT_SIMULATED"
                )
            added = await self._store.add_delivery(delivery)
        except StorageUnavailable as exc:
            raise Unavailable("storage unavailable", reason="STORAGE_UNAVAILABLE") from exc
        if added is Added.CONFLICT:
            raise AlreadyExists(
                "transaction_id was delivered with different content", reason="DELIVERY_CONFLICT"
            )
        new = added is Added.NEW
        metrics.DELIVERIES.labels("new" if new else "duplicate").inc()
        log.info("claim_delivered", insurer=delivery.insurer_code, duplicate=not new)
        if new:
            self._on_new()
        return new


# --- deciding and reporting ---------------------------------------------------------
@dataclass(frozen=True)
class WorkSettings:
    timing: simulator.Timing
    batch: int = 32
    lease_s: float = 30.0
    retry_base_s: float = 0.2
    retry_max_s: float = 30.0

    def backoff(self, attempts: int) -> float:
        """Exponential with full jitter on the upper half, never above retry_max_s."""
        ceiling = min(self.retry_max_s, self.retry_base_s * float(2 ** max(0, min(attempts - 1, 30))))
        return ceiling / 2 + secrets.randbelow(1000) / 1000 * ceiling / 2


class RetryLater(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Decider:
    """Opens, checks, reads and decides each due delivery, and stores the sealed
    decisions; a claim is decided at most once (record_decisions holds the lease)."""

    def __init__(
        self, store: WorkStore, keys: KeyStore, directory: Directory, settings: WorkSettings
    ) -> None:
        self._store = store
        self._keys = keys
        self._directory = directory
        self._s = settings
        self._key_cache: dict[tuple[str, str], dict[str, Any]] = {}

    async def decide_due(self, owner: str, on_decided: Callable[[], None]) -> bool:
        """One batch; True when it was full (there may be more due)."""
        batch = await self._store.lease_due_deliveries(owner, self._s.batch, self._s.lease_s)
        if batch:
            await asyncio.gather(*(self._decide(d, owner, on_decided) for d in batch))
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

    async def _decide(self, d: Delivery, owner: str, on_decided: Callable[[], None]) -> None:
        with structlog.contextvars.bound_contextvars(transaction_id=d.transaction_id):
            try:
                assessment = assess(d, await self._private_jwk(d), self._s.timing)
                if assessment.problem:
                    log.info("claim_document_invalid", problem=assessment.problem)
                hospital = await self._directory.principal(d.hospital_code)
                key = hospital.current_key() if hospital is not None else None
                if key is None:
                    raise RetryLater("HOSPITAL_KEY_MISSING")
                try:
                    sealed = seal_decisions(d, assessment.steps, key.public_jwk)
                except EnvelopeError as exc:
                    raise RetryLater(f"HOSPITAL_KEY_{exc.reason}") from exc
                if await self._store.record_decisions(d.transaction_id, owner, sealed):
                    final = sealed[-1]
                    log.info(
                        "claim_decided",
                        insurer=d.insurer_code,
                        state=final.state,
                        reason=final.reason_code,
                        steps=len(sealed),
                    )
                    on_decided()
                else:
                    log.info("claim_decided_elsewhere")
            except asyncio.CancelledError:
                raise
            except RetryLater as exc:
                delay = self._s.backoff(d.process_attempts)
                log.warning("decide_postponed", reason=exc.reason, retry_in_s=round(delay, 2))
                await self._store.postpone_delivery(d.transaction_id, owner, delay, exc.reason)
            except Exception:
                delay = self._s.backoff(d.process_attempts)
                log.warning("decide_failed", retry_in_s=round(delay, 2), exc_info=True)
                with contextlib.suppress(Exception):
                    await self._store.postpone_delivery(d.transaction_id, owner, delay, "INTERNAL")


class Sender:
    """Reports each due decision to the router until it is acknowledged or
    refused for good."""

    def __init__(self, store: WorkStore, intake: DecisionIntake, settings: WorkSettings) -> None:
        self._store = store
        self._intake = intake
        self._s = settings

    async def send_due(self, owner: str) -> bool:
        """One batch; True when it was full (there may be more due)."""
        batch = await self._store.lease_due_decisions(owner, self._s.batch, self._s.lease_s)
        if batch:
            await asyncio.gather(*(self._send(d, owner) for d in batch))
        return len(batch) == self._s.batch

    async def _send(self, d: PendingDecision, owner: str) -> None:
        with structlog.contextvars.bound_contextvars(transaction_id=d.transaction_id):
            result = await self._intake.record(d)
            if result.outcome is SendOutcome.ACKNOWLEDGED:
                await self._store.mark_sent(d)
                metrics.DECISIONS.labels(d.state, "recorded").inc()
                if d.final:
                    latency = dt.datetime.now(dt.UTC) - d.received_at
                    metrics.DECISION_LATENCY.observe(max(0.0, latency.total_seconds()))
                log.info("decision_recorded", state=d.state, attempts=d.attempts)
            elif result.outcome is SendOutcome.REJECTED:
                await self._store.mark_failed(d, result.code)
                metrics.DECISIONS.labels(d.state, "failed").inc()
                log.error("decision_rejected", state=d.state, code=result.code, detail=result.detail)
            else:
                delay = self._s.backoff(d.attempts)
                await self._store.mark_retry(d, owner, delay, result.code)
                metrics.DECISION_SEND_RETRIES.labels(result.code).inc()
                log.warning(
                    "decision_send_retry", code=result.code, attempts=d.attempts, retry_in_s=round(delay, 2)
                )
