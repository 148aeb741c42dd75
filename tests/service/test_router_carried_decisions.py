"""Protocol §6.1 at the router: a pull insurer's decisions carried on its next
PullClaims are recorded under PostDecision's rules, each answered in order,
before the pull is served.

claim_router in-process, real PostgreSQL; the caller identity as the gateway
sets it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb
from iclaim_hub.internal.v1 import audit_log_pb2
from tests.support.router_env import H1, Env, S, reason_of, running_env, submit

PULL_ROUTE = "/iclaim.v1.InsurerService/PullClaims"
OK, NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION = (
    grpc.StatusCode.OK.value[0],
    grpc.StatusCode.NOT_FOUND.value[0],
    grpc.StatusCode.INVALID_ARGUMENT.value[0],
    grpc.StatusCode.FAILED_PRECONDITION.value[0],
)


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    async with running_env(database_url) as e:
        yield e


def _decision(env: Env, txid: str, ref: str, **over: object) -> ipb.PostDecisionRequest:
    fields: dict[str, object] = {
        "transaction_id": txid,
        "state": S.CLAIM_STATE_APPROVED,
        "approved_amount_satang": 4_200,
        "decision_envelope": env.decision(H1, "TESTPULL", ref, 4_200),
    }
    fields.update(over)
    return ipb.PostDecisionRequest(**fields)  # type: ignore[arg-type]


async def _pull(
    env: Env, *decisions: ipb.PostDecisionRequest, max_claims: int = 10
) -> ipb.PullClaimsResponse:
    request = ipb.PullClaimsRequest(max_claims=max_claims, wait=Duration(nanos=200_000_000))
    request.decisions.extend(decisions)
    return await env.insurer.PullClaims(request, metadata=env.md("TESTPULL", "insurer"))


async def _state(env: Env, txid: str) -> int:
    claim = await env.claims.GetClaim(pb.GetClaimRequest(transaction_id=txid), metadata=env.md(H1))
    return int(claim.state)


async def _audited(env: Env, txid: str) -> list[audit_log_pb2.AuditEvent]:
    assert env.pool is not None
    rows = await env.pool.fetch("SELECT payload FROM router.outbox WHERE topic = 'audit' ORDER BY id")
    events = [audit_log_pb2.AuditEvent.FromString(bytes(r["payload"])) for r in rows]
    return [e for e in events if e.transaction_id == txid]


async def test_decisions_carried_on_a_pull_are_recorded_and_the_pull_served(env: Env) -> None:
    first = await submit(env, H1, "TESTPULL", "CD-1", 4_200)
    pulled = await _pull(env)
    assert [d.transaction_id for d in pulled.deliveries] == [first.transaction_id]
    assert list(pulled.decision_results) == []  # nothing carried, nothing answered

    second = await submit(env, H1, "TESTPULL", "CD-2", 4_200)
    carried = _decision(env, first.transaction_id, "CD-1")
    reply = await _pull(env, carried)
    assert [(r.transaction_id, r.code, r.reason) for r in reply.decision_results] == [
        (first.transaction_id, OK, "")
    ]
    assert [d.transaction_id for d in reply.deliveries] == [second.transaction_id]
    assert await _state(env, first.transaction_id) == S.CLAIM_STATE_APPROVED
    approved = [
        e for e in await _audited(env, first.transaction_id) if e.outcome_reason == "CLAIM_STATE_APPROVED"
    ]
    assert [(e.origin_principal, e.route) for e in approved] == [("TESTPULL", PULL_ROUTE)]

    # Carried again (the insurer lost the answer): the same decision is a no-op.
    again = await _pull(env, carried)
    assert [(r.code, r.reason) for r in again.decision_results] == [(OK, "")]


async def test_each_carried_decision_is_judged_as_post_decision_would_judge_it(env: Env) -> None:
    claims = [await submit(env, H1, "TESTPULL", f"CJ-{n}", 4_200) for n in range(3)]
    other = await submit(env, H1, "AIA", "CJ-AIA", 4_200)
    good, paid, decided = (c.transaction_id for c in claims)
    denied = _decision(
        env,
        decided,
        "CJ-2",
        state=S.CLAIM_STATE_DENIED,
        approved_amount_satang=0,
        decision_envelope=env.decision(H1, "TESTPULL", "CJ-2", 0),
        reason_code="POLICY_NOT_FOUND",
    )
    await env.insurer.PostDecision(denied, metadata=env.md("TESTPULL", "insurer"))

    reply = await _pull(
        env,
        _decision(env, good, "CJ-0"),
        _decision(env, paid, "CJ-1", state=S.CLAIM_STATE_PAID),
        _decision(env, other.transaction_id, "CJ-AIA"),
        _decision(env, decided, "CJ-2"),
        _decision(env, good, "CJ-0"),  # the same claim twice in one call
    )
    results = [(r.transaction_id, r.code, r.reason, r.state) for r in reply.decision_results]
    assert results == [
        (good, OK, "", 0),
        (paid, INVALID_ARGUMENT, "DECISION_STATE_INVALID", 0),
        (other.transaction_id, NOT_FOUND, "CLAIM_NOT_FOUND", 0),
        (decided, FAILED_PRECONDITION, "DECISION_CONFLICT", S.CLAIM_STATE_DENIED),
        (good, INVALID_ARGUMENT, "TRANSACTION_REPEATED", 0),
    ]
    assert await _state(env, good) == S.CLAIM_STATE_APPROVED
    # Refused, so still open: the pull served after the decisions leased it.
    assert [d.transaction_id for d in reply.deliveries] == [paid]
    assert await _state(env, paid) == S.CLAIM_STATE_DELIVERED
    assert await _state(env, decided) == S.CLAIM_STATE_DENIED
    # Another insurer's claim is left as it was.
    other_now = await env.claims.GetClaim(
        pb.GetClaimRequest(transaction_id=other.transaction_id), metadata=env.md(H1)
    )
    assert other_now.state != S.CLAIM_STATE_APPROVED


async def test_an_invalid_pull_records_none_of_its_decisions(env: Env) -> None:
    claim = await submit(env, H1, "TESTPULL", "CI-1", 4_200)
    carried = _decision(env, claim.transaction_id, "CI-1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _pull(env, carried, max_claims=0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == "MAX_CLAIMS_INVALID"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _pull(env, *[carried] * 101)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == "TOO_MANY_DECISIONS"
    assert await _state(env, claim.transaction_id) == S.CLAIM_STATE_RECEIVED


async def test_a_hundred_decisions_are_carried_in_one_pull(env: Env) -> None:
    """The limit itself is allowed: each is answered, in order."""
    claim = await submit(env, H1, "TESTPULL", "CH-1", 4_200)
    carried = _decision(env, claim.transaction_id, "CH-1")
    reply = await _pull(env, *[carried] * 100)
    codes = [r.code for r in reply.decision_results]
    assert codes[0] == OK
    assert codes[1:] == [INVALID_ARGUMENT] * 99  # TRANSACTION_REPEATED
    assert await _state(env, claim.transaction_id) == S.CLAIM_STATE_APPROVED
