"""FHIR R4 ClaimResponse (insurer -> hospital): the decision document.

The decision state is carried explicitly in an extension and is also implied
by the standard fields (outcome, totals), so plain FHIR tooling reads it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir.resources.R4B.claimresponse import ClaimResponse

from iclaim.fhir import systems
from iclaim.fhir.errors import FhirError
from iclaim.fhir.jsonio import dumps
from iclaim.fhir.resource import load_resource, validated
from iclaim.fhir.money import money, money_satang

APPROVED = "APPROVED"
PARTIALLY_APPROVED = "PARTIALLY_APPROVED"
DENIED = "DENIED"
PENDING_REVIEW = "PENDING_REVIEW"
STATES = frozenset({APPROVED, PARTIALLY_APPROVED, DENIED, PENDING_REVIEW})

# The reason a document could not be processed at all maps to outcome "error".
INVALID_CLAIM_DOCUMENT = "INVALID_CLAIM_DOCUMENT"

_DISPOSITION = {
    APPROVED: "Approved in full",
    PARTIALLY_APPROVED: "Partially approved",
    DENIED: "Denied",
    PENDING_REVIEW: "Pending review",
}


@dataclass(frozen=True)
class ParsedClaimResponse:
    claim_ref: str
    state: str  # APPROVED | PARTIALLY_APPROVED | DENIED | PENDING_REVIEW
    outcome: str  # queued | complete | partial | error
    billed_satang: int
    approved_satang: int
    reason_code: str
    disposition: str
    insurer_code: str | None
    hospital_code: str | None


def _outcome(state: str, reason_code: str) -> str:
    if state == PENDING_REVIEW:
        return "queued"
    if state == PARTIALLY_APPROVED:
        return "partial"
    if state == DENIED and reason_code == INVALID_CLAIM_DOCUMENT:
        return "error"
    return "complete"


def _reason(code: str) -> dict[str, Any]:
    return {"coding": [{"system": systems.REASON, "code": code}], "text": code}


def _category(code: str) -> dict[str, Any]:
    return {"coding": [{"system": systems.ADJUDICATION, "code": code}]}


def build_claim_response(
    *,
    claim_ref: str,
    hospital_code: str,
    insurer_code: str,
    state: str,
    billed_satang: int,
    approved_satang: int,
    reason_code: str = "",
    patient_citizen_id: str | None = None,
    created: datetime | None = None,
) -> bytes:
    """A FHIR R4 ClaimResponse as UTF-8 JSON; amounts in THB, exact."""
    if state not in STATES:
        raise FhirError("STATE_INVALID", f"unknown decision state {state!r}")
    if not claim_ref or not hospital_code or not insurer_code:
        raise FhirError("FIELD_MISSING", "claim_ref, hospital_code and insurer_code are required")
    if state in (DENIED, PENDING_REVIEW) and approved_satang != 0:
        raise FhirError("AMOUNT_INVALID", f"{state} approves nothing")
    if state == APPROVED and approved_satang != billed_satang:
        raise FhirError("AMOUNT_INVALID", "APPROVED approves the billed amount")
    if state == PARTIALLY_APPROVED and not approved_satang < billed_satang:
        raise FhirError("AMOUNT_INVALID", "PARTIALLY_APPROVED approves less than billed")

    outcome = _outcome(state, reason_code)
    disposition = _DISPOSITION[state] + (f": {reason_code}" if reason_code else "")
    patient: dict[str, Any] = (
        {"identifier": {"system": systems.THAI_CID, "value": patient_citizen_id}}
        if patient_citizen_id
        else {"display": "Patient of the referenced claim"}
    )
    adjudication: list[dict[str, Any]] = [
        {"category": _category("submitted"), "amount": money(billed_satang)},
    ]
    benefit: dict[str, Any] = {"category": _category("benefit"), "amount": money(approved_satang)}
    if reason_code:
        benefit["reason"] = _reason(reason_code)
    if state != PENDING_REVIEW:
        adjudication.append(benefit)

    doc: dict[str, Any] = {
        "resourceType": "ClaimResponse",
        "extension": [{"url": systems.DECISION_STATE_EXT, "valueCode": state}],
        "identifier": [{"system": systems.CLAIM_REF, "value": claim_ref}],
        "status": "active",
        "type": {"coding": [{"system": systems.CLAIM_TYPE, "code": "institutional"}]},
        "use": "claim",
        "patient": patient,
        "created": (created or datetime.now(UTC)).isoformat(timespec="seconds"),
        "insurer": {"identifier": {"system": systems.INSURER, "value": insurer_code}},
        "requestor": {"identifier": {"system": systems.MOPH_HCODE, "value": hospital_code}},
        "request": {"identifier": {"system": systems.CLAIM_REF, "value": claim_ref}},
        "outcome": outcome,
        "disposition": disposition,
        "adjudication": adjudication,
        "total": [
            {"category": _category("submitted"), "amount": money(billed_satang)},
            {"category": _category("benefit"), "amount": money(approved_satang)},
        ],
    }
    if approved_satang > 0:
        doc["payment"] = {
            "type": {
                "coding": [
                    {"system": systems.PAYMENT_TYPE, "code": "complete" if state == APPROVED else "partial"}
                ]
            },
            "amount": money(approved_satang),
        }
    if outcome == "error":
        doc["error"] = [{"code": _reason(reason_code)}]
    if not _valid_by_construction(
        (claim_ref, hospital_code, insurer_code, reason_code, patient_citizen_id), created
    ):
        validated(doc, ClaimResponse)
    return dumps(doc)


# The document above is one fixed shape; only these values vary. When each is
# plain printable ASCII without spaces (a valid FHIR code, so a valid string
# too) and `created` is UTC (now, by default), the document is valid FHIR by
# construction and the pydantic round trip (about 85 % of building it) is
# skipped; tests/unit/test_fhir_claim_response.py validates such documents
# with the models over many varied inputs. Anything else is validated as
# before, so what was refused still is.
_PLAIN = re.compile(r"[!-~]{1,256}")
_UTC = timedelta(0)


def _valid_by_construction(texts: tuple[str | None, ...], created: datetime | None) -> bool:
    for text in texts:
        if text and not (isinstance(text, str) and _PLAIN.fullmatch(text)):
            return False
    if created is None:
        return True
    return isinstance(created, datetime) and created.utcoffset() == _UTC and 1900 <= created.year <= 9999


def _total(doc: dict[str, Any], category: str) -> int | None:
    for entry in doc.get("total") or ():
        codes = {c.get("code") for c in (entry.get("category") or {}).get("coding") or ()}
        if category in codes:
            return money_satang(entry.get("amount"), what=f"ClaimResponse.total[{category}]")
    return None


def _ident(ref: Any) -> str | None:
    ident = ref.get("identifier") if isinstance(ref, dict) else None
    value = ident.get("value") if isinstance(ident, dict) else None
    return value if isinstance(value, str) and value else None


def parse_claim_response(data: bytes | str) -> ParsedClaimResponse:
    """Reads a decision document (what a hospital gets in decision_envelope)."""
    doc = load_resource(data, ClaimResponse, "NOT_A_CLAIM_RESPONSE")
    claim_ref = _ident(doc.get("request"))
    if not claim_ref:
        raise FhirError("CLAIM_REF_MISSING", "ClaimResponse.request.identifier is missing")
    outcome = doc.get("outcome", "")
    billed = _total(doc, "submitted")
    approved = _total(doc, "benefit")
    if approved is None:
        payment = doc.get("payment")
        approved = money_satang(payment.get("amount"), what="payment") if payment else 0
    reason = ""
    for adj in doc.get("adjudication") or ():
        for coding in (adj.get("reason") or {}).get("coding") or ():
            if coding.get("system") == systems.REASON and isinstance(coding.get("code"), str):
                reason = coding["code"]
    state = ""
    for ext in doc.get("extension") or ():
        if ext.get("url") == systems.DECISION_STATE_EXT:
            state = ext.get("valueCode", "")
    if not state:  # a response from other tooling: infer from standard fields
        state = {"queued": PENDING_REVIEW, "partial": PARTIALLY_APPROVED, "error": DENIED}.get(
            outcome, APPROVED if approved > 0 else DENIED
        )
    if state not in STATES:
        raise FhirError("STATE_INVALID", "unknown decision state")
    return ParsedClaimResponse(
        claim_ref=claim_ref,
        state=state,
        outcome=outcome,
        billed_satang=billed if billed is not None else approved,
        approved_satang=approved,
        reason_code=reason,
        disposition=doc.get("disposition", ""),
        insurer_code=_ident(doc.get("insurer")),
        hospital_code=_ident(doc.get("requestor")),
    )
