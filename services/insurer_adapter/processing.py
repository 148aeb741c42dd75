"""What a simulated insurer does with one delivered claim: open the envelope,
check it against the delivery, read the FHIR Claim, decide, and seal the
ClaimResponse(s) to the hospital. Pure (no grpc, asyncpg or redis)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iclaim.crypto.envelope import EnvelopeError, open_envelope, seal
from iclaim.fhir import FhirError, build_claim_response, parse_claim
from services.insurer_adapter import simulator
from services.insurer_adapter.model import Delivery, SealedDecision


@dataclass(frozen=True)
class Assessment:
    steps: tuple[simulator.Step, ...]
    # Why the document was refused, as a code safe to log (never claim content).
    problem: str = ""


def assess(delivery: Delivery, private_jwk: dict[str, Any] | None, timing: simulator.Timing) -> Assessment:
    if private_jwk is None:
        return Assessment(simulator.invalid_document(), "ENVELOPE_KID_UNKNOWN")
    try:
        header, plaintext = open_envelope(delivery.envelope, private_jwk)
    except EnvelopeError as exc:
        return Assessment(simulator.invalid_document(), exc.reason)
    if header.recipient != delivery.insurer_code or header.sender != delivery.hospital_code:
        return Assessment(simulator.invalid_document(), "ENVELOPE_PARTY_MISMATCH")
    if header.claim_ref != delivery.claim_ref:
        return Assessment(simulator.invalid_document(), "ENVELOPE_CLAIM_REF_MISMATCH")
    if header.amount_satang != delivery.billed_amount_satang:
        return Assessment(simulator.invalid_document(), "ENVELOPE_AMOUNT_MISMATCH")
    try:
        claim = parse_claim(plaintext)
    except FhirError as exc:
        return Assessment(simulator.invalid_document(), f"FHIR_{exc.reason}")
    if claim.total_satang != delivery.billed_amount_satang:
        return Assessment(simulator.invalid_document(), "CLAIM_TOTAL_MISMATCH")
    if claim.claim_ref != delivery.claim_ref:
        return Assessment(simulator.invalid_document(), "CLAIM_REF_MISMATCH")
    return Assessment(simulator.decide(claim.policy_number, claim.total_satang, timing))


def seal_decisions(
    delivery: Delivery, steps: tuple[simulator.Step, ...], hospital_jwk: dict[str, Any]
) -> list[SealedDecision]:
    """Each step as a ClaimResponse sealed to the hospital (sender = insurer,
    amount header = approved amount)."""
    out: list[SealedDecision] = []
    for seq, step in enumerate(steps, start=1):
        document = build_claim_response(
            claim_ref=delivery.claim_ref,
            hospital_code=delivery.hospital_code,
            insurer_code=delivery.insurer_code,
            state=step.state,
            billed_satang=delivery.billed_amount_satang,
            approved_satang=step.approved_satang,
            reason_code=step.reason_code,
        )
        envelope = seal(
            document,
            hospital_jwk,
            sender=delivery.insurer_code,
            recipient=delivery.hospital_code,
            claim_ref=delivery.claim_ref,
            amount_satang=step.approved_satang,
        )
        out.append(
            SealedDecision(
                seq=seq,
                state=step.state,
                approved_satang=step.approved_satang,
                reason_code=step.reason_code,
                delay_s=step.delay_s,
                final=step.final,
                envelope=envelope,
            )
        )
    return out
