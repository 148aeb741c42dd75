"""Decides what the inbox holds: open the envelope, ask the insurer's handler,
seal each ClaimResponse to the hospital's current key, post it through the
gateway (§6 PostDecision), then mark the row decided.

Each claim runs as its own task (a decision that waits, e.g. PENDING_REVIEW
then APPROVED later, never holds up others), at most `max_active` at once;
the rest wait in the inbox. A failed attempt is retried with full-jitter
backoff (1 s doubling to 60 s); a crash loses nothing because the inbox row
stays open until the final decision is posted. PENDING_REVIEW followed by a
final decision is recorded in between, so a restart does not post it twice.
The decision is staged in the inbox, sealed, before its first post: a post
whose answer was lost is repeated byte for byte (the hub takes it as the same
decision, not a conflicting one) and the handler is asked once per claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from dataclasses import replace
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc

from iclaim.crypto.envelope import EnvelopeError, seal
from iclaim.errors import reason_in_trailers
from iclaim.fhir import FhirError, build_claim_response
from iclaim.fhir import claim_response as fhir_states
from iclaim.insurer.credentials import InsurerCredentials
from iclaim.insurer.handler import (
    APPROVED,
    DENIED,
    MAX_DELAY_S,
    PARTIALLY_APPROVED,
    PENDING_REVIEW,
    ClaimHandler,
    Decision,
)
from iclaim.insurer.inbox import DECIDED, FAILED, OPEN_STATES, REVIEWING, Inbox, PutResult, StagedPost
from iclaim.insurer.opening import InvalidDocument, open_claim
from iclaim.v1 import insurer_service_pb2 as ipb

log = logging.getLogger("iclaim.insurer")

FHIR_STATE: dict[int, str] = {
    PENDING_REVIEW: fhir_states.PENDING_REVIEW,
    APPROVED: fhir_states.APPROVED,
    PARTIALLY_APPROVED: fhir_states.PARTIALLY_APPROVED,
    DENIED: fhir_states.DENIED,
}
REASON_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
DEFAULT_MAX_ACTIVE = 256
SCAN_INTERVAL_S = 1.0
BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 60.0
# The hospital's current key is looked up through the gateway; reused this
# long (a rotation is announced ahead, and the previous key stays accepted).
HOSPITAL_KEY_TTL_S = 5.0
PURGE_INTERVAL_S = 3600.0
# Answering a push with its decision (§10.6): the handler, the hospital's key
# and the seal get this long, well within the hub's 10 s push timeout; past
# it the claim is only stored, and the worker asks the handler again.
ANSWER_BUDGET_S = 3.0
# The hub reads at most 64 KiB of an answer; a bigger decision is posted.
MAX_ANSWER_ENVELOPE = 60 * 1024


class InsurerGateway(Protocol):
    """What the kit calls on the gateway; `iclaim.client.insurer.InsurerClient` is one."""

    async def hospital_key(self, hospital_code: str) -> dict[str, Any]: ...

    async def post_decision(
        self,
        transaction_id: str,
        *,
        state: int,
        approved_amount_satang: int,
        decision_envelope: str,
        reason_code: str = "",
    ) -> Any: ...

    async def pull(self, max_claims: int = 10, wait_s: float = 0.0) -> list[ipb.ClaimDelivery]: ...


class _Retry(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _GiveUp(Exception):
    def __init__(self, reason: str, *, decided: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.decided = decided  # the claim is decided already (e.g. by an earlier run)


def decision_steps(decision: Decision) -> list[Decision]:
    """The decisions to post, in order; raises _GiveUp(DECISION_INVALID)."""
    if not isinstance(decision, Decision):
        raise _GiveUp("DECISION_INVALID")
    steps = [decision]
    if decision.pending_then is not None:
        if decision.state != PENDING_REVIEW:
            raise _GiveUp("DECISION_INVALID")
        steps.append(decision.pending_then)
    for i, step in enumerate(steps):
        if step.state not in FHIR_STATE:
            raise _GiveUp("DECISION_INVALID")
        if i > 0 and (step.state == PENDING_REVIEW or step.pending_then is not None):
            raise _GiveUp("DECISION_INVALID")  # one review step, then a final decision
        if step.reason_code and not REASON_CODE_RE.fullmatch(step.reason_code):
            raise _GiveUp("DECISION_INVALID")
        if not 0 <= step.delay_s <= MAX_DELAY_S:
            raise _GiveUp("DECISION_DELAY_INVALID")
    return steps


def _reason(exc: grpc.aio.AioRpcError) -> str:
    reason = reason_in_trailers(exc.trailing_metadata())
    return reason if REASON_CODE_RE.fullmatch(reason) else ""


def _classify(exc: grpc.aio.AioRpcError) -> Exception:
    code, reason = exc.code(), _reason(exc)
    label = f"{code.name}:{reason}" if reason else code.name
    if code == grpc.StatusCode.FAILED_PRECONDITION and reason == "DECISION_CONFLICT":
        return _GiveUp(label, decided=True)
    if code == grpc.StatusCode.INVALID_ARGUMENT and reason == "ENVELOPE_KID_UNKNOWN":
        return _Retry(label)  # the hospital rotated its key: look it up again
    if code in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    ):
        return _GiveUp(label)
    return _Retry(label)


def backoff_s(attempts: int, rand: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(cap, first * 2**attempts))."""
    return float(rand() * min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2.0 ** min(attempts, 16)))


class Worker:
    def __init__(
        self,
        inbox: Inbox,
        insurers: Mapping[str, InsurerCredentials],
        handlers: Mapping[str, ClaimHandler],
        clients: Mapping[str, InsurerGateway],
        *,
        max_active: int = DEFAULT_MAX_ACTIVE,
        scan_interval_s: float = SCAN_INTERVAL_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        missing = set(insurers) - set(handlers) | set(insurers) - set(clients)
        if missing:
            raise ValueError(f"no handler or gateway client for {sorted(missing)}")
        self.inbox = inbox
        self.insurers = dict(insurers)
        self.handlers = dict(handlers)
        self.clients = dict(clients)
        self.max_active = max_active
        self.scan_interval_s = scan_interval_s
        self._sleep = sleep
        self._monotonic = monotonic
        self._rand = rand
        self._active: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._keys: dict[str, tuple[float, dict[str, Any]]] = {}
        self._closed = False

    @property
    def active(self) -> int:
        return len(self._active)

    def submit(self, insurer_code: str, transaction_id: str) -> None:
        """A new delivery was stored: start on it now if there is room (else
        the next scan of the inbox picks it up)."""
        key = (insurer_code, transaction_id)
        if self._closed or key in self._active:
            return
        if len(self._active) >= self.max_active:
            self._wake.set()
            return
        self._spawn(key)

    def _spawn(self, key: tuple[str, str]) -> None:
        task = asyncio.create_task(self._attempt(*key))
        self._active[key] = task

        def done(_: asyncio.Task[None]) -> None:
            self._active.pop(key, None)
            self._wake.set()

        task.add_done_callback(done)

    async def answer(
        self, insurer_code: str, delivery: ipb.ClaimDelivery
    ) -> tuple[PutResult, StagedPost | None]:
        """Takes a pushed delivery (checked, verified) and, if its decision is
        final and due at once, returns it to answer the push with (§10.6),
        stored decided in the same commit. Otherwise the delivery is stored for
        the worker: with its decision staged when the handler gave one (the
        handler is asked once), without when it failed or overran the budget."""
        code, tid = insurer_code, delivery.transaction_id
        if await self.inbox.state_of(code, tid) is not None:
            return await self._put_plain(code, delivery), None  # pushed again
        try:
            async with asyncio.timeout(ANSWER_BUDGET_S):
                posts = await self._prepare(code, delivery)
        except (_Retry, _GiveUp, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, (_Retry, _GiveUp)) else "ANSWER_BUDGET"
            log.info("insurer kit: %s %s not answered in the push (%s)", code, tid, reason)
            return await self._put_plain(code, delivery), None
        except Exception as exc:  # noqa: BLE001 (store it for the worker rather than refuse the push)
            log.warning("insurer kit: %s %s not answered in the push (%s)", code, tid, type(exc).__name__)
            return await self._put_plain(code, delivery), None
        answered = (
            len(posts) == 1
            and posts[0].state != PENDING_REVIEW
            and posts[0].delay_s == 0
            and len(posts[0].envelope) <= MAX_ANSWER_ENVELOPE
        )
        result = await self.inbox.put_with_posts(code, delivery, posts, answered=answered)
        if result is PutResult.NEW and answered:
            return result, posts[0]
        if result in (PutResult.NEW, PutResult.REOPENED):
            self.submit(code, tid)
        return result, None

    async def _put_plain(self, code: str, delivery: ipb.ClaimDelivery) -> PutResult:
        result = await self.inbox.put(code, delivery)
        if result in (PutResult.NEW, PutResult.REOPENED):
            self.submit(code, delivery.transaction_id)
        return result

    async def _prepare(self, code: str, delivery: ipb.ClaimDelivery) -> list[StagedPost]:
        """The decision's steps, each sealed: the handler asked, not stored."""
        posts = await self._unsealed_posts(code, delivery)
        return [replace(p, envelope=await self._seal(code, delivery, p)) for p in posts]

    async def _unsealed_posts(self, code: str, delivery: ipb.ClaimDelivery) -> list[StagedPost]:
        """The handler's decision as the steps to post, not sealed yet."""
        return [
            StagedPost(i, step.state, step.approved_satang, step.reason_code, step.delay_s)
            for i, step in enumerate(await self._steps(code, delivery))
        ]

    async def run(self, stop: asyncio.Event) -> None:
        """Scans the inbox for due rows until `stop`; then cancels what runs
        (open rows are resumed by the next run)."""
        codes = sorted(self.insurers)
        await self.inbox.reset_schedule(codes)
        next_purge = 0.0
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self._scan(codes)
                    if self._monotonic() >= next_purge:
                        next_purge = self._monotonic() + PURGE_INTERVAL_S
                        await self.inbox.purge()
                except Exception as exc:  # noqa: BLE001 (the inbox may be briefly unusable; keep going)
                    log.warning("insurer kit: inbox scan failed (%s)", type(exc).__name__)
                waking = asyncio.create_task(self._wake.wait())
                await asyncio.wait(
                    {stopping, waking}, timeout=self.scan_interval_s, return_when=asyncio.FIRST_COMPLETED
                )
                waking.cancel()
        finally:
            stopping.cancel()
            await self.close()

    async def _scan(self, codes: Sequence[str]) -> None:
        free = self.max_active - len(self._active)
        if free <= 0:
            return
        for key in await self.inbox.due(codes, free + len(self._active)):
            if len(self._active) >= self.max_active:
                break
            if key not in self._active and not self._closed:
                self._spawn(key)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._active.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _attempt(self, insurer_code: str, transaction_id: str) -> None:
        try:
            await self.process(insurer_code, transaction_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (anything unforeseen: retry later, never lose the claim)
            log.warning("insurer kit: %s %s failed (%s)", insurer_code, transaction_id, type(exc).__name__)
            with contextlib.suppress(Exception):  # else the next run's reset retries it
                await self._retry_later(insurer_code, transaction_id, "WORKER_ERROR")

    async def _retry_later(self, insurer_code: str, transaction_id: str, reason: str) -> None:
        item = await self.inbox.get(insurer_code, transaction_id)
        attempts = item.attempts if item else 0
        delay = backoff_s(attempts, self._rand)
        await self.inbox.reschedule(insurer_code, transaction_id, delay, reason)
        log.info(
            "insurer kit: %s %s will be retried in %.1f s (%s)", insurer_code, transaction_id, delay, reason
        )

    async def process(self, insurer_code: str, transaction_id: str) -> str:
        """One attempt at one claim; returns the row's state afterwards."""
        item, staged = await self.inbox.load(insurer_code, transaction_id)
        if item is None or item.state not in OPEN_STATES:
            return item.state if item else ""
        try:
            await self._decide(insurer_code, item.delivery, item.state, staged)
        except _Retry as exc:
            await self._retry_later(insurer_code, transaction_id, exc.reason)
            return await self.inbox.state_of(insurer_code, transaction_id) or item.state
        except _GiveUp as exc:
            state = DECIDED if exc.decided else FAILED
            (log.warning if exc.decided else log.error)(
                "insurer kit: %s %s %s (%s)",
                insurer_code,
                transaction_id,
                "was decided already" if exc.decided else "cannot be decided; giving up",
                exc.reason,
            )
            await self.inbox.mark(insurer_code, transaction_id, state, exc.reason)
            return state
        await self.inbox.mark(insurer_code, transaction_id, DECIDED)
        return DECIDED

    async def _decide(
        self, code: str, delivery: ipb.ClaimDelivery, state: str, staged: list[StagedPost]
    ) -> None:
        tid = delivery.transaction_id
        posts = staged or await self._unsealed_posts(code, delivery)
        if not all(p.envelope for p in posts):
            try:
                posts = [
                    p if p.envelope else replace(p, envelope=await self._seal(code, delivery, p))
                    for p in posts
                ]
            except Exception:
                if not staged:
                    # The handler's answer is kept unsealed (the hospital's key
                    # could not be had): the retry seals it, never asks again.
                    await self.inbox.stage(code, tid, posts)
                raise
            # Kept before the first post, so a post whose answer is lost is
            # repeated byte for byte and the handler is not asked again.
            await self.inbox.stage(code, tid, posts)
        for post in posts:
            if post.state == PENDING_REVIEW and state == REVIEWING:
                continue  # posted by an earlier attempt
            if post.delay_s > 0:
                await self._sleep(post.delay_s)
            await self._post(code, delivery, post, posts)
            if post.state == PENDING_REVIEW and post.step + 1 < len(posts):
                await self.inbox.mark(code, tid, REVIEWING)

    async def _steps(self, code: str, delivery: ipb.ClaimDelivery) -> list[Decision]:
        opened = open_claim(self.insurers[code], delivery)
        if isinstance(opened, InvalidDocument):
            log.warning(
                "insurer kit: %s %s invalid claim document (%s)",
                code,
                delivery.transaction_id,
                opened.problem,
            )
            return [Decision.deny(fhir_states.INVALID_CLAIM_DOCUMENT)]
        try:
            decision = await self.handlers[code].decide(opened)
        except Exception as exc:  # noqa: BLE001 (the insurer's code failed: try again later)
            raise _Retry(f"HANDLER_ERROR:{type(exc).__name__}") from None
        return decision_steps(decision)

    def _document(self, code: str, delivery: ipb.ClaimDelivery, step: Decision) -> bytes:
        try:
            return build_claim_response(
                claim_ref=delivery.claim_ref,
                hospital_code=delivery.hospital_code,
                insurer_code=code,
                state=FHIR_STATE[step.state],
                billed_satang=delivery.billed_amount_satang,
                approved_satang=step.approved_satang,
                reason_code=step.reason_code,
            )
        except FhirError as exc:
            raise _GiveUp(f"DECISION_INVALID:{exc.reason}") from None

    async def _hospital_key(self, code: str, hospital_code: str) -> dict[str, Any]:
        cached = self._keys.get(hospital_code)
        if cached and cached[0] > self._monotonic():
            return cached[1]
        try:
            jwk = await self.clients[code].hospital_key(hospital_code)
        except grpc.aio.AioRpcError as exc:
            raise _classify(exc) from None
        except KeyError:
            raise _Retry("HOSPITAL_KEY_MISSING") from None
        self._keys[hospital_code] = (self._monotonic() + HOSPITAL_KEY_TTL_S, jwk)
        return jwk

    async def _seal(self, code: str, delivery: ipb.ClaimDelivery, post: StagedPost) -> str:
        document = self._document(
            code, delivery, Decision(post.state, post.approved_satang, post.reason_code)
        )
        try:
            return seal(
                document,
                await self._hospital_key(code, delivery.hospital_code),
                sender=code,
                recipient=delivery.hospital_code,
                claim_ref=delivery.claim_ref,
                amount_satang=post.approved_satang,
            )
        except (EnvelopeError, ValueError, TypeError):
            # A listed key we cannot seal to: ask again later, maybe it is fixed.
            self._keys.pop(delivery.hospital_code, None)
            raise _Retry("HOSPITAL_KEY_UNUSABLE") from None

    async def _post(
        self, code: str, delivery: ipb.ClaimDelivery, post: StagedPost, posts: Sequence[StagedPost]
    ) -> None:
        try:
            await self.clients[code].post_decision(
                delivery.transaction_id,
                state=post.state,
                approved_amount_satang=post.approved_satang,
                decision_envelope=post.envelope,
                reason_code=post.reason_code,
            )
        except grpc.aio.AioRpcError as exc:
            error = _classify(exc)
            if isinstance(error, _Retry):
                self._keys.pop(delivery.hospital_code, None)
            if _reason(exc) == "ENVELOPE_KID_UNKNOWN":
                # Refused, so not recorded: seal again to the hospital's current key.
                await self.inbox.stage(
                    code, delivery.transaction_id, [replace(p, envelope="") for p in posts]
                )
            raise error from None
        log.debug(
            "insurer kit: %s %s posted %s",
            code,
            delivery.transaction_id,
            FHIR_STATE[post.state],
        )
