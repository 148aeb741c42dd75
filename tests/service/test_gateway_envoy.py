"""The gateway end to end: real Envoy (python -m gateway.envoy, TLS with the
dev CA) + the ext_authz service (real PostgreSQL and Redis) + a recording fake
of the router/billing upstreams, called through a real TLS gRPC client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
import redis as sync_redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.authz.authorizer import Authorizer
from gateway.authz.replay import CLOCK_SKEW_MARGIN_S
from gateway.authz.server import build_server
from iclaim.crypto import signing
from iclaim_hub.common.access_log import ENVOY_JSON_FORMAT
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.registry.model import Principal
from iclaim_hub.registry.store import RegistryStore
from iclaim.v1 import (
    billing_service_pb2,
    claim_service_pb2,
    insurer_service_pb2,
)
from tests.support.gateway import (
    Cred,
    Gateway,
    Outcome,
    authz_config,
    call,
    identity,
    outcome,
    recording_gateway,
    signed,
)

CLAIM = "/iclaim.v1.ClaimService"
INSURER = "/iclaim.v1.InsurerService"
BILLING = "/iclaim.v1.BillingService"

HOSPITAL, INSURER_CODE, SUSPENDED = "10670", "TESTPULL", "10999"


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    async with recording_gateway(tmp_path_factory.mktemp("gateway")) as gw:
        yield gw


# --- per test: registry + authz service --------------------------------------------------
@dataclass
class Env:
    gw: Gateway
    channel: grpc.aio.Channel
    registry: RegistryStore
    redis_url: str
    hospital: Cred
    insurer: Cred
    suspended: Cred
    log_offset: int
    app: Any


async def _seed(registry: RegistryStore) -> tuple[Cred, Cred, Cred]:
    creds = []
    for code, role in ((HOSPITAL, "hospital"), (INSURER_CODE, "insurer"), (SUSPENDED, "hospital")):
        await registry.upsert_principal(
            Principal(code=code, role=role, display_name=code, suspended=code == SUSPENDED)
        )
        secret = secrets.token_bytes(32)
        await registry.add_signing_key(code, "k1", secret)
        creds.append(Cred(code, "k1", secret))
    return creds[0], creds[1], creds[2]


@pytest.fixture
async def env(gateway: Gateway, database_url: str, redis_url: str) -> AsyncIterator[Env]:
    master_key = secrets.token_bytes(32)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    registry = RegistryStore(pool, SecretBox(master_key))
    await registry.migrate()
    hospital, insurer, suspended = await _seed(registry)
    config = authz_config(
        f"127.0.0.1:{gateway.authz_port}", database_url, redis_url, master_key, key_cache_ttl_s=0.5
    )
    app = await build_server(config)
    await app.start()
    gateway.recorder.calls.clear()
    creds = grpc.ssl_channel_credentials(root_certificates=gateway.ca_pem)
    channel = grpc.aio.secure_channel(f"127.0.0.1:{gateway.port}", creds)
    offset = gateway.access_log.stat().st_size if gateway.access_log.exists() else 0
    try:
        yield Env(gateway, channel, registry, redis_url, hospital, insurer, suspended, offset, app)
    finally:
        await channel.close()
        await app.stop(0)
        await pool.close()


GET_CLAIM = f"{CLAIM}/GetClaim"


def _get_claim(txn: str = "T-1") -> bytes:
    return claim_service_pb2.GetClaimRequest(transaction_id=txn).SerializeToString()


async def _log_lines(e: Env, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        lines = []
        if e.gw.access_log.exists():
            with e.gw.access_log.open("rb") as fh:
                fh.seek(e.log_offset)
                lines = [json.loads(x) for x in fh.read().splitlines() if x.strip()]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.05)


# --- tests ---------------------------------------------------------------------------
async def test_signed_call_reaches_upstream_with_trusted_headers(env: Env) -> None:
    body = _get_claim("txn_019a2b3c4d5e6f708192a3b4c5d6")
    md = signed(env.hospital, GET_CLAIM, body) + [
        ("x-iclaim-principal", "AIA"),
        ("x-iclaim-role", "insurer"),
        ("x-iclaim-transaction-id", "T-forged"),
        ("x-iclaim-envelope-sha256", "0" * 64),  # GetClaim has no envelope: must vanish
        ("x-iclaim-request", "h:" + "0" * 32),  # the auth service's own, replaced
    ]
    c = await call(env.channel, GET_CLAIM, body, md)
    assert (await outcome(c)).code == grpc.StatusCode.OK
    [seen] = env.gw.recorder.calls
    assert seen.method == GET_CLAIM
    assert seen.metadata["x-iclaim-principal"] == HOSPITAL
    assert seen.metadata["x-iclaim-role"] == "hospital"
    assert seen.metadata["x-iclaim-transaction-id"] == "txn_019a2b3c4d5e6f708192a3b4c5d6"
    assert seen.request.transaction_id == "txn_019a2b3c4d5e6f708192a3b4c5d6"
    assert "x-iclaim-envelope-sha256" not in seen.metadata
    assert re.fullmatch(r"h:[0-9a-f]{32}", seen.metadata["x-iclaim-request"])
    assert seen.metadata["x-iclaim-request"] != "h:" + "0" * 32
    [line] = await _log_lines(env, 1)
    assert line["principal"] == HOSPITAL
    assert line["route"] == f"{GET_CLAIM} -"
    assert line["grpc_status"] == 0
    assert line["req_transaction_id"] == "txn_019a2b3c4d5e6f708192a3b4c5d6"
    assert line["request"] == seen.metadata["x-iclaim-request"]  # the admitted request, hashed
    assert set(line) == set(ENVOY_JSON_FORMAT)


async def _denied(e: Env, c: grpc.aio.Call, code: grpc.StatusCode, reason: str) -> Outcome:
    o = await outcome(c)
    assert (o.code, o.reason) == (code, reason), o
    assert o.trailers.get("x-iclaim-reason") == reason
    assert e.gw.recorder.calls == []  # the upstream never saw the call
    return o


async def test_forged_signature_unknown_client_and_unknown_key_look_the_same(env: Env) -> None:
    body = _get_claim()
    stranger = Cred("10001", "k1", secrets.token_bytes(32))
    attempts = [
        signed(env.hospital, GET_CLAIM, body, secret=secrets.token_bytes(32)),  # forged
        signed(stranger, GET_CLAIM, body),  # unknown client
        signed(env.hospital, GET_CLAIM, body, key_id="k9"),  # unknown key
        # signed over other bytes than those sent
        signed(env.hospital, GET_CLAIM, _get_claim("T-other")),
    ]
    messages = set()
    for md in attempts:
        c = await call(env.channel, GET_CLAIM, body, md)
        o = await _denied(env, c, grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE")
        messages.add(o.message)
    assert len(messages) == 1


async def test_stale_timestamp_is_refused_with_server_time(env: Env) -> None:
    body = _get_claim()
    md = signed(env.hospital, GET_CLAIM, body, timestamp=int(time.time()) - 400)
    o = await _denied(
        env, await call(env.channel, GET_CLAIM, body, md), grpc.StatusCode.UNAUTHENTICATED, "TIMESTAMP_SKEW"
    )
    assert re.search(r"(399|400|401) s behind", o.message), o.message
    assert abs(int(o.trailers["x-iclaim-server-time"]) - time.time()) < 5


async def test_timestamp_more_than_60s_ahead_is_refused_within_60s_accepted(env: Env) -> None:
    body = _get_claim()
    md = signed(env.hospital, GET_CLAIM, body, timestamp=int(time.time()) + 90)
    o = await _denied(
        env, await call(env.channel, GET_CLAIM, body, md), grpc.StatusCode.UNAUTHENTICATED, "TIMESTAMP_SKEW"
    )
    assert "ahead" in o.message
    assert "x-iclaim-server-time" in o.trailers
    md = signed(env.hospital, GET_CLAIM, body, timestamp=int(time.time()) + 50)
    assert (await outcome(await call(env.channel, GET_CLAIM, body, md))).code == grpc.StatusCode.OK


async def test_reused_nonce_is_a_replay(env: Env) -> None:
    body = _get_claim()
    md = signed(env.hospital, GET_CLAIM, body)
    assert (await outcome(await call(env.channel, GET_CLAIM, body, md))).code == grpc.StatusCode.OK
    env.gw.recorder.calls.clear()
    o = await _denied(
        env, await call(env.channel, GET_CLAIM, body, md), grpc.StatusCode.UNAUTHENTICATED, "NONCE_REPLAYED"
    )
    assert "replay" in o.message
    # The same nonce is the insurer's own to use: pairs are per client.
    nonce = dict(md)[signing.H_NONCE]
    ins_body = insurer_service_pb2.GetHospitalRequest(hospital_code=HOSPITAL).SerializeToString()
    method = f"{INSURER}/GetHospital"
    md2 = signed(env.insurer, method, ins_body, nonce=nonce)
    assert (await outcome(await call(env.channel, method, ins_body, md2))).code == grpc.StatusCode.OK


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda md: [(k, "short") if k == signing.H_NONCE else (k, v) for k, v in md], id="nonce-too-short"
        ),
        pytest.param(
            lambda md: [(k, "x" * 16 + "!") if k == signing.H_NONCE else (k, v) for k, v in md],
            id="nonce-bad-chars",
        ),
        pytest.param(lambda md: [(k, v) for k, v in md if k != signing.H_SIGNATURE], id="signature-missing"),
        pytest.param(
            lambda md: [(k, "12abc") if k == signing.H_TIMESTAMP else (k, v) for k, v in md],
            id="timestamp-not-decimal",
        ),
        pytest.param(
            lambda md: [(k, "hospital 10670") if k == signing.H_CLIENT else (k, v) for k, v in md],
            id="client-malformed",
        ),
        pytest.param(lambda md: [], id="no-metadata"),
    ],
)
async def test_malformed_metadata(env: Env, mutate: Any) -> None:
    body = _get_claim()
    md = mutate(signed(env.hospital, GET_CLAIM, body))
    await _denied(
        env,
        await call(env.channel, GET_CLAIM, body, md),
        grpc.StatusCode.UNAUTHENTICATED,
        "MALFORMED_METADATA",
    )


async def test_roles_are_enforced(env: Env) -> None:
    pull = f"{INSURER}/PullClaims"
    body = insurer_service_pb2.PullClaimsRequest(max_claims=1).SerializeToString()
    await _denied(
        env,
        await call(env.channel, pull, body, signed(env.hospital, pull, body)),
        grpc.StatusCode.PERMISSION_DENIED,
        "WRONG_ROLE",
    )
    body = _get_claim()
    await _denied(
        env,
        await call(env.channel, GET_CLAIM, body, signed(env.insurer, GET_CLAIM, body)),
        grpc.StatusCode.PERMISSION_DENIED,
        "WRONG_ROLE",
    )
    pay = f"{BILLING}/PostPayment"
    body = billing_service_pb2.PostPaymentRequest(trace_no="TR1").SerializeToString()
    await _denied(
        env,
        await call(env.channel, pay, body, signed(env.hospital, pay, body)),
        grpc.StatusCode.PERMISSION_DENIED,
        "WRONG_ROLE",
    )
    # Billing methods of both roles reach the billing upstream.
    inv = f"{BILLING}/ListInvoices"
    body = billing_service_pb2.ListInvoicesRequest(counterparty_code=HOSPITAL).SerializeToString()
    c = await call(env.channel, inv, body, signed(env.insurer, inv, body))
    assert (await outcome(c)).code == grpc.StatusCode.OK
    assert env.gw.recorder.calls[-1].metadata["x-iclaim-role"] == "insurer"


async def test_suspended_principal_is_refused(env: Env) -> None:
    body = _get_claim()
    await _denied(
        env,
        await call(env.channel, GET_CLAIM, body, signed(env.suspended, GET_CLAIM, body)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PRINCIPAL_SUSPENDED",
    )


async def test_suspension_and_revocation_take_effect_quickly(env: Env) -> None:
    body = _get_claim()
    c = await call(env.channel, GET_CLAIM, body, signed(env.hospital, GET_CLAIM, body))
    assert (await outcome(c)).code == grpc.StatusCode.OK
    await env.registry.set_suspended(HOSPITAL, True)
    await asyncio.sleep(0.7)  # the test server's key cache TTL is 0.5 s (≤ 5 s in production)
    env.gw.recorder.calls.clear()
    await _denied(
        env,
        await call(env.channel, GET_CLAIM, body, signed(env.hospital, GET_CLAIM, body)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PRINCIPAL_SUSPENDED",
    )
    await env.registry.set_suspended(HOSPITAL, False)
    await env.registry.revoke_signing_key(HOSPITAL, "k1")
    await asyncio.sleep(0.7)
    await _denied(
        env,
        await call(env.channel, GET_CLAIM, body, signed(env.hospital, GET_CLAIM, body)),
        grpc.StatusCode.UNAUTHENTICATED,
        "BAD_SIGNATURE",
    )


async def test_revoked_key_is_refused(env: Env) -> None:
    await env.registry.revoke_signing_key(INSURER_CODE, "k1")
    method = f"{INSURER}/GetHospital"
    body = insurer_service_pb2.GetHospitalRequest(hospital_code=HOSPITAL).SerializeToString()
    await _denied(
        env,
        await call(env.channel, method, body, signed(env.insurer, method, body)),
        grpc.StatusCode.UNAUTHENTICATED,
        "BAD_SIGNATURE",
    )


SUBMIT = f"{CLAIM}/SubmitClaim"


def _submit(envelope: str) -> bytes:
    return claim_service_pb2.SubmitClaimRequest(
        claim_ref="C-1", insurer_code="AIA", billed_amount_satang=100, envelope=envelope
    ).SerializeToString()


async def test_submit_claim_carries_envelope_digest_up_to_the_size_limit(env: Env) -> None:
    envelope = "e" * (1024 * 1024)  # the largest envelope §4 allows
    body = _submit(envelope)
    c = await call(env.channel, SUBMIT, body, signed(env.hospital, SUBMIT, body))
    assert (await outcome(c)).code == grpc.StatusCode.OK
    [seen] = env.gw.recorder.calls
    assert seen.metadata["x-iclaim-envelope-sha256"] == hashlib.sha256(envelope.encode()).hexdigest()
    assert "x-iclaim-transaction-id" not in seen.metadata


@pytest.mark.parametrize("size", [1024 * 1024 + 70 * 1024, 6 * 1024 * 1024])
async def test_oversized_request_is_resource_exhausted(env: Env, size: int) -> None:
    body = _submit("e" * size)
    o = await _denied(
        env,
        await call(env.channel, SUBMIT, body, signed(env.hospital, SUBMIT, body)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
    )
    assert o.message
    # A client cannot talk Envoy's truncation signal away.
    md = signed(env.hospital, SUBMIT, body) + [("x-envoy-auth-partial-body", "false")]
    await _denied(
        env,
        await call(env.channel, SUBMIT, body, md),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
    )


async def test_compressed_frame_is_invalid_argument(env: Env) -> None:
    body = _submit("e" * 2000)
    multi = env.channel.unary_unary(SUBMIT, request_serializer=identity, response_deserializer=identity)
    c = multi(
        body, metadata=signed(env.hospital, SUBMIT, body), timeout=10, compression=grpc.Compression.Gzip
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await c
    await _denied(env, c, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


async def test_undecodable_message_is_invalid_argument(env: Env) -> None:
    body = b"\xff\xff\xff\xff"
    await _denied(
        env,
        await call(env.channel, GET_CLAIM, body, signed(env.hospital, GET_CLAIM, body)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )


@pytest.mark.parametrize(
    "method",
    [
        f"{CLAIM}/DropAllClaims",
        "/iclaim_hub.internal.v1.DecisionIntakeService/RecordDecision",
        "/grpc.channelz.v1.Channelz/GetTopChannels",
    ],
)
async def test_unknown_methods_are_unimplemented(env: Env, method: str) -> None:
    body = b""
    c = await call(env.channel, method, body, signed(env.hospital, method, body))
    assert (await outcome(c)).code == grpc.StatusCode.UNIMPLEMENTED
    assert env.gw.recorder.calls == []


async def test_health_needs_no_signature(env: Env) -> None:
    stub = health_pb2_grpc.HealthStub(env.channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_watch_claim_stream_is_authorised(env: Env) -> None:
    method = f"{CLAIM}/WatchClaim"
    body = claim_service_pb2.WatchClaimRequest(
        transaction_id="txn_019a2b3c4d5e6f708192a3b4c5d6"
    ).SerializeToString()
    multi = env.channel.unary_stream(method, request_serializer=identity, response_deserializer=identity)
    items = [x async for x in multi(body, metadata=signed(env.hospital, method, body), timeout=10)]
    assert len(items) == 1
    [seen] = env.gw.recorder.calls
    assert seen.metadata["x-iclaim-transaction-id"] == "txn_019a2b3c4d5e6f708192a3b4c5d6"


async def test_nonce_store_loss_refuses_70_s_then_accepts_later_stamps(env: Env) -> None:
    body = _get_claim()
    before = signed(env.hospital, GET_CLAIM, body)
    assert (await outcome(await call(env.channel, GET_CLAIM, body, before))).code == grpc.StatusCode.OK
    env.gw.recorder.calls.clear()

    client = sync_redis.Redis.from_url(env.redis_url)
    client.flushdb()  # the nonce store is lost
    client.close()

    # A replay of the earlier request must not get through...
    await _denied(
        env,
        await call(env.channel, GET_CLAIM, body, before),
        grpc.StatusCode.UNAVAILABLE,
        "NONCE_STORE_RECOVERING",
    )
    recovered_at = env.app.guard.recovered_at
    assert recovered_at is not None and abs(recovered_at - time.time()) < 5
    # ...nor does any fresh request stamped <= R + 60 s + the replicas' clock margin
    # (of those the window lets through now).
    for stamp in (int(time.time()), int(recovered_at) + 60):
        md = signed(env.hospital, GET_CLAIM, body, timestamp=stamp)
        o = await _denied(
            env,
            await call(env.channel, GET_CLAIM, body, md),
            grpc.StatusCode.UNAVAILABLE,
            "NONCE_STORE_RECOVERING",
        )
        assert o.message
    # Once past R + margin, a client whose clock runs ahead (within the 60 s
    # window) stamps later than R + 60 + margin.
    await asyncio.sleep(max(0.0, int(recovered_at) + CLOCK_SKEW_MARGIN_S + 1 - time.time()) + 0.01)
    md = signed(env.hospital, GET_CLAIM, body, timestamp=int(recovered_at) + 60 + CLOCK_SKEW_MARGIN_S)
    await _denied(
        env,
        await call(env.channel, GET_CLAIM, body, md),
        grpc.StatusCode.UNAVAILABLE,
        "NONCE_STORE_RECOVERING",
    )
    md = signed(env.hospital, GET_CLAIM, body, timestamp=int(time.time()) + 60)
    assert (await outcome(await call(env.channel, GET_CLAIM, body, md))).code == grpc.StatusCode.OK
    assert len(env.gw.recorder.calls) == 1
    # The recovery is recorded durably in PostgreSQL and in Redis.
    client = sync_redis.Redis.from_url(env.redis_url)
    assert float(client.get("iclaim:gw:nonce-store:recovered-at")) == pytest.approx(recovered_at)
    client.close()


async def test_authz_down_fails_closed(env: Env) -> None:
    # The HTTP check Envoy calls goes away, as with a crashed authz.
    env.app.http_listener.close()
    env.app.http.pre_shutdown()
    await env.app.http.shutdown(0)
    body = _get_claim()
    c = await call(env.channel, GET_CLAIM, body, signed(env.hospital, GET_CLAIM, body))
    assert (await outcome(c)).code == grpc.StatusCode.UNAVAILABLE
    assert env.gw.recorder.calls == []


async def test_a_bug_in_the_authz_fails_closed_as_unavailable(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The HTTP check answers a bug with 500; Envoy takes a 5xx from the authz as
    # the authz failing (status_on_error), never as a refusal to pass on (INTERNAL).
    async def broken(self: Authorizer, inp: Any) -> Any:
        raise RuntimeError("a bug in the check")

    monkeypatch.setattr(Authorizer, "check", broken)
    body = _get_claim()
    c = await call(env.channel, GET_CLAIM, body, signed(env.hospital, GET_CLAIM, body))
    assert (await outcome(c)).code == grpc.StatusCode.UNAVAILABLE
    assert env.gw.recorder.calls == []


async def test_access_log_has_one_line_per_call(env: Env) -> None:
    body = _get_claim("T-9")
    await call(env.channel, GET_CLAIM, body, signed(env.hospital, GET_CLAIM, body))
    forged = signed(env.hospital, GET_CLAIM, body, secret=secrets.token_bytes(32))
    await call(env.channel, GET_CLAIM, body, forged + [("x-iclaim-principal", HOSPITAL)])
    await call(env.channel, f"{CLAIM}/Nope", b"", None)
    lines = await _log_lines(env, 3)
    assert len(lines) == 3
    for line in lines:
        assert set(line) == set(ENVOY_JSON_FORMAT)
    ok, denied, unknown = lines
    assert (ok["principal"], ok["route"], ok["grpc_status"]) == (HOSPITAL, f"{GET_CLAIM} -", 0)
    assert ok["upstream_cluster"] == "router"
    assert (denied["principal"], denied["grpc_status"], denied["reason_header"]) == (
        None,
        16,
        "BAD_SIGNATURE",
    )
    assert re.fullmatch(r"h:[0-9a-f]{32}", denied["claimed_client"])
    assert unknown["route"].startswith("unimplemented h:") and unknown["grpc_status"] == 12


async def test_largest_allowed_message_is_accepted(env: Env) -> None:
    from gateway.authz.frame import MAX_MESSAGE_BYTES

    overhead = len(_submit("")) + 4  # + field tag and 3-byte length of the envelope
    envelope = "e" * (MAX_MESSAGE_BYTES - overhead)
    body = _submit(envelope)
    assert len(body) == MAX_MESSAGE_BYTES
    c = await call(env.channel, SUBMIT, body, signed(env.hospital, SUBMIT, body))
    assert (await outcome(c)).code == grpc.StatusCode.OK
    body = _submit(envelope + "e")
    c = await call(env.channel, SUBMIT, body, signed(env.hospital, SUBMIT, body))
    assert (await outcome(c)).reason == "REQUEST_TOO_LARGE"


async def _handshake(gw: Gateway, ctx: ssl.SSLContext) -> tuple[str | None, str | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=ctx, server_hostname="localhost")
    sslobj = writer.get_extra_info("ssl_object")
    result = (sslobj.version(), sslobj.selected_alpn_protocol())
    writer.close()
    return result


def _ctx(gw: Gateway, *, version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=gw.ca_pem.decode())
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def test_tls_is_modern_only(gateway: Gateway) -> None:
    assert await _handshake(gateway, _ctx(gateway, version=ssl.TLSVersion.TLSv1_3)) == ("TLSv1.3", "h2")
    ok12 = _ctx(gateway, version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    assert await _handshake(gateway, ok12) == ("TLSv1.2", "h2")
    # CBC suites are refused even on TLS 1.2.
    cbc = _ctx(gateway, version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(gateway, cbc)


async def test_access_log_event_ids_are_envoys_own(env: Env) -> None:
    # audit_log keys on event_id: a client must not be able to choose or repeat it.
    body = _get_claim()
    for _ in range(2):
        md = signed(env.hospital, GET_CLAIM, body) + [("x-request-id", "client-chosen")]
        await call(env.channel, GET_CLAIM, body, md)
    lines = await _log_lines(env, 2)
    ids = [line["event_id"] for line in lines]
    assert len(set(ids)) == 2 and "client-chosen" not in ids
    assert env.gw.recorder.calls[0].metadata["x-request-id"] == ids[0]
