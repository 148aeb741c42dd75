"""Issue 2's acceptance tests: claims through real Envoy, auth, router, adapter
and simulated insurers, on real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import secrets
import time

import grpc
import pytest

from iclaim.client.hospital import HospitalClient
from iclaim.client.insurer import InsurerClient
from iclaim.crypto.envelope import seal
from iclaim.fhir.claim_response import build_claim_response, parse_claim_response
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb
from tests.support.stack import RunningStack
from tests.support.claims import fhir, submit
from tests.support.wire import metric_value, raw_call, reason_of

pytestmark = pytest.mark.integration
S = pb.ClaimState


def ref() -> str:
    return f"IT-{secrets.token_hex(5)}"


async def until_decided(client: HospitalClient, tid: str, timeout_s: float = 30) -> list[pb.Claim]:
    seen = []
    async for claim in client.watch_claim(tid, timeout_s=timeout_s):
        seen.append(claim)
    return seen


def check_decision(client: HospitalClient, claim: pb.Claim) -> dict:
    opened = client.open_decision(claim)
    parsed = parse_claim_response(__import__("json").dumps(opened.claim_response).encode())
    assert parsed.claim_ref == claim.claim_ref
    assert parsed.approved_satang == claim.approved_amount_satang
    return opened.claim_response


@pytest.mark.parametrize(
    ("policy", "amount", "state", "approved", "reason"),
    [
        ("POL-OK-1", 1_234_56, S.CLAIM_STATE_APPROVED, 1_234_56, ""),
        ("DENY-77", 50_000, S.CLAIM_STATE_DENIED, 0, "POLICY_NOT_FOUND"),
        ("LIMIT-30000-9", 80_000, S.CLAIM_STATE_PARTIALLY_APPROVED, 30_000, "COVERAGE_LIMIT_REACHED"),
        ("LIMIT-90000-9", 80_000, S.CLAIM_STATE_APPROVED, 80_000, ""),
    ],
)
async def test_simple_scenarios_decide_and_decisions_open(
    running_stack: RunningStack, policy: str, amount: int, state: int, approved: int, reason: str
) -> None:
    async with HospitalClient(running_stack.creds()) as client:
        claim = await submit(client, "AIA", policy, amount)
        assert claim.state == state, S.Name(claim.state)
        assert claim.approved_amount_satang == approved
        assert claim.status_reason == reason
        check_decision(client, claim)
        again = await client.get_claim(claim.transaction_id)
        assert again.state == state


async def test_review_goes_pending_then_approved(running_stack: RunningStack) -> None:
    async with HospitalClient(running_stack.creds()) as client:
        claim = await submit(client, "MTL", "REVIEW-1", 70_000, wait_s=0)
        seen = await until_decided(client, claim.transaction_id)
        states = [c.state for c in seen]
        assert S.CLAIM_STATE_PENDING_REVIEW in states
        assert states[-1] == S.CLAIM_STATE_APPROVED
        assert states.index(S.CLAIM_STATE_PENDING_REVIEW) < len(states) - 1
        final = seen[-1]
        assert final.approved_amount_satang == 70_000
        check_decision(client, final)


async def test_slow_insurer_decides_after_about_ten_seconds(running_stack: RunningStack) -> None:
    async with HospitalClient(running_stack.creds()) as client:
        start = time.monotonic()
        claim = await submit(client, "TLI", "SLOW-1", 10_000, wait_s=2)
        assert claim.state in (S.CLAIM_STATE_RECEIVED, S.CLAIM_STATE_DELIVERED)
        seen = await until_decided(client, claim.transaction_id, timeout_s=40)
        assert seen[-1].state == S.CLAIM_STATE_APPROVED
        assert time.monotonic() - start >= 8
        check_decision(client, seen[-1])


async def test_garbage_envelope_is_denied_as_invalid_document(running_stack: RunningStack) -> None:
    async with HospitalClient(running_stack.creds()) as client:
        r = ref()
        key = await client.insurer_key("OLI")
        # Header is right, content is not a FHIR Claim.
        envelope = seal(
            b"\x00not json at all",
            key,
            sender=client.creds.code,
            recipient="OLI",
            claim_ref=r,
            amount_satang=5_000,
        )
        claim = await client.submit_claim(
            b"",
            insurer_code="OLI",
            claim_ref=r,
            amount_satang=5_000,
            decision_timeout_s=15,
            envelope=envelope,
        )
        assert claim.state == S.CLAIM_STATE_DENIED
        assert claim.status_reason == "INVALID_CLAIM_DOCUMENT"
        # A flipped ciphertext bit: the insurer detects it, never accepts it.
        r2 = ref()
        good = await client.seal_claim(
            fhir(client.creds.code, "OLI", r2, "POL-1", 5_000),
            insurer_code="OLI",
            claim_ref=r2,
            amount_satang=5_000,
        )
        parts = good.split(".")
        ct = parts[3]
        parts[3] = ("B" if ct[0] != "B" else "C") + ct[1:]
        claim2 = await client.submit_claim(
            b"",
            insurer_code="OLI",
            claim_ref=r2,
            amount_satang=5_000,
            decision_timeout_s=15,
            envelope=".".join(parts),
        )
        assert claim2.state == S.CLAIM_STATE_DENIED
        assert claim2.status_reason == "INVALID_CLAIM_DOCUMENT"


async def test_directory_lists_60_insurers_and_ten_insurers_decide(
    running_stack: RunningStack,
) -> None:
    async with HospitalClient(running_stack.creds()) as client:
        insurers = await client.list_insurers()
        simulated = [i for i in insurers if i.code != "TESTPULL"]
        assert len(simulated) == 60
        assert sum(i.line == pb.INSURANCE_LINE_LIFE for i in simulated) == 20
        assert sum(i.line == pb.INSURANCE_LINE_NON_LIFE for i in simulated) == 40
        assert {"AIA", "MTL", "TLI", "OLI", "BLA", "TESTPULL"} <= {i.code for i in insurers}
        assert all(i.keys and i.available for i in insurers)
        ten = [i.code for i in simulated[:10]]
        claims = await asyncio.gather(*(submit(client, code, "POL-X", 2_000) for code in ten))
        assert [c.insurer_code for c in claims] == ten
        assert all(c.state == S.CLAIM_STATE_APPROVED for c in claims)
        for c in claims:
            check_decision(client, c)


async def test_pull_insurer_pulls_and_decides_from_outside(running_stack: RunningStack) -> None:
    async with (
        HospitalClient(running_stack.creds()) as hospital,
        InsurerClient(running_stack.creds("TESTPULL")) as insurer,
    ):
        claim = await submit(hospital, "TESTPULL", "POL-PULL", 33_300, wait_s=0)
        pulled = []
        for _ in range(5):
            pulled += [
                d
                for d in await insurer.pull(max_claims=100, wait_s=2)
                if d.transaction_id == claim.transaction_id
            ]
            if pulled:
                break
        assert len(pulled) == 1
        header, body = insurer.open_claim(pulled[0])
        assert header.sender == hospital.creds.code and header.amount_satang == 33_300
        assert b'"resourceType":"Claim"' in body.replace(b" ", b"")
        response = build_claim_response(
            claim_ref=pulled[0].claim_ref,
            hospital_code=hospital.creds.code,
            insurer_code="TESTPULL",
            state="PARTIALLY_APPROVED",
            billed_satang=33_300,
            approved_satang=30_000,
            reason_code="",
        )
        decided = await insurer.decide(
            pulled[0],
            state=S.CLAIM_STATE_PARTIALLY_APPROVED,
            approved_amount_satang=30_000,
            claim_response=response,
        )
        assert decided.state == S.CLAIM_STATE_PARTIALLY_APPROVED
        seen = await hospital.get_claim(claim.transaction_id)
        assert seen.approved_amount_satang == 30_000
        check_decision(hospital, seen)


async def test_a_pull_insurer_carries_its_decision_on_the_next_pull(running_stack: RunningStack) -> None:
    """§6.1 through Envoy and the auth service: the decision rides the signed
    PullClaims body, is recorded, and a conflicting one comes back refused."""
    async with (
        HospitalClient(running_stack.creds()) as hospital,
        InsurerClient(running_stack.creds("TESTPULL")) as insurer,
    ):
        claim = await submit(hospital, "TESTPULL", "POL-CARRY", 33_300, wait_s=0)
        pulled = []
        for _ in range(5):
            got = await insurer.pull(max_claims=100, wait_s=2)
            pulled += [d for d in got if d.transaction_id == claim.transaction_id]
            if pulled:
                break
        assert len(pulled) == 1

        def decision(state: int, amount: int, reason: str) -> ipb.PostDecisionRequest:
            response = build_claim_response(
                claim_ref=pulled[0].claim_ref,
                hospital_code=hospital.creds.code,
                insurer_code="TESTPULL",
                state=pb.ClaimState.Name(state).removeprefix("CLAIM_STATE_"),
                billed_satang=33_300,
                approved_satang=amount,
                reason_code=reason,
            )
            envelope = seal(
                response,
                hospital_key,
                sender="TESTPULL",
                recipient=hospital.creds.code,
                claim_ref=pulled[0].claim_ref,
                amount_satang=amount,
            )
            return ipb.PostDecisionRequest(
                transaction_id=claim.transaction_id,
                state=state,  # type: ignore[arg-type]
                approved_amount_satang=amount,
                decision_envelope=envelope,
                reason_code=reason,
            )

        hospital_key = await insurer.hospital_key(hospital.creds.code)
        approved = decision(S.CLAIM_STATE_APPROVED, 33_300, "")
        _, results = await insurer.pull_carrying(10, 0.2, [approved])
        assert [(r.transaction_id, r.code, r.reason) for r in results] == [(claim.transaction_id, 0, "")]
        seen = await hospital.get_claim(claim.transaction_id)
        assert seen.state == S.CLAIM_STATE_APPROVED
        check_decision(hospital, seen)

        denied = decision(S.CLAIM_STATE_DENIED, 0, "POLICY_NOT_FOUND")
        _, results = await insurer.pull_carrying(10, 0.2, [denied])
        assert [(r.code, r.reason, r.state) for r in results] == [
            (grpc.StatusCode.FAILED_PRECONDITION.value[0], "DECISION_CONFLICT", S.CLAIM_STATE_APPROVED)
        ]


async def test_resubmission_is_idempotent_and_delivered_once(running_stack: RunningStack) -> None:
    async with HospitalClient(running_stack.creds()) as client:
        r = ref()
        body = fhir(client.creds.code, "BLA", r, "POL-IDEM", 12_000)
        envelope = await client.seal_claim(body, insurer_code="BLA", claim_ref=r, amount_satang=12_000)
        first = await client.submit_claim(
            body,
            insurer_code="BLA",
            claim_ref=r,
            amount_satang=12_000,
            envelope=envelope,
            decision_timeout_s=15,
        )
        second = await client.submit_claim(
            body, insurer_code="BLA", claim_ref=r, amount_satang=12_000, envelope=envelope
        )
        assert second.transaction_id == first.transaction_id
        assert second.state == S.CLAIM_STATE_APPROVED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.submit_claim(body, insurer_code="BLA", claim_ref=r, amount_satang=12_000)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        conn = await running_stack.db()
        try:
            # A push taken at once is stored after it, in the next "taken" batch.
            row = None
            for _ in range(100):
                row = await conn.fetchrow(
                    "SELECT attempts, delivery_count FROM adapter.deliveries WHERE transaction_id = $1",
                    first.transaction_id,
                )
                if row is not None:
                    break
                await asyncio.sleep(0.05)
            routed = await conn.fetchrow(
                "SELECT delivery_attempts, envelope, envelope_bytes FROM router.claims"
                " WHERE transaction_id = $1",
                first.transaction_id,
            )
            kept = await conn.fetchval(
                "SELECT envelope FROM adapter.deliveries WHERE transaction_id = $1", first.transaction_id
            )
        finally:
            await conn.close()
        assert row is not None, "the delivery was never stored"
        # pushed once, handed off once
        assert (row["attempts"], row["delivery_count"], routed["delivery_attempts"]) == (1, 1, 1)
        # Decided and taken: the hub keeps the envelope's size and hash, not the
        # envelope, and still knew the resubmission above for the same one.
        assert (routed["envelope"], routed["envelope_bytes"], kept) == ("", len(envelope), "")


async def test_hospital_cannot_see_another_hospitals_claim(running_stack: RunningStack) -> None:
    async with (
        HospitalClient(running_stack.creds("10670")) as a,
        HospitalClient(running_stack.creds("10671")) as b,
    ):
        claim = await submit(a, "AIA", "POL-1", 1_000, wait_s=0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await b.get_claim(claim.transaction_id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(err.value) == "CLAIM_NOT_FOUND"
        assert claim.transaction_id not in {c.transaction_id for c in await b.list_claims()}


GET_INSURERS = "/iclaim.v1.ClaimService/ListInsurers"


async def _router_calls(stack: RunningStack) -> float:
    return await metric_value(
        stack.stack.ports.router_metrics,
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "iclaim.v1.ClaimService",
            "grpc_method": "ListInsurers",
            "grpc_code": "OK",
        },
    ) + await metric_value(
        stack.stack.ports.router_metrics,
        "grpc_server_handled_total",
        {
            "grpc_service": "iclaim.v1.ClaimService",
            "grpc_method": "ListInsurers",
            "grpc_code": "PERMISSION_DENIED",
        },
    )


async def test_forgeries_and_replays_never_reach_the_router(running_stack: RunningStack) -> None:
    creds = running_stack.creds()
    request = pb.ListInsurersRequest(page_size=1)
    ok = await raw_call(creds, GET_INSURERS, request, pb.ListInsurersResponse)
    assert len(ok.insurers) == 1
    before = await _router_calls(running_stack)
    cases = [
        (dict(secret=b"\x02" * 32), grpc.StatusCode.UNAUTHENTICATED),
        (dict(timestamp=int(time.time()) - 301), grpc.StatusCode.UNAUTHENTICATED),
        (dict(timestamp=int(time.time()) + 120), grpc.StatusCode.UNAUTHENTICATED),
        (dict(client="10671"), grpc.StatusCode.UNAUTHENTICATED),
    ]
    for kwargs, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_call(creds, GET_INSURERS, request, pb.ListInsurersResponse, **kwargs)
        assert err.value.code() == code, kwargs
    nonce = secrets.token_urlsafe(18)
    await raw_call(creds, GET_INSURERS, request, pb.ListInsurersResponse, nonce=nonce)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw_call(creds, GET_INSURERS, request, pb.ListInsurersResponse, nonce=nonce)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "replay" in (err.value.details() or "")
    # An insurer calling ClaimService.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw_call(running_stack.creds("TESTPULL"), GET_INSURERS, request, pb.ListInsurersResponse)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A client-supplied identity header does not get through.
    spoofed = await raw_call(
        creds,
        GET_INSURERS,
        request,
        pb.ListInsurersResponse,
        extra_md=(("x-iclaim-principal", "TESTPULL"), ("x-iclaim-role", "insurer")),
    )
    assert len(spoofed.insurers) == 1
    after = await _router_calls(running_stack)
    assert after == before + 2  # the replay's original and the spoof attempt only


async def test_unknown_methods_are_unimplemented(running_stack: RunningStack) -> None:
    creds = running_stack.creds()
    for method in (
        "/iclaim_hub.internal.v1.DecisionIntakeService/RecordDecision",
        "/iclaim.v1.ClaimService/NoSuchMethod",
        "/something/else",
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_call(creds, method, pb.ListInsurersRequest(), pb.ListInsurersResponse)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, method
