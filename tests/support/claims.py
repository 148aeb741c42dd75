"""Synthetic FHIR claims for tests (no real patient)."""

from __future__ import annotations

from iclaim.fhir.claim import PatientInfo, build_claim


def fhir(creds_code: str, insurer: str, ref: str, policy: str, amount: int) -> bytes:
    return build_claim(
        claim_ref=ref,
        hospital_code=creds_code,
        insurer_code=insurer,
        policy_number=policy,
        amount_satang=amount,
        patient=PatientInfo(name="Test Patient", citizen_id="1101700203451"),
        diagnoses=["K35.8"],
    )
