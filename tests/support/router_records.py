"""A claim as the router stores it, for tests of the router's store."""

from __future__ import annotations

from datetime import UTC, datetime

from services.claim_router.domain import State
from services.claim_router.model import ClaimRecord


def claim_record(ref: str, mode: str = "grpc") -> ClaimRecord:
    now = datetime.now(UTC)
    return ClaimRecord(
        transaction_id=f"txn_{ref.lower():0>28}",
        hospital_code="10670",
        insurer_code="AIA",
        claim_ref=ref,
        state=State.RECEIVED,
        billed_amount_satang=100,
        approved_amount_satang=0,
        envelope="e",
        envelope_bytes=1,
        envelope_sha256="0" * 64,
        decision_envelope="",
        status_reason="",
        delivery_mode=mode,
        submitted_at=now,
        decided_at=None,
        updated_at=now,
    )
