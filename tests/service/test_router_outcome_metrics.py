"""iclaim_claims_total and iclaim_claim_decision_seconds count each claim's
decision once: an insurer repeating the same decision (PostDecision retried
after a lost answer, a push answered again, a relayed batch sent again) is a
no-op at the router and no second outcome on the operators' dashboards.

claim_router in-process, real PostgreSQL; the metrics are this process's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from iclaim.v1 import insurer_service_pb2
from iclaim_hub.internal.v1 import decision_intake_pb2
from tests.support.router_env import H1, Env, S, running_env, submit, wait_handed_off


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    async with running_env(database_url) as e:
        yield e


def _counts(state: str) -> tuple[float, float]:
    outcomes = REGISTRY.get_sample_value("iclaim_claims_total", {"state": state}) or 0.0
    latencies = REGISTRY.get_sample_value("iclaim_claim_decision_seconds_count") or 0.0
    return outcomes, latencies


async def test_the_same_decision_posted_again_is_counted_once(env: Env) -> None:
    claim = await submit(env, H1, "AIA", "OM-1", 12_345)
    await wait_handed_off(env, claim.transaction_id)
    before = _counts("APPROVED")
    post = insurer_service_pb2.PostDecisionRequest(
        transaction_id=claim.transaction_id,
        state=S.CLAIM_STATE_APPROVED,
        approved_amount_satang=12_345,
        decision_envelope=env.decision(H1, "AIA", "OM-1", 12_345),
    )
    for _ in range(3):  # the insurer's retries after lost answers
        decided = await env.insurer.PostDecision(post, metadata=env.md("AIA", "insurer"))
        assert decided.state == S.CLAIM_STATE_APPROVED
    assert _counts("APPROVED") == (before[0] + 1, before[1] + 1)


async def test_push_answers_sent_again_are_counted_once(env: Env) -> None:
    claims = [await submit(env, H1, "AIA", f"OM-{n}", 12_345) for n in (2, 3)]
    for c in claims:
        await wait_handed_off(env, c.transaction_id)
    answers = [
        decision_intake_pb2.RecordDecisionRequest(
            transaction_id=c.transaction_id,
            insurer_code="AIA",
            state=S.CLAIM_STATE_APPROVED,
            approved_amount_satang=12_345,
            decision_envelope=env.decision(H1, "AIA", ref, 12_345),
            push_answer=True,
        )
        for c, ref in zip(claims, ("OM-2", "OM-3"), strict=True)
    ]
    before = _counts("APPROVED")
    await env.intake.RecordDecision(answers[0])
    await env.intake.RecordDecision(answers[0])  # the adapter retried a lost reply
    assert _counts("APPROVED") == (before[0] + 1, before[1] + 1)
    # A batch holding that one again and a new one: only the new one counts.
    batch = decision_intake_pb2.RecordPushAnswersRequest(answers=answers)
    assert list((await env.intake.RecordPushAnswers(batch)).refused) == []
    assert _counts("APPROVED") == (before[0] + 2, before[1] + 2)
    assert list((await env.intake.RecordPushAnswers(batch)).refused) == []
    assert _counts("APPROVED") == (before[0] + 2, before[1] + 2)
