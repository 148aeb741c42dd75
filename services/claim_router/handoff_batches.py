"""Hands push claims to the adapter a batch at a time, with no timer
(iclaim_hub.common.batching, as the adapter relays decisions back): the first
goes at once, alone, in DeliverClaim; those kicked while a call is in flight go
together in the next DeliverClaims.

With tracing switched on every claim goes alone, in its own call, so that the
hand-off and the pushes after it join the claim's trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import grpc
import structlog

from iclaim_hub.common.batching import NoTimerBatches
from iclaim_hub.common.handoff import MAX_CLAIMS_PER_CALL, MAX_ENVELOPE_BYTES_PER_CALL, take_within
from iclaim_hub.internal.v1 import insurer_adapter_pb2, insurer_adapter_pb2_grpc

log = structlog.get_logger("claim_router.delivery")


def take_batch(
    waiting: Sequence[insurer_adapter_pb2.DeliverClaimRequest],
    max_claims: int = MAX_CLAIMS_PER_CALL,
    max_bytes: int = MAX_ENVELOPE_BYTES_PER_CALL,
) -> int:
    """How many of `waiting`, from the front, one call carries: at least one,
    at most max_claims and max_bytes of envelopes (as the adapter counts them)."""
    return take_within([len(r.envelope) for r in waiting[:max_claims]], max_claims, max_bytes)


class BatchedHandOff:
    def __init__(
        self,
        stub: insurer_adapter_pb2_grpc.InsurerAdapterServiceAsyncStub,
        deadline_s: float,
        traced: Callable[[], bool],
    ) -> None:
        self._stub = stub
        self._deadline_s = deadline_s
        self._traced = traced
        self._batches = NoTimerBatches(
            self._one, self._many, failed=False, take=take_batch, error_event="delivery_batch_error"
        )

    async def hand_off(self, request: insurer_adapter_pb2.DeliverClaimRequest) -> bool:
        """True once the adapter has taken the claim (new or a redelivery);
        False when it did not (refused, unreachable, too slow): hand it off
        again later. Never raises but for cancellation."""
        if self._traced():
            return await self._one(request)
        return await self._batches.submit(request)

    async def _one(self, request: insurer_adapter_pb2.DeliverClaimRequest) -> bool:
        try:
            await self._stub.DeliverClaim(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as err:
            log.warning("delivery_failed", transaction_id=request.transaction_id, code=err.code().name)
            return False
        return True

    async def _many(self, requests: list[insurer_adapter_pb2.DeliverClaimRequest]) -> list[bool]:
        try:
            reply = await self._stub.DeliverClaims(
                insurer_adapter_pb2.DeliverClaimsRequest(claims=requests), timeout=self._deadline_s
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:  # an adapter from before DeliverClaims
                return list(await asyncio.gather(*(self._one(r) for r in requests)))
            log.warning("delivery_batch_failed", claims=len(requests), code=err.code().name)
            return [False] * len(requests)
        failed = {f.index: f.reason for f in reply.failed}
        for index, reason in sorted(failed.items()):
            if index < len(requests):
                log.warning("delivery_failed", transaction_id=requests[index].transaction_id, reason=reason)
        return [i not in failed for i in range(len(requests))]

    async def close(self) -> None:
        await self._batches.close()
