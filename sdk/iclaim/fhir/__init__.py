"""FHIR R4 documents inside iClaim envelopes (docs/protocol.md §4). Pure: no I/O.

Hospitals: `build_claim(...)` -> bytes to seal; `parse_claim_response(bytes)`
on an opened decision envelope. Insurers: `parse_claim(bytes)`,
`build_claim_response(...)`. Every failure is a `FhirError` with `.reason`.
"""

from __future__ import annotations

from iclaim.fhir.claim import (
    ClaimItem,
    ParsedClaim,
    PatientInfo,
    build_claim,
    parse_claim,
    thai_citizen_id_checksum_ok,
)
from iclaim.fhir.claim_response import (
    APPROVED,
    DENIED,
    INVALID_CLAIM_DOCUMENT,
    PARTIALLY_APPROVED,
    PENDING_REVIEW,
    ParsedClaimResponse,
    build_claim_response,
    parse_claim_response,
)
from iclaim.fhir.errors import FhirError
from iclaim.fhir.money import satang_to_thb, thb_to_satang

__all__ = [
    "APPROVED",
    "DENIED",
    "INVALID_CLAIM_DOCUMENT",
    "PARTIALLY_APPROVED",
    "PENDING_REVIEW",
    "ClaimItem",
    "FhirError",
    "ParsedClaim",
    "ParsedClaimResponse",
    "PatientInfo",
    "build_claim",
    "build_claim_response",
    "parse_claim",
    "parse_claim_response",
    "satang_to_thb",
    "thai_citizen_id_checksum_ok",
    "thb_to_satang",
]
