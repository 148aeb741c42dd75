"""What an HIS needs: list insurers, seal and submit claims, follow and open decisions."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from iclaim.client.channel import GatewayClient, envelope_on_failure, next_page
from iclaim.client.credentials import Credentials
from iclaim.client.keys import sealing_jwk
from iclaim.client.signer import _error_info, retry_delay_s
from iclaim.crypto.envelope import ProtectedHeader, open_envelope_with, seal
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import claim_service_pb2_grpc

DEFAULT_TIMEOUT_S = 10.0
# How long a listed directory is used to seal before it is listed again, so a
# rotated insurer key is picked up well within the rotation grace period (days).
DIRECTORY_TTL_S = 300.0


class DecisionVerificationError(ValueError):
    """A decision envelope whose authenticated header disagrees with the claim."""


@dataclass(frozen=True)
class OpenedDecision:
    header: ProtectedHeader
    claim_response: dict[str, Any]


class HospitalClient(GatewayClient):
    def __init__(self, creds: Credentials, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(creds)
        self.stub = claim_service_pb2_grpc.ClaimServiceStub(self.channel)
        self._insurers: dict[str, pb.Insurer] = {}
        self._clock = clock
        self._listed_at = -DIRECTORY_TTL_S

    async def list_insurers(self) -> list[pb.Insurer]:
        insurers: list[pb.Insurer] = []
        token, seen = "", set[str]()
        while True:
            resp = await self.stub.ListInsurers(
                pb.ListInsurersRequest(page_size=100, page_token=token), timeout=DEFAULT_TIMEOUT_S
            )
            insurers.extend(resp.insurers)
            token = next_page(seen, resp.next_page_token)
            if not token:
                break
        self._insurers = {i.code: i for i in insurers}
        self._listed_at = self._clock()
        return insurers

    async def insurer_key(self, insurer_code: str) -> dict[str, Any]:
        """The insurer's current encryption key (`EncryptionKey.current`, §5),
        from the directory as last listed; listed again on a miss or when the
        listing is older than DIRECTORY_TTL_S."""
        stale = self._clock() - self._listed_at > DIRECTORY_TTL_S
        if stale or insurer_code not in self._insurers:
            await self.list_insurers()
        insurer = self._insurers.get(insurer_code)
        if insurer is None:
            raise KeyError(f"insurer {insurer_code} is not in the directory")
        return sealing_jwk(insurer.keys, f"insurer {insurer_code}")

    async def seal_claim(
        self, fhir_claim: bytes, *, insurer_code: str, claim_ref: str, amount_satang: int
    ) -> str:
        return seal(
            fhir_claim,
            await self.insurer_key(insurer_code),
            sender=self.creds.code,
            recipient=insurer_code,
            claim_ref=claim_ref,
            amount_satang=amount_satang,
        )

    async def submit_claim(
        self,
        fhir_claim: bytes,
        *,
        insurer_code: str,
        claim_ref: str,
        amount_satang: int,
        decision_timeout_s: float = 0.0,
        envelope: str | None = None,
    ) -> pb.Claim:
        """Seals (unless `envelope` is given) and submits.

        If the call fails, the exception raised carries the envelope sent as
        `exc.envelope`. After an ambiguous failure (DEADLINE_EXCEEDED, a lost
        connection) call again with the same claim_ref and `envelope=exc.envelope`
        (persist it if you retry later): the identical envelope returns the same
        claim, while a new seal of the same claim is new bytes, ALREADY_EXISTS.
        UNAVAILABLE / RESOURCE_EXHAUSTED are already retried inside the SDK
        with the same bytes."""
        if envelope is None:
            envelope = await self.seal_claim(
                fhir_claim, insurer_code=insurer_code, claim_ref=claim_ref, amount_satang=amount_satang
            )
        timeout = Duration()
        timeout.FromNanoseconds(int(decision_timeout_s * 1e9))
        with envelope_on_failure(envelope):
            resp = await self.stub.SubmitClaim(
                pb.SubmitClaimRequest(
                    claim_ref=claim_ref,
                    insurer_code=insurer_code,
                    billed_amount_satang=amount_satang,
                    envelope=envelope,
                    decision_timeout=timeout,
                ),
                timeout=DEFAULT_TIMEOUT_S + decision_timeout_s,
            )
        return resp.claim

    async def get_claim(self, transaction_id: str) -> pb.Claim:
        return await self.stub.GetClaim(
            pb.GetClaimRequest(transaction_id=transaction_id), timeout=DEFAULT_TIMEOUT_S
        )

    async def watch_claim(self, transaction_id: str, timeout_s: float = 120.0) -> AsyncIterator[pb.Claim]:
        """Each state change once, until a final state. A stream cut by a
        retryable error (gateway restart, nonce-store recovery) is re-opened,
        signed anew, within `timeout_s` overall."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_state: int | None = None
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no final state for {transaction_id} within {timeout_s} s")
            call = self.stub.WatchClaim(
                pb.WatchClaimRequest(transaction_id=transaction_id), timeout=remaining
            )
            try:
                async for claim in call:
                    attempt = 0
                    if claim.state != last_state:
                        last_state = claim.state
                        yield claim
                return
            except grpc.aio.AioRpcError as err:
                attempt += 1
                delay = self._watch_retry_s(err, attempt)
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED or (
                    delay is not None and loop.time() + delay >= deadline
                ):
                    raise TimeoutError(f"no final state for {transaction_id} within {timeout_s} s") from err
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    def _watch_retry_s(self, err: grpc.aio.AioRpcError, attempt: int) -> float | None:
        """The unary calls' retry rules (clock skew learned from the server's
        time, a nonce-store recovery's retry_not_before, rate limits), and a
        stream the gateway reset when its upstream died."""
        if _transport_reset(err):
            return float(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))
        trailing = err.trailing_metadata()
        reason, info = _error_info(trailing)
        return retry_delay_s(err.code(), reason, info, trailing, self.clock, attempt)

    async def list_claims(self, **filters: Any) -> list[pb.Claim]:
        claims: list[pb.Claim] = []
        token, seen = "", set[str]()
        while True:
            resp = await self.stub.ListClaims(
                pb.ListClaimsRequest(page_size=200, page_token=token, **filters),
                timeout=DEFAULT_TIMEOUT_S,
            )
            claims.extend(resp.claims)
            token = next_page(seen, resp.next_page_token)
            if not token:
                return claims

    async def cancel_claim(self, transaction_id: str, reason: str = "") -> pb.Claim:
        return await self.stub.CancelClaim(
            pb.CancelClaimRequest(transaction_id=transaction_id, reason=reason),
            timeout=DEFAULT_TIMEOUT_S,
        )

    def open_decision(self, claim: pb.Claim) -> OpenedDecision:
        """Decrypts the decision and checks its authenticated header against the claim."""
        header, plaintext = open_envelope_with(claim.decision_envelope, self.creds.decryption_key_for)
        if (
            header.sender != claim.insurer_code
            or header.recipient != self.creds.code
            or header.claim_ref != claim.claim_ref
            or header.amount_satang != claim.approved_amount_satang
        ):
            raise DecisionVerificationError("decision envelope header does not match the claim")
        return OpenedDecision(header=header, claim_response=json.loads(plaintext))


def _transport_reset(err: grpc.aio.AioRpcError) -> bool:
    """A stream cut below the application (e.g. Envoy resetting it when the
    upstream died: INTERNAL "Stream removed"), not an error our services sent:
    those always carry grpc-status-details-bin. Safe to re-open a watch."""
    if err.code() != grpc.StatusCode.INTERNAL:
        return False
    return not any(k == "grpc-status-details-bin" for k, _ in err.trailing_metadata() or ())
