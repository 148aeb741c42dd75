"""Synthetic FHIR claims for tests (no real patient)."""

from __future__ import annotations

from iclaim.fhir.claim import synthetic_claim


def fhir(creds_code: str, insurer: str, ref: str, policy: str, amount: int) -> bytes:
    return synthetic_claim(
        creds_code, insurer, ref, policy, amount, patient_name="Test Patient", diagnosis="K35.8"
    )
