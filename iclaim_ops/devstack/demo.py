"""The short demo `make run` plays once the stack is ready: a handful of claims
from a dev hospital to different insurers, each decided by the §8 rules."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from iclaim.client.credentials import Credentials
from iclaim.client.hospital import HospitalClient
from iclaim.fhir.claim import synthetic_claim
from iclaim.v1 import claim_service_pb2 as pb


@dataclass(frozen=True)
class DemoCase:
    insurer: str
    policy: str
    amount_satang: int
    expect: str


CASES = (
    DemoCase("AIA", "POL-0001", 1_250_000, "APPROVED"),
    DemoCase("MTL", "LIMIT-500000-0002", 800_000, "PARTIALLY_APPROVED"),
    DemoCase("TLI", "DENY-0003", 300_000, "DENIED"),
    DemoCase("OLI", "REVIEW-0004", 450_075, "APPROVED"),
    DemoCase("BLA", "POL-0005", 99_900, "APPROVED"),
)


def demo_claim(creds: Credentials, case: DemoCase, claim_ref: str) -> bytes:
    return synthetic_claim(
        creds.code, case.insurer, claim_ref, case.policy, case.amount_satang, patient_name="Demo Patient"
    )


async def run_demo(creds: Credentials, print_line: Callable[[str], object] = print) -> list[pb.Claim]:
    out = print_line
    run = secrets.token_hex(3)
    decided: list[pb.Claim] = []
    async with HospitalClient(creds) as client:
        for n, case in enumerate(CASES, start=1):
            ref = f"DEMO-{run}-{n}"
            claim = await client.submit_claim(
                demo_claim(creds, case, ref),
                insurer_code=case.insurer,
                claim_ref=ref,
                amount_satang=case.amount_satang,
                decision_timeout_s=15,
            )
            state = pb.ClaimState.Name(claim.state).removeprefix("CLAIM_STATE_")
            line = (
                f"demo: {ref} -> {case.insurer:<4} billed {case.amount_satang / 100:>10,.2f} THB"
                f"  {state:<18} approved {claim.approved_amount_satang / 100:>10,.2f} THB"
            )
            if claim.status_reason:
                line += f"  ({claim.status_reason})"
            if claim.decision_envelope:
                opened = client.open_decision(claim)
                line += f"  [ClaimResponse {opened.claim_response.get('outcome')}]"
            out(line)
            decided.append(claim)
    return decided
