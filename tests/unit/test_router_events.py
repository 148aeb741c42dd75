"""The size an audit record gives a claim's state change: traffic data the
Computer Crime Act asks for ("how big"), from the envelope that moved."""

from __future__ import annotations

from iclaim_hub.internal.v1 import audit_log_pb2
from services.claim_router.domain import State
from services.claim_router.events import TOPIC_AUDIT, state_change_events
from services.claim_router.model import ClaimRecord
from tests.support.router_records import claim_record


def _size(rec: ClaimRecord) -> int:
    (topic, payload), *_ = state_change_events(rec, actor=rec.hospital_code, route="/r")
    assert topic == TOPIC_AUDIT
    return audit_log_pb2.AuditEvent.FromString(payload).size_bytes


def test_a_change_read_without_the_envelope_still_counts_its_size() -> None:
    read = claim_record("SIZE1").with_changes(envelope="", envelope_bytes=6_123)
    assert _size(read.with_changes(state=State.CANCELLED)) == 6_123
    assert _size(read.with_changes(state=State.FAILED)) == 6_123


def test_a_decision_counts_its_own_envelope_and_a_hand_off_nothing() -> None:
    read = claim_record("SIZE2").with_changes(envelope="", envelope_bytes=6_123)
    assert _size(read.with_changes(state=State.APPROVED, decision_envelope="d" * 700)) == 700
    assert _size(read.with_changes(state=State.DELIVERED)) == 0
