"""The short demo `make run` plays once the stack is ready: a handful of claims
from a dev hospital to different sandbox insurers, each decided by the §8 rules;
the insurers are picked so that gRPC push, webhook push and pull all show."""

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


# Sandbox modes (iclaim_hub.registry.directory.sandbox_modes): AIA, OLI grpc; MTL, BLA webhook; TLI pull.
CASES = (
    DemoCase("AIA", "POL-0001", 1_250_000, "APPROVED"),
    DemoCase("MTL", "LIMIT-500000-0002", 800_000, "PARTIALLY_APPROVED"),
    DemoCase("TLI", "DENY-0003", 300_000, "DENIED"),
    DemoCase("OLI", "REVIEW-0004", 450_075, "APPROVED"),
    DemoCase("BLA", "POL-0005", 99_900, "APPROVED"),
)


def delivery_name(insurer: pb.Insurer | None) -> str:
    """`grpc`, `webhook`, `pull`; `?` when the directory does not say."""
    if insurer is None or insurer.delivery == pb.DELIVERY_MODE_UNSPECIFIED:
        return "?"
    return pb.DeliveryMode.Name(insurer.delivery).removeprefix("DELIVERY_MODE_").lower()


def demo_claim(creds: Credentials, case: DemoCase, claim_ref: str) -> bytes:
    return synthetic_claim(
        creds.code, case.insurer, claim_ref, case.policy, case.amount_satang, patient_name="Demo Patient"
    )


async def run_demo(creds: Credentials, print_line: Callable[[str], object] = print) -> list[pb.Claim]:
    out = print_line
    run = secrets.token_hex(3)
    decided: list[pb.Claim] = []
    async with HospitalClient(creds) as client:
        directory = {i.code: i for i in await client.list_insurers()}
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
                f"demo: {ref} -> {case.insurer:<4} by {delivery_name(directory.get(case.insurer)):<7}"
                f" billed {case.amount_satang / 100:>10,.2f} THB"
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
