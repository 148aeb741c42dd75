"""A caller's retry after an ambiguous failure (DEADLINE_EXCEEDED, a lost
connection) must resend the envelope already sent, not a new seal (new bytes:
ALREADY_EXISTS for a claim, DECISION_CONFLICT for a decision). The SDK hands
it over on the exception, as `.envelope`. Stand-in stubs; no server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from iclaim.client.credentials import Credentials
from iclaim.client.hospital import HospitalClient
from iclaim.client.insurer import InsurerClient
from iclaim.crypto.envelope import generate_encryption_key
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb

_, AIA = generate_encryption_key("AIA-k1")
_, HOSPITAL = generate_encryption_key("10670-k1")
KEYS = {"AIA": AIA, "10670": HOSPITAL}


def creds(code: str) -> Credentials:
    return Credentials("127.0.0.1:9", None, code, "k1", b"\x01" * 32, {})


def deadline_exceeded() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="deadline"
    )


class FakeStub:
    """The directory, and a call that fails once with `failures[0]` then answers."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.sent: list[bytes] = []

    def _keys(self, code: str) -> list[pb.EncryptionKey]:
        return [pb.EncryptionKey(kid=KEYS[code]["kid"], jwk=json.dumps(KEYS[code]), current=True)]

    async def ListInsurers(self, request: Any, timeout: float) -> pb.ListInsurersResponse:
        return pb.ListInsurersResponse(
            insurers=[pb.Insurer(code="AIA", available=True, keys=self._keys("AIA"))]
        )

    async def GetHospital(self, request: Any, timeout: float) -> ipb.Hospital:
        return ipb.Hospital(code=request.hospital_code, keys=self._keys(request.hospital_code))

    async def _call(self, request: Any) -> None:
        self.sent.append(request.SerializeToString())
        if self.failures:
            raise self.failures.pop(0)

    async def SubmitClaim(self, request: pb.SubmitClaimRequest, timeout: float) -> pb.SubmitClaimResponse:
        await self._call(request)
        return pb.SubmitClaimResponse(claim=pb.Claim(transaction_id="txn_1", claim_ref=request.claim_ref))

    async def PostDecision(self, request: ipb.PostDecisionRequest, timeout: float) -> pb.Claim:
        await self._call(request)
        return pb.Claim(transaction_id=request.transaction_id)


@pytest.mark.parametrize(
    "failure", [deadline_exceeded(), asyncio.CancelledError()], ids=["deadline", "cancelled"]
)
async def test_a_failed_submit_exposes_the_envelope_and_resending_it_sends_identical_bytes(
    failure: BaseException,
) -> None:
    client = HospitalClient(creds("10670"))
    stub = FakeStub(failure)
    client.stub = stub  # type: ignore[assignment]
    claim = {"claim_ref": "R-1", "insurer_code": "AIA", "amount_satang": 100}
    try:
        with pytest.raises(type(failure)) as err:  # the same exception type callers catch today
            await client.submit_claim(b'{"resourceType":"Claim"}', **claim)  # type: ignore[arg-type]
        envelope = err.value.envelope  # type: ignore[attr-defined]
        assert envelope.count(".") == 4  # a compact JWE
        done = await client.submit_claim(b'{"resourceType":"Claim"}', envelope=envelope, **claim)  # type: ignore[arg-type]
    finally:
        await client.close()
    assert done.transaction_id == "txn_1"
    assert len(stub.sent) == 2 and stub.sent[0] == stub.sent[1]


async def test_a_failed_decide_exposes_the_envelope_and_resending_it_posts_identical_bytes() -> None:
    client = InsurerClient(creds("AIA"))
    stub = FakeStub(deadline_exceeded())
    client.stub = stub  # type: ignore[assignment]
    d = ipb.ClaimDelivery(
        transaction_id="txn_1", hospital_code="10670", claim_ref="R-1", billed_amount_satang=100
    )
    decision = {"state": pb.CLAIM_STATE_APPROVED, "approved_amount_satang": 100, "claim_response": b"{}"}
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.decide(d, **decision)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await client.decide(d, envelope=err.value.envelope, **decision)  # type: ignore[attr-defined,arg-type]
    finally:
        await client.close()
    assert len(stub.sent) == 2 and stub.sent[0] == stub.sent[1]


async def test_sealing_again_would_have_sent_different_bytes() -> None:
    # Why the envelope must be kept: each seal is a new JWE (fresh key and IV).
    client = HospitalClient(creds("10670"))
    client.stub = FakeStub()  # type: ignore[assignment]
    try:
        claim = {"insurer_code": "AIA", "claim_ref": "R-1", "amount_satang": 100}
        assert await client.seal_claim(b"{}", **claim) != await client.seal_claim(b"{}", **claim)  # type: ignore[arg-type]
    finally:
        await client.close()
