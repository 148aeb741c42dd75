"""A claim decision as the claim router sends it -> the DecisionReport the use
cases validate. One mapping for both ways a decision arrives: pushed by the
router's outbox (BillingIntakeService) and read through on demand
(ClaimSettlementService.GetClaimDecisions), so both record the same thing."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from iclaim.v1 import claim_service_pb2
from iclaim_hub.internal.v1 import billing_intake_pb2, decision_intake_pb2
from services.billing.domain import DecisionReport


def datetime_or_none(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """None: a Timestamp no datetime can hold."""
    try:
        dt: datetime = ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None
    return dt


def decision_report(
    msg: billing_intake_pb2.RecordClaimDecisionRequest | decision_intake_pb2.ClaimDecision,
) -> DecisionReport:
    try:
        state: str | None = claim_service_pb2.ClaimState.Name(msg.state)
    except ValueError:
        state = None
    given = msg.HasField("decided_at")
    decided_at = datetime_or_none(msg.decided_at) if given else None
    return DecisionReport(
        transaction_id=msg.transaction_id,
        hospital_code=msg.hospital_code,
        insurer_code=msg.insurer_code,
        state=None if state is None else state.removeprefix("CLAIM_STATE_"),
        approved_satang=msg.approved_amount_satang,
        decided_at=decided_at,
        decided_at_out_of_range=given and decided_at is None,
    )
