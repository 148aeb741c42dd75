"""The adapter's use cases: accept a claim the router hands off (DeliverClaim),
and the operators' view of deliveries (`iclaim admin deliveries list|redrive`,
served by the AdminService). Pushing and reporting run in the background
(dispatcher.py, reporter.py). No transport types here; storage and the
registry are the protocols below."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from iclaim.errors import AlreadyExists, IclaimError, InvalidArgument, NotFound, Unavailable
from iclaim_hub.common.handoff import MAX_CLAIMS_PER_CALL, MAX_ENVELOPE_BYTES_PER_CALL
from services.insurer_adapter import metrics
from services.insurer_adapter.domain import INSURER_RE, TXID_RE, checked
from services.insurer_adapter.model import (
    Added,
    Delivery,
    DeliveryRequest,
    DeliveryView,
    Endpoint,
    Lease,
    NewDelivery,
    StorageUnavailable,
)

log = structlog.get_logger("iclaim.adapter")

# The taken batch's window and a ReportTakenBatch call, in the usual case.
PUSH_FIRST_MARGIN_S = 3.0
LIST_DEFAULT = 100
LIST_MAX = 1000
REDRIVE_MAX = 1000
# `iclaim admin deliveries list --state`: "" = every delivery not taken.
LIST_STATES: dict[str, tuple[str, ...]] = {
    "": ("waiting", "failed"),
    "waiting": ("waiting",),
    "failed": ("failed",),
    "taken": ("taken",),
}


# --- seams -------------------------------------------------------------------------
class DeliveryLog(Protocol):
    async def add_delivery(
        self, d: NewDelivery, expiry_s: float, lease: Lease | None = None
    ) -> tuple[Added, Delivery | None]: ...


class InsurerLookup(Protocol):
    async def get(self, insurer_code: str) -> Endpoint | None: ...


class Pushes(Protocol):
    """The dispatcher, as the intake sees it."""

    def notify(self, insurer_code: str) -> None: ...

    def reserve(self, insurer_code: str) -> Lease | None: ...

    def unreserve(self, insurer_code: str) -> None: ...

    def start_leased(self, endpoint: Endpoint, delivery: Delivery) -> None: ...

    def start_unstored(self, endpoint: Endpoint, delivery: NewDelivery) -> None: ...


class DeliveryAdminStore(Protocol):
    async def redrive(self, transaction_ids: Sequence[str], expiry_s: float) -> list[str]: ...

    async def list_deliveries(
        self, insurer_code: str, states: Sequence[str], limit: int
    ) -> list[DeliveryView]: ...


# --- DeliverClaim -------------------------------------------------------------------
class ClaimIntake:
    def __init__(
        self,
        store: DeliveryLog,
        insurers: InsurerLookup,
        expiry_s: float,
        pushes: Pushes,
        push_s: float = math.inf,
    ) -> None:
        self._store = store
        self._insurers = insurers
        self._expiry_s = expiry_s
        self._pushes = pushes
        # A push may be made before its delivery is stored only if it ends
        # (push_s at most) with time left in the router's lease for its
        # "taken" to get there. Should a slow push and a slow report overrun
        # it, the router hands the claim off again: a second push, which the
        # insurer deduplicates, never a lost claim.
        self._push_first_lease_s = push_s + PUSH_FIRST_MARGIN_S
        self._told_lease_too_short = False

    async def deliver(self, request: DeliveryRequest, router_lease_s: float = 0.0) -> bool:
        """Stores the claim for pushing (committed before the ack); True when
        new, False for a redelivery of the same content. A new claim is pushed
        at once: leased as it is stored when its lane has room, else its lane
        is woken. With the router's lease long enough and room in the lane it
        is pushed before it is stored instead (the dispatcher stores it once
        the push ends); a redelivery of such a claim is then not told apart."""
        delivery = checked(request)
        code = delivery.insurer_code
        endpoint = await self._insurers.get(code)
        if endpoint is None:
            raise NotFound("insurer is not in the registry", reason="INSURER_NOT_FOUND")
        lease = self._pushes.reserve(code) if endpoint.pushable else None
        if lease is not None and router_lease_s >= self._push_first_lease_s:
            self._pushes.start_unstored(endpoint, delivery)
            _received(code, new=True)
            return True
        if 0 < router_lease_s < self._push_first_lease_s:
            self._lease_too_short(router_lease_s)
        leased: Delivery | None = None
        try:
            added, leased = await self._store.add_delivery(delivery, self._expiry_s, lease)
        except StorageUnavailable as exc:
            raise Unavailable("storage unavailable", reason="STORAGE_UNAVAILABLE") from exc
        finally:
            if lease is not None and leased is None:
                self._pushes.unreserve(code)
        if added is Added.CONFLICT:
            raise AlreadyExists(
                "transaction_id was delivered with different content", reason="DELIVERY_CONFLICT"
            )
        new = added is Added.NEW
        _received(code, new=new)
        if leased is not None:
            self._pushes.start_leased(endpoint, leased)
        elif new:
            self._pushes.notify(code)
        return new

    async def deliver_many(
        self, requests: Sequence[tuple[DeliveryRequest, float]]
    ) -> list[bool | IclaimError]:
        """(request, router_lease_s) each, taken as deliver() takes it, all at
        once: for each, new (True), a redelivery (False) or why it was not taken.
        InvalidArgument TOO_MANY_CLAIMS / BATCH_TOO_LARGE for a batch over the
        call's limits (iclaim_hub.common.handoff), before any is taken."""
        if len(requests) > MAX_CLAIMS_PER_CALL:
            raise InvalidArgument(f"at most {MAX_CLAIMS_PER_CALL} claims a call", reason="TOO_MANY_CLAIMS")
        if sum(len(r.envelope) for r, _ in requests) > MAX_ENVELOPE_BYTES_PER_CALL:
            raise InvalidArgument(
                f"at most {MAX_ENVELOPE_BYTES_PER_CALL} bytes of envelopes a call", reason="BATCH_TOO_LARGE"
            )
        return list(await asyncio.gather(*(self._deliver_one(r, lease_s) for r, lease_s in requests)))

    async def _deliver_one(self, request: DeliveryRequest, router_lease_s: float) -> bool | IclaimError:
        try:
            return await self.deliver(request, router_lease_s)
        except IclaimError as exc:
            return exc

    def _lease_too_short(self, router_lease_s: float) -> None:
        """Says once that the push timeout rules out pushing before storing:
        every claim then costs a commit more, which an operator should know."""
        if self._told_lease_too_short:
            return
        self._told_lease_too_short = True
        log.warning(
            "push_first_off",
            router_lease_s=router_lease_s,
            needs_s=self._push_first_lease_s,
            hint="ICLAIM_DELIVERY_TIMEOUT_S is too long for the router's hand-off lease",
        )


def _received(insurer_code: str, *, new: bool) -> None:
    metrics.DELIVERIES.labels("new" if new else "duplicate").inc()
    log.info("claim_received", insurer=insurer_code, duplicate=not new)


# --- operators ------------------------------------------------------------------------
class DeliveryAdmin:
    """What the AdminService offers on deliveries (§11)."""

    def __init__(self, store: DeliveryAdminStore, expiry_s: float, on_redriven: Callable[[], None]) -> None:
        self._store = store
        self._expiry_s = expiry_s
        self._on_redriven = on_redriven  # the router is told first, then the push follows

    async def redrive(self, transaction_ids: Sequence[str]) -> list[str]:
        """Failed (expired) deliveries wait again: attempts reset, a new expiry,
        the router told (ReportRedriven: the claim goes back to RECEIVED), then
        pushed. Returns the ids that were failed and are waiting again, sorted;
        ids unknown or not failed are left out. InvalidArgument
        TRANSACTION_ID_INVALID / TOO_MANY_TRANSACTION_IDS on bad input."""
        ids = list(dict.fromkeys(transaction_ids))
        if not ids:
            raise InvalidArgument("no transaction ids", reason="TRANSACTION_ID_INVALID")
        if len(ids) > REDRIVE_MAX:
            raise InvalidArgument(f"at most {REDRIVE_MAX} transaction ids", reason="TOO_MANY_TRANSACTION_IDS")
        if not all(TXID_RE.match(t) for t in ids):
            raise InvalidArgument("transaction id malformed", reason="TRANSACTION_ID_INVALID")
        try:
            redriven = await self._store.redrive(ids, self._expiry_s)
        except StorageUnavailable as exc:
            raise Unavailable("storage unavailable", reason="STORAGE_UNAVAILABLE") from exc
        if redriven:
            log.info("deliveries_redriven", count=len(redriven))
            self._on_redriven()
        return redriven

    async def list_deliveries(
        self, insurer_code: str = "", state: str = "", limit: int = 0
    ) -> list[DeliveryView]:
        """Deliveries oldest first. insurer_code "" = all; state "" = waiting
        and failed, or one of waiting | failed | taken; limit 0 = 100, at most
        1000. InvalidArgument INSURER_CODE_INVALID / STATE_INVALID /
        LIMIT_INVALID on bad input."""
        if insurer_code and not INSURER_RE.match(insurer_code):
            raise InvalidArgument("insurer_code is malformed", reason="INSURER_CODE_INVALID")
        states = LIST_STATES.get(state)
        if states is None:
            raise InvalidArgument("state must be waiting, failed or taken", reason="STATE_INVALID")
        if not 0 <= limit <= LIST_MAX:
            raise InvalidArgument(f"limit must be within 0..{LIST_MAX}", reason="LIMIT_INVALID")
        try:
            return await self._store.list_deliveries(insurer_code, states, limit or LIST_DEFAULT)
        except StorageUnavailable as exc:
            raise Unavailable("storage unavailable", reason="STORAGE_UNAVAILABLE") from exc
