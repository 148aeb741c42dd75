"""claim_router in-process on port 0, real PostgreSQL; a recording fake adapter
standing in for the delivery layer (it acknowledges hand-offs; it never reports
that an insurer took a claim unless a test says so).

The caller identity is set the way the gateway sets it (trusted headers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from iclaim.limits import CLIENT_OPTIONS
from iclaim.crypto.envelope import generate_encryption_key, seal
from iclaim_hub.common.server import ServeConfig
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.internal.v1 import (
    decision_intake_pb2,
)
from iclaim_hub.registry.store import RegistryStore
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2
from services.claim_router.server import Config, build_server

from tests.support.router_env import (
    Env,
    H1,
    H2,
    S,
    error_metadata,
    reason_of,
    running_env,
    submit,
    wait_handed_off,
)


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    async with running_env(database_url) as e:
        yield e


async def test_submit_is_stored_delivered_once_and_decided(env: Env) -> None:
    claim = await submit(env, H1, "AIA", "REF-1", 12_345)
    assert claim.state == S.CLAIM_STATE_RECEIVED
    assert claim.transaction_id.startswith("txn_")
    assert len(claim.envelope_sha256) == 64
    # Handed to the delivery layer once; DELIVERED only when it reports the insurer took it.
    await wait_handed_off(env, claim.transaction_id)
    assert env.adapter.calls == [claim.transaction_id]
    assert (
        await env.claims.GetClaim(
            pb.GetClaimRequest(transaction_id=claim.transaction_id), metadata=env.md(H1)
        )
    ).state == S.CLAIM_STATE_RECEIVED
    assert await env.report_taken(claim) == S.CLAIM_STATE_DELIVERED

    decision = env.decision(H1, "AIA", "REF-1", 12_345)
    request = decision_intake_pb2.RecordDecisionRequest(
        transaction_id=claim.transaction_id,
        insurer_code="AIA",
        state=S.CLAIM_STATE_APPROVED,
        approved_amount_satang=12_345,
        decision_envelope=decision,
    )
    decided = (await env.intake.RecordDecision(request)).claim
    assert decided.state == S.CLAIM_STATE_APPROVED
    assert decided.decided_at.seconds > 0
    # Same decision again: a no-op, not an error.
    again = (await env.intake.RecordDecision(request)).claim
    assert again.updated_at == decided.updated_at
    # A conflicting one is refused.
    conflicting = decision_intake_pb2.RecordDecisionRequest(
        transaction_id=claim.transaction_id,
        insurer_code="AIA",
        state=S.CLAIM_STATE_DENIED,
        approved_amount_satang=0,
        decision_envelope=env.decision(H1, "AIA", "REF-1", 0),
        reason_code="POLICY_NOT_FOUND",
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.intake.RecordDecision(conflicting)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(err.value) == "DECISION_CONFLICT"


async def test_resubmission_is_idempotent_and_conflicts_are_refused(env: Env) -> None:
    envelope = env.envelope(H1, "MTL", "REF-2", 5_000)
    first = await submit(env, H1, "MTL", "REF-2", 5_000, envelope=envelope)
    second = await submit(env, H1, "MTL", "REF-2", 5_000, envelope=envelope)
    assert second.transaction_id == first.transaction_id
    await wait_handed_off(env, first.transaction_id)
    await asyncio.sleep(0.3)
    assert env.adapter.calls.count(first.transaction_id) == 1

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(env, H1, "MTL", "REF-2", 5_000)  # fresh envelope, same claim_ref
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason_of(err.value) == "CLAIM_REF_CONFLICT"
    # Another hospital may use the same claim_ref.
    other = await submit(env, H2, "MTL", "REF-2", 5_000)
    assert other.transaction_id != first.transaction_id


@pytest.mark.parametrize(
    ("mutate", "code", "reason"),
    [
        (dict(sender=H2), grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_HEADER_MISMATCH"),
        (dict(recipient="TLI"), grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_HEADER_MISMATCH"),
        (dict(claim_ref="OTHER"), grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_HEADER_MISMATCH"),
        (dict(amount=1), grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_HEADER_MISMATCH"),
        (dict(envelope="a.b.c"), grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_MALFORMED"),
        (dict(envelope="x" * (1024 * 1024 + 1)), grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_TOO_LARGE"),
        (dict(insurer="NOPE"), grpc.StatusCode.NOT_FOUND, "INSURER_NOT_FOUND"),
        (dict(kid="AIA-unknown"), grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_KID_UNKNOWN"),
        (dict(claim_ref_req="bad ref!"), grpc.StatusCode.INVALID_ARGUMENT, "CLAIM_REF_INVALID"),
        (dict(billed=0), grpc.StatusCode.INVALID_ARGUMENT, "AMOUNT_INVALID"),
    ],
)
async def test_bad_submissions_are_refused_and_store_nothing(
    env: Env, mutate: dict[str, Any], code: grpc.StatusCode, reason: str
) -> None:
    insurer = mutate.get("insurer", "AIA")
    ref = mutate.get("claim_ref_req", "REF-BAD")
    billed = mutate.get("billed", 7_000)
    key_owner = "AIA"
    public = {k: v for k, v in env.keys[key_owner].items() if k != "d"}
    if "kid" in mutate:
        public["kid"] = mutate["kid"]
    envelope = mutate.get("envelope") or seal(
        b"{}",
        public,
        sender=mutate.get("sender", H1),
        recipient=mutate.get("recipient", insurer),
        claim_ref=mutate.get("claim_ref", ref),
        amount_satang=mutate.get("amount", billed),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.claims.SubmitClaim(
            pb.SubmitClaimRequest(
                claim_ref=ref, insurer_code=insurer, billed_amount_satang=billed, envelope=envelope
            ),
            metadata=env.md(H1),
        )
    assert err.value.code() == code
    assert reason_of(err.value) == reason
    listed = await env.claims.ListClaims(pb.ListClaimsRequest(), metadata=env.md(H1))
    assert list(listed.claims) == []
    assert env.adapter.calls == []


async def test_hospitals_see_only_their_own_claims(env: Env) -> None:
    claim = await submit(env, H1, "AIA", "REF-3")
    for call in (
        env.claims.GetClaim(pb.GetClaimRequest(transaction_id=claim.transaction_id), metadata=env.md(H2)),
        env.claims.CancelClaim(
            pb.CancelClaimRequest(transaction_id=claim.transaction_id), metadata=env.md(H2)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(err.value) == "CLAIM_NOT_FOUND"
    mine = await env.claims.ListClaims(pb.ListClaimsRequest(), metadata=env.md(H2))
    assert list(mine.claims) == []
    # An insurer it was not addressed to cannot decide it.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.insurer.PostDecision(
            insurer_service_pb2.PostDecisionRequest(
                transaction_id=claim.transaction_id,
                state=S.CLAIM_STATE_DENIED,
                decision_envelope=env.decision(H1, "MTL", "REF-3", 0),
            ),
            metadata=env.md("MTL", "insurer"),
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_wrong_role_is_permission_denied(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.claims.ListInsurers(pb.ListInsurersRequest(), metadata=env.md("AIA", "insurer"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.claims.ListInsurers(pb.ListInsurersRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_watch_streams_each_change_and_ends_after_decision(env: Env) -> None:
    claim = await submit(env, H1, "AIA", "REF-4", 900)
    await env.report_taken(claim)
    stream = env.claims.WatchClaim(
        pb.WatchClaimRequest(transaction_id=claim.transaction_id), metadata=env.md(H1), timeout=20
    )
    seen: list[int] = []

    async def consume() -> None:
        async for c in stream:
            seen.append(c.state)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    for state, amount in ((S.CLAIM_STATE_PENDING_REVIEW, 0), (S.CLAIM_STATE_APPROVED, 900)):
        await env.intake.RecordDecision(
            decision_intake_pb2.RecordDecisionRequest(
                transaction_id=claim.transaction_id,
                insurer_code="AIA",
                state=state,
                approved_amount_satang=amount,
                decision_envelope=env.decision(H1, "AIA", "REF-4", amount) if amount else "",
            )
        )
        await asyncio.sleep(0.2)
    await asyncio.wait_for(consumer, 10)
    assert seen == [S.CLAIM_STATE_DELIVERED, S.CLAIM_STATE_PENDING_REVIEW, S.CLAIM_STATE_APPROVED]


async def test_submit_waits_for_decision_within_timeout(env: Env) -> None:
    async def decide_soon() -> None:
        for _ in range(100):
            claims = await env.claims.ListClaims(pb.ListClaimsRequest(), metadata=env.md(H1))
            if claims.claims:
                tid = claims.claims[0].transaction_id
                await env.intake.RecordDecision(
                    decision_intake_pb2.RecordDecisionRequest(
                        transaction_id=tid,
                        insurer_code="AIA",
                        state=S.CLAIM_STATE_DENIED,
                        decision_envelope=env.decision(H1, "AIA", "REF-5", 0),
                        reason_code="POLICY_NOT_FOUND",
                    )
                )
                return
            await asyncio.sleep(0.05)

    task = asyncio.create_task(decide_soon())
    claim = await submit(env, H1, "AIA", "REF-5", 100, wait_s=10)
    await task
    assert claim.state == S.CLAIM_STATE_DENIED
    assert claim.status_reason == "POLICY_NOT_FOUND"


async def test_failed_delivery_is_retried_until_acknowledged(env: Env) -> None:
    env.adapter.fail_next = 2
    claim = await submit(env, H1, "AIA", "REF-6")
    await wait_handed_off(env, claim.transaction_id)
    assert env.adapter.calls == [claim.transaction_id]


async def test_pull_insurer_leases_and_decides(env: Env) -> None:
    claim = await submit(env, H1, "TESTPULL", "REF-7", 4_200)
    md = env.md("TESTPULL", "insurer")
    wait = Duration(seconds=1)
    pulled = await env.insurer.PullClaims(
        insurer_service_pb2.PullClaimsRequest(max_claims=10, wait=wait), metadata=md
    )
    assert [d.transaction_id for d in pulled.deliveries] == [claim.transaction_id]
    assert pulled.deliveries[0].envelope
    # Leased: not offered again while the lease runs, offered again after it.
    again = await env.insurer.PullClaims(insurer_service_pb2.PullClaimsRequest(max_claims=10), metadata=md)
    assert list(again.deliveries) == []
    await asyncio.sleep(1.2)
    reoffered = await env.insurer.PullClaims(
        insurer_service_pb2.PullClaimsRequest(max_claims=10), metadata=md
    )
    assert [d.transaction_id for d in reoffered.deliveries] == [claim.transaction_id]
    assert env.adapter.calls == []  # pull claims are never pushed
    hospital = await env.insurer.GetHospital(
        insurer_service_pb2.GetHospitalRequest(hospital_code=H1), metadata=md
    )
    assert json.loads(hospital.keys[0].jwk)["kty"] == "OKP"
    decided = await env.insurer.PostDecision(
        insurer_service_pb2.PostDecisionRequest(
            transaction_id=claim.transaction_id,
            state=S.CLAIM_STATE_PARTIALLY_APPROVED,
            approved_amount_satang=4_000,
            decision_envelope=env.decision(H1, "TESTPULL", "REF-7", 4_000),
        ),
        metadata=md,
    )
    assert decided.state == S.CLAIM_STATE_PARTIALLY_APPROVED
    await asyncio.sleep(1.2)
    after = await env.insurer.PullClaims(insurer_service_pb2.PullClaimsRequest(max_claims=10), metadata=md)
    assert list(after.deliveries) == []  # decided: never offered again
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.insurer.PullClaims(insurer_service_pb2.PullClaimsRequest(max_claims=0), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_pull_long_poll_wakes_on_new_claim(env: Env) -> None:
    md = env.md("TESTPULL", "insurer")

    async def later() -> None:
        await asyncio.sleep(0.5)
        await submit(env, H1, "TESTPULL", "REF-8", 100)

    task = asyncio.create_task(later())
    pulled = await env.insurer.PullClaims(
        insurer_service_pb2.PullClaimsRequest(max_claims=5, wait=Duration(seconds=10)),
        metadata=md,
        timeout=20,
    )
    await task
    assert len(pulled.deliveries) == 1


async def _approve(env: Env, transaction_id: str, ref: str) -> None:
    """AIA approves H1's claim of 100 satang in full."""
    await env.intake.RecordDecision(
        decision_intake_pb2.RecordDecisionRequest(
            transaction_id=transaction_id,
            insurer_code="AIA",
            state=S.CLAIM_STATE_APPROVED,
            approved_amount_satang=100,
            decision_envelope=env.decision(H1, "AIA", ref, 100),
        )
    )


async def test_cancel_only_before_decision(env: Env) -> None:
    claim = await submit(env, H1, "AIA", "REF-9", 100)
    cancelled = await env.claims.CancelClaim(
        pb.CancelClaimRequest(transaction_id=claim.transaction_id, reason="duplicate visit"),
        metadata=env.md(H1),
    )
    assert cancelled.state == S.CLAIM_STATE_CANCELLED
    decided = await submit(env, H1, "AIA", "REF-10", 100)
    await _approve(env, decided.transaction_id, "REF-10")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.claims.CancelClaim(
            pb.CancelClaimRequest(transaction_id=decided.transaction_id), metadata=env.md(H1)
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(err.value) == "CLAIM_NOT_CANCELLABLE"
    # A decision on the cancelled claim says why it conflicts: an insurer cannot read the claim.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _approve(env, claim.transaction_id, "REF-9")
    assert reason_of(err.value) == "DECISION_CONFLICT"
    assert error_metadata(err.value) == {"state": "CLAIM_STATE_CANCELLED"}


async def test_list_insurers_pages_and_lists_keys(env: Env) -> None:
    first = await env.claims.ListInsurers(pb.ListInsurersRequest(page_size=4), metadata=env.md(H1))
    assert len(first.insurers) == 4 and first.next_page_token
    rest = await env.claims.ListInsurers(
        pb.ListInsurersRequest(page_size=4, page_token=first.next_page_token), metadata=env.md(H1)
    )
    codes = [i.code for i in [*first.insurers, *rest.insurers]]
    assert len(codes) == len(set(codes)) == 6
    assert all(i.keys and json.loads(i.keys[0].jwk)["crv"] == "X25519" for i in first.insurers)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.claims.ListInsurers(pb.ListInsurersRequest(page_token="garbage"), metadata=env.md(H1))
    assert reason_of(err.value) == "PAGE_TOKEN_INVALID"


async def test_log_lines_carry_transaction_id_and_no_claim_content(env: Env) -> None:
    import structlog
    from structlog.testing import capture_logs

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        claim = await submit(env, H1, "AIA", "REF-LOG", 4_321)
        with pytest.raises(grpc.aio.AioRpcError):
            await env.claims.GetClaim(
                pb.GetClaimRequest(transaction_id=claim.transaction_id), metadata=env.md(H2)
            )
        await wait_handed_off(env, claim.transaction_id)
        for _ in range(50):  # the log line follows the database write
            if any(e["event"] == "handed_off" for e in logs):
                break
            await asyncio.sleep(0.02)
    errors = [e for e in logs if e["event"] == "rpc_error"]
    assert errors and errors[0]["transaction_id"] == claim.transaction_id
    assert errors[0]["client"] == H2 and errors[0]["reason"] == "CLAIM_NOT_FOUND"
    handed_off = [e for e in logs if e["event"] == "handed_off"]
    assert handed_off and handed_off[0]["transaction_id"] == claim.transaction_id
    text = repr(logs)
    assert "REF-LOG" not in text  # the hospital's claim reference is not logged


async def test_pull_claim_marked_pending_review_is_not_offered_again(env: Env) -> None:
    claim = await submit(env, H1, "TESTPULL", "REF-PR", 700)
    md = env.md("TESTPULL", "insurer")
    pulled = await env.insurer.PullClaims(insurer_service_pb2.PullClaimsRequest(max_claims=10), metadata=md)
    assert [d.transaction_id for d in pulled.deliveries] == [claim.transaction_id]
    await env.insurer.PostDecision(
        insurer_service_pb2.PostDecisionRequest(
            transaction_id=claim.transaction_id, state=S.CLAIM_STATE_PENDING_REVIEW
        ),
        metadata=md,
    )
    await asyncio.sleep(1.2)  # past the 1 s test lease
    again = await env.insurer.PullClaims(insurer_service_pb2.PullClaimsRequest(max_claims=10), metadata=md)
    assert list(again.deliveries) == []
    final = await env.insurer.PostDecision(
        insurer_service_pb2.PostDecisionRequest(
            transaction_id=claim.transaction_id,
            state=S.CLAIM_STATE_APPROVED,
            approved_amount_satang=700,
            decision_envelope=env.decision(H1, "TESTPULL", "REF-PR", 700),
        ),
        metadata=md,
    )
    assert final.state == S.CLAIM_STATE_APPROVED


# --- idempotency comes before availability and key checks (§5) -----------------------
@pytest.fixture
async def registry(database_url: str) -> AsyncIterator[RegistryStore]:
    """The env's registry (same database), to close insurers and rotate keys."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    # Principals and public keys are not sealed: any master key reads them.
    yield RegistryStore(pool, SecretBox(os.urandom(32)))
    await pool.close()


async def _refused(attempt: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await attempt
    return err.value


async def _until_refused(env: Env, make_envelope: Any, insurer: str, reason: str) -> None:
    """Submits NEW claims (a fresh claim_ref each) until the router refuses one
    with `reason`: the registry change has reached its directory cache."""
    for i in range(200):
        ref = f"REF-PROBE-{i}"
        try:
            await submit(env, H1, insurer, ref, 1_000, envelope=make_envelope(ref))
        except grpc.aio.AioRpcError as err:
            assert reason_of(err) == reason, err
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"a new claim to {insurer} was never refused with {reason}")


async def test_identical_resubmission_returns_the_claim_after_the_insurer_closed(
    env: Env, registry: RegistryStore
) -> None:
    envelope = env.envelope(H1, "MTL", "REF-CLOSED", 5_000)
    first = await submit(env, H1, "MTL", "REF-CLOSED", 5_000, envelope=envelope)
    mtl = await registry.principal("MTL")
    assert mtl is not None
    await registry.upsert_principal(replace(mtl, available=False))

    # A new claim to the closed insurer is still refused ...
    await _until_refused(env, lambda ref: env.envelope(H1, "MTL", ref, 1_000), "MTL", "INSURER_UNAVAILABLE")
    err = await _refused(submit(env, H1, "MTL", "REF-NEW", 1_000))
    assert (err.code(), reason_of(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "INSURER_UNAVAILABLE")
    # ... but the identical resubmission is the same claim, not a refusal.
    again = await submit(env, H1, "MTL", "REF-CLOSED", 5_000, envelope=envelope)
    assert again.transaction_id == first.transaction_id
    # A different envelope under the used claim_ref is still a conflict.
    err = await _refused(submit(env, H1, "MTL", "REF-CLOSED", 5_000))
    assert (err.code(), reason_of(err)) == (grpc.StatusCode.ALREADY_EXISTS, "CLAIM_REF_CONFLICT")


@contextlib.asynccontextmanager
async def _router(env: Env, database_url: str, **config: Any) -> AsyncIterator[Env]:
    """A second router on the env's database with other settings (no delivery)."""
    app = await build_server(
        Config(
            serve=ServeConfig(listen_addr="127.0.0.1:0", metrics_port=-1),
            database_url=database_url,
            master_key=os.urandom(32),
            adapter_target="off",
            audit_target="off",
            billing_target="off",
            **config,
        )
    )
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=CLIENT_OPTIONS)
    try:
        yield Env(channel, env.adapter, env.keys)
    finally:
        await channel.close()
        await app.stop(0)


async def test_identical_resubmission_returns_the_claim_after_its_kid_left_the_grace_period(
    env: Env, registry: RegistryStore, database_url: str
) -> None:
    async with _router(env, database_url, key_grace_s=0.5) as short:
        envelope = short.envelope(H1, "AIA", "REF-ROTATED", 6_000)  # sealed to AIA-k1
        first = await submit(short, H1, "AIA", "REF-ROTATED", 6_000, envelope=envelope)
        _, public = generate_encryption_key("AIA-k2")
        await registry.add_encryption_key("AIA", public["kid"], public)

        # Once AIA-k1 is out of its grace period, new envelopes naming it are refused ...
        await _until_refused(
            short, lambda ref: short.envelope(H1, "AIA", ref, 1_000), "AIA", "ENVELOPE_KID_UNKNOWN"
        )
        # ... but the identical resubmission of the claim sealed to it is the same claim.
        again = await submit(short, H1, "AIA", "REF-ROTATED", 6_000, envelope=envelope)
        assert again.transaction_id == first.transaction_id
        assert again.envelope_sha256 == first.envelope_sha256
