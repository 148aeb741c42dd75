"""Adapter records (no storage or transport code here)."""

from __future__ import annotations

from dataclasses import dataclass
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
class Delivery:
    transaction_id: str
    insurer_code: str
    hospital_code: str
    claim_ref: str
    billed_amount_satang: int
    envelope: str
    received_at: datetime
    process_attempts: int


@dataclass(frozen=True)
class SealedDecision:
    seq: int
    state: str
    approved_satang: int
    reason_code: str
    delay_s: float  # after received_at
    final: bool
    envelope: str


@dataclass(frozen=True)
class PendingDecision:
    transaction_id: str
    seq: int
    insurer_code: str
    state: str
    approved_satang: int
    reason_code: str
    envelope: str
    final: bool
    attempts: int
    received_at: datetime


@dataclass(frozen=True)
class InsurerKey:
    insurer_code: str
    kid: str
    public_jwk: dict[str, object]


class SendOutcome(Enum):
    ACKNOWLEDGED = "acknowledged"  # the router has it
    REJECTED = "rejected"  # the router will never take it: retrying cannot help
    RETRY = "retry"


@dataclass(frozen=True)
class SendResult:
    outcome: SendOutcome
    code: str  # the router's status code name, for logs and metrics
    detail: str = ""


class StorageUnavailable(Exception):
    """The database could not be reached (as opposed to a query that failed)."""
