"""The sandbox insurers' policies driven through the insurer kit's worker, with
real keys and envelopes: what each §8 policy posts (states, amounts, reasons,
waits), sealed so the hospital can open it; unusable claims are denied
INVALID_CLAIM_DOCUMENT. (Was tests/unit/test_simulator_processing.py, when the
hub decided for the simulated insurers.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iclaim.crypto.envelope import seal
from iclaim.crypto.signing import b64url, b64url_decode
from iclaim.fhir.claim import synthetic_claim
from iclaim.insurer.handler import APPROVED, DENIED, PARTIALLY_APPROVED, PENDING_REVIEW
from iclaim.insurer.inbox import DECIDED, Inbox
from iclaim.insurer.worker import Worker
from iclaim.v1 import insurer_service_pb2 as ipb
from sandbox.policies import SandboxPolicies, Timing
from tests.support.insurer_kit import HOSPITAL, FakeGateway, Party, delivery, write_credentials

TIMING = Timing(review_s=2.0, slow_s=10.0)


class Rig:
    def __init__(self, inbox: Inbox, party: Party) -> None:
        self.inbox = inbox
        self.party = party
        self.gateway = FakeGateway()
        self.slept: list[float] = []

        async def sleep(s: float) -> None:
            self.slept.append(s)

        code = party.creds.code
        self.worker = Worker(
            inbox, {code: party.creds}, {code: SandboxPolicies(TIMING)}, {code: self.gateway}, sleep=sleep
        )

    async def decide(self, d: ipb.ClaimDelivery) -> str:
        code = self.party.creds.code
        await self.inbox.put(code, d)
        return await self.worker.process(code, d.transaction_id)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    _, parties = write_credentials(tmp_path, ["AIA"], None)
    inbox = await Inbox.open(tmp_path / "inbox")
    try:
        yield Rig(inbox, parties["AIA"])
    finally:
        await inbox.close()


@pytest.mark.parametrize(
    ("policy", "billed", "posted", "slept"),
    [
        ("POL-1", 125_000, [(APPROVED, 125_000, "")], []),
        ("DENY-0003", 125_000, [(DENIED, 0, "POLICY_NOT_FOUND")], []),
        ("LIMIT-100000-x", 125_000, [(PARTIALLY_APPROVED, 100_000, "COVERAGE_LIMIT_REACHED")], []),
        ("LIMIT-0-x", 125_000, [(DENIED, 0, "COVERAGE_LIMIT_REACHED")], []),
        ("REVIEW-1", 125_000, [(PENDING_REVIEW, 0, ""), (APPROVED, 125_000, "")], [2.0]),
        ("SLOW-1", 125_000, [(APPROVED, 125_000, "")], [10.0]),
    ],
)
async def test_each_policy_posts_its_decisions_sealed_to_the_hospital(
    rig: Rig, policy: str, billed: int, posted: list[tuple[int, int, str]], slept: list[float]
) -> None:
    d = delivery(rig.party, policy=policy, amount=billed)
    assert await rig.decide(d) == DECIDED
    assert [(p.state, p.approved, p.reason_code) for p in rig.gateway.posted] == posted
    assert rig.slept == slept
    for p in rig.gateway.posted:
        header, response = p.opened()
        assert (header.sender, header.recipient, header.claim_ref) == ("AIA", HOSPITAL, d.claim_ref)
        assert header.amount_satang == p.approved
        assert response.approved_satang == p.approved
        assert response.billed_satang == billed


def _flip_ciphertext_bit(envelope: str) -> str:
    parts = envelope.split(".")
    ct = bytearray(b64url_decode(parts[3]))
    ct[0] ^= 0x01
    parts[3] = b64url(bytes(ct))
    return ".".join(parts)


def _sealed(rig: Rig, doc: bytes, claim_ref: str = "C-1", amount: int = 125_000) -> str:
    return seal(
        doc, rig.party.public_jwk, sender=HOSPITAL, recipient="AIA", claim_ref=claim_ref, amount_satang=amount
    )


@pytest.mark.parametrize(
    "make_envelope",
    [
        lambda rig: "garbage",
        lambda rig: _flip_ciphertext_bit(
            _sealed(rig, synthetic_claim(HOSPITAL, "AIA", "C-1", "POL-1", 125_000))
        ),
        lambda rig: _sealed(rig, b"hello"),
        lambda rig: _sealed(rig, b'{"resourceType":"Patient"}'),
        # A readable Claim whose total disagrees with the delivery.
        lambda rig: _sealed(rig, synthetic_claim(HOSPITAL, "AIA", "C-1", "POL-1", 125_001)),
        # A DENY policy inside an unusable document is still an invalid document.
        lambda rig: _sealed(rig, synthetic_claim(HOSPITAL, "AIA", "OTHER", "DENY-1", 125_000)),
    ],
    ids=["not-jwe", "tampered", "not-json", "not-a-claim", "total-mismatch", "claim-ref-mismatch"],
)
async def test_unusable_claims_are_denied_invalid_claim_document(rig: Rig, make_envelope: object) -> None:
    envelope = make_envelope(rig)  # type: ignore[operator]
    d = delivery(rig.party, claim_ref="C-1", amount=125_000, envelope=envelope)
    assert await rig.decide(d) == DECIDED
    assert [(p.state, p.approved, p.reason_code) for p in rig.gateway.posted] == [
        (DENIED, 0, "INVALID_CLAIM_DOCUMENT")
    ]
