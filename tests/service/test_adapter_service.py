"""insurer_adapter in-process on port 0 with real PostgreSQL; a recording fake of
the router's DecisionIntakeService. Each §8 scenario, idempotency, restarts,
router outages and two replicas."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from iclaim.limits import CLIENT_OPTIONS
from iclaim_hub.common.server import REASON_TRAILER, GrpcApp, ServeConfig
from iclaim.crypto.envelope import generate_encryption_key, open_envelope, seal
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim.crypto.signing import b64url, b64url_decode
from iclaim.fhir import PatientInfo, build_claim, parse_claim_response
from iclaim_hub.internal.v1 import (
    decision_intake_pb2,
    decision_intake_pb2_grpc,
    insurer_adapter_pb2,
    insurer_adapter_pb2_grpc,
)
from iclaim_hub.registry.directory import dev_hospitals, pull_insurer, sample_insurers
from iclaim_hub.registry.store import RegistryStore
from iclaim.v1 import claim_service_pb2 as pb
from services.insurer_adapter.server import Config, build_server

HOSPITAL = "10670"
INSURERS = ["AIA", "MTL", "VIRIYAH"]
STATE = {v: k.removeprefix("CLAIM_STATE_") for k, v in pb.ClaimState.items()}
PATIENT = PatientInfo("Somsri Rakdee", "1101700203450")
REVIEW_S, SLOW_S = 0.4, 1.0


@dataclass
class Call:
    transaction_id: str
    state: str
    approved: int
    envelope: str
    reason: str
    code: grpc.StatusCode
    at: float


class FakeRouter(decision_intake_pb2_grpc.DecisionIntakeServiceServicer):
    """Records every RecordDecision; same content twice is a no-op, a change after
    a final decision is FAILED_PRECONDITION (the router's documented rules)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.fail_next = 0
        self.fail_code = grpc.StatusCode.UNAVAILABLE
        self.current: dict[str, tuple[str, int, str, str]] = {}

    async def RecordDecision(self, request: Any, context: Any) -> Any:
        state = STATE[request.state]
        content = (state, request.approved_amount_satang, request.decision_envelope, request.reason_code)
        code = grpc.StatusCode.OK
        if self.fail_next:
            self.fail_next -= 1
            code = self.fail_code
        else:
            cur = self.current.get(request.transaction_id)
            if cur is not None and cur != content and cur[0] != "PENDING_REVIEW":
                code = grpc.StatusCode.FAILED_PRECONDITION
        self.calls.append(
            Call(
                request.transaction_id,
                state,
                request.approved_amount_satang,
                request.decision_envelope,
                request.reason_code,
                code,
                time.monotonic(),
            )
        )
        if code != grpc.StatusCode.OK:
            await context.abort(code, "fake router says no")
        self.current[request.transaction_id] = content
        return decision_intake_pb2.RecordDecisionResponse(
            claim=pb.Claim(transaction_id=request.transaction_id, state=request.state)
        )

    def recorded(self, txid: str) -> list[Call]:
        return [c for c in self.calls if c.transaction_id == txid and c.code == grpc.StatusCode.OK]


@dataclass
class Env:
    database_url: str
    pool: asyncpg.Pool
    registry: RegistryStore
    router: FakeRouter
    router_port: int
    master_key: bytes
    hospital_private: dict[str, Any]
    adapters: list[GrpcApp] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def config(self, **overrides: Any) -> Config:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "master_key": self.master_key,
            "serve": ServeConfig("127.0.0.1:0", -1),
            "router_target": f"127.0.0.1:{self.router_port}",
            "review_s": REVIEW_S,
            "slow_s": SLOW_S,
            "poll_s": 0.05,
            "lease_s": 5.0,
            "rpc_deadline_s": 2.0,
            "retry_base_s": 0.05,
            "retry_max_s": 0.2,
        }
        values.update(overrides)
        return Config(**values)

    async def start_adapter(self, **overrides: Any) -> insurer_adapter_pb2_grpc.InsurerAdapterServiceStub:
        app = await build_server(self.config(**overrides))
        await app.start()
        self.adapters.append(app)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=CLIENT_OPTIONS)
        self.channels.append(channel)
        return insurer_adapter_pb2_grpc.InsurerAdapterServiceStub(channel)

    async def stop_adapter(self, index: int = -1) -> None:
        await self.adapters.pop(index).stop(grace=0.2)

    async def insurer_public_jwk(self, code: str) -> dict[str, Any]:
        principal = await self.registry.principal(code)
        assert principal is not None
        key = principal.current_key()
        assert key is not None
        return key.public_jwk

    async def envelope(self, insurer: str, ref: str, amount: int, policy: str) -> str:
        doc = build_claim(
            claim_ref=ref,
            hospital_code=HOSPITAL,
            insurer_code=insurer,
            policy_number=policy,
            amount_satang=amount,
            patient=PATIENT,
            diagnoses=["K35.8"],
        )
        return seal(
            doc,
            await self.insurer_public_jwk(insurer),
            sender=HOSPITAL,
            recipient=insurer,
            claim_ref=ref,
            amount_satang=amount,
        )

    def request(
        self, txid: str, insurer: str, ref: str, amount: int, envelope: str
    ) -> insurer_adapter_pb2.DeliverClaimRequest:
        return insurer_adapter_pb2.DeliverClaimRequest(
            transaction_id=txid,
            hospital_code=HOSPITAL,
            insurer_code=insurer,
            claim_ref=ref,
            billed_amount_satang=amount,
            envelope=envelope,
        )

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; router saw {self.router.calls}")
            await asyncio.sleep(0.02)

    async def final(self, txid: str, timeout: float = 10.0) -> Call:
        def done() -> bool:
            return any(c.state != "PENDING_REVIEW" for c in self.router.recorded(txid))

        await self.wait_for(done, timeout)
        return [c for c in self.router.recorded(txid) if c.state != "PENDING_REVIEW"][-1]

    def open_decision(self, call: Call) -> tuple[Any, Any]:
        header, plaintext = open_envelope(call.envelope, self.hospital_private)
        return header, parse_claim_response(plaintext)


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    router = FakeRouter()
    server = grpc.aio.server()
    decision_intake_pb2_grpc.add_DecisionIntakeServiceServicer_to_server(router, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    registry = RegistryStore(pool, SecretBox(b64url_decode(SecretBox.new_master_key())))
    await registry.migrate()
    for p in [*dev_hospitals(), pull_insurer()]:
        await registry.upsert_principal(p)
    for p in sample_insurers():
        if p.code in INSURERS:
            await registry.upsert_principal(p)
    private, public = generate_encryption_key(f"{HOSPITAL}-20261125-k1")
    await registry.add_encryption_key(HOSPITAL, public["kid"], public)
    master_key = b64url_decode(SecretBox.new_master_key())
    e = Env(database_url, pool, registry, router, port, master_key, private)
    try:
        yield e
    finally:
        for app in e.adapters:
            await app.stop(grace=0.1)
        for ch in e.channels:
            await ch.close()
        await server.stop(0)
        await pool.close()


def _reason(err: grpc.aio.AioRpcError) -> str:
    return dict(err.trailing_metadata() or ()).get(REASON_TRAILER, "")


# --- enrolment ----------------------------------------------------------------------


async def test_startup_enrols_each_simulated_insurer_once(env: Env) -> None:
    await env.start_adapter()
    kids = {}
    for code in INSURERS:
        principal = await env.registry.principal(code)
        assert principal is not None and principal.current_key() is not None
        kid = principal.current_key().kid  # type: ignore[union-attr]
        assert kid.startswith(f"{code}-2") and len(kid.split("-")) == 3
        assert "d" not in principal.current_key().public_jwk  # type: ignore[union-attr]
        kids[code] = kid
    testpull = await env.registry.principal("TESTPULL")
    assert testpull is not None and testpull.keys == ()

    sealed = await env.pool.fetch("SELECT private_jwk_sealed FROM adapter.insurer_keys")
    assert len(sealed) == len(INSURERS)
    assert all(b'"d"' not in r["private_jwk_sealed"] for r in sealed)

    await env.stop_adapter()
    await env.start_adapter()  # a restart keeps the keys
    for code in INSURERS:
        principal = await env.registry.principal(code)
        assert principal is not None and [k.kid for k in principal.keys] == [kids[code]]


async def test_insurers_added_later_are_enrolled_while_running(env: Env) -> None:
    stub = await env.start_adapter(enrol_interval_s=0.1)
    late = next(p for p in sample_insurers() if p.code == "BKI")
    await env.registry.upsert_principal(late)

    async def enrolled() -> bool:
        principal = await env.registry.principal("BKI")
        return principal is not None and principal.current_key() is not None

    deadline = time.monotonic() + 5
    while not await enrolled():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    envelope = await env.envelope("BKI", "HN-late", 1000, "POL-1")
    await stub.DeliverClaim(env.request("tx-late", "BKI", "HN-late", 1000, envelope), timeout=5)
    assert (await env.final("tx-late")).state == "APPROVED"


# --- §8 scenarios -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "billed", "states", "approved", "reason", "min_delay"),
    [
        ("POL-12345", 150_000, ["APPROVED"], 150_000, "", 0.0),
        ("DENY-12345", 150_000, ["DENIED"], 0, "POLICY_NOT_FOUND", 0.0),
        ("LIMIT-100000-9", 150_000, ["PARTIALLY_APPROVED"], 100_000, "COVERAGE_LIMIT_REACHED", 0.0),
        ("LIMIT-900000-9", 150_000, ["APPROVED"], 150_000, "", 0.0),
        ("REVIEW-12345", 150_000, ["PENDING_REVIEW", "APPROVED"], 150_000, "", REVIEW_S),
        ("SLOW-12345", 150_000, ["APPROVED"], 150_000, "", SLOW_S),
    ],
)
async def test_scenario(
    env: Env, policy: str, billed: int, states: list[str], approved: int, reason: str, min_delay: float
) -> None:
    stub = await env.start_adapter()
    envelope = await env.envelope("MTL", "HN-1", billed, policy)
    started = time.monotonic()
    response = await stub.DeliverClaim(env.request("tx-1", "MTL", "HN-1", billed, envelope), timeout=5)
    assert response.duplicate is False

    final = await env.final("tx-1")
    recorded = env.router.recorded("tx-1")
    assert [c.state for c in recorded] == states
    assert (final.approved, final.reason) == (approved, reason)
    assert final.at - started >= min_delay * 0.9
    if len(recorded) == 2:  # REVIEW: the approval comes about review_s after the pending state
        assert recorded[1].at - recorded[0].at >= REVIEW_S * 0.5

    for call in recorded:
        header, decision = env.open_decision(call)
        assert (header.sender, header.recipient, header.claim_ref) == ("MTL", HOSPITAL, "HN-1")
        assert header.amount_satang == call.approved
        assert decision.state == call.state
        assert decision.claim_ref == "HN-1"
        assert decision.billed_satang == billed
        assert decision.approved_satang == call.approved

    # The router acknowledged; the adapter marks the delivery notified right after.
    deadline = time.monotonic() + 5
    while (row := await env.pool.fetchrow("SELECT * FROM adapter.deliveries WHERE transaction_id = 'tx-1'"))[
        "status"
    ] != "notified":
        assert time.monotonic() < deadline, row["status"]
        await asyncio.sleep(0.02)
    assert row["decision_envelope"] == final.envelope


def _flip_bit(envelope: str, part: int) -> str:
    parts = envelope.split(".")
    raw = bytearray(b64url_decode(parts[part]))
    raw[len(raw) // 2] ^= 0x01
    parts[part] = b64url(bytes(raw))
    return ".".join(parts)


@pytest.mark.parametrize(
    "kind", ["garbage", "tampered_ciphertext", "tampered_tag", "not_fhir", "wrong_amount_in_fhir"]
)
async def test_unreadable_claims_are_denied_invalid_claim_document(env: Env, kind: str) -> None:
    stub = await env.start_adapter()
    good = await env.envelope("AIA", "HN-2", 5000, "POL-1")
    public = await env.insurer_public_jwk("AIA")
    envelope = {
        "garbage": "this is not an envelope",
        "tampered_ciphertext": _flip_bit(good, 3),
        "tampered_tag": _flip_bit(good, 4),
        "not_fhir": seal(
            b"<Claim/>", public, sender=HOSPITAL, recipient="AIA", claim_ref="HN-2", amount_satang=5000
        ),
        "wrong_amount_in_fhir": seal(
            build_claim(
                claim_ref="HN-2",
                hospital_code=HOSPITAL,
                insurer_code="AIA",
                policy_number="POL-1",
                amount_satang=4999,
                patient=PATIENT,
                diagnoses=["A09"],
            ),
            public,
            sender=HOSPITAL,
            recipient="AIA",
            claim_ref="HN-2",
            amount_satang=5000,
        ),
    }[kind]
    await stub.DeliverClaim(env.request("tx-2", "AIA", "HN-2", 5000, envelope), timeout=5)
    final = await env.final("tx-2")
    assert (final.state, final.approved, final.reason) == ("DENIED", 0, "INVALID_CLAIM_DOCUMENT")
    header, decision = env.open_decision(final)
    assert header.amount_satang == 0
    assert (decision.state, decision.outcome, decision.reason_code) == (
        "DENIED",
        "error",
        "INVALID_CLAIM_DOCUMENT",
    )


# --- idempotency --------------------------------------------------------------------


def _deliveries(result: str) -> float:
    return REGISTRY.get_sample_value("iclaim_adapter_deliveries_total", {"result": result}) or 0.0


async def test_redelivery_is_acknowledged_and_decided_once(env: Env) -> None:
    stub = await env.start_adapter()
    envelope = await env.envelope("VIRIYAH", "HN-3", 777, "POL-1")
    request = env.request("tx-3", "VIRIYAH", "HN-3", 777, envelope)
    new_before, dup_before = _deliveries("new"), _deliveries("duplicate")
    first = await stub.DeliverClaim(request, timeout=5)
    second = await stub.DeliverClaim(request, timeout=5)
    assert (first.duplicate, second.duplicate) == (False, True)
    await env.final("tx-3")
    third = await stub.DeliverClaim(request, timeout=5)  # after the decision, too
    assert third.duplicate is True
    await asyncio.sleep(0.4)
    assert len([c for c in env.router.calls if c.transaction_id == "tx-3"]) == 1
    row = await env.pool.fetchrow(
        "SELECT delivery_count FROM adapter.deliveries WHERE transaction_id = 'tx-3'"
    )
    assert row["delivery_count"] == 3
    assert _deliveries("new") - new_before == 1
    assert _deliveries("duplicate") - dup_before == 2

    other = env.request("tx-3", "VIRIYAH", "HN-3", 778, envelope)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeliverClaim(other, timeout=5)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _reason(err.value) == "DELIVERY_CONFLICT"


@pytest.mark.parametrize(
    ("change", "code", "reason"),
    [
        ({"transaction_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "TRANSACTION_ID_INVALID"),
        ({"insurer_code": "aia"}, grpc.StatusCode.INVALID_ARGUMENT, "INSURER_CODE_INVALID"),
        ({"hospital_code": "bad code!"}, grpc.StatusCode.INVALID_ARGUMENT, "HOSPITAL_CODE_INVALID"),
        ({"claim_ref": ""}, grpc.StatusCode.INVALID_ARGUMENT, "CLAIM_REF_INVALID"),
        ({"billed_amount_satang": -5}, grpc.StatusCode.INVALID_ARGUMENT, "AMOUNT_INVALID"),
        ({"envelope": ""}, grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_MISSING"),
        ({"envelope": "x" * (1024 * 1024 + 1)}, grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_TOO_LARGE"),
        ({"insurer_code": "TESTPULL"}, grpc.StatusCode.FAILED_PRECONDITION, "INSURER_NOT_SIMULATED"),
        ({"insurer_code": "NOSUCH"}, grpc.StatusCode.FAILED_PRECONDITION, "INSURER_NOT_SIMULATED"),
    ],
)
async def test_bad_deliveries_are_refused_with_a_reason(
    env: Env, change: dict[str, Any], code: grpc.StatusCode, reason: str
) -> None:
    stub = await env.start_adapter()
    fields: dict[str, Any] = {
        "transaction_id": "tx-bad",
        "hospital_code": HOSPITAL,
        "insurer_code": "AIA",
        "claim_ref": "HN-4",
        "billed_amount_satang": 100,
        "envelope": "a.b.c.d.e",
    }
    fields.update(change)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeliverClaim(insurer_adapter_pb2.DeliverClaimRequest(**fields), timeout=5)
    assert err.value.code() == code
    assert _reason(err.value) == reason
    assert await env.pool.fetchval("SELECT count(*) FROM adapter.deliveries") == 0


# --- durability and outages ---------------------------------------------------------


async def test_restart_completes_pending_work(env: Env) -> None:
    stub = await env.start_adapter()
    slow = await env.envelope("AIA", "HN-5", 1234, "SLOW-1")
    review = await env.envelope("MTL", "HN-6", 4321, "REVIEW-1")
    await stub.DeliverClaim(env.request("tx-5", "AIA", "HN-5", 1234, slow), timeout=5)
    await stub.DeliverClaim(env.request("tx-6", "MTL", "HN-6", 4321, review), timeout=5)
    await env.stop_adapter()  # before the slow decision is due
    assert env.router.recorded("tx-5") == []

    await env.start_adapter()
    assert (await env.final("tx-5")).state == "APPROVED"
    assert (await env.final("tx-6")).state == "APPROVED"
    assert [c.state for c in env.router.recorded("tx-6")] in (["PENDING_REVIEW", "APPROVED"],)
    await asyncio.sleep(0.3)
    assert len(env.router.recorded("tx-5")) == 1


async def test_decision_survives_restart_byte_identical(env: Env) -> None:
    env.router.fail_next = 10**6  # the router is down
    stub = await env.start_adapter()
    envelope = await env.envelope("AIA", "HN-7", 99_00, "POL-1")
    await stub.DeliverClaim(env.request("tx-7", "AIA", "HN-7", 9900, envelope), timeout=5)
    await env.wait_for(lambda: len(env.router.calls) >= 2)
    await env.stop_adapter()

    env.router.fail_next = 0
    await env.start_adapter()
    final = await env.final("tx-7")
    attempts = [c for c in env.router.calls if c.transaction_id == "tx-7"]
    assert len({c.envelope for c in attempts}) == 1  # sealed once, resent as stored
    assert final.state == "APPROVED" and len(env.router.recorded("tx-7")) == 1


async def test_router_outage_is_retried_until_acknowledged(env: Env) -> None:
    env.router.fail_next = 3
    stub = await env.start_adapter()
    envelope = await env.envelope("MTL", "HN-8", 5000, "LIMIT-2500-x")
    await stub.DeliverClaim(env.request("tx-8", "MTL", "HN-8", 5000, envelope), timeout=5)
    final = await env.final("tx-8")
    attempts = [c for c in env.router.calls if c.transaction_id == "tx-8"]
    assert [c.code for c in attempts] == [grpc.StatusCode.UNAVAILABLE] * 3 + [grpc.StatusCode.OK]
    assert len({(c.state, c.approved, c.envelope) for c in attempts}) == 1
    assert (final.state, final.approved) == ("PARTIALLY_APPROVED", 2500)
    await asyncio.sleep(0.3)
    assert len([c for c in env.router.calls if c.transaction_id == "tx-8"]) == 4


async def test_conflicting_decision_is_not_retried_forever(env: Env) -> None:
    env.router.fail_next, env.router.fail_code = 1, grpc.StatusCode.FAILED_PRECONDITION
    stub = await env.start_adapter()
    envelope = await env.envelope("MTL", "HN-9", 5000, "POL-1")
    await stub.DeliverClaim(env.request("tx-9", "MTL", "HN-9", 5000, envelope), timeout=5)

    async def status() -> str:
        return str(
            await env.pool.fetchval("SELECT status FROM adapter.deliveries WHERE transaction_id = 'tx-9'")
        )

    deadline = time.monotonic() + 5
    while await status() != "failed":
        assert time.monotonic() < deadline, await status()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert len([c for c in env.router.calls if c.transaction_id == "tx-9"]) == 1


async def test_two_replicas_decide_each_claim_once(env: Env) -> None:
    stubs = [await env.start_adapter(), await env.start_adapter()]
    txids = [f"tx-r{i}" for i in range(12)]
    for i, txid in enumerate(txids):
        envelope = await env.envelope("VIRIYAH", f"HN-r{i}", 100 + i, "POL-1")
        request = env.request(txid, "VIRIYAH", f"HN-r{i}", 100 + i, envelope)
        # Each claim reaches both replicas (a router retry landing elsewhere).
        await asyncio.gather(
            stubs[0].DeliverClaim(request, timeout=5), stubs[1].DeliverClaim(request, timeout=5)
        )
    for txid in txids:
        await env.final(txid)
    await asyncio.sleep(0.3)
    for txid in txids:
        assert len([c for c in env.router.calls if c.transaction_id == txid]) == 1


async def test_logs_carry_transaction_id_but_no_claim_content(env: Env) -> None:
    stub = await env.start_adapter()
    envelope = await env.envelope("AIA", "HN-SECRET-REF", 5000, "DENY-SECRETPOLICY")
    with capture_logs(processors=[merge_contextvars]) as logs:
        await stub.DeliverClaim(env.request("tx-10", "AIA", "HN-SECRET-REF", 5000, envelope), timeout=5)
        await env.final("tx-10")
        await asyncio.sleep(0.1)
    text = json.dumps(logs, default=str)
    assert any(e.get("transaction_id") == "tx-10" for e in logs)
    for secret in ("SECRETPOLICY", PATIENT.name, PATIENT.citizen_id, "K35", "HN-SECRET-REF", envelope[:40]):
        assert secret not in text
