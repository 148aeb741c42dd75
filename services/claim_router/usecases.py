"""The router's use cases, one method each, shared by the public and internal
servicers. No transport types here: callers pass plain values and get claim
records back; storage, the directory and wake-ups are the protocols below."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import KW_ONLY, dataclass, field, replace
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

import structlog

from iclaim.crypto.envelope import ProtectedHeader, sha256_hex
from iclaim.errors import Code, FailedPrecondition, IclaimError, InvalidArgument, NotFound
from iclaim_hub.common import tracing
from iclaim_hub.common.fields import copy_fields
from iclaim_hub.registry.model import (
    DEFAULT_KEY_GRACE_S,
    DELIVERY_PULL,
    HEALTH_UNKNOWN,
    PUSH_MODES,
    EncryptionKeyRecord,
    InsurerHealth,
    Principal,
)
from services.claim_router import domain
from services.claim_router.domain import State
from services.claim_router.events import state_change_events
from services.claim_router.metrics import CLAIM_OUTCOMES, DECISION_LATENCY, SUBMIT_LATENCY
from services.claim_router.model import ClaimChange, ClaimRecord, DecisionOutcome, Event, Leased, Mutation
from services.claim_router.pull_handoff import PullHandOff

log = structlog.get_logger("claim_router.usecases")

DEFAULT_PULL_LEASE_S = 60.0  # §6: an undecided pulled claim is offered again after this
# Wake-ups can be lost (a dropped LISTEN connection), so waiters re-read this often.
WATCH_RECHECK_S = 15.0
# A wait that registers its interest (claim_interest) re-reads once this soon:
# a write on another replica whose statement began before the registration
# committed does not announce itself to it.
INTEREST_SETTLE_S = 1.0
# A waiting pull also looks again when a leased claim's lease ends (nothing
# announces that), a moment after, so that the claim is offered by then.
LEASE_END_MARGIN_S = 0.05
# A replica notes that it polls for an insurer (so that other replicas announce
# its new claims) at most this often; store.PULL_POLLER_FRESH_S is the note's life.
PULL_POLLER_RENEW_S = 30.0
# §10.5: a pull insurer's last PullClaims is written at most this often (per replica).
PULL_RECORD_INTERVAL_S = 10.0
# Billing's read-through names at most this many claims (its invoice and payment limit).
MAX_DECISION_LOOKUP = 1000
# ReportTakenBatch: what one call may carry (delivery_report.proto).
MAX_REPORTS_PER_CALL = 500

# Audit routes of the state changes each use case makes.
ROUTE_SUBMIT = "/iclaim.v1.ClaimService/SubmitClaim"
ROUTE_CANCEL = "/iclaim.v1.ClaimService/CancelClaim"
ROUTE_PULL = "/iclaim.v1.InsurerService/PullClaims"
ROUTE_DECISION = "/iclaim.v1.InsurerService/PostDecision"
# A decision in the insurer's answer to a push (§10.6), relayed by the adapter:
# the relay's route (a push answered by webhook is no RPC; the audit log takes
# public, open and internal routes only).
ROUTE_PUSH_ANSWER = "/iclaim_hub.internal.v1.DecisionIntakeService/RecordDecision"
ROUTE_MARK_PAID = "/iclaim_hub.internal.v1.ClaimSettlementService/MarkClaimPaid"
ROUTE_REPORT_TAKEN = "/iclaim_hub.internal.v1.DeliveryReportService/ReportTaken"
ROUTE_REPORT_TAKEN_BATCH = "/iclaim_hub.internal.v1.DeliveryReportService/ReportTakenBatch"
ROUTE_REPORT_EXPIRED = "/iclaim_hub.internal.v1.DeliveryReportService/ReportExpired"
ROUTE_REPORT_REDRIVEN = "/iclaim_hub.internal.v1.DeliveryReportService/ReportRedriven"
# Who the audit log names for changes the hub makes itself.
HUB_ACTOR = "ICLAIM"

T = TypeVar("T")
# A google.protobuf.Duration as (seconds, nanos), not yet checked.
DurationParts = tuple[int, int]


class ClaimStore(Protocol):
    async def insert(
        self,
        rec: ClaimRecord,
        events: Sequence[Event],
        *,
        waits: bool = False,
        pull_lease_s: float | None = None,
    ) -> tuple[ClaimRecord, bool]:
        """`waits`: this replica's caller waits for the decision (no announcement
        needed). `pull_lease_s`: a DELIVERED pull claim, stored leased that long."""

    async def note_interest(self, transaction_id: str) -> int | None:
        """Asks other replicas' writers to announce the claim's changes; None
        when they announce every change anyway. Returns what to drop."""

    async def drop_interest(self, interest_id: int) -> None: ...

    async def get(self, transaction_id: str) -> ClaimRecord | None: ...

    def recent(self, transaction_id: str) -> ClaimRecord | None:
        """The open claim as this replica last stored it, if at hand (maybe
        stale: only a starting point for transition(..., cached=True))."""

    async def state_of(self, transaction_id: str) -> State | None: ...

    async def find_by_ref(self, hospital_code: str, claim_ref: str) -> ClaimRecord | None: ...

    async def transition(
        self,
        transaction_id: str,
        mutate: Mutation,
        current: ClaimRecord | None = None,
        *,
        cached: bool = False,
    ) -> ClaimRecord | None:
        """`mutate` may run more than once (a concurrent change): no side effects."""

    async def transition_many(
        self,
        transaction_ids: Sequence[str],
        mutate: Mutation,
        settled: Callable[[ClaimRecord], bool] | None = None,
    ) -> dict[str, ClaimRecord]:
        """`transition` for many claims in one commit; those found, as stored.
        `settled`: a copy at hand for which no later version could change
        `mutate`'s "no change" is taken without a read."""

    async def list_for_hospital(
        self,
        hospital_code: str,
        *,
        state: State | None,
        insurer_code: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[ClaimRecord]: ...

    async def lease_pull(
        self,
        insurer_code: str,
        limit: int,
        lease_s: float,
        on_delivered: Callable[[ClaimRecord], Sequence[Event]],
    ) -> Leased: ...

    async def next_pull_offer_s(self, insurer_code: str) -> float | None: ...

    async def note_pull_poller(self, insurer_code: str) -> bool:
        """Other replicas announce the insurer's new claims here for a while;
        True when this replica was not noted as polling for it until now."""

    async def pull_waiting_since(self) -> dict[str, datetime]: ...


class Directory(Protocol):
    async def get(self, code: str) -> Principal | None: ...

    async def insurers(self) -> list[Principal]: ...

    async def healths(self) -> dict[str, InsurerHealth]: ...


class PullLog(Protocol):
    """Where a pull insurer's last PullClaims is recorded (the registry)."""

    async def record_pull(self, code: str) -> None: ...


class ChangeFeed(Protocol):
    """Events set when a claim changed or pull work arrived, on any replica."""

    def claim_changes(self, transaction_id: str) -> AbstractContextManager[ClaimChange]: ...

    def pull_ready(self, insurer_code: str) -> AbstractContextManager[asyncio.Event]: ...

    def pull_heard(self, insurer_code: str) -> int:
        """Grows whenever pull work for the insurer may have arrived."""


class PushQueue(Protocol):
    def kick(self, rec: ClaimRecord) -> None: ...


@dataclass(frozen=True)
class Party:
    """A directory entry as another participant sees it."""

    principal: Principal
    available: bool
    keys: tuple[EncryptionKeyRecord, ...]  # the ones an envelope to it may name
    delivery: str = ""  # insurers: pull | grpc | webhook
    health: str = HEALTH_UNKNOWN  # insurers: §10.5, as the registry spells it


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


@dataclass(frozen=True)
class SubmitRequest:
    hospital_code: str
    claim_ref: str
    insurer_code: str
    billed_amount_satang: int
    envelope: str
    decision_timeout: DurationParts


@dataclass(frozen=True)
class ListClaimsRequest:
    hospital_code: str
    page_size: int
    page_token: str
    state: int | None  # None: the field was not set
    insurer_code: str | None


@dataclass(frozen=True)
class DecisionRequest:
    transaction_id: str
    insurer_code: str
    state: int  # as it arrived: not yet a State
    approved_amount_satang: int
    decision_envelope: str
    reason_code: str


@dataclass(frozen=True)
class DeliveryReport:
    """What the delivery layer says happened to a push (DeliveryReportService)."""

    transaction_id: str
    insurer_code: str


def _taken(route: str) -> Mutation:
    """The insurer took the claim (a report through `route`): RECEIVED becomes
    DELIVERED; in any other state only the time is noted, once."""

    def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
        if cur.taken_at is not None and cur.state != State.RECEIVED:
            return None, []
        now = datetime.now(UTC)
        # Taken implies handed off, even if the hand-off's own record is still on its way.
        noted = cur.with_changes(taken_at=cur.taken_at or now, handed_off_at=cur.handed_off_at or now)
        if cur.state != State.RECEIVED:
            return noted, []
        new = noted.with_changes(state=State.DELIVERED, updated_at=now)
        return new, state_change_events(new, actor=HUB_ACTOR, route=route)

    return mutate


async def _wake_or_timeout(event: asyncio.Event, timeout_s: float) -> bool:
    """True when woken, False when the timeout passed."""
    woken = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            woken = await event.wait()
    event.clear()
    return woken


@dataclass(frozen=True, eq=False)
class ClaimRouter:
    store: ClaimStore
    directory: Directory
    push: PushQueue | None
    changes: ChangeFeed
    _: KW_ONLY
    key_grace_s: float = DEFAULT_KEY_GRACE_S
    pull_lease_s: float = DEFAULT_PULL_LEASE_S
    pulls: PullLog | None = None
    pull_down_after_s: float = domain.DEFAULT_PULL_DOWN_AFTER_S
    # insurer code -> monotonic time of its last recorded pull (registry codes only).
    _pull_recorded: dict[str, float] = field(default_factory=dict, init=False)
    # insurer code -> (monotonic time read, monotonic time its first pull lease ends, or None).
    _lease_ends: dict[str, tuple[float, float | None]] = field(default_factory=dict, init=False)
    # insurer code -> monotonic time this replica last noted that it polls for it.
    _poller_noted: dict[str, float] = field(default_factory=dict, init=False)
    # insurer code -> (pull_heard, monotonic time) when a lease found nothing more to offer.
    _pull_empty: dict[str, tuple[int, float]] = field(default_factory=dict, init=False)
    # Interest rows being dropped (claim_interest): kept so the tasks are not collected.
    _dropping: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    # PullClaims calls waiting here, which a submission hands its claim to.
    _pull_handoff: PullHandOff = field(default_factory=PullHandOff, init=False)

    # --- directory ---------------------------------------------------------------

    def _party(self, p: Principal) -> Party:
        return Party(p, p.available and not p.suspended, p.accepted_keys(self.key_grace_s))

    async def list_insurers(self, page_size: int, page_token: str) -> Page[Party]:
        size = domain.page_size_of(page_size)
        token = domain.decode_page_token(page_token, ("after",))
        after = token["after"] if token else ""
        insurers = [p for p in await self.directory.insurers() if p.code > after]
        page = insurers[:size]
        more = len(insurers) > size
        healths = await self.directory.healths()
        waiting = (
            await self.store.pull_waiting_since()
            if any(p.delivery_mode == DELIVERY_PULL for p in page)
            else {}
        )
        now = datetime.now(UTC)

        def listed(p: Principal) -> Party:
            health = domain.insurer_health(
                p.delivery_mode,
                healths.get(p.code),
                waiting.get(p.code),
                now=now,
                pull_down_after_s=self.pull_down_after_s,
            )
            return replace(self._party(p), delivery=p.delivery_mode or "", health=health)

        return Page(
            [listed(p) for p in page],
            domain.encode_page_token({"after": page[-1].code}) if more else "",
        )

    async def get_hospital(self, hospital_code: str) -> Party:
        domain.check_hospital_code(hospital_code)
        hospital = await self.directory.get(hospital_code)
        if hospital is None or hospital.role != "hospital":
            raise NotFound("hospital not found", reason="HOSPITAL_NOT_FOUND")
        return self._party(hospital)

    # --- hospitals -----------------------------------------------------------------

    async def submit(self, req: SubmitRequest) -> ClaimRecord:
        """Checks and stores a claim (once per hospital and claim_ref), starts its
        delivery and waits up to its decision_timeout for a decision."""
        started = time.perf_counter()  # the handler only maps the request before this
        timeout_s = domain.duration_s(
            *req.decision_timeout,
            field="decision_timeout",
            reason="DECISION_TIMEOUT_INVALID",
            max_s=domain.MAX_DECISION_TIMEOUT_S,
        )
        domain.validate_submit(copy_fields(domain.SubmitInput, req, decision_timeout_s=timeout_s))
        header = domain.read_header(req.envelope)
        # Idempotency (§5): a resubmission is answered from what was stored, even
        # if the insurer closed or the envelope's kid left its grace period since.
        # A claim the routing checks accept is inserted straight away (the insert
        # itself finds one stored under its claim_ref): no lookup first for the
        # usual, new claim. Only one the checks refuse is looked up, and answered
        # from what was stored if it is a resubmission.
        try:
            insurer = await self._routable(req, header)
        except IclaimError:
            existing = await self.store.find_by_ref(req.hospital_code, req.claim_ref)
            if existing is not None and existing.envelope_sha256 != sha256_hex(req.envelope):
                raise domain.AlreadyExistsClaimRef(existing.claim_ref) from None
            if existing is None or not _same_claim(existing, req):
                raise  # new (or the same envelope with other request fields): refused
            structlog.contextvars.bind_contextvars(transaction_id=existing.transaction_id)
            return await self._settled(existing, None, timeout_s, started)
        candidate = _new_claim(req, insurer)
        # Listening before the insert: no change to the new claim can slip by
        # unannounced, so the wait reads nothing until the claim is settled.
        with self.changes.claim_changes(candidate.transaction_id) as changes:
            stored, created = await self._insert_new(req, candidate, waits=timeout_s > 0)
            structlog.contextvars.bind_contextvars(transaction_id=stored.transaction_id)
            if not created:  # a resubmission: the stored claim has another id
                return await self._settled(stored, None, timeout_s, started)
            CLAIM_OUTCOMES.labels(State.RECEIVED.name).inc()
            if stored.delivery_mode in PUSH_MODES and self.push is not None:
                self.push.kick(stored)
            return await self._settled(stored, changes, timeout_s, started)

    async def _settled(
        self, stored: ClaimRecord, changes: ClaimChange | None, timeout_s: float, started: float
    ) -> ClaimRecord:
        """The claim once terminal, or as it is when the timeout passes; as
        stored when there is no wait. `changes`: a subscription taken before
        `stored` was written (None: one is taken now, and the state read).
        `started`: the submission's perf_counter() at its start."""
        # The hub's part ends here, the claim stored; what follows waits on the insurer.
        SUBMIT_LATENCY.observe(time.perf_counter() - started)
        if timeout_s <= 0:
            return stored
        if changes is not None:
            return await self._wait_settled(stored.transaction_id, timeout_s, changes, stored.state) or stored
        async with self._interest(stored.transaction_id) as late:
            return (
                await self._wait_settled(
                    stored.transaction_id, timeout_s, late, None, first_wait_s=INTEREST_SETTLE_S
                )
                or stored
            )

    @contextlib.asynccontextmanager
    async def _interest(self, transaction_id: str) -> AsyncIterator[ClaimChange]:
        """The claim's changes, for a wait its submission did not start: heard
        here, and announced by writers on other replicas while it lasts."""
        with self.changes.claim_changes(transaction_id) as changed:
            interest = await self.store.note_interest(transaction_id)
            try:
                yield changed
            finally:
                if interest is not None:
                    self._drop_interest_soon(interest)

    def _drop_interest_soon(self, interest_id: int) -> None:
        # Not awaited: the wait may end by cancellation (a caller gone). Not
        # dropped (the database away): the writers announce more, no more.
        async def drop() -> None:
            try:
                await self.store.drop_interest(interest_id)
            except Exception as exc:
                log.warning("claim_interest_not_dropped", error=type(exc).__name__)

        task = asyncio.get_running_loop().create_task(drop())
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    async def _routable(self, req: SubmitRequest, header: ProtectedHeader) -> Principal:
        """The insurer, if a new claim with this request may be routed to it."""
        insurer = domain.check_insurer_routable(await self.directory.get(req.insurer_code), req.insurer_code)
        domain.check_envelope_routing(
            header,
            sender=req.hospital_code,
            recipient=insurer,
            claim_ref=req.claim_ref,
            amount_satang=req.billed_amount_satang,
            key_grace_s=self.key_grace_s,
        )
        return insurer

    async def _insert_new(
        self, req: SubmitRequest, candidate: ClaimRecord, *, waits: bool
    ) -> tuple[ClaimRecord, bool]:
        """Stores the claim unless one is stored under its claim_ref: (stored, created).
        A pull claim whose insurer's poll waits here is stored leased and
        handed to that poll (pull_handoff)."""
        events = state_change_events(candidate, actor=req.hospital_code, route=ROUTE_SUBMIT)
        taker = (
            self._pull_handoff.reserve(candidate.insurer_code)
            if candidate.delivery_mode == DELIVERY_PULL
            else None
        )
        if taker is None:
            stored, created = await self.store.insert(candidate, events, waits=waits)
        else:
            delivered = candidate.with_changes(state=State.DELIVERED)
            events += state_change_events(delivered, actor=candidate.insurer_code, route=ROUTE_PULL)
            try:
                stored, created = await self.store.insert(
                    delivered, events, waits=waits, pull_lease_s=self.pull_lease_s
                )
            except BaseException:
                taker.release()
                raise
            if created:
                self._leased(candidate.insurer_code)  # its lease ends as a poll's would
                taker.hand(stored)
            else:
                taker.release()
        # Stored before (a resubmission is answered from it), or by a concurrent
        # submission under the same claim_ref: anything but the same claim conflicts.
        if not created and not _same_claim(stored, req):
            raise domain.AlreadyExistsClaimRef(stored.claim_ref)
        return stored, created

    async def _wait_settled(
        self,
        transaction_id: str,
        timeout_s: float,
        changes: ClaimChange,
        known: State | None,
        *,
        first_wait_s: float = math.inf,
    ) -> ClaimRecord | None:
        """The claim once terminal, or as it is when the timeout passes. Each
        wake-up takes the state its notification carried; only one that did not
        say is read. The whole claim is read once, at the end, unless this
        replica wrote the change that settled it (then it is in hand).
        `first_wait_s`: the first wait ends by then at the latest (a re-read)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        state = known
        next_wait_s = first_wait_s
        while True:
            if state is None:
                state = await self.store.state_of(transaction_id)
            remaining = deadline - loop.time()
            if state is None or state in domain.TERMINAL_STATES or remaining <= 0:
                written = changes.record
                if written is not None and written.state == state:
                    return written
                if changes.local_writes and remaining > 0:
                    # Heard before this replica's own write returned: its record follows.
                    state = changes.state if await _wake_or_timeout(changes, remaining) else None
                    continue
                return await self.store.get(transaction_id)
            # The latest announced state; after a timeout, what it is now is read.
            wait_s, next_wait_s = min(remaining, next_wait_s), math.inf
            state = changes.state if await _wake_or_timeout(changes, wait_s) else None

    async def get_claim(self, hospital_code: str, transaction_id: str) -> ClaimRecord:
        domain.check_transaction_id(transaction_id)
        rec = await self.store.get(transaction_id)
        if rec is None or rec.hospital_code != hospital_code:
            # Another party's claim is indistinguishable from a missing one.
            raise NotFound("claim not found", reason="CLAIM_NOT_FOUND")
        return rec

    async def watch(self, hospital_code: str, transaction_id: str) -> AsyncGenerator[ClaimRecord, None]:
        """The claim now and after each change of state, ending with a terminal one."""
        rec = await self.get_claim(hospital_code, transaction_id)
        async with self._interest(rec.transaction_id) as changed:
            last: State | None = None
            recheck_s = INTEREST_SETTLE_S
            while True:
                current = await self.store.get(rec.transaction_id)
                assert current is not None  # claims are never deleted
                if current.state != last:
                    yield current
                    last = current.state
                if current.state in domain.TERMINAL_STATES:
                    return
                # A change announced as the state already sent (a delivery note) needs no read.
                while await _wake_or_timeout(changed, recheck_s) and changed.state == last:
                    pass
                recheck_s = WATCH_RECHECK_S

    async def list_claims(self, req: ListClaimsRequest) -> Page[ClaimRecord]:
        size = domain.page_size_of(req.page_size)
        after = domain.decode_claims_cursor(req.page_token)
        state = None if req.state is None else domain.state_filter_of(req.state)
        insurer = None if req.insurer_code is None else domain.check_insurer_code(req.insurer_code)
        rows = await self.store.list_for_hospital(
            req.hospital_code, state=state, insurer_code=insurer, after=after, limit=size + 1
        )
        page = rows[:size]
        # A page of large decision envelopes ends early: the rest follow the token.
        page = page[: domain.within_byte_budget([len(r.decision_envelope) for r in page])]
        next_token = ""
        if len(rows) > len(page):
            next_token = domain.encode_claims_cursor(page[-1].submitted_at, page[-1].transaction_id)
        return Page(page, next_token)

    async def cancel(self, hospital_code: str, transaction_id: str, reason: str) -> ClaimRecord:
        domain.check_cancel_reason(reason)
        rec = await self.get_claim(hospital_code, transaction_id)

        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            if cur.state == State.CANCELLED:
                return None, []
            domain.check_cancellable(cur.state)
            new = cur.with_changes(
                state=State.CANCELLED,
                status_reason="CANCELLED_BY_HOSPITAL",
                updated_at=datetime.now(UTC),
            )
            return new, state_change_events(new, actor=hospital_code, route=ROUTE_CANCEL)

        stored = await self.store.transition(rec.transaction_id, mutate, rec)
        assert stored is not None  # claims are never deleted
        return stored

    # --- insurers --------------------------------------------------------------------

    async def pull(self, insurer_code: str, max_claims: int, wait: DurationParts) -> list[ClaimRecord]:
        """Leases up to max_claims open claims to a pull insurer, waiting up to
        `wait` for the first one."""
        return await self._lease_for_pull(insurer_code, max_claims, _pull_wait_s(max_claims, wait))

    async def _lease_for_pull(self, insurer_code: str, max_claims: int, wait_s: float) -> list[ClaimRecord]:
        await self._record_pull(insurer_code)
        # Newly noted: a claim stored elsewhere by a statement that began before
        # the note committed is not announced here, so the first wait is short.
        first_wait_s = INTEREST_SETTLE_S if await self._note_poller(insurer_code) else math.inf
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s

        def on_delivered(rec: ClaimRecord) -> Sequence[Event]:
            return state_change_events(rec, actor=insurer_code, route=ROUTE_PULL)

        with (
            self.changes.pull_ready(insurer_code) as ready,
            self._pull_handoff.waiting(insurer_code, ready) as taker,
        ):
            while True:
                if self._known_empty(insurer_code):
                    # Nothing announced and no lease ended since a lease found
                    # nothing more: the poll after a pulled claim reads nothing.
                    leased = Leased(exhausted=True)
                else:
                    heard = self.changes.pull_heard(insurer_code)
                    leased = await self.store.lease_pull(
                        insurer_code, max_claims, self.pull_lease_s, on_delivered
                    )
                    if leased:
                        self._leased(insurer_code)
                    self._note_empty(insurer_code, heard if leased.exhausted else None)
                remaining = deadline - loop.time()
                if leased or remaining <= 0:
                    return leased
                # Until a new claim is announced, or a lease ends: no reads in
                # between (an idle pull read the database every second before).
                lease_ends = await self._until_lease_ends(insurer_code)
                recheck = min(WATCH_RECHECK_S, lease_ends + LEASE_END_MARGIN_S)
                wait_for_s = min(remaining, recheck, first_wait_s)
                taker.open()
                woken = await _wake_or_timeout(ready, wait_for_s)
                handed = await taker.close()
                if handed:
                    # Stored leased to this poll by a submission here: what a
                    # lease would have found (nothing else was offered, or this
                    # poll would not have waited).
                    return Leased(handed, exhausted=False)
                if not woken and wait_for_s < remaining:
                    self._pull_empty.pop(insurer_code, None)  # a wait cut short is one to look again
                first_wait_s = math.inf

    async def _until_lease_ends(self, insurer_code: str) -> float:
        """Seconds until the first of the insurer's pull leases may end. A read
        stays good until the first lease it found ends, or for pull_lease_s: a
        lease taken since, by any replica (all run with this lease length),
        ends no sooner. Under load every pulled claim is followed by a poll that
        waits: this keeps them from reading it each time."""
        now = time.monotonic()
        read_at, ends = self._lease_ends.get(insurer_code, (-math.inf, None))
        if now - read_at >= self.pull_lease_s or (ends is not None and ends <= now):
            if ends is not None and ends <= now:
                self._pull_empty.pop(insurer_code, None)  # a lease ended: its claim is offered
            ends_in = await self.store.next_pull_offer_s(insurer_code)
            read_at, ends = now, None if ends_in is None else now + ends_in
            self._lease_ends[insurer_code] = (read_at, ends)
        first = read_at + self.pull_lease_s
        return (first if ends is None else min(ends, first)) - now

    def _note_empty(self, insurer_code: str, heard: int | None) -> None:
        """After a lease: `heard` (pull_heard before it began) when it found
        nothing more to offer. Taken before: a claim stored after the lease's
        snapshot is announced after the lease began, and so unsettles it."""
        if heard is None:
            self._pull_empty.pop(insurer_code, None)
        else:
            self._pull_empty[insurer_code] = (heard, time.monotonic())

    def _known_empty(self, insurer_code: str) -> bool:
        """Nothing to offer the insurer is known without a read: since the
        lease that found nothing more, no claim was announced, none of the
        leases known by the lease-end read ended, and none taken since that
        read can have (they last pull_lease_s); at most WATCH_RECHECK_S old."""
        noted = self._pull_empty.get(insurer_code)
        if noted is None:
            return False
        heard, since = noted
        now = time.monotonic()
        read_at, ends = self._lease_ends.get(insurer_code, (-math.inf, None))
        known = (
            heard == self.changes.pull_heard(insurer_code)
            and now - since < WATCH_RECHECK_S
            and now - read_at < self.pull_lease_s
            and (ends is None or ends > now)
        )
        if not known:
            del self._pull_empty[insurer_code]
        return known

    def _leased(self, insurer_code: str) -> None:
        """This replica's own lease is known without a read (not the others':
        with no read yet, the next wait reads)."""
        now = time.monotonic()
        read_at, ends = self._lease_ends.get(insurer_code, (-math.inf, None))
        mine = now + self.pull_lease_s
        self._lease_ends[insurer_code] = (read_at, mine if ends is None else min(ends, mine))

    async def _note_poller(self, insurer_code: str) -> bool:
        """Notes (at most every PULL_POLLER_RENEW_S) that this replica polls
        for the insurer; True when the note is new."""
        now = time.monotonic()
        last = self._poller_noted.get(insurer_code)
        if last is not None and now - last < PULL_POLLER_RENEW_S:
            return False
        newly = await self.store.note_pull_poller(insurer_code)
        self._poller_noted[insurer_code] = now
        return newly

    async def _record_pull(self, insurer_code: str) -> None:
        """Notes in the registry that a pull insurer pulled (§10.5 health), at
        most once per PULL_RECORD_INTERVAL_S per insurer on this replica."""
        if self.pulls is None:
            return
        now = time.monotonic()
        last = self._pull_recorded.get(insurer_code)
        if last is not None and now - last < PULL_RECORD_INTERVAL_S:
            return
        insurer = await self.directory.get(insurer_code)
        if insurer is None or insurer.role != "insurer" or insurer.delivery_mode != DELIVERY_PULL:
            return
        self._pull_recorded[insurer_code] = now
        try:
            await self.pulls.record_pull(insurer_code)
        except BaseException:
            del self._pull_recorded[insurer_code]  # not written: the next pull tries again
            raise

    async def post_decision(self, req: DecisionRequest, *, route: str = ROUTE_DECISION) -> ClaimRecord:
        """An insurer's own PostDecision, or its decision in the answer to a
        push (§10.6, relayed by the adapter; `route` ROUTE_PUSH_ANSWER): a
        malformed id or a state it may not post is refused before any lookup."""
        domain.check_transaction_id(req.transaction_id)
        return await self._decide(req, domain.postable_state_of(req.state), route)

    async def record_decision(self, req: DecisionRequest) -> ClaimRecord:
        """A decision relayed by the insurer adapter."""
        return await self._decide(req, domain.state_or_unspecified(req.state))

    async def _decide(self, req: DecisionRequest, state: State, route: str = ROUTE_DECISION) -> ClaimRecord:
        """Decided at most once; the same decision again is a no-op."""
        d = _decision_input(req, state)
        domain.check_transaction_id(d.transaction_id)
        # Usually the claim this replica stored moments ago: what is checked
        # here never changes; its state is checked again by the write.
        rec = self.store.recent(d.transaction_id)
        cached = rec is not None
        if rec is None:
            rec = await self.store.get(d.transaction_id)
        if rec is None or rec.insurer_code != d.insurer_code:
            raise NotFound("claim not found", reason="CLAIM_NOT_FOUND")
        # The decision joins the claim's trace (the insurer's call is linked to it),
        # and so does what it emits: the billing event, the audit event.
        insurer = {"iclaim.insurer": d.insurer_code}
        with tracing.span("claim.decision", parent=rec.traceparent, attributes=insurer):
            return await self._decide_claim(d, rec, cached, route)

    async def _decide_claim(
        self, d: domain.DecisionInput, rec: ClaimRecord, cached: bool, route: str
    ) -> ClaimRecord:
        await self._check_decision(d, rec)
        decide = _decision(d, route)
        written = False

        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            nonlocal written  # as the last run found: a retried one may differ
            new, events = decide(cur)
            written = new is not None
            return new, events

        stored = await self.store.transition(d.transaction_id, mutate, rec, cached=cached)
        assert stored is not None  # claims are never deleted
        if written:  # the same decision again is no second outcome
            _count_decided(stored)
        return stored

    async def _check_decision(self, d: domain.DecisionInput, rec: ClaimRecord) -> None:
        """What a decision must satisfy whatever the claim's state: its shape
        against the billed amount, its envelope's header against the claim."""
        domain.validate_decision_shape(d, rec.billed_amount_satang)
        if d.decision_envelope:
            hospital = await self.directory.get(rec.hospital_code)
            if hospital is None:
                raise FailedPrecondition("hospital unknown", reason="HOSPITAL_NOT_FOUND")
            domain.check_envelope_routing(
                domain.read_header(d.decision_envelope),
                sender=d.insurer_code,
                recipient=hospital,
                claim_ref=rec.claim_ref,
                amount_satang=d.approved_amount_satang,
                key_grace_s=self.key_grace_s,
            )

    async def record_push_answers(self, reqs: Sequence[DecisionRequest]) -> list[tuple[int, str]]:
        """post_decision(route=ROUTE_PUSH_ANSWER) for each, in one commit (the adapter sends those
        that came in while its previous call was in flight). Returns those
        refused as (index, reason), as post_decision would refuse them;
        the rest are recorded. An outage is raised (the adapter counts them
        all unrecorded: the claims are pushed again)."""
        if len(reqs) > MAX_REPORTS_PER_CALL:
            raise InvalidArgument(
                f"at most {MAX_REPORTS_PER_CALL} answers per call", reason="TOO_MANY_ANSWERS"
            )
        outcomes = await self._record_decisions(reqs, ROUTE_PUSH_ANSWER)
        return [(i, o.reason) for i, o in enumerate(outcomes) if o.code != Code.OK]

    async def pull_carrying(
        self, insurer_code: str, max_claims: int, wait: DurationParts, decisions: Sequence[DecisionRequest]
    ) -> tuple[list[ClaimRecord], list[DecisionOutcome]]:
        """A pull that carries the insurer's decisions on claims it pulled
        before (§6.1): the pull's own fields are checked first, then the
        decisions recorded together as post_decision would record each, then
        the pull served. An outage recording them is raised (none recorded)."""
        wait_s = _pull_wait_s(max_claims, wait)
        domain.check_carried_decisions(len(decisions))
        outcomes = await self._record_decisions(decisions, ROUTE_PULL) if decisions else []
        return await self._lease_for_pull(insurer_code, max_claims, wait_s), outcomes

    async def _record_decisions(self, reqs: Sequence[DecisionRequest], route: str) -> list[DecisionOutcome]:
        """post_decision(route=route) for each, in one commit: an outcome per
        request, in order; a refused one is not recorded, the rest are."""
        outcomes = [DecisionOutcome(req.transaction_id) for req in reqs]
        checked: dict[str, tuple[int, domain.DecisionInput]] = {}
        for i, req in enumerate(reqs):
            try:
                domain.check_transaction_id(req.transaction_id)
                d = _decision_input(req, domain.postable_state_of(req.state))
                if d.transaction_id in checked:
                    raise InvalidArgument("one decision per claim and call", reason="TRANSACTION_REPEATED")
                rec = self.store.recent(d.transaction_id) or await self.store.get(d.transaction_id)
                if rec is None or rec.insurer_code != d.insurer_code:
                    raise NotFound("claim not found", reason="CLAIM_NOT_FOUND")
                await self._check_decision(d, rec)
            except IclaimError as exc:
                outcomes[i] = DecisionOutcome(req.transaction_id, exc.code, exc.reason)
                continue
            checked[d.transaction_id] = (i, d)
        conflicts: dict[str, State] = {}  # transaction_id -> the claim's state
        written: set[str] = set()
        decide = {tid: _decision(d, route) for tid, (_, d) in checked.items()}

        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            tid = cur.transaction_id
            conflicts.pop(tid, None)  # what the last run found (a retried one may differ)
            written.discard(tid)
            try:
                new, events = decide[tid](cur)
            except FailedPrecondition:
                conflicts[tid] = cur.state
                return None, []
            if new is not None:
                written.add(tid)
            return new, events

        stored = await self.store.transition_many(list(checked), mutate)
        for tid, (i, _) in checked.items():
            if tid in conflicts:
                outcomes[i] = DecisionOutcome(
                    tid, Code.FAILED_PRECONDITION, "DECISION_CONFLICT", state=conflicts[tid]
                )
            elif tid in stored and tid in written:
                _count_decided(stored[tid])
        return outcomes

    # --- the delivery layer's reports (§10.2-10.4) -------------------------------------

    async def _apply_report(self, report: DeliveryReport, mutate: Mutation) -> ClaimRecord:
        """Checks that the report names a push claim to that insurer, then
        applies `mutate` to it."""
        domain.check_transaction_id(report.transaction_id)
        domain.check_insurer_code(report.insurer_code)
        rec = await self.store.get(report.transaction_id)
        if rec is None or rec.insurer_code != report.insurer_code:
            raise NotFound("claim not found", reason="CLAIM_NOT_FOUND")
        if rec.delivery_mode not in PUSH_MODES:
            raise FailedPrecondition("the claim is not delivered by push", reason="CLAIM_NOT_PUSHED")
        stored = await self.store.transition(report.transaction_id, mutate, rec)
        assert stored is not None  # claims are never deleted
        return stored

    async def report_taken(self, report: DeliveryReport) -> ClaimRecord:
        """The insurer took the claim: RECEIVED becomes DELIVERED; in any other
        state (decided, cancelled, or expired while the push was in flight) only
        the time is noted. Idempotent."""
        return await self._apply_report(report, _taken(ROUTE_REPORT_TAKEN))

    async def report_taken_many(self, reports: Sequence[DeliveryReport]) -> list[tuple[int, str]]:
        """report_taken for each, in one commit. Returns those refused as
        (index, reason), as report_taken would refuse them; the rest are applied.
        An outage is raised (the delivery layer reports them all again: each is
        idempotent)."""
        if len(reports) > MAX_REPORTS_PER_CALL:
            raise InvalidArgument(
                f"at most {MAX_REPORTS_PER_CALL} reports per call", reason="TOO_MANY_REPORTS"
            )
        refused: list[tuple[int, str]] = []
        wanted: dict[str, str] = {}  # transaction_id -> insurer_code
        for i, report in enumerate(reports):
            try:
                domain.check_transaction_id(report.transaction_id)
                domain.check_insurer_code(report.insurer_code)
            except IclaimError as exc:
                refused.append((i, exc.reason))
                continue
            wanted.setdefault(report.transaction_id, report.insurer_code)
        taken = _taken(ROUTE_REPORT_TAKEN_BATCH)

        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            if wanted[cur.transaction_id] != cur.insurer_code or cur.delivery_mode not in PUSH_MODES:
                return None, []  # refused below
            return taken(cur)

        def settled(cur: ClaimRecord) -> bool:
            # `mutate` changes nothing on this claim, nor will on a later version:
            # a claim's insurer and route never change, nor a taken time once
            # noted (then it is never RECEIVED again: a redrive makes it
            # DELIVERED). Most reports find the claim decided, taken with it,
            # by this replica: no read to learn there is nothing to write.
            refused = wanted[cur.transaction_id] != cur.insurer_code or cur.delivery_mode not in PUSH_MODES
            return refused or (cur.taken_at is not None and cur.state != State.RECEIVED)

        stored = await self.store.transition_many(list(wanted), mutate, settled)
        malformed = {i for i, _ in refused}
        for i, report in enumerate(reports):
            if i in malformed:
                continue
            rec = stored.get(report.transaction_id)
            if rec is None or rec.insurer_code != report.insurer_code:
                refused.append((i, "CLAIM_NOT_FOUND"))
            elif rec.delivery_mode not in PUSH_MODES:
                refused.append((i, "CLAIM_NOT_PUSHED"))
        return sorted(refused)

    async def report_expired(self, report: DeliveryReport) -> ClaimRecord:
        """Nobody took the claim in time (§10.4): RECEIVED becomes FAILED /
        DELIVERY_EXPIRED, which ends the hospital's WatchClaim. A claim the
        insurer took (or one decided or cancelled) is left as it is. Idempotent."""

        expired: list[ClaimRecord] = []

        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            expired.clear()  # what the last run decided (a retried one may decide otherwise)
            if cur.state != State.RECEIVED or cur.taken_at is not None:
                return None, []
            new = cur.with_changes(
                state=State.FAILED, status_reason=domain.DELIVERY_EXPIRED, updated_at=datetime.now(UTC)
            )
            expired.append(new)
            return new, state_change_events(new, actor=HUB_ACTOR, route=ROUTE_REPORT_EXPIRED)

        stored = await self._apply_report(report, mutate)
        if expired:
            CLAIM_OUTCOMES.labels(State.FAILED.name).inc()
        return stored

    async def report_redriven(self, report: DeliveryReport) -> ClaimRecord:
        """An operator redrove an expired delivery: FAILED / DELIVERY_EXPIRED
        becomes RECEIVED again (the delivery layer pushes it again from its own
        record), or DELIVERED if the insurer took it after all (a push still in
        flight at expiry). Any other state is left as it is. Idempotent."""

        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            if cur.state != State.FAILED or cur.status_reason != domain.DELIVERY_EXPIRED:
                return None, []
            state = State.RECEIVED if cur.taken_at is None else State.DELIVERED
            new = cur.with_changes(state=state, status_reason="", updated_at=datetime.now(UTC))
            return new, state_change_events(new, actor=HUB_ACTOR, route=ROUTE_REPORT_REDRIVEN)

        return await self._apply_report(report, mutate)

    # --- billing ---------------------------------------------------------------------

    async def mark_paid(self, transaction_id: str) -> ClaimRecord:
        """Billing says nothing is left due on an approved claim."""
        domain.check_transaction_id(transaction_id)

        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            if cur.state == State.PAID:
                return None, []
            if cur.state not in domain.BILLABLE_STATES:
                raise FailedPrecondition(
                    f"claim is {cur.state.name}, not approved", reason="CLAIM_NOT_APPROVED"
                )
            new = cur.with_changes(state=State.PAID, updated_at=datetime.now(UTC))
            return new, state_change_events(new, actor="ICLAIM", route=ROUTE_MARK_PAID)

        stored = await self.store.transition(transaction_id, mutate)
        if stored is None:
            raise NotFound("claim not found", reason="CLAIM_NOT_FOUND")
        return stored

    async def billing_decisions(self, transaction_ids: Sequence[str]) -> list[ClaimRecord]:
        """Billing's read-through: the approved claims among these ids, so that a
        decision a hospital has seen can be invoiced or paid before the outbox
        brings it to billing. Ids that name no claim are left out, not refused:
        billing passes on what its callers sent."""
        if len(transaction_ids) > MAX_DECISION_LOOKUP:
            raise InvalidArgument(
                f"at most {MAX_DECISION_LOOKUP} transaction ids", reason="TOO_MANY_TRANSACTION_IDS"
            )
        found: list[ClaimRecord] = []
        for tid in dict.fromkeys(transaction_ids):
            if not domain.TRANSACTION_ID_RE.fullmatch(tid):
                continue
            rec = await self.store.get(tid)
            if rec is not None and rec.state in domain.BILLABLE_STATES:
                found.append(rec)
        return found


def _same_claim(stored: ClaimRecord, req: SubmitRequest) -> bool:
    """The request is a resubmission of the stored claim: same envelope, insurer
    and amount (the hospital and claim_ref are the lookup key)."""
    return (
        stored.envelope_sha256 == sha256_hex(req.envelope)
        and stored.insurer_code == req.insurer_code
        and stored.billed_amount_satang == req.billed_amount_satang
    )


def _new_claim(req: SubmitRequest, insurer: Principal) -> ClaimRecord:
    now = datetime.now(UTC)
    return ClaimRecord(
        transaction_id=domain.new_transaction_id(),
        hospital_code=req.hospital_code,
        insurer_code=insurer.code,
        claim_ref=req.claim_ref,
        state=State.RECEIVED,
        billed_amount_satang=req.billed_amount_satang,
        approved_amount_satang=0,
        envelope=req.envelope,
        envelope_bytes=len(req.envelope.encode()),
        envelope_sha256=sha256_hex(req.envelope),
        decision_envelope="",
        status_reason="",
        delivery_mode=domain.claim_delivery_mode(insurer),
        submitted_at=now,
        decided_at=None,
        updated_at=now,
        traceparent=tracing.current_traceparent(),
    )


def _decision_input(req: DecisionRequest, state: State) -> domain.DecisionInput:
    return domain.DecisionInput(
        transaction_id=req.transaction_id,
        insurer_code=req.insurer_code,
        state=state,
        approved_amount_satang=req.approved_amount_satang,
        decision_envelope=req.decision_envelope,
        reason_code=req.reason_code,
    )


def _pull_wait_s(max_claims: int, wait: DurationParts) -> float:
    """A pull's own fields checked: its long-poll in seconds."""
    domain.check_max_claims(max_claims)
    return domain.duration_s(*wait, field="wait", reason="WAIT_INVALID", max_s=domain.MAX_PULL_WAIT_S)


def _decision(d: domain.DecisionInput, route: str) -> Mutation:
    """The claim with decision `d`: None for the same decision again (a
    no-op); FailedPrecondition DECISION_CONFLICT once it has another one."""

    def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
        if domain.decision_matches(
            cur.state, cur.approved_amount_satang, cur.decision_envelope, cur.status_reason, d
        ):
            return None, []
        if cur.state not in domain.OPEN_STATES:
            raise FailedPrecondition(
                f"claim is already {cur.state.name}; a different decision cannot replace it",
                reason="DECISION_CONFLICT",
                # An insurer has no GetClaim: this tells it why (e.g. cancelled by the hospital).
                metadata={"state": f"CLAIM_STATE_{cur.state.name}"},
            )
        now = datetime.now(UTC)
        new = cur.with_changes(
            state=d.state,
            approved_amount_satang=d.approved_amount_satang,
            decision_envelope=d.decision_envelope,
            status_reason=d.reason_code,
            decided_at=now if d.state in domain.DECIDED_STATES else None,
            updated_at=now,
            # An insurer deciding has taken the claim. Noted here, the push's
            # ReportTaken, often still on its way, finds nothing to write.
            taken_at=cur.taken_at or now,
            handed_off_at=cur.handed_off_at or now,
        )
        return new, state_change_events(new, actor=d.insurer_code, route=route)

    return mutate


def _count_decided(stored: ClaimRecord) -> None:
    if stored.state in domain.DECIDED_STATES and stored.decided_at is not None:
        CLAIM_OUTCOMES.labels(stored.state.name).inc()
        DECISION_LATENCY.observe((stored.decided_at - stored.submitted_at).total_seconds())
