"""An insurer re-posting decisions it already made, with the same content: a
no-op the contract allows (§6), which a retrying insurer does after a crash.
Each such call is a real, accepted, signed PostDecision: the replayer's
material. It must change nothing: the checks find any second state change."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import grpc

from bench.soak.his import His, _describe, _retryable
from iclaim.client.credentials import Credentials
from iclaim.client.insurer import InsurerClient
from iclaim.v1 import claim_service_pb2 as pb

EVERY_S = (1.0, 4.0)


class DecisionReposter:
    def __init__(
        self,
        his: His,
        creds: Callable[[str], Credentials],
        exclude: set[str],
        rng: random.Random,
        wrap: Callable[[InsurerClient], Awaitable[InsurerClient]],
    ) -> None:
        self._his = his
        self._creds = creds
        self._exclude = exclude  # claims being paid: PAID is not the decision any more
        self._rng = rng
        self._wrap = wrap
        self._clients: dict[str, InsurerClient] = {}
        self.reposted = 0
        self.errors: Counter[str] = Counter()

    async def _client(self, code: str) -> InsurerClient:
        if code not in self._clients:
            self._clients[code] = await self._wrap(InsurerClient(self._creds(code)))
        return self._clients[code]

    async def repost(self, claim: pb.Claim) -> None:
        client = await self._client(claim.insurer_code)
        try:
            await client.post_decision(
                claim.transaction_id,
                state=claim.state,
                approved_amount_satang=claim.approved_amount_satang,
                decision_envelope=claim.decision_envelope,
                reason_code=claim.status_reason,
            )
            self.reposted += 1
        except grpc.aio.AioRpcError as err:
            if not _retryable(err):
                self.errors[_describe("PostDecision (same decision again)", err)] += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self._rng.uniform(*EVERY_S))
            except TimeoutError:
                for claim in self._his.sample_decided(1, self._exclude):
                    await self.repost(claim)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
