"""Opens one delivered claim with the insurer's private key and checks it
against the delivery. Pure: no I/O.

The envelope's protected header and the FHIR Claim must agree with what the
clearinghouse says it delivered (parties, claim_ref, amount); anything else
is an invalid claim document (§8), never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

from iclaim.crypto.envelope import EnvelopeError, key_for_kid, open_envelope_with
from iclaim.fhir import FhirError
from iclaim.fhir.claim import read_claim
from iclaim.insurer.credentials import InsurerCredentials
from iclaim.insurer.handler import IncomingClaim
from iclaim.v1 import insurer_service_pb2 as ipb


@dataclass(frozen=True)
class InvalidDocument:
    # Why, as a code safe to log (never claim content).
    problem: str


def open_claim(insurer: InsurerCredentials, delivery: ipb.ClaimDelivery) -> IncomingClaim | InvalidDocument:
    try:
        header, plaintext = open_envelope_with(
            delivery.envelope, lambda h: key_for_kid(insurer.decryption_jwks, h)
        )
    except EnvelopeError as exc:
        return InvalidDocument(exc.reason)
    if header.recipient != insurer.code or header.sender != delivery.hospital_code:
        return InvalidDocument("ENVELOPE_PARTY_MISMATCH")
    if header.claim_ref != delivery.claim_ref:
        return InvalidDocument("ENVELOPE_CLAIM_REF_MISMATCH")
    if header.amount_satang != delivery.billed_amount_satang:
        return InvalidDocument("ENVELOPE_AMOUNT_MISMATCH")
    try:
        parsed, doc = read_claim(plaintext)  # validated once, parsed once
    except FhirError as exc:
        return InvalidDocument(f"FHIR_{exc.reason}")
    except Exception as exc:  # noqa: BLE001 (the hospital's document, not our state: deny it, never retry it forever)
        return InvalidDocument(f"FHIR_UNREADABLE:{type(exc).__name__}")
    if parsed.total_satang != delivery.billed_amount_satang:
        return InvalidDocument("CLAIM_TOTAL_MISMATCH")
    if parsed.claim_ref != delivery.claim_ref:
        return InvalidDocument("CLAIM_REF_MISMATCH")
    return IncomingClaim(
        insurer_code=insurer.code, delivery=delivery, claim=doc, parsed=parsed, header=header
    )
