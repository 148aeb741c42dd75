"""Issue 9 at the router: a push claim is handed to the delivery layer but
becomes DELIVERED only when the delivery layer reports that the insurer took it
(DeliveryReportService); expiry makes it FAILED / DELIVERY_EXPIRED, a redrive
makes it RECEIVED again; ListInsurers shows each insurer's delivery mode and
health (docs/protocol.md §10.4, §10.5)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2
from iclaim_hub.internal.v1 import audit_log_pb2, decision_intake_pb2, delivery_report_pb2
from tests.support.router_env import (
    H1,
    Env,
    reason_of,
    running_env,
    submit,
    wait_handed_off,
    wait_state,
)

S = pb.ClaimState
GRPC, WEBHOOK, PULL_SAMPLE, GRPC2, WEBHOOK2 = "AIA", "MTL", "TLI", "OLI", "BLA"
TESTPULL = "TESTPULL"


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    async with running_env(database_url) as e:
        yield e


def _req(kind: str, claim: pb.Claim, insurer: str | None = None, tid: str | None = None) -> Any:
    cls = {
        "taken": delivery_report_pb2.ReportTakenRequest,
        "expired": delivery_report_pb2.ReportExpiredRequest,
        "redriven": delivery_report_pb2.ReportRedrivenRequest,
    }[kind]
    return cls(
        transaction_id=claim.transaction_id if tid is None else tid,
        insurer_code=claim.insurer_code if insurer is None else insurer,
    )


async def report(env: Env, kind: str, claim: pb.Claim, **over: Any) -> int:
    method = {
        "taken": env.reports.ReportTaken,
        "expired": env.reports.ReportExpired,
        "redriven": env.reports.ReportRedriven,
    }[kind]
    resp = await method(_req(kind, claim, **over), timeout=10)
    return resp.state


async def get(env: Env, claim: pb.Claim) -> pb.Claim:
    return await env.claims.GetClaim(
        pb.GetClaimRequest(transaction_id=claim.transaction_id), metadata=env.md(claim.hospital_code)
    )


async def audited_states(env: Env, claim: pb.Claim) -> list[str]:
    """The state changes the router's outbox holds for the audit log, in order."""
    assert env.pool is not None
    rows = await env.pool.fetch("SELECT payload FROM router.outbox WHERE topic = 'audit' ORDER BY id")
    events = [audit_log_pb2.AuditEvent.FromString(bytes(r["payload"])) for r in rows]
    return [e.outcome_reason for e in events if e.transaction_id == claim.transaction_id]


async def approve_500(env: Env, claim: pb.Claim) -> pb.Claim:
    """The webhook insurer approves the claim (billed 500) in full."""
    answer = await env.intake.RecordDecision(
        decision_intake_pb2.RecordDecisionRequest(
            transaction_id=claim.transaction_id,
            insurer_code=WEBHOOK,
            state=S.CLAIM_STATE_APPROVED,
            approved_amount_satang=500,
            decision_envelope=env.decision(H1, WEBHOOK, claim.claim_ref, 500),
        )
    )
    return answer.claim


async def taken_at(env: Env, claim: pb.Claim) -> Any:
    assert env.pool is not None
    return await env.pool.fetchval(
        "SELECT taken_at FROM router.claims WHERE transaction_id = $1", claim.transaction_id
    )


class Watch:
    """A hospital's WatchClaim, collected in the background."""

    def __init__(self, env: Env, claim: pb.Claim) -> None:
        self.seen: list[tuple[int, str]] = []
        self._stream = env.claims.WatchClaim(
            pb.WatchClaimRequest(transaction_id=claim.transaction_id),
            metadata=env.md(claim.hospital_code),
            timeout=20,
        )
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async for c in self._stream:
            self.seen.append((c.state, c.status_reason))

    async def until(self, n: int) -> None:
        for _ in range(200):
            if len(self.seen) >= n:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"watch saw only {self.seen}")


# --- the adapter's acknowledgement is a hand-off, not a delivery ----------------------------


@pytest.mark.parametrize("insurer", [GRPC, WEBHOOK])
async def test_the_adapters_ack_alone_does_not_make_a_claim_delivered(env: Env, insurer: str) -> None:
    claim = await submit(env, H1, insurer, f"REF-ACK-{insurer}")
    await wait_handed_off(env, claim.transaction_id)
    assert env.adapter.calls == [claim.transaction_id]
    await asyncio.sleep(0.3)
    assert (await get(env, claim)).state == S.CLAIM_STATE_RECEIVED
    assert await audited_states(env, claim) == ["CLAIM_STATE_RECEIVED"]
    # Handed off once: the poll does not hand it off again while it waits.
    await asyncio.sleep(1.2)
    assert env.adapter.calls == [claim.transaction_id]


async def test_a_claim_not_taken_by_the_end_of_its_lease_is_handed_off_again_and_recorded(env: Env) -> None:
    """The first hand-off is not recorded (ReportTaken records it); one that no
    report follows is repeated by the poller once the insert's lease ends, and
    that one is recorded so the claim is not handed off for ever."""
    claim = await submit(env, H1, GRPC, "REF-LEASE-END")
    await wait_handed_off(env, claim.transaction_id)
    assert not await env.handed_off(claim.transaction_id)
    assert env.pool is not None
    # The lease (PUSH_HANDOFF_LEASE_S) ends: moved here, not waited for.
    await env.pool.execute(
        "UPDATE router.claims SET next_attempt_at = now() WHERE transaction_id = $1", claim.transaction_id
    )
    for _ in range(100):
        if await env.handed_off(claim.transaction_id):
            break
        await asyncio.sleep(0.05)
    assert env.adapter.calls == [claim.transaction_id] * 2
    assert await env.handed_off(claim.transaction_id)
    await asyncio.sleep(1.2)  # recorded: the poller leaves it alone now
    assert env.adapter.calls == [claim.transaction_id] * 2


async def test_claims_submitted_while_a_hand_off_is_in_flight_go_in_one_call(env: Env) -> None:
    env.adapter.hold = asyncio.Event()
    first = await submit(env, H1, GRPC, "REF-BATCH-0")
    for _ in range(100):
        if env.adapter.held:
            break
        await asyncio.sleep(0.02)
    kinds = enumerate([GRPC, WEBHOOK] * 3, 1)
    rest = await asyncio.gather(*(submit(env, H1, insurer, f"REF-BATCH-{i}") for i, insurer in kinds))
    env.adapter.hold.set()
    for claim in rest:
        await wait_handed_off(env, claim.transaction_id)
    assert len(env.adapter.batches) == 2
    assert env.adapter.batches[0] == [first.transaction_id]
    assert sorted(env.adapter.batches[1]) == sorted(c.transaction_id for c in rest)
    await asyncio.sleep(0.3)
    assert (await get(env, rest[0])).state == S.CLAIM_STATE_RECEIVED  # handed off, not taken


async def test_pull_insurers_claims_are_never_handed_off(env: Env) -> None:
    claim = await submit(env, H1, PULL_SAMPLE, "REF-PULLSAMPLE")
    await asyncio.sleep(1.2)
    assert env.adapter.calls == []
    assert not await env.handed_off(claim.transaction_id)


# --- ReportTaken -------------------------------------------------------------------------------


async def test_report_taken_delivers_once_and_watch_sees_it(env: Env) -> None:
    claim = await submit(env, H1, GRPC, "REF-TAKEN")
    watch = Watch(env, claim)
    await watch.until(1)
    assert await report(env, "taken", claim) == S.CLAIM_STATE_DELIVERED
    await watch.until(2)
    first = await get(env, claim)
    assert first.state == S.CLAIM_STATE_DELIVERED
    # Idempotent: again changes nothing, emits nothing.
    assert await report(env, "taken", claim) == S.CLAIM_STATE_DELIVERED
    assert (await get(env, claim)).updated_at == first.updated_at
    assert await audited_states(env, claim) == ["CLAIM_STATE_RECEIVED", "CLAIM_STATE_DELIVERED"]
    assert watch.seen == [(S.CLAIM_STATE_RECEIVED, ""), (S.CLAIM_STATE_DELIVERED, "")]
    assert await taken_at(env, claim) is not None
    # A report that beat the hand-off's own record still counts as handed off.
    assert await env.handed_off(claim.transaction_id)
    watch.task.cancel()


async def test_report_taken_after_a_decision_only_notes_the_time(env: Env) -> None:
    claim = await submit(env, H1, WEBHOOK, "REF-FAST", 500)
    decided = await approve_500(env, claim)
    assert await report(env, "taken", claim) == S.CLAIM_STATE_APPROVED
    after = await get(env, claim)
    assert (after.state, after.updated_at) == (S.CLAIM_STATE_APPROVED, decided.updated_at)
    assert await taken_at(env, claim) is not None
    assert "CLAIM_STATE_DELIVERED" not in await audited_states(env, claim)


@pytest.mark.parametrize("kind", ["taken", "expired", "redriven"])
async def test_reports_are_checked(env: Env, kind: str) -> None:
    claim = await submit(env, H1, GRPC, f"REF-CHK-{kind}")
    pulled = await submit(env, H1, TESTPULL, f"REF-CHKP-{kind}")
    cases = [
        ({"insurer": WEBHOOK}, grpc.StatusCode.NOT_FOUND, "CLAIM_NOT_FOUND"),
        ({"tid": "txn_" + "0" * 28}, grpc.StatusCode.NOT_FOUND, "CLAIM_NOT_FOUND"),
        ({"tid": "not-a-transaction"}, grpc.StatusCode.INVALID_ARGUMENT, "TRANSACTION_ID_INVALID"),
        ({"insurer": "bad code!"}, grpc.StatusCode.INVALID_ARGUMENT, "INSURER_CODE_INVALID"),
    ]
    method = {
        "taken": env.reports.ReportTaken,
        "expired": env.reports.ReportExpired,
        "redriven": env.reports.ReportRedriven,
    }[kind]
    for over, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(_req(kind, claim, **over), timeout=10)
        assert (err.value.code(), reason_of(err.value)) == (code, reason)
    # Pull claims are never pushed, so nothing reports on them.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await method(_req(kind, pulled), timeout=10)
    assert (err.value.code(), reason_of(err.value)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CLAIM_NOT_PUSHED",
    )
    assert (await get(env, claim)).state == S.CLAIM_STATE_RECEIVED
    assert await audited_states(env, claim) == ["CLAIM_STATE_RECEIVED"]


# --- ReportTakenBatch ------------------------------------------------------------------------


async def report_batch(env: Env, *reqs: Any) -> list[tuple[int, str]]:
    answer = await env.reports.ReportTakenBatch(
        delivery_report_pb2.ReportTakenBatchRequest(reports=list(reqs)), timeout=10
    )
    return [(r.index, r.reason) for r in answer.refused]


async def test_report_taken_batch_applies_each_as_report_taken_does(env: Env) -> None:
    a = await submit(env, H1, GRPC, "REF-BATCH-A")
    b = await submit(env, H1, WEBHOOK, "REF-BATCH-B", 500)
    decided = await submit(env, H1, WEBHOOK, "REF-BATCH-C", 500)
    await approve_500(env, decided)
    before = (await get(env, decided)).updated_at
    pulled = await submit(env, H1, TESTPULL, "REF-BATCH-P")
    assert env.pool is not None
    refused = await report_batch(
        env,
        _req("taken", a),
        _req("taken", b),
        _req("taken", decided),
        _req("taken", a, insurer=WEBHOOK),  # someone else's claim
        _req("taken", pulled),
        _req("taken", a, tid="not-a-transaction"),
        _req("taken", a, tid="txn_" + "0" * 28),
        _req("taken", b),  # twice in one batch: once
    )
    assert refused == [
        (3, "CLAIM_NOT_FOUND"),
        (4, "CLAIM_NOT_PUSHED"),
        (5, "TRANSACTION_ID_INVALID"),
        (6, "CLAIM_NOT_FOUND"),
    ]
    for claim in (a, b):
        assert (await get(env, claim)).state == S.CLAIM_STATE_DELIVERED
        assert await audited_states(env, claim) == ["CLAIM_STATE_RECEIVED", "CLAIM_STATE_DELIVERED"]
        assert await taken_at(env, claim) is not None
        assert await env.handed_off(claim.transaction_id)
    after = await get(env, decided)
    assert (after.state, after.updated_at) == (S.CLAIM_STATE_APPROVED, before)
    assert "CLAIM_STATE_DELIVERED" not in await audited_states(env, decided)
    assert (await get(env, pulled)).state == S.CLAIM_STATE_RECEIVED
    # Written in one transaction: the rows share the writer's transaction id.
    writers = await env.pool.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM router.claims WHERE transaction_id = ANY($1::text[])",
        [a.transaction_id, b.transaction_id],
    )
    assert writers == 1
    # Idempotent: again changes nothing and emits nothing.
    assert await report_batch(env, _req("taken", a), _req("taken", b)) == []
    assert await audited_states(env, a) == ["CLAIM_STATE_RECEIVED", "CLAIM_STATE_DELIVERED"]


async def test_report_taken_batch_refuses_more_than_500(env: Env) -> None:
    claim = await submit(env, H1, GRPC, "REF-BATCH-MAX")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await report_batch(env, *[_req("taken", claim)] * 501)
    assert (err.value.code(), reason_of(err.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "TOO_MANY_REPORTS")
    assert await report_batch(env, *[_req("taken", claim)] * 500) == []
    assert (await get(env, claim)).state == S.CLAIM_STATE_DELIVERED


# --- ReportExpired / ReportRedriven ----------------------------------------------------------


async def test_expiry_fails_the_claim_and_ends_the_watch(env: Env) -> None:
    claim = await submit(env, H1, GRPC, "REF-EXP")
    watch = Watch(env, claim)
    await watch.until(1)
    assert await report(env, "expired", claim) == S.CLAIM_STATE_FAILED
    await asyncio.wait_for(watch.task, 10)  # FAILED is final: the stream ends
    assert watch.seen == [(S.CLAIM_STATE_RECEIVED, ""), (S.CLAIM_STATE_FAILED, "DELIVERY_EXPIRED")]
    failed = await get(env, claim)
    assert (failed.state, failed.status_reason) == (S.CLAIM_STATE_FAILED, "DELIVERY_EXPIRED")
    assert failed.decided_at.seconds == 0
    # Idempotent.
    assert await report(env, "expired", claim) == S.CLAIM_STATE_FAILED
    assert (await get(env, claim)).updated_at == failed.updated_at
    assert await audited_states(env, claim) == ["CLAIM_STATE_RECEIVED", "CLAIM_STATE_FAILED"]
    listed = await env.claims.ListClaims(
        pb.ListClaimsRequest(state=S.CLAIM_STATE_FAILED), metadata=env.md(H1)
    )
    assert [c.transaction_id for c in listed.claims] == [claim.transaction_id]


async def test_a_claim_the_insurer_took_never_expires(env: Env) -> None:
    claim = await submit(env, H1, GRPC, "REF-TOOK")
    await report(env, "taken", claim)
    assert await report(env, "expired", claim) == S.CLAIM_STATE_DELIVERED
    assert (await get(env, claim)).status_reason == ""
    cancelled = await submit(env, H1, GRPC, "REF-CXL")
    await env.claims.CancelClaim(
        pb.CancelClaimRequest(transaction_id=cancelled.transaction_id), metadata=env.md(H1)
    )
    assert await report(env, "expired", cancelled) == S.CLAIM_STATE_CANCELLED
    assert await report(env, "redriven", cancelled) == S.CLAIM_STATE_CANCELLED


async def test_redrive_brings_an_expired_claim_back_to_received(env: Env) -> None:
    claim = await submit(env, H1, WEBHOOK, "REF-REDRIVE", 700)
    await report(env, "expired", claim)
    assert await report(env, "redriven", claim) == S.CLAIM_STATE_RECEIVED
    waiting = await get(env, claim)
    assert (waiting.state, waiting.status_reason) == (S.CLAIM_STATE_RECEIVED, "")
    # Idempotent.
    assert await report(env, "redriven", claim) == S.CLAIM_STATE_RECEIVED
    assert (await get(env, claim)).updated_at == waiting.updated_at
    # The hospital watches it wait again, then get delivered and decided.
    watch = Watch(env, claim)
    await watch.until(1)
    assert await report(env, "taken", claim) == S.CLAIM_STATE_DELIVERED
    await watch.until(2)
    await env.intake.RecordDecision(
        decision_intake_pb2.RecordDecisionRequest(
            transaction_id=claim.transaction_id,
            insurer_code=WEBHOOK,
            state=S.CLAIM_STATE_APPROVED,
            approved_amount_satang=700,
            decision_envelope=env.decision(H1, WEBHOOK, "REF-REDRIVE", 700),
        )
    )
    await asyncio.wait_for(watch.task, 10)
    assert [s for s, _ in watch.seen] == [
        S.CLAIM_STATE_RECEIVED,
        S.CLAIM_STATE_DELIVERED,
        S.CLAIM_STATE_APPROVED,
    ]
    assert await audited_states(env, claim) == [
        "CLAIM_STATE_RECEIVED",
        "CLAIM_STATE_FAILED",
        "CLAIM_STATE_RECEIVED",
        "CLAIM_STATE_DELIVERED",
        "CLAIM_STATE_APPROVED",
    ]
    # The router does not hand it off again: the delivery layer kept its own record.
    assert env.adapter.calls.count(claim.transaction_id) <= 1


async def test_a_push_taken_after_expiry_is_noted_and_a_redrive_delivers_it(env: Env) -> None:
    """A push still in flight when the delivery expired: the insurer's take is
    noted (the claim stays FAILED, which the hospital already saw as final);
    a redrive then makes it DELIVERED, not RECEIVED, and it never expires again."""
    claim = await submit(env, H1, GRPC, "REF-LATE")
    await report(env, "expired", claim)
    assert await report(env, "taken", claim) == S.CLAIM_STATE_FAILED
    assert await taken_at(env, claim) is not None
    assert await report(env, "redriven", claim) == S.CLAIM_STATE_DELIVERED
    assert await report(env, "expired", claim) == S.CLAIM_STATE_DELIVERED
    assert await audited_states(env, claim) == [
        "CLAIM_STATE_RECEIVED",
        "CLAIM_STATE_FAILED",
        "CLAIM_STATE_DELIVERED",
    ]


async def test_redrive_leaves_claims_that_did_not_expire_alone(env: Env) -> None:
    claim = await submit(env, H1, GRPC, "REF-NOEXP")
    assert await report(env, "redriven", claim) == S.CLAIM_STATE_RECEIVED
    await report(env, "taken", claim)
    assert await report(env, "redriven", claim) == S.CLAIM_STATE_DELIVERED
    assert await audited_states(env, claim) == ["CLAIM_STATE_RECEIVED", "CLAIM_STATE_DELIVERED"]


# --- ListInsurers: delivery and health (§10, §10.5) -----------------------------------------


async def directory(env: Env) -> dict[str, pb.Insurer]:
    resp = await env.claims.ListInsurers(pb.ListInsurersRequest(page_size=100), metadata=env.md(H1))
    return {i.code: i for i in resp.insurers}


async def until_health(env: Env, want: dict[str, int]) -> dict[str, pb.Insurer]:
    """ListInsurers once it shows `want` (the directory cache has a TTL)."""
    for _ in range(100):
        insurers = await directory(env)
        if all(insurers[c].health == h for c, h in want.items()):
            return insurers
        await asyncio.sleep(0.1)
    raise AssertionError(f"never {want}: { {c: insurers[c].health for c in want} }")


async def test_list_insurers_shows_each_delivery_mode(env: Env) -> None:
    insurers = await directory(env)
    assert {c: i.delivery for c, i in insurers.items()} == {
        GRPC: pb.DELIVERY_MODE_GRPC,
        WEBHOOK: pb.DELIVERY_MODE_WEBHOOK,
        PULL_SAMPLE: pb.DELIVERY_MODE_PULL,
        GRPC2: pb.DELIVERY_MODE_GRPC,
        WEBHOOK2: pb.DELIVERY_MODE_WEBHOOK,
        TESTPULL: pb.DELIVERY_MODE_PULL,
    }
    # Nothing known yet about anyone.
    assert {i.health for i in insurers.values()} == {pb.INSURER_HEALTH_UNKNOWN}


async def test_push_health_comes_from_the_registry(env: Env) -> None:
    assert env.registry is not None
    await env.registry.set_push_health(GRPC, "down", 5)
    await env.registry.set_push_health(WEBHOOK, "degraded", 2)
    await env.registry.set_push_health(WEBHOOK2, "healthy", 0)
    await until_health(
        env,
        {
            GRPC: pb.INSURER_HEALTH_DOWN,
            WEBHOOK: pb.INSURER_HEALTH_DEGRADED,
            WEBHOOK2: pb.INSURER_HEALTH_HEALTHY,
            GRPC2: pb.INSURER_HEALTH_UNKNOWN,
        },
    )
    # Claims to a DOWN insurer are still accepted; they wait.
    claim = await submit(env, H1, GRPC, "REF-DOWN")
    assert claim.state == S.CLAIM_STATE_RECEIVED
    await env.registry.set_push_health(GRPC, "healthy", 0)
    await until_health(env, {GRPC: pb.INSURER_HEALTH_HEALTHY})


async def _pull(env: Env, insurer: str = TESTPULL, wait_s: int = 0) -> list[str]:
    resp = await env.insurer.PullClaims(
        insurer_service_pb2.PullClaimsRequest(max_claims=10, wait=Duration(seconds=wait_s)),
        metadata=env.md(insurer, "insurer"),
        timeout=20,
    )
    return [d.transaction_id for d in resp.deliveries]


# Long enough that a loaded machine still reads HEALTHY right after a pull.
WINDOW_S = 3.0


async def test_pull_health_down_while_claims_wait_unpulled_then_healthy(database_url: str) -> None:
    async with running_env(database_url, pull_down_after_s=WINDOW_S, pull_lease_s=60.0) as env:
        # No claims, no pulls: unknown.
        await asyncio.sleep(WINDOW_S + 0.2)
        assert (await directory(env))[TESTPULL].health == pb.INSURER_HEALTH_UNKNOWN
        claim = await submit(env, H1, TESTPULL, "REF-WAIT")
        # A claim waiting, not yet for the whole window: still unknown.
        assert (await directory(env))[TESTPULL].health == pb.INSURER_HEALTH_UNKNOWN
        await asyncio.sleep(WINDOW_S + 0.2)
        assert (await directory(env))[TESTPULL].health == pb.INSURER_HEALTH_DOWN
        # Another pull insurer without claims stays unknown.
        assert (await directory(env))[PULL_SAMPLE].health == pb.INSURER_HEALTH_UNKNOWN
        # It pulls: healthy.
        assert await _pull(env) == [claim.transaction_id]
        insurers = await until_health(env, {TESTPULL: pb.INSURER_HEALTH_HEALTHY})
        # The claim is leased (60 s): nothing waits, so a quiet insurer is not DOWN.
        await asyncio.sleep(WINDOW_S + 0.2)
        insurers = await directory(env)
        assert insurers[TESTPULL].health == pb.INSURER_HEALTH_UNKNOWN


async def test_pulls_are_recorded_at_most_every_ten_seconds(env: Env) -> None:
    assert env.registry is not None
    assert await env.registry.health(TESTPULL) is None
    await _pull(env)
    first = await env.registry.health(TESTPULL)
    assert first is not None and first.last_pull_at is not None
    for _ in range(3):
        await _pull(env)
    again = await env.registry.health(TESTPULL)
    assert again is not None and again.last_pull_at == first.last_pull_at
    # A push insurer calling PullClaims gets nothing and records nothing.
    assert await _pull(env, GRPC) == []
    assert await env.registry.health(GRPC) is None


async def test_a_pulled_claim_is_delivered_and_taken(env: Env) -> None:
    claim = await submit(env, H1, TESTPULL, "REF-PULLED")
    assert await _pull(env) == [claim.transaction_id]
    await wait_state(env, claim.transaction_id, S.CLAIM_STATE_DELIVERED)
    assert await taken_at(env, claim) is not None
