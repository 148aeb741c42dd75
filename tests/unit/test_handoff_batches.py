"""The router's batched hand-off to the adapter (handoff_batches.py) against a
recording stand-in stub: the first claim alone, those kicked meanwhile in one
DeliverClaims, the call's limits, and what each failure means for each claim."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

from iclaim_hub.internal.v1 import insurer_adapter_pb2 as pb
from services.claim_router.handoff_batches import BatchedHandOff, take_batch


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata())


def _request(n: int, envelope_bytes: int = 10) -> pb.DeliverClaimRequest:
    return pb.DeliverClaimRequest(transaction_id=f"TX-{n}", insurer_code="AIA", envelope="e" * envelope_bytes)


class Stub:
    """Records each call; the first single call waits for `release`, so that
    claims kicked meanwhile queue up behind it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.release = asyncio.Event()
        self.called = asyncio.Event()
        self.single_error: grpc.StatusCode | None = None
        self.batch_error: BaseException | None = None
        self.failed: dict[str, str] = {}
        self.contexts: list[dict[str, Any]] = []

    async def DeliverClaim(self, request: pb.DeliverClaimRequest, timeout: float) -> pb.DeliverClaimResponse:
        self.calls.append(("one", [request.transaction_id]))
        self.called.set()
        self.contexts.append(structlog.contextvars.get_contextvars())
        await self.release.wait()
        if self.single_error is not None:
            raise _error(self.single_error)
        return pb.DeliverClaimResponse()

    async def DeliverClaims(
        self, request: pb.DeliverClaimsRequest, timeout: float
    ) -> pb.DeliverClaimsResponse:
        ids = [c.transaction_id for c in request.claims]
        self.calls.append(("many", ids))
        if self.batch_error is not None:
            raise self.batch_error
        reply = pb.DeliverClaimsResponse()
        for i, tx in enumerate(ids):
            if tx in self.failed:
                reply.failed.add(index=i, reason=self.failed[tx])
        return reply


async def _first_in_flight(handoff: BatchedHandOff, stub: Stub) -> list[asyncio.Task[bool]]:
    first = asyncio.create_task(handoff.hand_off(_request(0)))
    await stub.called.wait()
    return [first]


def _handoff(stub: Stub, traced: bool = False) -> BatchedHandOff:
    return BatchedHandOff(stub, 5.0, lambda: traced)  # type: ignore[arg-type]


async def _burst(handoff: BatchedHandOff, stub: Stub, n: int) -> list[bool]:
    """One claim kicked, then n - 1 more while its call is in flight (held
    until they are all queued)."""
    tasks = await _first_in_flight(handoff, stub)
    tasks += [asyncio.create_task(handoff.hand_off(_request(i))) for i in range(1, n)]
    await asyncio.sleep(0.01)
    stub.release.set()
    return list(await asyncio.gather(*tasks))


async def test_the_first_goes_alone_and_the_rest_together() -> None:
    stub = Stub()
    assert await _burst(_handoff(stub), stub, 5) == [True] * 5
    assert stub.calls == [("one", ["TX-0"]), ("many", ["TX-1", "TX-2", "TX-3", "TX-4"])]


async def test_an_unloaded_router_makes_one_call_a_claim_without_waiting() -> None:
    stub = Stub()
    stub.release.set()
    handoff = _handoff(stub)
    assert [await handoff.hand_off(_request(i)) for i in range(3)] == [True] * 3
    assert [kind for kind, _ in stub.calls] == ["one"] * 3


def test_a_call_keeps_to_the_claim_and_byte_limits() -> None:
    small = [_request(i) for i in range(450)]
    assert take_batch(small) == 200
    assert take_batch(small[:7]) == 7
    assert take_batch(small, max_claims=3) == 3
    big = [_request(i, envelope_bytes=400) for i in range(5)]
    assert take_batch(big, max_bytes=1000) == 2
    assert take_batch(big, max_bytes=800) == 2
    assert take_batch(big, max_bytes=799) == 1
    # One claim larger than the budget still goes, alone.
    assert take_batch([_request(0, envelope_bytes=5000), *big], max_bytes=1000) == 1


async def test_claims_the_adapter_refused_are_the_only_ones_not_taken() -> None:
    stub = Stub()
    stub.failed = {"TX-2": "STORAGE_UNAVAILABLE"}
    with capture_logs() as logs:
        taken = await _burst(_handoff(stub), stub, 4)
    assert taken == [True, True, False, True]
    failed = [e for e in logs if e["event"] == "delivery_failed"]
    assert [(e["transaction_id"], e["reason"]) for e in failed] == [("TX-2", "STORAGE_UNAVAILABLE")]


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_a_failed_batch_call_leaves_every_claim_in_it_untaken(code: grpc.StatusCode) -> None:
    stub = Stub()
    stub.batch_error = _error(code)
    assert await _burst(_handoff(stub), stub, 4) == [True, False, False, False]


async def test_an_adapter_without_deliver_claims_gets_one_call_each() -> None:
    stub = Stub()
    stub.batch_error = _error(grpc.StatusCode.UNIMPLEMENTED)
    assert await _burst(_handoff(stub), stub, 3) == [True] * 3
    assert stub.calls == [("one", ["TX-0"]), ("many", ["TX-1", "TX-2"]), ("one", ["TX-1"]), ("one", ["TX-2"])]


async def test_a_bug_in_a_call_is_logged_and_the_next_batch_still_goes() -> None:
    stub = Stub()
    stub.batch_error = RuntimeError("bug")
    handoff = _handoff(stub)
    with capture_logs() as logs:
        assert await _burst(handoff, stub, 3) == [True, False, False]
    assert any(e["event"] == "delivery_batch_error" for e in logs)
    stub.batch_error = None
    assert await handoff.hand_off(_request(9)) is True


async def test_a_single_call_that_fails_is_not_taken() -> None:
    stub = Stub()
    stub.single_error = grpc.StatusCode.UNAVAILABLE
    stub.release.set()
    assert await _handoff(stub).hand_off(_request(0)) is False


async def test_the_sender_does_not_carry_its_first_callers_context() -> None:
    stub = Stub()
    stub.release.set()
    with structlog.contextvars.bound_contextvars(transaction_id="TX-CALLER"):
        assert await _handoff(stub).hand_off(_request(0)) is True
    assert stub.contexts == [{}]


async def test_with_tracing_each_claim_goes_alone_in_its_callers_context() -> None:
    stub = Stub()
    stub.release.set()
    handoff = _handoff(stub, traced=True)
    with structlog.contextvars.bound_contextvars(transaction_id="TX-0"):
        results = await asyncio.gather(*(handoff.hand_off(_request(i)) for i in range(3)))
    assert results == [True] * 3
    assert [kind for kind, _ in stub.calls] == ["one"] * 3
    assert stub.contexts[0] == {"transaction_id": "TX-0"}


async def test_closing_settles_the_waiting_claims_as_not_taken() -> None:
    stub = Stub()
    handoff = _handoff(stub)
    tasks = await _first_in_flight(handoff, stub)
    tasks += [asyncio.create_task(handoff.hand_off(_request(i))) for i in range(1, 3)]
    await asyncio.sleep(0)
    await handoff.close()
    assert await asyncio.gather(*tasks) == [False] * 3
