"""What a directly integrated insurer needs: pull claims, look up hospitals, post decisions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.duration_pb2 import Duration

from iclaim.client.channel import GatewayClient, envelope_on_failure
from iclaim.client.credentials import Credentials
from iclaim.client.keys import sealing_jwk
from iclaim.crypto.envelope import ProtectedHeader, open_envelope_with, seal
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb
from iclaim.v1 import insurer_service_pb2_grpc

DEFAULT_TIMEOUT_S = 10.0


class InsurerClient(GatewayClient):
    def __init__(self, creds: Credentials) -> None:
        super().__init__(creds)
        self.stub = insurer_service_pb2_grpc.InsurerServiceStub(self.channel)

    async def pull(self, max_claims: int = 10, wait_s: float = 0.0) -> list[ipb.ClaimDelivery]:
        deliveries, _ = await self.pull_carrying(max_claims, wait_s, ())
        return deliveries

    async def pull_carrying(
        self, max_claims: int, wait_s: float, decisions: Sequence[ipb.PostDecisionRequest]
    ) -> tuple[list[ipb.ClaimDelivery], list[ipb.DecisionResult]]:
        """Pulls, carrying `decisions` (at most 100) on the call (§6.1).

        Returns the deliveries and one result per decision, in order (code 0:
        recorded). Fewer results than decisions (a clearinghouse of an earlier
        release ignores them): post the rest with `post_decision`. If the call
        fails, no decision is known recorded; carrying or posting the same one
        again is a no-op."""
        wait = Duration()
        wait.FromNanoseconds(int(wait_s * 1e9))
        resp = await self.stub.PullClaims(
            ipb.PullClaimsRequest(max_claims=max_claims, wait=wait, decisions=decisions),
            timeout=DEFAULT_TIMEOUT_S + wait_s,
        )
        return list(resp.deliveries), list(resp.decision_results)

    def open_claim(self, delivery: ipb.ClaimDelivery) -> tuple[ProtectedHeader, bytes]:
        return open_envelope_with(delivery.envelope, self.creds.decryption_key_for)

    async def hospital_key(self, hospital_code: str) -> dict[str, Any]:
        """The hospital's current encryption key (`EncryptionKey.current`, §5)."""
        hospital = await self.stub.GetHospital(
            ipb.GetHospitalRequest(hospital_code=hospital_code), timeout=DEFAULT_TIMEOUT_S
        )
        return sealing_jwk(hospital.keys, f"hospital {hospital_code}")

    async def decide(
        self,
        delivery: ipb.ClaimDelivery,
        *,
        state: int,
        approved_amount_satang: int,
        claim_response: bytes,
        reason_code: str = "",
        envelope: str | None = None,
    ) -> pb.Claim:
        """Seals `claim_response` to the hospital's current key (unless
        `envelope` is given) and posts the decision.

        If the post fails, the exception raised carries the envelope sent as
        `exc.envelope`. After an ambiguous failure (DEADLINE_EXCEEDED, a lost
        connection) call again with the same decision and `envelope=exc.envelope`
        (persist it if you retry later): the same content is a no-op, while a
        new seal is new bytes, refused as DECISION_CONFLICT."""
        if envelope is None:
            envelope = seal(
                claim_response,
                await self.hospital_key(delivery.hospital_code),
                sender=self.creds.code,
                recipient=delivery.hospital_code,
                claim_ref=delivery.claim_ref,
                amount_satang=approved_amount_satang,
            )
        with envelope_on_failure(envelope):
            return await self.post_decision(
                delivery.transaction_id,
                state=state,
                approved_amount_satang=approved_amount_satang,
                decision_envelope=envelope,
                reason_code=reason_code,
            )

    async def post_decision(
        self,
        transaction_id: str,
        *,
        state: int,
        approved_amount_satang: int,
        decision_envelope: str,
        reason_code: str = "",
    ) -> pb.Claim:
        return await self.stub.PostDecision(
            ipb.PostDecisionRequest(
                transaction_id=transaction_id,
                state=state,  # type: ignore[arg-type]
                approved_amount_satang=approved_amount_satang,
                decision_envelope=decision_envelope,
                reason_code=reason_code,
            ),
            timeout=DEFAULT_TIMEOUT_S,
        )
