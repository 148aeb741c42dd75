"""Protocol §10.6 at the router: a decision an insurer answered a push with,
relayed by the adapter (RecordDecision with push_answer), is recorded under
PostDecision's rules and audited as that insurer's answer to the push.

claim_router in-process, real PostgreSQL; the caller identity as the gateway
sets it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from iclaim.v1 import claim_service_pb2 as pb
from iclaim_hub.internal.v1 import audit_log_pb2, decision_intake_pb2
from tests.support.router_env import H1, Env, S, reason_of, running_env, submit, wait_handed_off

PUSH_ANSWER_ROUTE = "/iclaim_hub.internal.v1.DecisionIntakeService/RecordDecision"


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    async with running_env(database_url) as e:
        yield e


def _answer(env: Env, txid: str, ref: str, **over: object) -> decision_intake_pb2.RecordDecisionRequest:
    fields: dict[str, object] = {
        "transaction_id": txid,
        "insurer_code": "AIA",
        "state": S.CLAIM_STATE_APPROVED,
        "approved_amount_satang": 12_345,
        "decision_envelope": env.decision(H1, "AIA", ref, 12_345),
        "push_answer": True,
    }
    fields.update(over)
    return decision_intake_pb2.RecordDecisionRequest(**fields)  # type: ignore[arg-type]


async def _audited(env: Env, txid: str) -> list[audit_log_pb2.AuditEvent]:
    assert env.pool is not None
    rows = await env.pool.fetch("SELECT payload FROM router.outbox WHERE topic = 'audit' ORDER BY id")
    events = [audit_log_pb2.AuditEvent.FromString(bytes(r["payload"])) for r in rows]
    return [e for e in events if e.transaction_id == txid]


async def test_a_push_answer_decides_the_claim_and_is_audited_as_the_answer(env: Env) -> None:
    claim = await submit(env, H1, "AIA", "PA-1", 12_345)
    await wait_handed_off(env, claim.transaction_id)

    answer = _answer(env, claim.transaction_id, "PA-1")
    decided = (await env.intake.RecordDecision(answer)).claim
    assert decided.state == S.CLAIM_STATE_APPROVED
    assert decided.approved_amount_satang == 12_345
    # Deciding takes the claim: the push's ReportTaken, if it comes, writes nothing.
    assert decided.decided_at.seconds > 0

    approved = [
        e for e in await _audited(env, claim.transaction_id) if e.outcome_reason == "CLAIM_STATE_APPROVED"
    ]
    assert [(e.origin_principal, e.route) for e in approved] == [("AIA", PUSH_ANSWER_ROUTE)]

    # The same answer again (the adapter retried): a no-op, not a conflict.
    again = (await env.intake.RecordDecision(answer)).claim
    assert again.updated_at == decided.updated_at


async def test_a_push_answer_may_only_carry_what_an_insurer_may_post(env: Env) -> None:
    claim = await submit(env, H1, "AIA", "PA-2", 12_345)
    await wait_handed_off(env, claim.transaction_id)
    # PAID is the hub's own state: PostDecision refuses it, so must a push answer.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.intake.RecordDecision(_answer(env, claim.transaction_id, "PA-2", state=S.CLAIM_STATE_PAID))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An amount above the billed one, as PostDecision would refuse it.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.intake.RecordDecision(
            _answer(
                env,
                claim.transaction_id,
                "PA-2",
                approved_amount_satang=99_999,
                decision_envelope=env.decision(H1, "AIA", "PA-2", 99_999),
            )
        )
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)
    stored = await env.claims.GetClaim(
        pb.GetClaimRequest(transaction_id=claim.transaction_id), metadata=env.md(H1)
    )
    assert stored.state == S.CLAIM_STATE_RECEIVED


async def test_a_push_answer_for_another_insurers_claim_is_not_found(env: Env) -> None:
    claim = await submit(env, H1, "AIA", "PA-3", 12_345)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.intake.RecordDecision(_answer(env, claim.transaction_id, "PA-3", insurer_code="MTL"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(err.value) == "CLAIM_NOT_FOUND"


async def test_a_push_answer_after_another_decision_is_a_conflict(env: Env) -> None:
    claim = await submit(env, H1, "AIA", "PA-4", 12_345)
    await env.intake.RecordDecision(_answer(env, claim.transaction_id, "PA-4"))
    denied = _answer(
        env,
        claim.transaction_id,
        "PA-4",
        state=S.CLAIM_STATE_DENIED,
        approved_amount_satang=0,
        decision_envelope=env.decision(H1, "AIA", "PA-4", 0),
        reason_code="POLICY_NOT_FOUND",
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.intake.RecordDecision(denied)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(err.value) == "DECISION_CONFLICT"


async def test_a_batch_of_push_answers_is_recorded_in_one_call_each_refused_by_index(env: Env) -> None:
    """RecordPushAnswers: what the adapter sends when answers pile up. Each is
    judged as RecordDecision would judge it; the good ones are recorded."""
    claims = [await submit(env, H1, "AIA", f"PB-{n}", 12_345) for n in range(4)]
    for c in claims:
        await wait_handed_off(env, c.transaction_id)
    good, paid, other_insurer, decided = (c.transaction_id for c in claims)
    # `decided` has another decision already: the first stands.
    await env.intake.RecordDecision(
        _answer(
            env,
            decided,
            "PB-3",
            state=S.CLAIM_STATE_DENIED,
            approved_amount_satang=0,
            decision_envelope=env.decision(H1, "AIA", "PB-3", 0),
            reason_code="POLICY_NOT_FOUND",
        )
    )
    request = decision_intake_pb2.RecordPushAnswersRequest(
        answers=[
            _answer(env, good, "PB-0"),
            _answer(env, paid, "PB-1", state=S.CLAIM_STATE_PAID),
            _answer(env, other_insurer, "PB-2", insurer_code="MTL"),
            _answer(env, decided, "PB-3"),
            _answer(env, good, "PB-0"),  # the same claim twice in one call
        ]
    )
    reply = await env.intake.RecordPushAnswers(request)
    refused = {r.index: r.reason for r in reply.refused}
    assert refused == {
        1: "DECISION_STATE_INVALID",
        2: "CLAIM_NOT_FOUND",
        3: "DECISION_CONFLICT",
        4: "TRANSACTION_REPEATED",
    }

    async def state(txid: str) -> int:
        claim = await env.claims.GetClaim(pb.GetClaimRequest(transaction_id=txid), metadata=env.md(H1))
        return int(claim.state)

    assert await state(good) == S.CLAIM_STATE_APPROVED
    assert await state(paid) == S.CLAIM_STATE_RECEIVED
    assert await state(other_insurer) == S.CLAIM_STATE_RECEIVED
    assert await state(decided) == S.CLAIM_STATE_DENIED
    approved = [e for e in await _audited(env, good) if e.outcome_reason == "CLAIM_STATE_APPROVED"]
    assert [(e.origin_principal, e.route) for e in approved] == [("AIA", PUSH_ANSWER_ROUTE)]
    # The same batch again: the recorded one is a no-op now, not a conflict.
    again = await env.intake.RecordPushAnswers(
        decision_intake_pb2.RecordPushAnswersRequest(answers=[request.answers[0]])
    )
    assert list(again.refused) == []


async def test_a_batch_over_the_limit_is_refused_whole(env: Env) -> None:
    answer = _answer(env, "txn_" + "0" * 28, "PB-X")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.intake.RecordPushAnswers(
            decision_intake_pb2.RecordPushAnswersRequest(answers=[answer] * 501)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == "TOO_MANY_ANSWERS"
