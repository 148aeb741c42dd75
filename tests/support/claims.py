"""Synthetic FHIR claims for tests (no real patient)."""

from __future__ import annotations

import asyncio
import secrets

from iclaim.client.hospital import HospitalClient
from iclaim.fhir.claim import synthetic_claim
from iclaim.v1 import claim_service_pb2 as pb


def fhir(creds_code: str, insurer: str, ref: str, policy: str, amount: int) -> bytes:
    return synthetic_claim(
        creds_code, insurer, ref, policy, amount, patient_name="Test Patient", diagnosis="K35.8"
    )


async def submit(
    client: HospitalClient,
    insurer: str,
    policy: str,
    amount: int,
    wait_s: float = 15,
    claim_ref: str | None = None,
) -> pb.Claim:
    """A synthetic claim submitted through the SDK (a random claim_ref unless
    given), waiting up to `wait_s` for its decision."""
    r = claim_ref or f"IT-{secrets.token_hex(5)}"
    return await client.submit_claim(
        fhir(client.creds.code, insurer, r, policy, amount),
        insurer_code=insurer,
        claim_ref=r,
        amount_satang=amount,
        decision_timeout_s=wait_s,
    )


async def states_once_approved(client: HospitalClient, ids: list[str]) -> list[int]:
    """The claims' states once all are APPROVED, or as they are after 30 s."""
    for _ in range(300):
        states = [(await client.get_claim(t)).state for t in ids]
        if all(s == pb.CLAIM_STATE_APPROVED for s in states):
            break
        await asyncio.sleep(0.1)
    return states
