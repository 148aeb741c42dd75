"""A hospital's claims as the portal shows them: state names, the timeline (the
hub's audit trail, topped up with what the portal observed), the new-claim
form read into a FHIR Claim. Sealing and opening stay behind `Envelopes`, so
they can move into the browser later."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
import grpc
from iclaim.audit.trail import TrailItem
from iclaim.client.hospital import OpenedDecision
from iclaim.fhir.claim import PatientInfo, build_claim, parse_claim
from iclaim.fhir.errors import FhirError
from iclaim.v1 import claim_service_pb2 as pb

from iclaim_portal.formatting import BANGKOK, parse_baht

STATE_PREFIX = "CLAIM_STATE_"
# WatchClaim ends after these (docs/protocol.md §4).
FINAL_STATES = frozenset({"APPROVED", "PARTIALLY_APPROVED", "DENIED", "CANCELLED", "FAILED", "PAID"})
DECIDED_STATES = frozenset({"APPROVED", "PARTIALLY_APPROVED", "DENIED", "PAID"})
CANCELLABLE_STATES = frozenset({"RECEIVED", "DELIVERED", "PENDING_REVIEW"})
FILTER_STATES = ("RECEIVED", "DELIVERED", "PENDING_REVIEW", *sorted(FINAL_STATES))
MAX_UPLOAD_BYTES = 1024 * 1024
STATE_CHANGE = "CLAIM_STATE_CHANGE"
# A page waits this long for the audit trail before showing what the portal observed.
TRAIL_TIMEOUT_S = 3.0

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

log = logging.getLogger(__name__)


class Envelopes(Protocol):
    """Who holds the hospital's keys: today the portal server (the SDK's
    HospitalClient has both methods); later possibly the browser."""

    async def seal_claim(
        self, fhir_claim: bytes, *, insurer_code: str, claim_ref: str, amount_satang: int
    ) -> str: ...

    def open_decision(self, claim: pb.Claim) -> OpenedDecision: ...


def state_name(claim: pb.Claim) -> str:
    return pb.ClaimState.Name(claim.state).removeprefix(STATE_PREFIX)


def state_value(name: str) -> int:
    return int(pb.ClaimState.Value(STATE_PREFIX + name))


def when(ts: Any) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


class FormError(ValueError):
    """Input the page explains; `field` names the form field."""

    def __init__(self, field: str, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.message = message  # an English msgid, translated on the page
        self.reason = reason  # a code shown as is (the clearinghouse's refusal reason)


@dataclass(frozen=True)
class NewClaim:
    insurer_code: str
    claim_ref: str
    amount_satang: int
    fhir: bytes


def new_claim_ref() -> str:
    # the hospital's date (Bangkok), not UTC's, which is still yesterday until 07:00
    return f"P-{datetime.now(BANGKOK):%Y%m%d}-{secrets.token_hex(4).upper()}"


def claim_from_form(form: dict[str, str], hospital_code: str, insurers: set[str]) -> NewClaim:
    insurer = form.get("insurer_code", "").strip()
    if insurer not in insurers:
        raise FormError("insurer_code", "Choose an insurer from the list.")
    try:
        amount = parse_baht(form.get("amount", ""))
    except ValueError as exc:
        raise FormError("amount", "Enter the amount in baht, e.g. 12500.00 (not negative).") from exc
    if amount <= 0:
        raise FormError("amount", "The amount must be more than zero.")
    claim_ref = form.get("claim_ref", "").strip() or new_claim_ref()
    try:
        doc = build_claim(
            claim_ref=claim_ref,
            hospital_code=hospital_code,
            insurer_code=insurer,
            policy_number=form.get("policy_number", "").strip(),
            amount_satang=amount,
            patient=PatientInfo(
                name=form.get("patient_name", "").strip(),
                citizen_id=form.get("citizen_id", "").strip(),
            ),
            diagnoses=[d for d in form.get("diagnosis", "").replace(",", " ").split() if d],
        )
    except FhirError as exc:
        raise FormError(
            _FHIR_FIELDS.get(exc.reason, "form"), FHIR_MESSAGES.get(exc.reason, str(exc))
        ) from exc
    return NewClaim(insurer, claim_ref, amount, doc)


def claim_from_upload(data: bytes, hospital_code: str, insurers: set[str]) -> NewClaim:
    if len(data) > MAX_UPLOAD_BYTES:
        raise FormError("fhir_file", "The file is too large (the limit is 1 MB).")
    try:
        parsed = parse_claim(data)
    except FhirError as exc:
        raise FormError("fhir_file", "The file is not a valid FHIR Claim (JSON).") from exc
    if parsed.insurer_code not in insurers:
        raise FormError("fhir_file", "The Claim's insurer is not in the directory.")
    if parsed.hospital_code not in (None, hospital_code):
        raise FormError("fhir_file", "The Claim names another hospital as its provider.")
    if parsed.total_satang <= 0:
        raise FormError("fhir_file", "The Claim's total must be more than zero.")
    return NewClaim(parsed.insurer_code or "", parsed.claim_ref, parsed.total_satang, data)


_FHIR_FIELDS = {
    "CITIZEN_ID_INVALID": "citizen_id",
    "DIAGNOSIS_MISSING": "diagnosis",
    "DIAGNOSIS_INVALID": "diagnosis",
}
FHIR_MESSAGES = {
    "CITIZEN_ID_INVALID": "The citizen id must be 13 digits.",
    "DIAGNOSIS_MISSING": "Enter at least one ICD-10 diagnosis code.",
    "DIAGNOSIS_INVALID": "A diagnosis is not an ICD-10 code (e.g. J18.9).",
    "FIELD_MISSING": "Fill in the policy number and the patient's name.",
}


class TrailReader(Protocol):
    """The part of the SDK's `GatewayTrail` the timeline reads."""

    async def by_transaction(self, transaction_id: str) -> Sequence[TrailItem]: ...


@dataclass(frozen=True)
class Step:
    state: str
    at: datetime
    from_trail: bool  # False: the portal's own observation, not (yet) in the audit trail


@dataclass(frozen=True)
class History:
    steps: list[Step]
    trail_read: bool  # False: the audit trail could not be read; steps are the portal's only


def trail_steps(items: Iterable[TrailItem], transaction_id: str) -> list[Step]:
    """The claim's state changes as the hub's audit log recorded them, at the
    hub's times. Gateway calls and expired entries (no data left) say nothing
    about states and are skipped."""
    steps: list[Step] = []
    seen: set[str] = set()
    for item in items:
        e = item.entry
        if e is None or e.kind != STATE_CHANGE or e.transaction_id != transaction_id:
            continue
        state = e.outcome_reason.removeprefix(STATE_PREFIX)
        if state not in FILTER_STATES or item.event_id in seen:
            continue
        seen.add(item.event_id)
        # Exact microseconds (a float of them would round).
        at = EPOCH + timedelta(microseconds=e.occurred_at_us)
        steps.append(Step(state, at, True))
    return steps


def merge_timeline(trail: list[Step] | None, observed: Iterable[tuple[str, datetime]]) -> History:
    """The trail's state changes plus what the portal observed that the trail
    lacks (it is fed asynchronously, so the newest state may arrive there later),
    ordered by time; `trail` None means it could not be read. A state the trail
    has is never shown again from the portal's observations; a state the claim
    re-entered (a redriven delivery: RECEIVED, FAILED, RECEIVED) stays, as in
    the log, but the same state twice in a row is shown once."""
    if trail is None:
        seen = [Step(state, at, False) for state, at in observed]
        return History(sorted(seen, key=lambda s: s.at), trail_read=False)
    have = {s.state for s in trail}
    extra = [Step(state, at, False) for state, at in observed if state not in have]
    # Ties keep the trail's entries first (sorted is stable).
    ordered = sorted([*trail, *extra], key=lambda s: s.at)
    steps: list[Step] = []
    for step in ordered:
        if not steps or steps[-1].state != step.state:
            steps.append(step)
    return History(steps, trail_read=True)


class Timeline:
    """A claim's states: the hub's audit trail merged with the states this
    portal observed (SQL), which stand in while the trail lags or is down."""

    def __init__(self, pool: asyncpg.Pool, trail: TrailReader | None = None) -> None:
        self.pool = pool
        self.trail = trail

    async def observe(self, claim: pb.Claim) -> None:
        await self.pool.execute(
            "INSERT INTO claim_events (transaction_id, state) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            claim.transaction_id,
            state_name(claim),
        )

    async def observed(self, transaction_id: str) -> list[tuple[str, datetime]]:
        rows = await self.pool.fetch(
            "SELECT state, observed_at FROM claim_events WHERE transaction_id = $1 ORDER BY observed_at, id",
            transaction_id,
        )
        return [(r["state"], r["observed_at"]) for r in rows]

    async def of(self, transaction_id: str) -> History:
        trail, observed = await asyncio.gather(self._trail(transaction_id), self.observed(transaction_id))
        return merge_timeline(trail, observed)

    async def _trail(self, transaction_id: str) -> list[Step] | None:
        if self.trail is None:
            return None
        try:
            async with asyncio.timeout(TRAIL_TIMEOUT_S):
                items = await self.trail.by_transaction(transaction_id)
        except grpc.aio.AioRpcError as err:
            # The code only: details may echo the request.
            log.warning("audit trail unreadable: %s", err.code().name)
            return None
        except TimeoutError:
            log.warning("audit trail unreadable: timed out")
            return None
        return trail_steps(items, transaction_id)


def decision_summary(opened: OpenedDecision) -> dict[str, Any]:
    """What the page shows of the opened ClaimResponse."""
    doc = opened.claim_response
    return {
        "disposition": doc.get("disposition", ""),
        "outcome": doc.get("outcome", ""),
        "json": json.dumps(doc, ensure_ascii=False, indent=2),
    }
