"""A pull insurer's decisions ride its next PullClaims (docs/protocol.md §6.1)
when they are ready in time; any other goes by PostDecision at once, and the
worker sees a carried decision's outcome exactly as a posted one's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from iclaim.errors import reason_in_trailers
from iclaim.insurer.carrier import CARRY_BUDGET_BYTES, MAX_CARRIED, DecisionCarrier, refusal_error
from iclaim.insurer.handler import APPROVED
from iclaim.insurer.worker import _classify, _GiveUp, _Retry
from iclaim.limits import MAX_REQUEST_BYTES
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb
from tests.support.insurer_kit import rpc_error

Answer = Callable[[Sequence[ipb.PostDecisionRequest]], list[ipb.DecisionResult]]


def recorded(decisions: Sequence[ipb.PostDecisionRequest]) -> list[ipb.DecisionResult]:
    return [ipb.DecisionResult(transaction_id=d.transaction_id, code=0) for d in decisions]


class Gateway:
    """Records what reaches the gateway: posts, plain pulls, carrying pulls.
    `answer` gives a carrying pull's results; `failure` fails it whole;
    `hold` (when set) keeps a pull open until it is set, as a long poll."""

    def __init__(self, answer: Answer = recorded) -> None:
        self.answer = answer
        self.failure: BaseException | None = None
        self.hold: asyncio.Event | None = None
        self.posted: list[str] = []
        self.plain_pulls = 0
        self.carried: list[list[str]] = []
        self.carrying = asyncio.Event()  # a carrying pull was made

    async def hospital_key(self, hospital_code: str) -> dict[str, Any]:
        return {}

    async def post_decision(self, transaction_id: str, **_: Any) -> pb.Claim:
        self.posted.append(transaction_id)
        return pb.Claim(transaction_id=transaction_id)

    async def pull(self, max_claims: int = 10, wait_s: float = 0.0) -> list[ipb.ClaimDelivery]:
        self.plain_pulls += 1
        if self.hold is not None:
            await self.hold.wait()
        return []

    async def pull_carrying(
        self, max_claims: int, wait_s: float, decisions: Sequence[ipb.PostDecisionRequest]
    ) -> tuple[list[ipb.ClaimDelivery], list[ipb.DecisionResult]]:
        self.carried.append([d.transaction_id for d in decisions])
        self.carrying.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.failure is not None:
            raise self.failure
        return [ipb.ClaimDelivery(transaction_id="txn_next")], self.answer(decisions)


class OldGateway:
    """A stand-in gateway without pull_carrying (as the kit's tests use)."""

    def __init__(self) -> None:
        self.posted: list[str] = []

    async def hospital_key(self, hospital_code: str) -> dict[str, Any]:
        return {}

    async def post_decision(self, transaction_id: str, **_: Any) -> None:
        self.posted.append(transaction_id)

    async def pull(self, max_claims: int = 10, wait_s: float = 0.0) -> list[ipb.ClaimDelivery]:
        return []


def post(carrier: DecisionCarrier, txid: str, envelope: str = "a.b.c.d.e") -> asyncio.Task[Any]:
    return asyncio.create_task(
        carrier.post_decision(
            txid, state=APPROVED, approved_amount_satang=5, decision_envelope=envelope, reason_code=""
        )
    )


# A long wait: the tests never reach it, the expected decisions end it.
PATIENT = 30.0


async def test_the_decisions_of_a_pulled_batch_ride_the_next_pull() -> None:
    gateway = Gateway()
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(2)
    posts = [post(carrier, "txn_1"), post(carrier, "txn_2")]
    deliveries = await asyncio.wait_for(carrier.pull(max_claims=10, wait_s=20), 5)
    assert [d.transaction_id for d in deliveries] == ["txn_next"]
    assert gateway.carried == [["txn_1", "txn_2"]]
    assert await asyncio.gather(*posts) == [None, None]  # recorded: the post returns normally
    assert gateway.posted == [] and gateway.plain_pulls == 0


async def test_with_nothing_to_carry_the_pull_is_the_plain_one() -> None:
    gateway = Gateway()
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(0)
    await asyncio.wait_for(carrier.pull(max_claims=10, wait_s=20), 5)
    assert gateway.plain_pulls == 1 and gateway.carried == []


async def test_a_decision_posted_during_a_long_poll_is_posted_at_once() -> None:
    gateway = Gateway()
    gateway.hold = asyncio.Event()
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(1)
    first = post(carrier, "txn_1")
    polling = asyncio.create_task(carrier.pull(max_claims=10, wait_s=20))
    await asyncio.wait_for(gateway.carrying.wait(), 5)  # the carrying pull is on its way
    # The long poll is open: a decision posted now does not wait for it.
    assert await asyncio.wait_for(post(carrier, "txn_2"), 5) is not None
    assert gateway.posted == ["txn_2"] and not first.done() and not polling.done()
    gateway.hold.set()
    await asyncio.wait_for(polling, 5)
    assert await first is None
    assert gateway.carried == [["txn_1"]] and gateway.posted == ["txn_2"]


async def test_a_decision_is_posted_at_once_when_no_batch_awaits_it() -> None:
    gateway = Gateway()
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    assert await asyncio.wait_for(post(carrier, "txn_1"), 5) is not None
    carrier.expect(1)
    carrier.close()  # stopped: every post goes at once, whatever was expected
    assert await asyncio.wait_for(post(carrier, "txn_2"), 5) is not None
    assert gateway.posted == ["txn_1", "txn_2"] and gateway.carried == []


async def test_the_wait_for_expected_decisions_is_bounded() -> None:
    gateway = Gateway()
    carrier = DecisionCarrier(gateway, wait_s=0.01)
    carrier.expect(3)
    only = post(carrier, "txn_1")
    # Two never come: the pull goes anyway with the one that did.
    await asyncio.wait_for(carrier.pull(), 5)
    assert gateway.carried == [["txn_1"]] and await only is None


def conflict(decisions: Sequence[ipb.PostDecisionRequest]) -> list[ipb.DecisionResult]:
    return [
        ipb.DecisionResult(
            transaction_id=d.transaction_id,
            code=grpc.StatusCode.FAILED_PRECONDITION.value[0],
            reason="DECISION_CONFLICT",
            state=pb.CLAIM_STATE_CANCELLED,
        )
        for d in decisions
    ]


async def test_a_refused_decision_raises_what_post_decision_would() -> None:
    gateway = Gateway(answer=conflict)
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(1)
    refused = post(carrier, "txn_1")
    await asyncio.wait_for(carrier.pull(), 5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await refused
    exc = info.value
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_in_trailers(exc.trailing_metadata()) == "DECISION_CONFLICT"
    # The same trailer as a refused PostDecision's (the test support's model of it).
    model = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "DECISION_CONFLICT", state="CLAIM_STATE_CANCELLED")
    assert _error_info(exc) == _error_info(model)
    verdict = _classify(exc)
    assert isinstance(verdict, _GiveUp) and verdict.decided
    assert gateway.posted == []


def _error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    [value] = [v for k, v in exc.trailing_metadata() if k == "grpc-status-details-bin"]
    assert isinstance(value, bytes)
    status = status_pb2.Status.FromString(value)
    info = error_details_pb2.ErrorInfo()
    assert status.code == exc.code().value[0] and status.details[0].Unpack(info)
    return info


def test_a_stale_key_refusal_is_retried_by_the_worker_with_a_new_seal() -> None:
    exc = refusal_error(
        ipb.DecisionResult(
            transaction_id="txn_1",
            code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
            reason="ENVELOPE_KID_UNKNOWN",
        )
    )
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_in_trailers(exc.trailing_metadata()) == "ENVELOPE_KID_UNKNOWN"
    assert "state" not in _error_info(exc).metadata
    assert isinstance(_classify(exc), _Retry)
    other = refusal_error(ipb.DecisionResult(transaction_id="txn_1", code=5, reason="CLAIM_NOT_FOUND"))
    assert other.code() == grpc.StatusCode.NOT_FOUND
    assert isinstance(_classify(other), _GiveUp) and not _classify(other).decided  # type: ignore[attr-defined]


async def test_a_failed_pull_fails_each_carried_post_with_its_error() -> None:
    gateway = Gateway()
    gateway.failure = rpc_error(grpc.StatusCode.UNAVAILABLE, "")
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(2)
    posts = [post(carrier, "txn_1"), post(carrier, "txn_2")]
    with pytest.raises(grpc.aio.AioRpcError):
        await asyncio.wait_for(carrier.pull(), 5)
    for task in posts:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await task
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert isinstance(_classify(info.value), _Retry)
    assert gateway.posted == []  # the worker retries them later (a no-op if recorded)


async def test_an_earlier_server_returns_no_results_so_the_decisions_are_posted() -> None:
    gateway = Gateway(answer=lambda decisions: [])
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(2)
    posts = [post(carrier, "txn_1"), post(carrier, "txn_2")]
    await asyncio.wait_for(carrier.pull(), 5)
    results = await asyncio.gather(*posts)
    assert gateway.carried == [["txn_1", "txn_2"]]
    assert sorted(gateway.posted) == ["txn_1", "txn_2"]
    assert all(isinstance(r, pb.Claim) for r in results)  # PostDecision's answers


async def test_decisions_without_a_result_of_their_own_are_posted() -> None:
    gateway = Gateway(answer=lambda decisions: recorded(decisions)[:1])
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(2)
    posts = [post(carrier, "txn_1"), post(carrier, "txn_2")]
    await asyncio.wait_for(carrier.pull(), 5)
    assert await asyncio.gather(*posts) == [None, pb.Claim(transaction_id="txn_2")]
    assert gateway.posted == ["txn_2"]


async def test_a_decision_over_the_byte_budget_is_posted_at_once() -> None:
    assert CARRY_BUDGET_BYTES + MAX_CARRIED * 4 < MAX_REQUEST_BYTES - 64 * 1024
    gateway = Gateway()
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(3)
    big = "x" * (CARRY_BUDGET_BYTES // 2 + 1)
    first = post(carrier, "txn_big_1", big)
    second = post(carrier, "txn_big_2", big)  # both would pass the budget
    small = post(carrier, "txn_small")
    await asyncio.wait_for(second, 5)  # not held: posted while the pull waits
    assert gateway.posted == ["txn_big_2"]
    await asyncio.wait_for(carrier.pull(), 5)
    assert gateway.carried == [["txn_big_1", "txn_small"]]
    assert await first is None and await small is None


async def test_at_most_a_hundred_decisions_ride_one_pull() -> None:
    gateway = Gateway()
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(MAX_CARRIED + 1)
    posts = [post(carrier, f"txn_{i}") for i in range(MAX_CARRIED + 1)]
    await asyncio.wait_for(carrier.pull(), 5)
    await asyncio.wait_for(asyncio.gather(*posts), 5)
    [carried] = gateway.carried
    assert len(carried) == MAX_CARRIED
    assert gateway.posted == [f"txn_{MAX_CARRIED}"]


async def test_stopping_posts_what_is_held() -> None:
    gateway = Gateway()
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(2)
    held = post(carrier, "txn_1")
    pulling = asyncio.create_task(carrier.pull())  # waits for the second decision
    await asyncio.sleep(0)  # one step each: the post is held, the pull waits for the other
    assert carrier._pending and not pulling.done()
    pulling.cancel()  # the loop stops
    with pytest.raises(asyncio.CancelledError):
        await pulling
    assert isinstance(await asyncio.wait_for(held, 5), pb.Claim)
    assert gateway.posted == ["txn_1"] and gateway.carried == []


async def test_a_pull_cancelled_in_flight_posts_what_it_carried() -> None:
    gateway = Gateway()
    gateway.hold = asyncio.Event()
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)
    carrier.expect(1)
    held = post(carrier, "txn_1")
    pulling = asyncio.create_task(carrier.pull())
    await asyncio.wait_for(gateway.carrying.wait(), 5)
    pulling.cancel()  # not known recorded; the same decision again is a no-op
    with pytest.raises(asyncio.CancelledError):
        await pulling
    assert isinstance(await asyncio.wait_for(held, 5), pb.Claim)
    assert gateway.posted == ["txn_1"]


async def test_a_gateway_that_cannot_carry_gets_every_decision_posted() -> None:
    gateway = OldGateway()
    carrier = DecisionCarrier(gateway, wait_s=PATIENT)  # type: ignore[arg-type]
    carrier.expect(1)
    await asyncio.wait_for(post(carrier, "txn_1"), 5)
    await asyncio.wait_for(carrier.pull(), 5)
    assert gateway.posted == ["txn_1"]
