"""Outbox payloads the router emits with each state change (traffic data only)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from iclaim_hub.common.proto_time import timestamp
from iclaim_hub.internal.v1 import audit_log_pb2, billing_intake_pb2
from services.claim_router.domain import BILLABLE_STATES, State
from services.claim_router.model import ClaimRecord, Event

TOPIC_AUDIT = "audit"
TOPIC_BILLING = "billing"


def state_change_events(rec: ClaimRecord, *, actor: str, route: str) -> list[Event]:
    """An audit record for the new state; a billing intake event for approvals."""
    peer = rec.insurer_code if actor == rec.hospital_code else rec.hospital_code
    audit = audit_log_pb2.AuditEvent(
        event_id=f"router-{uuid.uuid4().hex}",
        kind=audit_log_pb2.AUDIT_EVENT_KIND_CLAIM_STATE_CHANGE,
        origin_principal=actor,
        destination=peer,
        route=route,
        occurred_at=timestamp(rec.updated_at),
        size_bytes=_size_bytes(rec),
        service_type="claim_router",
        outcome_code="OK",
        outcome_reason=f"CLAIM_STATE_{rec.state.name}",
        transaction_id=rec.transaction_id,
        envelope_sha256=rec.envelope_sha256,
    )
    events: list[Event] = [(TOPIC_AUDIT, audit.SerializeToString())]
    if rec.state in BILLABLE_STATES:
        billing = billing_intake_pb2.RecordClaimDecisionRequest(
            transaction_id=rec.transaction_id,
            hospital_code=rec.hospital_code,
            insurer_code=rec.insurer_code,
            state=int(rec.state),  # type: ignore[arg-type]
            approved_amount_satang=rec.approved_amount_satang,
            decided_at=timestamp(rec.decided_at or datetime.now(UTC)),
        )
        events.append((TOPIC_BILLING, billing.SerializeToString()))
    return events


def _size_bytes(rec: ClaimRecord) -> int:
    """How big the change was: the decision's envelope, else the claim's (a
    hand-off note moves nothing the audit counts)."""
    if rec.state == State.DELIVERED:
        return 0
    if rec.decision_envelope:
        return len(rec.decision_envelope.encode())
    return rec.envelope_bytes
