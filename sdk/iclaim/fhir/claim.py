"""FHIR R4 Claim (hospital -> insurer): build for the SDK, parse for insurers.

fhir.resources' R4B models validate the structure (Claim is unchanged from R4);
amounts are read from the raw JSON so no value ever passes through float.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.claim import Claim

from iclaim.fhir import systems
from iclaim.fhir.errors import FhirError
from iclaim.fhir.jsonio import dumps
from iclaim.fhir.resource import load_resource, validated
from iclaim.fhir.money import money, money_satang

_CID = re.compile(r"^[0-9]{13}$")
# ICD-10 (WHO and the Thai ICD-10-TM modification): letter, two digits, optional subcode.
_ICD10 = re.compile(r"^[A-Z][0-9]{2}(\.?[0-9A-Z]{1,4})?$")
_PATIENT_ID = "patient"


@dataclass(frozen=True)
class PatientInfo:
    name: str
    citizen_id: str  # Thai 13-digit national id
    birth_date: str | None = None  # YYYY-MM-DD
    gender: str | None = None  # male | female | other | unknown


@dataclass(frozen=True)
class ClaimItem:
    code: str  # the hospital's billing code for the service or product
    description: str
    amount_satang: int  # net amount of the line
    quantity: int = 1


@dataclass(frozen=True)
class ParsedClaim:
    claim_ref: str
    policy_number: str
    total_satang: int
    hospital_code: str | None
    insurer_code: str | None
    patient_citizen_id: str | None
    diagnoses: tuple[str, ...] = field(default_factory=tuple)
    item_count: int = 0


def thai_citizen_id_checksum_ok(cid: str) -> bool:
    """The mod-11 check digit of a Thai citizen id (format is checked separately)."""
    if not _CID.match(cid):
        return False
    total = sum(int(d) * (13 - i) for i, d in enumerate(cid[:12]))
    return (11 - total % 11) % 10 == int(cid[12])


def build_claim(
    *,
    claim_ref: str,
    hospital_code: str,
    insurer_code: str,
    policy_number: str,
    amount_satang: int,
    patient: PatientInfo,
    diagnoses: Sequence[str],
    items: Sequence[ClaimItem] = (),
    created: datetime | None = None,
) -> bytes:
    """A FHIR R4 Claim as UTF-8 JSON. total.value = amount_satang / 100 THB.

    Without `items` a single line carries the whole amount; with items their
    amounts must add up to `amount_satang` exactly."""
    for name, value in (
        ("claim_ref", claim_ref),
        ("hospital_code", hospital_code),
        ("insurer_code", insurer_code),
        ("policy_number", policy_number),
        ("patient.name", patient.name),
    ):
        if not isinstance(value, str) or not value.strip():
            raise FhirError("FIELD_MISSING", f"{name} is required")
    if not _CID.match(patient.citizen_id):
        raise FhirError("CITIZEN_ID_INVALID", "citizen id must be 13 digits")
    codes = [d.strip().upper() for d in diagnoses]
    if not codes:
        raise FhirError("DIAGNOSIS_MISSING", "at least one ICD-10 diagnosis is required")
    for code in codes:
        if not _ICD10.match(code):
            raise FhirError("DIAGNOSIS_INVALID", "diagnosis is not an ICD-10 code")
    lines = list(items) or [ClaimItem("SERVICE", "Hospital services", amount_satang)]
    if sum(i.amount_satang for i in lines) != amount_satang:
        raise FhirError("ITEMS_TOTAL_MISMATCH", "item amounts do not add up to the total")

    patient_res: dict[str, Any] = {
        "resourceType": "Patient",
        "id": _PATIENT_ID,
        "identifier": [{"system": systems.THAI_CID, "value": patient.citizen_id}],
        "name": [{"text": patient.name}],
    }
    if patient.gender:
        patient_res["gender"] = patient.gender
    if patient.birth_date:
        patient_res["birthDate"] = patient.birth_date

    doc: dict[str, Any] = {
        "resourceType": "Claim",
        "contained": [patient_res],
        "identifier": [{"system": systems.CLAIM_REF, "value": claim_ref}],
        "status": "active",
        "type": {"coding": [{"system": systems.CLAIM_TYPE, "code": "institutional"}]},
        "use": "claim",
        "patient": {"reference": f"#{_PATIENT_ID}"},
        "created": (created or datetime.now(UTC)).isoformat(timespec="seconds"),
        "insurer": {"identifier": {"system": systems.INSURER, "value": insurer_code}},
        "provider": {"identifier": {"system": systems.MOPH_HCODE, "value": hospital_code}},
        "priority": {"coding": [{"system": systems.PROCESS_PRIORITY, "code": "normal"}]},
        "diagnosis": [
            {
                "sequence": n,
                "diagnosisCodeableConcept": {"coding": [{"system": systems.ICD10, "code": code}]},
                **(
                    {"type": [{"coding": [{"system": systems.DIAGNOSIS_TYPE, "code": "principal"}]}]}
                    if n == 1
                    else {}
                ),
            }
            for n, code in enumerate(codes, start=1)
        ],
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"identifier": {"value": policy_number}}}],
        "item": [_item(n, line) for n, line in enumerate(lines, start=1)],
        "total": money(amount_satang),
    }
    validated(doc, Claim)
    return dumps(doc)


SYNTHETIC_CITIZEN_ID = "1101700203451"  # a well-formed but invented Thai citizen id


def synthetic_claim(
    hospital_code: str,
    insurer_code: str,
    claim_ref: str,
    policy_number: str,
    amount_satang: int,
    *,
    patient_name: str = "Sample Patient",
    diagnosis: str = "J18.9",
) -> bytes:
    """A Claim about an invented patient: for samples, demos and tests."""
    return build_claim(
        claim_ref=claim_ref,
        hospital_code=hospital_code,
        insurer_code=insurer_code,
        policy_number=policy_number,
        amount_satang=amount_satang,
        patient=PatientInfo(name=patient_name, citizen_id=SYNTHETIC_CITIZEN_ID),
        diagnoses=[diagnosis],
    )


def _item(n: int, line: ClaimItem) -> dict[str, Any]:
    if line.quantity < 1:
        raise FhirError("ITEM_INVALID", "item quantity must be at least 1")
    out: dict[str, Any] = {
        "sequence": n,
        "diagnosisSequence": [1],
        "productOrService": {"coding": [{"code": line.code}], "text": line.description},
        "quantity": {"value": line.quantity},
        "net": money(line.amount_satang),
    }
    # A unit price only when it is a whole number of satang.
    if line.amount_satang % line.quantity == 0:
        out["unitPrice"] = money(line.amount_satang // line.quantity)
    return out


def _identifier_value(ref: Any, system: str | None = None) -> str | None:
    if not isinstance(ref, dict):
        return None
    ident = ref.get("identifier")
    if not isinstance(ident, dict):
        return None
    if system is not None and ident.get("system") not in (None, system):
        return None
    value = ident.get("value")
    return value if isinstance(value, str) and value else None


def parse_claim(data: bytes | str) -> ParsedClaim:
    """Reads a FHIR R4 Claim; anything unusable is a FhirError with a reason."""
    return read_claim(data)[0]


def read_claim(data: bytes | str) -> tuple[ParsedClaim, dict[str, Any]]:
    """parse_claim, plus the document itself (JSON, decimals as Decimal): one
    parse and one validation for a caller that needs both."""
    doc = load_resource(data, Claim, "NOT_A_CLAIM")

    claim_ref = None
    for ident in doc.get("identifier") or ():
        if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"]:
            if ident.get("system") == systems.CLAIM_REF:
                claim_ref = ident["value"]
                break
            claim_ref = claim_ref or ident["value"]
    if not claim_ref:
        raise FhirError("CLAIM_REF_MISSING", "Claim has no identifier")

    if "total" not in doc:
        raise FhirError("AMOUNT_MISSING", "Claim.total is missing")
    total = money_satang(doc["total"], what="Claim.total")

    insurance = doc.get("insurance") or []
    coverage = insurance[0].get("coverage") if insurance else None
    policy = _identifier_value(coverage)
    if not policy:
        raise FhirError("POLICY_MISSING", "insurance[0].coverage.identifier.value is missing")

    citizen_id = None
    patient_ref = (doc.get("patient") or {}).get("reference")
    for res in doc.get("contained") or ():
        if res.get("resourceType") == "Patient" and f"#{res.get('id')}" == patient_ref:
            for ident in res.get("identifier") or ():
                if ident.get("system") == systems.THAI_CID:
                    citizen_id = ident.get("value")

    diagnoses: list[str] = []
    for dx in doc.get("diagnosis") or ():
        for coding in (dx.get("diagnosisCodeableConcept") or {}).get("coding") or ():
            if coding.get("system") == systems.ICD10 and isinstance(coding.get("code"), str):
                diagnoses.append(coding["code"])

    parsed = ParsedClaim(
        claim_ref=claim_ref,
        policy_number=policy,
        total_satang=total,
        hospital_code=_identifier_value(doc.get("provider")),
        insurer_code=_identifier_value(doc.get("insurer")),
        patient_citizen_id=citizen_id,
        diagnoses=tuple(diagnoses),
        item_count=len(doc.get("item") or ()),
    )
    return parsed, doc
