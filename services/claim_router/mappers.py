"""Messages <-> use-case values: field copies only, no rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2
from iclaim_hub.common.fields import copy_fields
from iclaim_hub.common.proto_time import timestamp, timestamp_or_none
from iclaim_hub.internal.v1 import decision_intake_pb2, delivery_report_pb2
from iclaim_hub.registry.model import (
    DELIVERY_GRPC,
    DELIVERY_PULL,
    DELIVERY_WEBHOOK,
    HEALTH_DEGRADED,
    HEALTH_DOWN,
    HEALTH_HEALTHY,
)
from services.claim_router.model import ClaimRecord, DecisionOutcome
from services.claim_router.usecases import (
    DecisionRequest,
    DeliveryReport,
    ListClaimsRequest,
    Party,
    SubmitRequest,
)

# Registry names -> public enums (§10); anything else is the zero value.
_DELIVERY_MODES: dict[str, pb.DeliveryMode] = {
    DELIVERY_PULL: pb.DELIVERY_MODE_PULL,
    DELIVERY_GRPC: pb.DELIVERY_MODE_GRPC,
    DELIVERY_WEBHOOK: pb.DELIVERY_MODE_WEBHOOK,
}
_HEALTHS: dict[str, pb.InsurerHealth] = {
    HEALTH_HEALTHY: pb.INSURER_HEALTH_HEALTHY,
    HEALTH_DEGRADED: pb.INSURER_HEALTH_DEGRADED,
    HEALTH_DOWN: pb.INSURER_HEALTH_DOWN,
}


def claim_to_proto(rec: ClaimRecord) -> pb.Claim:
    return copy_fields(
        pb.Claim,
        rec,
        state=claim_state_of(rec),
        submitted_at=timestamp(rec.submitted_at),
        decided_at=timestamp_or_none(rec.decided_at),
        updated_at=timestamp(rec.updated_at),
    )


def delivery_to_proto(rec: ClaimRecord) -> insurer_service_pb2.ClaimDelivery:
    return copy_fields(insurer_service_pb2.ClaimDelivery, rec, submitted_at=timestamp(rec.submitted_at))


def claim_decision_to_proto(rec: ClaimRecord) -> decision_intake_pb2.ClaimDecision:
    """What billing's read-through records: the same values the outbox sends to
    BillingIntakeService (services/claim_router/events.py), so that the later
    delivery finds the same decision and changes nothing."""
    return decision_intake_pb2.ClaimDecision(
        transaction_id=rec.transaction_id,
        hospital_code=rec.hospital_code,
        insurer_code=rec.insurer_code,
        state=int(rec.state),  # type: ignore[arg-type]  # State mirrors ClaimState's numbers
        approved_amount_satang=rec.approved_amount_satang,
        decided_at=timestamp(rec.decided_at or datetime.now(UTC)),
    )


def _keys(party: Party) -> list[pb.EncryptionKey]:
    """`current` marks the one key to seal new envelopes to (§5); the others are
    previous keys still accepted during a rotation."""
    current = party.principal.current_key()
    current_kid = None if current is None else current.kid
    return [
        pb.EncryptionKey(
            kid=k.kid, jwk=json.dumps(k.public_jwk, sort_keys=True), current=k.kid == current_kid
        )
        for k in party.keys
    ]


def insurer_to_proto(party: Party) -> pb.Insurer:
    p = party.principal
    return pb.Insurer(
        code=p.code,
        display_name=p.display_name,
        line=p.line or 0,  # type: ignore[arg-type]  # the registry stores InsuranceLine's number
        available=party.available,
        keys=_keys(party),
        delivery=_DELIVERY_MODES.get(party.delivery, pb.DELIVERY_MODE_UNSPECIFIED),
        health=_HEALTHS.get(party.health, pb.INSURER_HEALTH_UNKNOWN),
    )


def hospital_to_proto(party: Party) -> insurer_service_pb2.Hospital:
    p = party.principal
    return insurer_service_pb2.Hospital(code=p.code, display_name=p.display_name, keys=_keys(party))


def submit_request_of(request: pb.SubmitClaimRequest, hospital_code: str) -> SubmitRequest:
    return SubmitRequest(
        hospital_code=hospital_code,
        claim_ref=request.claim_ref,
        insurer_code=request.insurer_code,
        billed_amount_satang=request.billed_amount_satang,
        envelope=request.envelope,
        decision_timeout=(request.decision_timeout.seconds, request.decision_timeout.nanos),
    )


def list_claims_request_of(request: pb.ListClaimsRequest, hospital_code: str) -> ListClaimsRequest:
    return ListClaimsRequest(
        hospital_code=hospital_code,
        page_size=request.page_size,
        page_token=request.page_token,
        state=request.state if request.HasField("state") else None,
        insurer_code=request.insurer_code if request.HasField("insurer_code") else None,
    )


def decision_request_of(
    request: insurer_service_pb2.PostDecisionRequest | decision_intake_pb2.RecordDecisionRequest,
    insurer_code: str,
) -> DecisionRequest:
    return DecisionRequest(
        transaction_id=request.transaction_id,
        insurer_code=insurer_code,
        state=request.state,
        approved_amount_satang=request.approved_amount_satang,
        decision_envelope=request.decision_envelope,
        reason_code=request.reason_code,
    )


def decision_result_to_proto(outcome: DecisionOutcome) -> insurer_service_pb2.DecisionResult:
    return insurer_service_pb2.DecisionResult(
        transaction_id=outcome.transaction_id,
        code=int(outcome.code),
        reason=outcome.reason,
        # State mirrors ClaimState's numbers; 0 is CLAIM_STATE_UNSPECIFIED
        state=0 if outcome.state is None else int(outcome.state),  # type: ignore[arg-type]
    )


def delivery_report_of(
    request: delivery_report_pb2.ReportTakenRequest
    | delivery_report_pb2.ReportExpiredRequest
    | delivery_report_pb2.ReportRedrivenRequest,
) -> DeliveryReport:
    return DeliveryReport(transaction_id=request.transaction_id, insurer_code=request.insurer_code)


def claim_state_of(rec: ClaimRecord) -> pb.ClaimState:
    return int(rec.state)  # type: ignore[return-value]  # State mirrors ClaimState's numbers
