"""Adapter records (no storage or transport code here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum


@dataclass(frozen=True)
class DeliveryRequest:
    """A DeliverClaim call as the router sent it, not yet checked."""

    transaction_id: str
    insurer_code: str
    hospital_code: str
    claim_ref: str
    billed_amount_satang: int
    envelope: str
    submitted_at: datetime | None
    # W3C traceparent of the DeliverClaim call ("" with tracing off): its pushes join that trace.
    traceparent: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class NewDelivery(DeliveryRequest):
    """A checked DeliveryRequest, with the digest stored beside it."""

    envelope_sha256: str


class Added(Enum):
    """What storing a delivery did."""

    NEW = "new"
    DUPLICATE = "duplicate"  # same content again: only counted
    CONFLICT = "conflict"  # same transaction_id, different content: nothing stored


@dataclass(frozen=True)
class Delivery(DeliveryRequest):
    """A delivery leased for one push attempt (`attempts` counts this one);
    `traceparent` as stored with it."""

    received_at: datetime
    attempts: int


@dataclass(frozen=True)
class Lease:
    """Who holds a delivery's push attempt, and for how long."""

    owner: str
    seconds: float


class ReportKind(Enum):
    """What the router is told about a delivery (DeliveryReportService)."""

    TAKEN = "taken"
    EXPIRED = "expired"
    REDRIVEN = "redriven"


@dataclass(frozen=True)
class PendingReport:
    transaction_id: str
    insurer_code: str
    kind: ReportKind
    taken_at: datetime | None
    attempts: int  # counts this one


@dataclass(frozen=True)
class DeliveryView:
    """One row of `iclaim admin deliveries list` (no claim content)."""

    transaction_id: str
    insurer_code: str
    state: str  # waiting | taken | failed
    attempts: int
    last_error: str  # a PushError value, or ""
    next_attempt_at: datetime | None  # None once taken or failed
    received_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Backlog:
    """Waiting deliveries of one insurer, for the gauges and the lanes."""

    insurer_code: str
    waiting: int
    oldest: datetime | None


@dataclass(frozen=True)
class EndpointKey:
    key_id: str
    secret: bytes


@dataclass(frozen=True)
class Endpoint:
    """How to push to one insurer, as the registry says now."""

    insurer_code: str
    mode: str  # grpc | webhook | pull
    target: str  # host:port (grpc) or https URL (webhook)
    ca_pem: str  # "" = system roots
    mtls: bool
    available: bool
    key: EndpointKey | None

    @property
    def pushable(self) -> bool:
        """False: deliveries wait (pull insurer, closed by operators, no key yet)."""
        return (
            self.mode in ("grpc", "webhook") and self.available and bool(self.target) and self.key is not None
        )


class AnswerOutcome(Enum):
    """What became of a decision an insurer answered a push with (§10.6)."""

    RECORDED = "recorded"  # the claim has this decision now (or had it already)
    CONFLICT = "conflict"  # the claim had another decision: the first stands
    REFUSED = "refused"  # PostDecision's rules refused it
    UNRECORDED = "unrecorded"  # the router could not be reached or failed


@dataclass(frozen=True)
class PushAnswer:
    """The insurer's decision in its answer to a push (protocol §10.6)."""

    transaction_id: str
    state: int  # iclaim.v1.ClaimState
    approved_amount_satang: int
    decision_envelope: str
    reason_code: str


@dataclass(frozen=True)
class PushResult:
    taken: bool
    error: str = ""  # a PushError value when not taken
    answer: PushAnswer | None = None  # a decision the insurer answered with (taken only)
    # The router recorded that decision (or holds an earlier one): it knows the
    # claim was taken, so no "taken" report is sent.
    decided: bool = False


class StorageUnavailable(Exception):
    """The database could not be reached (as opposed to a query that failed)."""
