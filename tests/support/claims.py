"""Synthetic FHIR claims for tests (no real patient)."""

from __future__ import annotations

import asyncio

from iclaim.client.hospital import HospitalClient
from iclaim.fhir.claim import synthetic_claim
from iclaim.v1 import claim_service_pb2 as pb


def fhir(creds_code: str, insurer: str, ref: str, policy: str, amount: int) -> bytes:
    return synthetic_claim(
        creds_code, insurer, ref, policy, amount, patient_name="Test Patient", diagnosis="K35.8"
    )


async def states_once_approved(client: HospitalClient, ids: list[str]) -> list[int]:
    """The claims' states once all are APPROVED, or as they are after 30 s."""
    for _ in range(300):
        states = [(await client.get_claim(t)).state for t in ids]
        if all(s == pb.CLAIM_STATE_APPROVED for s in states):
            break
        await asyncio.sleep(0.1)
    return states
