"""§10.6: an insurer that decides while it takes a pushed claim answers the
push with its decision (the gRPC ReceiveClaimResponse's `decision`, or a
webhook's 2xx JSON `decision` member) instead of calling PostDecision. The
adapter relays it to the router's DecisionIntakeService.RecordDecision
(push_answer) and counts the push as taken only if the router recorded it or
kept an earlier decision; otherwise the claim is pushed again. Real TLS
endpoints, insurer_adapter in-process, real PostgreSQL, a fake router.

Claims are delivered without a router lease, so each row is stored before its
first push, except where a test says `push_first` (the row then appears only
once the push has ended: see test_delivery_push_first.py)."""

from __future__ import annotations

import asyncio

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY

from iclaim.v1 import claim_service_pb2, insurer_endpoint_pb2, insurer_service_pb2
from iclaim_hub.internal.v1 import insurer_adapter_pb2_grpc
from tests.support.delivery_endpoints import (
    Decide,
    GrpcEndpoint,
    Harness,
    WebhookEndpoint,
    approve,
    delivery_harness,
    wait_for,
)

ENVELOPE = "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyJ9.dec.i.s.n"
OTHER_TXID = "txn_" + "f" * 28


@pytest.fixture
async def h(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with delivery_harness(database_url, tmp_path) as harness:
        yield harness


def _answers(insurer: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "iclaim_delivery_push_answers_total", {"insurer": insurer, "outcome": outcome}
    )
    return value or 0.0


def _answer_counts(insurer: str) -> dict[str, float]:
    return {o: _answers(insurer, o) for o in ("recorded", "conflict", "refused", "unrecorded")}


def _moved(before: dict[str, float], insurer: str) -> dict[str, float]:
    after = _answer_counts(insurer)
    return {o: after[o] - before[o] for o in after if after[o] != before[o]}


async def _deliver(
    h: Harness, stub: insurer_adapter_pb2_grpc.InsurerAdapterServiceStub, insurer: str, *, push_first: bool
) -> str:
    request = h.request(insurer)
    if push_first:
        request.router_lease.FromSeconds(15)  # pushed before it is stored
    await stub.DeliverClaim(request, timeout=5)
    return request.transaction_id


async def _row(h: Harness, txid: str) -> asyncpg.Record | None:
    return await h.pool.fetchrow("SELECT * FROM adapter.deliveries WHERE transaction_id = $1", txid)


async def _healthy_while_refused(h: Harness, code: str) -> None:
    """The endpoint answered: whatever became of its decision, its circuit
    counts a success (the health first published after a push says so)."""

    async def published() -> bool:
        return await h.registry.health(code) is not None

    await wait_for(published, what="the insurer's health published")
    health = await h.registry.health(code)
    assert health is not None
    assert (health.health, health.consecutive_failures) == ("healthy", 0)


async def _failed_with(h: Harness, txid: str, error: str) -> asyncpg.Record:
    """The row once an attempt failed with `error` (it may be pushed again at once)."""

    async def failed() -> bool:
        row = await _row(h, txid)
        return row is not None and row["last_error"] == error

    await wait_for(failed, what=f"an attempt failed with {error}")
    row = await _row(h, txid)
    assert row is not None
    return row


async def _taken_at_first_push(h: Harness, code: str, *, reported: bool = False) -> str:
    """One claim delivered to `code`, once its first push is taken. `reported`:
    a plain "taken" answer, reported to the router; else the answer's decision,
    recorded, told the router it was taken: no report."""
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, code)
    row = await h.taken_row(txid)
    assert row["attempts"] == 1 and row["last_error"] is None
    if reported:
        await wait_for(lambda: h.reports.acked("taken") == [txid], what="the taken report")
    else:
        assert h.reports.calls == [] and row["report_state"] == "done"
    return txid


async def _taken_later(h: Harness, txid: str, *, reported: bool) -> None:
    """The claim taken by a later push; `reported`: a plain "taken" answer,
    reported to the router (one with a decision recorded needs no report)."""
    row = await h.taken_row(txid)
    if reported:
        await wait_for(lambda: h.reports.acked("taken") == [txid], what="the taken report")
    else:
        assert h.reports.calls == [] and row["report_state"] == "done"
    assert row["last_error"] is None and row["attempts"] >= 2


async def _all_taken_unreported(h: Harness, txids: Sequence[str]) -> None:
    """Each written taken, none reported: the router knows from the decisions."""

    async def taken() -> bool:
        return await h.states(list(txids)) == {t: "taken" for t in txids}

    await wait_for(taken, what="rows written taken")
    assert h.reports.calls == []


def _decided(endpoint: GrpcEndpoint | WebhookEndpoint) -> int:
    """Pushes the endpoint answered with a decision."""
    return sum(1 for r in endpoint.received if r.decision is not None)


def _decide(state: int, amount: int, reason: str) -> Decide:
    def decide(delivery: insurer_service_pb2.ClaimDelivery) -> insurer_service_pb2.PostDecisionRequest:
        return insurer_service_pb2.PostDecisionRequest(
            transaction_id=delivery.transaction_id,
            state=state,  # type: ignore[arg-type]  # an int of ClaimState
            approved_amount_satang=amount,
            decision_envelope=ENVELOPE,
            reason_code=reason,
        )

    return decide


# --- recorded: the push is taken --------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "state", "amount", "reason"),
    [
        ("ANSGA", claim_service_pb2.CLAIM_STATE_APPROVED, 150_000, ""),
        ("ANSGD", claim_service_pb2.CLAIM_STATE_DENIED, 0, "NOT_COVERED"),
    ],
)
async def test_grpc_answer_with_a_decision_is_recorded_and_the_push_taken(
    h: Harness, code: str, state: int, amount: int, reason: str
) -> None:
    endpoint = await h.grpc_endpoint(code)
    endpoint.decide = _decide(state, amount, reason)
    before = _answer_counts(code)
    txid = await _taken_at_first_push(h, code)
    [push] = endpoint.received  # pushed once
    assert push.verified and push.decision is not None
    # The hub says, inside the signed request, that it takes a decision in the answer.
    assert insurer_endpoint_pb2.ReceiveClaimRequest.FromString(push.body).accepts_decision

    [recorded] = h.decisions.requests
    assert recorded.push_answer is True
    assert recorded.insurer_code == code
    assert (
        recorded.transaction_id,
        int(recorded.state),
        recorded.approved_amount_satang,
        recorded.decision_envelope,
        recorded.reason_code,
    ) == (txid, state, amount, ENVELOPE, reason)
    assert _moved(before, code) == {"recorded": 1}


async def test_answers_arriving_together_reach_the_router_in_batches(h: Harness) -> None:
    """Untraced pushes' answers that arrive together go through
    RecordPushAnswers (one router commit a call), one alone through
    RecordDecision, every answer once; how many share a call depends on timing
    (see tests/unit/test_answer_batches.py)."""
    endpoint = await h.grpc_endpoint("ANSBATCH")
    endpoint.decide = _decide(claim_service_pb2.CLAIM_STATE_APPROVED, 150_000, "")
    stub = await h.start_adapter()
    txids = await asyncio.gather(*(_deliver(h, stub, "ANSBATCH", push_first=False) for _ in range(12)))
    await _all_taken_unreported(h, txids)
    assert sorted(r.transaction_id for r in h.decisions.requests) == sorted(txids)
    assert len(h.decisions.requests) == len(txids)  # each once, by one call or the other
    assert all(n >= 2 for n in h.decisions.batches)  # a batch of one goes singly


async def test_a_router_without_the_batch_call_gets_them_one_by_one(h: Harness) -> None:
    """A rolling upgrade: the adapter is new, the router not yet."""
    h.decisions.batch_unimplemented = True
    endpoint = await h.grpc_endpoint("ANSOLD")
    endpoint.decide = _decide(claim_service_pb2.CLAIM_STATE_APPROVED, 150_000, "")
    stub = await h.start_adapter()
    txids = await h.deliver(stub, "ANSOLD", 3)
    await _all_taken_unreported(h, txids)
    assert sorted(r.transaction_id for r in h.decisions.requests) == sorted(txids)
    assert h.decisions.batches == []


async def test_webhook_json_answer_with_a_decision_is_recorded_and_the_push_taken(h: Harness) -> None:
    endpoint = await h.webhook_endpoint("ANSW")
    endpoint.mode = "decision"
    # The answer as §10.6 writes it: proto3 JSON, the state by its enum name,
    # int64 as a string, every field present.
    endpoint.decide = lambda delivery: {
        "transactionId": delivery.transaction_id,
        "state": "CLAIM_STATE_APPROVED",
        "approvedAmountSatang": "150000",
        "decisionEnvelope": ENVELOPE,
        "reasonCode": "",
    }
    before = _answer_counts("ANSW")
    txid = await _taken_at_first_push(h, "ANSW")
    [push] = endpoint.received
    assert push.verified and push.decision is not None
    assert push.headers["x-iclaim-accepts-decision"] == "true"  # the hub says it takes one

    [recorded] = h.decisions.requests
    assert recorded.push_answer is True and recorded.insurer_code == "ANSW"
    assert (
        recorded.transaction_id,
        recorded.state,
        recorded.approved_amount_satang,
        recorded.decision_envelope,
        recorded.reason_code,
    ) == (txid, claim_service_pb2.CLAIM_STATE_APPROVED, 150_000, ENVELOPE, "")
    assert _moved(before, "ANSW") == {"recorded": 1}


async def test_a_webhook_decision_built_from_the_message_is_recorded(h: Harness) -> None:
    """The same through json_format (what an insurer's protobuf library writes:
    empty fields left out)."""
    endpoint = await h.webhook_endpoint("ANSWM")
    endpoint.mode = "decision"
    endpoint.decide = approve(envelope=ENVELOPE)
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, "ANSWM")
    await h.taken_row(txid)
    [recorded] = h.decisions.requests
    assert (recorded.transaction_id, recorded.state, recorded.approved_amount_satang) == (
        txid,
        claim_service_pb2.CLAIM_STATE_APPROVED,
        150_000,
    )
    assert recorded.push_answer and recorded.insurer_code == "ANSWM" and recorded.reason_code == ""
    assert len(endpoint.received) == 1


# --- refused: not taken, pushed again -----------------------------------------------------
@pytest.mark.parametrize(
    ("code", "status", "reason", "push_first"),
    [
        ("REFIA", grpc.StatusCode.INVALID_ARGUMENT, "DECISION_STATE_INVALID", False),
        ("REFFP", grpc.StatusCode.FAILED_PRECONDITION, "HOSPITAL_NOT_FOUND", False),
        ("REFNF", grpc.StatusCode.NOT_FOUND, "CLAIM_NOT_FOUND", False),
        ("REFPF", grpc.StatusCode.INVALID_ARGUMENT, "DECISION_AMOUNT_INVALID", True),
    ],
)
async def test_a_refused_decision_leaves_the_claim_untaken_and_it_is_pushed_again(
    h: Harness, code: str, status: grpc.StatusCode, reason: str, push_first: bool
) -> None:
    endpoint = await h.grpc_endpoint(code)
    endpoint.decide = approve(envelope=ENVELOPE)
    h.decisions.refuse(status, reason)
    before = _answer_counts(code)
    stub = await h.start_adapter()
    txid = await _deliver(h, stub, code, push_first=push_first)

    row = await _failed_with(h, txid, "ANSWER_DECISION_REFUSED")
    assert row["state"] == "waiting" and row["taken_at"] is None
    assert h.reports.acked("taken") == []
    assert h.decisions.requests and all(
        r.transaction_id == txid and r.push_answer and r.insurer_code == code for r in h.decisions.requests
    )
    await _healthy_while_refused(h, code)

    # The insurer, finding the claim answered already, takes it plainly (and
    # would post its decision with PostDecision, whose answer says why not).
    endpoint.decide = None
    await _taken_later(h, txid, reported=True)
    assert len(endpoint.received) >= 2 and endpoint.received[-1].decision is None
    assert endpoint.taken_ids() == [txid] * len(endpoint.received)
    # Every decision answered was relayed once, and each refusal counted.
    assert len(h.decisions.requests) == _decided(endpoint)
    assert _moved(before, code) == {"refused": _decided(endpoint)}


# --- conflict: an earlier decision stands, the push is taken --------------------------------------
async def test_a_conflicting_decision_still_counts_the_push_taken(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("CONFL")
    endpoint.decide = approve(envelope=ENVELOPE)
    h.decisions.refuse(grpc.StatusCode.FAILED_PRECONDITION, "DECISION_CONFLICT")
    before = _answer_counts("CONFL")
    txid = await _taken_at_first_push(h, "CONFL")
    assert len(endpoint.received) == 1  # pushed once only
    [recorded] = h.decisions.requests
    assert recorded.transaction_id == txid and recorded.push_answer
    assert _moved(before, "CONFL") == {"conflict": 1}


@pytest.mark.parametrize(
    ("code", "reason", "details"), [("NOCONF", "CLAIM_CANCELLED", True), ("NOCONFB", "", False)]
)
async def test_another_failed_precondition_is_no_conflict(
    h: Harness, code: str, reason: str, details: bool
) -> None:
    """Only the ErrorInfo reason DECISION_CONFLICT makes a FAILED_PRECONDITION
    a conflict: another reason, or a bare status without details, is a refusal."""
    endpoint = await h.webhook_endpoint(code)
    endpoint.mode = "decision"
    endpoint.decide = approve(envelope=ENVELOPE)
    h.decisions.refuse(grpc.StatusCode.FAILED_PRECONDITION, reason, details=details)
    before = _answer_counts(code)
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, code)
    row = await _failed_with(h, txid, "ANSWER_DECISION_REFUSED")
    assert row["state"] == "waiting"
    assert h.reports.acked("taken") == []
    assert _answers(code, "refused") - before["refused"] >= 1
    assert _answers(code, "conflict") == before["conflict"]


# --- unrecorded: the router could not be reached ---------------------------------------------
@pytest.mark.parametrize("push_first", [False, True])
async def test_a_decision_the_router_could_not_record_is_pushed_again(h: Harness, push_first: bool) -> None:
    code = "UNRECPF" if push_first else "UNREC"
    endpoint = await h.grpc_endpoint(code)
    endpoint.decide = approve(envelope=ENVELOPE)
    h.decisions.refuse(grpc.StatusCode.UNAVAILABLE)
    before = _answer_counts(code)
    stub = await h.start_adapter()
    txid = await _deliver(h, stub, code, push_first=push_first)

    row = await _failed_with(h, txid, "ANSWER_DECISION_UNRECORDED")
    assert row["state"] == "waiting" and row["taken_at"] is None
    assert h.reports.acked("taken") == []
    await _healthy_while_refused(h, code)

    # The router is back: the next push's decision is recorded, and it is taken.
    h.decisions.refuse(grpc.StatusCode.OK)
    await _taken_later(h, txid, reported=False)
    assert len(endpoint.received) >= 2
    assert len(h.decisions.requests) == _decided(endpoint) == len(endpoint.received)
    assert all(r.transaction_id == txid and r.push_answer for r in h.decisions.requests)
    assert _moved(before, code) == {"unrecorded": len(endpoint.received) - 1, "recorded": 1}


# --- malformed: a decision about another claim ---------------------------------------------
async def test_grpc_decision_for_another_claim_is_malformed_and_never_relayed(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("MALG")
    endpoint.decide = approve(transaction_id=OTHER_TXID, envelope=ENVELOPE)
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, "MALG")

    row = await _failed_with(h, txid, "ANSWER_DECISION_MALFORMED")
    assert row["state"] == "waiting"
    assert h.reports.acked("taken") == []
    endpoint.decide = None
    await h.taken_row(txid)
    assert len(endpoint.received) >= 2
    assert h.decisions.requests == []  # nothing relayed, not even for the other id


@pytest.mark.parametrize(
    ("code", "decision"),
    [
        ("MALWO", lambda d: {"transactionId": OTHER_TXID, "state": "CLAIM_STATE_APPROVED"}),
        ("MALWN", lambda d: {"transactionId": d.transaction_id, "approvedAmountSatang": "9" * 20}),
        ("MALWA", lambda d: {"transactionId": d.transaction_id, "approvedAmountSatang": "lots"}),
        ("MALWS", lambda d: {"transactionId": d.transaction_id, "state": "NOT_A_STATE"}),
        ("MALWF", lambda d: {"transactionId": d.transaction_id, "state": 4.5}),
    ],
)
async def test_webhook_decision_malformed_or_for_another_claim_is_not_taken(
    h: Harness, code: str, decision: Any
) -> None:
    endpoint = await h.webhook_endpoint(code)
    endpoint.mode = "decision"
    endpoint.decide = decision
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, code)

    row = await _failed_with(h, txid, "ANSWER_DECISION_MALFORMED")
    assert row["state"] == "waiting"
    endpoint.mode = "ok"
    await h.taken_row(txid)
    assert h.decisions.requests == []


# null: a JSON library writing an unset field; a string: a receiver's own word from before §10.6.
@pytest.mark.parametrize(("code", "member"), [("NULLDEC", None), ("WORDDEC", "received")])
async def test_a_decision_member_that_is_no_object_is_no_decision(h: Harness, code: str, member: Any) -> None:
    endpoint = await h.webhook_endpoint(code)
    endpoint.mode = "json"
    endpoint.document = {"accepted": True, "decision": member}
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, code)

    async def settled() -> bool:
        row = await _row(h, txid)
        return row is not None and (row["state"] == "taken" or row["last_error"] is not None)

    await wait_for(settled, what="the first push's outcome stored")
    row = await h.row(txid)
    assert row["last_error"] is None  # taken at once
    assert h.decisions.requests == []


# --- answers without a decision: taken as before §10.6 ------------------------------------------
@pytest.mark.parametrize(
    ("code", "mode"),
    [("PLAINOK", "ok"), ("PLAINTX", "text"), ("PLAINNO", "decision"), ("PLAIN409", "conflict")],
)
async def test_webhook_answers_without_a_decision_are_simply_taken(h: Harness, code: str, mode: str) -> None:
    endpoint = await h.webhook_endpoint(code)
    endpoint.mode = mode  # "decision" with no `decide`: {"accepted": true}
    before = _answer_counts(code)
    await _taken_at_first_push(h, code, reported=True)
    assert len(endpoint.received) == 1
    assert h.decisions.requests == []
    assert _moved(before, code) == {}


async def test_a_grpc_answer_without_a_decision_is_simply_taken(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("PLAING")
    endpoint.decide = lambda delivery: None
    stub = await h.start_adapter()
    txids = await h.deliver(stub, "PLAING", 3)
    await wait_for(lambda: sorted(h.reports.acked("taken")) == sorted(txids), what="taken reports")
    assert sorted(endpoint.taken_ids()) == sorted(txids) and len(endpoint.received) == 3
    assert h.decisions.requests == []
