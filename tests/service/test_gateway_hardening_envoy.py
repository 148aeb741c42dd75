"""Gateway hardening through real Envoy (mutual TLS optional, client CA set) +
the real authz service (PostgreSQL, Redis) + a recording upstream:

- the gateway-enforced part of EVERY public RPC: wrong role, suspended
  principal, revoked key, oversized request, malformed metadata → the right
  code and reason, and the upstream never saw the call;
- internal service methods are unreachable;
- TLS 1.1 and non-AEAD suites are refused;
- mutual TLS binds the client certificate to the signing principal;
- the per-principal rate limit;
- a flushed Redis during a run: no replay gets through, honest SDK clients
  ride through by re-signing; the SDK corrects its clock from the skew trailer.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import contextlib
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import redis as sync_redis

from gateway.authz import frame, policy
from gateway.authz.server import build_server
from gateway.tls import ClientCertPaths, ensure_dev_client_ca, issue_dev_client_cert
from iclaim.client.signer import Clock, signing_interceptors
from iclaim.limits import CLIENT_OPTIONS
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.registry.model import Principal
from iclaim_hub.registry.store import RegistryStore
from iclaim.v1 import claim_service_pb2, claim_service_pb2_grpc
from tests.support.gateway import (
    ROOT,
    Cred,
    Gateway,
    authz_config,
    identity,
    outcome,
    recording_gateway,
    signed,
)

HOSPITAL, HOSPITAL_B, INSURER = "10670", "10671", "TESTPULL"
SUSP_HOSPITAL, SUSP_INSURER, MTLS_HOSPITAL = "10999", "SUSPINS", "10672"
GET_CLAIM = "/iclaim.v1.ClaimService/GetClaim"
INTERNAL_PROTOS = ROOT / "protos" / "iclaim_hub" / "internal" / "v1"


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    state = tmp_path_factory.mktemp("hardened")
    client_ca = ensure_dev_client_ca(state)
    async with recording_gateway(state, {"ICLAIM_GATEWAY_CLIENT_CA": str(client_ca)}) as gateway:
        yield gateway


@dataclass
class Env:
    gw: Gateway
    channel: grpc.aio.Channel
    registry: RegistryStore
    redis_url: str
    creds: dict[str, Cred]
    revoked: dict[str, Cred]
    app: Any


async def _seed(registry: RegistryStore) -> tuple[dict[str, Cred], dict[str, Cred]]:
    creds: dict[str, Cred] = {}
    revoked: dict[str, Cred] = {}
    for code, role, suspended in (
        (HOSPITAL, "hospital", False),
        (HOSPITAL_B, "hospital", False),
        (INSURER, "insurer", False),
        (SUSP_HOSPITAL, "hospital", True),
        (SUSP_INSURER, "insurer", True),
        (MTLS_HOSPITAL, "hospital", False),
    ):
        await registry.upsert_principal(
            Principal(code=code, role=role, display_name=code, suspended=suspended)
        )
        secret = secrets.token_bytes(32)
        await registry.add_signing_key(code, "k1", secret)
        creds[code] = Cred(code, "k1", secret)
        old = secrets.token_bytes(32)
        await registry.add_signing_key(code, "old", old)
        await registry.revoke_signing_key(code, "old")
        revoked[code] = Cred(code, "old", old)
    await registry.set_require_mtls(MTLS_HOSPITAL, True)
    return creds, revoked


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(gw: Gateway, database_url: str, redis_url: str) -> AsyncIterator[EnvFactory]:
    closers: list[Callable[[], Awaitable[None]]] = []

    async def make(rate_limit_per_s: float = 0.0, burst: int = 1) -> Env:
        master_key = secrets.token_bytes(32)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        registry = RegistryStore(pool, SecretBox(master_key))
        await registry.migrate()
        creds, revoked = await _seed(registry)
        config = authz_config(
            f"127.0.0.1:{gw.authz_port}",
            database_url,
            redis_url,
            master_key,
            key_cache_ttl_s=0.5,
            rate_limit_per_s=rate_limit_per_s,
            rate_limit_burst=burst,
        )
        app = await build_server(config)
        await app.start()
        gw.recorder.calls.clear()
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{gw.port}",
            grpc.ssl_channel_credentials(root_certificates=gw.ca_pem),
            # A hand-rolled client: not held to the SDK's send limit, so oversized
            # requests reach the gateway.
            options=[o for o in CLIENT_OPTIONS if o[0] != "grpc.max_send_message_length"],
        )

        async def close() -> None:
            await channel.close()
            await app.stop(0)
            await pool.close()

        closers.append(close)
        return Env(gw, channel, registry, redis_url, creds, revoked, app)

    yield make
    for close in reversed(closers):
        await close()


async def any_call(
    channel: grpc.aio.Channel, method: str, body: bytes, md: list[tuple[str, str]] | None
) -> grpc.aio.Call:
    """One call with exact bytes, unary or server-streaming; returns it finished."""
    if method in policy.SERVER_STREAMS:
        c = channel.unary_stream(method, request_serializer=identity, response_deserializer=identity)(
            body, metadata=md, timeout=10
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for _ in c:
                pass
        return c
    c = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)(
        body, metadata=md, timeout=10
    )
    with contextlib.suppress(grpc.aio.AioRpcError):
        await c
    return c


def _allowed_cred(e: Env, method: str, *, suspended: bool = False) -> Cred:
    roles = policy.allowed_roles(method)
    if policy.Role.HOSPITAL in roles:
        return e.creds[SUSP_HOSPITAL if suspended else HOSPITAL]
    return e.creds[SUSP_INSURER if suspended else INSURER]


async def _expect_refused_everywhere(
    e: Env,
    case: Callable[[str], tuple[Cred | None, bytes, list[tuple[str, str]]]],
    code: grpc.StatusCode,
    reason: str,
    methods: list[str],
) -> None:
    assert methods
    for method in methods:
        _, body, md = case(method)
        o = await outcome(await any_call(e.channel, method, body, md))
        assert (o.code, o.reason) == (code, reason), (method, o)
        assert o.trailers.get("x-iclaim-reason") == reason, method
    assert e.gw.recorder.calls == []  # no upstream saw any of them


PUBLIC = sorted(policy.ALLOWED_ROLES)


def test_public_rpcs_are_exactly_the_public_services() -> None:
    from iclaim.public_api import public_methods

    assert set(PUBLIC) == public_methods()


async def test_every_public_rpc_wrong_role(make_env: EnvFactory) -> None:
    e = await make_env()

    def case(method: str) -> tuple[Cred, bytes, list[tuple[str, str]]]:
        roles = policy.allowed_roles(method)
        cred = e.creds[INSURER if policy.Role.HOSPITAL in roles else HOSPITAL]
        return cred, b"", signed(cred, method, b"")

    one_role = [m for m in PUBLIC if len(policy.allowed_roles(m)) == 1]
    both = [m for m in PUBLIC if len(policy.allowed_roles(m)) == 2]
    assert set(both) == {
        f"/{policy.BILLING_SERVICE}/{n}" for n in ("ListInvoices", "GetInvoice", "GetStatement")
    } | {
        f"/{policy.AUDIT_TRAIL_SERVICE}/{n}"
        for n in (
            "GetAuditCheckpoint",
            "ListAuditEntries",
            "GetAuditInclusionProof",
            "GetAuditConsistencyProof",
        )
    }
    await _expect_refused_everywhere(e, case, grpc.StatusCode.PERMISSION_DENIED, "WRONG_ROLE", one_role)
    # Methods both roles may call do reach the upstream for both.
    for method in both:
        for code in (HOSPITAL, INSURER):
            c = await any_call(e.channel, method, b"", signed(e.creds[code], method, b""))
            assert (await outcome(c)).code == grpc.StatusCode.OK
    assert len(e.gw.recorder.calls) == 2 * len(both)


async def test_every_public_rpc_suspended_principal(make_env: EnvFactory) -> None:
    e = await make_env()

    def case(method: str) -> tuple[Cred, bytes, list[tuple[str, str]]]:
        cred = _allowed_cred(e, method, suspended=True)
        return cred, b"", signed(cred, method, b"")

    await _expect_refused_everywhere(
        e, case, grpc.StatusCode.PERMISSION_DENIED, "PRINCIPAL_SUSPENDED", PUBLIC
    )


async def test_every_public_rpc_revoked_key(make_env: EnvFactory) -> None:
    e = await make_env()

    def case(method: str) -> tuple[Cred, bytes, list[tuple[str, str]]]:
        good = _allowed_cred(e, method)
        cred = e.revoked[good.code]
        return cred, b"", signed(cred, method, b"")

    await _expect_refused_everywhere(e, case, grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE", PUBLIC)


async def test_every_public_rpc_oversized_request(make_env: EnvFactory) -> None:
    e = await make_env()
    body = b"\x00" * (frame.MAX_MESSAGE_BYTES + 1)

    def case(method: str) -> tuple[Cred, bytes, list[tuple[str, str]]]:
        cred = _allowed_cred(e, method)
        return cred, body, signed(cred, method, body)

    await _expect_refused_everywhere(e, case, grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE", PUBLIC)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda md: [(k, v) for k, v in md if k != "x-iclaim-nonce"],
        lambda md: [(k, "short" if k == "x-iclaim-nonce" else v) for k, v in md],
        lambda md: [(k, "n" * 129 if k == "x-iclaim-nonce" else v) for k, v in md],
        lambda md: [(k, "bad nonce!" * 3 if k == "x-iclaim-nonce" else v) for k, v in md],
        lambda md: [(k, "12.5" if k == "x-iclaim-timestamp" else v) for k, v in md],
        lambda md: [(k, v + "=" if k == "x-iclaim-signature" else v) for k, v in md],
        lambda md: [(k, "ab" if k == "x-iclaim-client" else v) for k, v in md],
        lambda md: [(k, "k" * 65 if k == "x-iclaim-key-id" else v) for k, v in md],
    ],
    ids=[
        "no-nonce",
        "nonce-short",
        "nonce-long",
        "nonce-charset",
        "timestamp",
        "signature",
        "client",
        "key-id",
    ],
)
async def test_every_public_rpc_malformed_metadata(make_env: EnvFactory, mutate: Any) -> None:
    e = await make_env()

    def case(method: str) -> tuple[Cred, bytes, list[tuple[str, str]]]:
        cred = _allowed_cred(e, method)
        return cred, b"", mutate(signed(cred, method, b""))

    await _expect_refused_everywhere(e, case, grpc.StatusCode.UNAUTHENTICATED, "MALFORMED_METADATA", PUBLIC)


# --- internal services ------------------------------------------------------------------
def _internal_methods() -> list[str]:
    out: list[str] = []
    for proto in sorted(INTERNAL_PROTOS.glob("*.proto")):
        text = proto.read_text()
        package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M)
        assert package is not None
        service = None
        for line in text.splitlines():
            if m := re.match(r"\s*service\s+(\w+)", line):
                service = m.group(1)
            elif m := re.match(r"\s*rpc\s+(\w+)", line):
                assert service is not None
                out.append(f"/{package.group(1)}.{service}/{m.group(1)}")
    return out


async def test_every_internal_method_is_unimplemented_at_the_gateway(
    make_env: EnvFactory,
) -> None:
    e = await make_env()
    methods = _internal_methods()
    assert len(methods) >= 14  # audit log, adapter, decision/billing intake, settlement
    for method in methods:
        for cred in (e.creds[HOSPITAL], e.creds[INSURER]):
            c = await any_call(e.channel, method, b"", signed(cred, method, b""))
            assert (await outcome(c)).code == grpc.StatusCode.UNIMPLEMENTED, method
    assert e.gw.recorder.calls == []


# --- TLS ----------------------------------------------------------------------------
async def _handshake(gw: Gateway, ctx: ssl.SSLContext) -> str | None:
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=ctx, server_hostname="localhost")
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    return version


def _ctx(gw: Gateway, version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=gw.ca_pem.decode())
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _permissive_server_port(state: Path) -> int:
    """A throw-away local TLS server that accepts TLS 1.1 and CBC suites: the
    control showing our refused clients really do offer them."""
    tls = state / "tls"
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(tls / "server.pem", tls / "server-key.pem")
    srv.minimum_version = ssl.TLSVersion.TLSv1_1
    srv.set_ciphers("ALL:@SECLEVEL=0")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def serve() -> None:
        with sock:
            for _ in range(4):
                conn, _ = sock.accept()
                with contextlib.suppress(OSError):
                    srv.wrap_socket(conn, server_side=True).close()

    threading.Thread(target=serve, daemon=True).start()
    return int(sock.getsockname()[1])


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
async def test_tls_1_1_and_non_aead_suites_are_refused(gw: Gateway) -> None:
    assert (
        await _handshake(gw, _ctx(gw, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305")) == "TLSv1.2"
    )
    # Let our client offer TLS 1.1 (OpenSSL's default security level forbids it).
    old = _ctx(gw, ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0")
    cbc = [
        _ctx(gw, ssl.TLSVersion.TLSv1_2, suite)
        for suite in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES256-SHA")
    ]
    control = Gateway(_permissive_server_port(gw.state), 0, gw.ca_pem, gw.access_log, gw.recorder, gw.state)
    assert await _handshake(control, old) == "TLSv1.1"
    for ctx in cbc:
        assert await _handshake(control, ctx) == "TLSv1.2"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(gw, old)
    for ctx in cbc:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _handshake(gw, ctx)


# --- mutual TLS ---------------------------------------------------------------------
def _mtls_channel(gw: Gateway, cert: Path, key: Path) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=gw.ca_pem,
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{gw.port}", creds)


async def _assert_ok_with_certificate(e: Env, paths: ClientCertPaths, cred: Cred, body: bytes) -> None:
    channel = _mtls_channel(e.gw, paths.cert, paths.key)
    try:
        c = await any_call(channel, GET_CLAIM, body, signed(cred, GET_CLAIM, body))
        assert (await outcome(c)).code == grpc.StatusCode.OK
    finally:
        await channel.close()


async def test_client_certificate_is_bound_to_the_signing_principal(
    make_env: EnvFactory,
) -> None:
    e = await make_env()
    body = claim_service_pb2.GetClaimRequest(transaction_id="T-1").SerializeToString()
    a_uri = issue_dev_client_cert(e.gw.state, HOSPITAL)  # SAN URI iclaim:principal/10670
    a_cn = issue_dev_client_cert(e.gw.state, HOSPITAL, san_uri=False, name="cn-only")
    for paths in (a_uri, a_cn):
        channel = _mtls_channel(e.gw, paths.cert, paths.key)
        try:
            ok = await any_call(channel, GET_CLAIM, body, signed(e.creds[HOSPITAL], GET_CLAIM, body))
            assert (await outcome(ok)).code == grpc.StatusCode.OK
            # Hospital A's certificate cannot carry hospital B's signature.
            o = await outcome(
                await any_call(channel, GET_CLAIM, body, signed(e.creds[HOSPITAL_B], GET_CLAIM, body))
            )
            assert (o.code, o.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CLIENT_CERT_MISMATCH")
        finally:
            await channel.close()
    assert [c.metadata["x-iclaim-principal"] for c in e.gw.recorder.calls] == [HOSPITAL] * 2


async def test_principal_flagged_require_mtls_needs_its_certificate(
    make_env: EnvFactory,
) -> None:
    e = await make_env()
    body = claim_service_pb2.GetClaimRequest(transaction_id="T-1").SerializeToString()
    cred = e.creds[MTLS_HOSPITAL]
    o = await outcome(await any_call(e.channel, GET_CLAIM, body, signed(cred, GET_CLAIM, body)))
    assert (o.code, o.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CLIENT_CERT_REQUIRED")
    assert e.gw.recorder.calls == []
    paths = issue_dev_client_cert(e.gw.state, MTLS_HOSPITAL)
    await _assert_ok_with_certificate(e, paths, cred, body)
    # Others without a flag still work without a certificate (mTLS is optional).
    c = await any_call(e.channel, GET_CLAIM, body, signed(e.creds[HOSPITAL], GET_CLAIM, body))
    assert (await outcome(c)).code == grpc.StatusCode.OK


async def test_a_client_cannot_hand_the_authz_a_certificate_in_a_header(
    make_env: EnvFactory,
) -> None:
    """The certificate reaches the authz in x-forwarded-client-cert, which only
    Envoy may set: a client's own is removed, and the upstream never sees one."""
    e = await make_env()
    body = claim_service_pb2.GetClaimRequest(transaction_id="T-1").SerializeToString()
    cred = e.creds[MTLS_HOSPITAL]
    paths = issue_dev_client_cert(e.gw.state, MTLS_HOSPITAL)
    forged = 'Hash=00;Cert="' + urllib.parse.quote(paths.cert.read_text()) + '"'
    md = [*signed(cred, GET_CLAIM, body), ("x-forwarded-client-cert", forged)]
    o = await outcome(await any_call(e.channel, GET_CLAIM, body, md))
    assert (o.code, o.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CLIENT_CERT_REQUIRED")
    await _assert_ok_with_certificate(e, paths, cred, body)
    [seen] = e.gw.recorder.calls
    assert seen.metadata["x-iclaim-principal"] == MTLS_HOSPITAL
    assert "x-forwarded-client-cert" not in seen.metadata


async def test_certificate_from_another_ca_fails_the_handshake(
    make_env: EnvFactory,
    tmp_path: Path,
) -> None:
    e = await make_env()
    rogue = issue_dev_client_cert(tmp_path, HOSPITAL)  # a different client CA
    channel = _mtls_channel(e.gw, rogue.cert, rogue.key)
    body = b""
    try:
        o = await outcome(
            await any_call(channel, GET_CLAIM, body, signed(e.creds[HOSPITAL], GET_CLAIM, body))
        )
        assert o.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()
    assert e.gw.recorder.calls == []


# --- rate limit ---------------------------------------------------------------------
async def test_rate_limit_is_per_verified_principal(make_env: EnvFactory) -> None:
    e = await make_env(rate_limit_per_s=2.0, burst=3)
    body = claim_service_pb2.GetClaimRequest(transaction_id="T-1").SerializeToString()
    # Forgeries naming the hospital do not spend its budget.
    for _ in range(5):
        md = signed(e.creds[HOSPITAL], GET_CLAIM, body, secret=secrets.token_bytes(32))
        assert (await outcome(await any_call(e.channel, GET_CLAIM, body, md))).reason == "BAD_SIGNATURE"
    calls = []
    for _ in range(4):
        calls.append(await any_call(e.channel, GET_CLAIM, body, signed(e.creds[HOSPITAL], GET_CLAIM, body)))
    codes = [await outcome(c) for c in calls]
    assert [o.code for o in codes[:3]] == [grpc.StatusCode.OK] * 3
    limited = codes[3]
    assert (limited.code, limited.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    # Another principal has its own bucket.
    c = await any_call(e.channel, GET_CLAIM, body, signed(e.creds[HOSPITAL_B], GET_CLAIM, body))
    assert (await outcome(c)).code == grpc.StatusCode.OK
    assert len(e.gw.recorder.calls) == 4
    # The hint is in ErrorInfo metadata; waiting that long is enough.
    retry_ms = int((await _error_metadata(calls[3]))["retry_after_ms"])
    assert 0 < retry_ms <= 1000
    await asyncio.sleep(retry_ms / 1000 + 0.05)
    c = await any_call(e.channel, GET_CLAIM, body, signed(e.creds[HOSPITAL], GET_CLAIM, body))
    assert (await outcome(c)).code == grpc.StatusCode.OK


async def _error_metadata(c: grpc.aio.Call) -> dict[str, str]:
    from google.rpc import status_pb2

    from iclaim.errors import error_info_of

    for k, v in await c.trailing_metadata() or ():
        if k == "grpc-status-details-bin":
            info = error_info_of(status_pb2.Status.FromString(v))
            assert info is not None
            return dict(info.metadata)
    raise AssertionError("no ErrorInfo")


# --- a flushed Redis during a run, and the SDK -------------------------------------------
def _sdk_stub(
    gw: Gateway, cred: Cred, clock: Clock | None = None
) -> tuple[grpc.aio.Channel, claim_service_pb2_grpc.ClaimServiceStub]:
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{gw.port}",
        grpc.ssl_channel_credentials(root_certificates=gw.ca_pem),
        options=CLIENT_OPTIONS,
        interceptors=signing_interceptors(cred.code, cred.key_id, cred.secret, clock),
    )
    return channel, claim_service_pb2_grpc.ClaimServiceStub(channel)


async def test_flushed_redis_no_replay_and_sdk_clients_ride_through(
    make_env: EnvFactory,
) -> None:
    e = await make_env()
    # Requests an attacker captured before the loss (accepted once each).
    captured = []
    for i in range(5):
        body = claim_service_pb2.GetClaimRequest(transaction_id=f"CAP-{i}").SerializeToString()
        md = signed(e.creds[HOSPITAL], GET_CLAIM, body)
        assert (await outcome(await any_call(e.channel, GET_CLAIM, body, md))).code == grpc.StatusCode.OK
        captured.append((body, md))

    channels, stubs = zip(*(_sdk_stub(e.gw, e.creds[c]) for c in (HOSPITAL, HOSPITAL_B)), strict=True)
    stop = asyncio.Event()
    progressed = asyncio.Event()
    done: list[str] = []
    target: list[int] = [1 << 30]

    async def honest(stub: claim_service_pb2_grpc.ClaimServiceStub, tag: str) -> None:
        i = 0
        while not stop.is_set():
            txn = f"SDK-{tag}-{i}"
            await stub.GetClaim(claim_service_pb2.GetClaimRequest(transaction_id=txn), timeout=30)
            done.append(txn)
            if len(done) >= target[0]:
                progressed.set()
            i += 1

    workers = [asyncio.create_task(honest(s, str(n))) for n, s in enumerate(stubs)]
    try:
        await asyncio.sleep(0.3)
        client = sync_redis.Redis.from_url(e.redis_url)
        client.flushdb()  # Redis restarted empty mid-run
        client.close()
        # Replays of everything captured, repeatedly, while clients recover.
        replay_outcomes = []
        for _ in range(3):
            for body, md in captured:
                replay_outcomes.append(await outcome(await any_call(e.channel, GET_CLAIM, body, md)))
            await asyncio.sleep(0.5)
        before = len(done)
        target[0] = before + 10
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progressed.wait(), 15)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 35)  # every SDK call succeeded
    finally:
        stop.set()
        for w in workers:
            w.cancel()
        for ch in channels:
            await ch.close()
    assert e.app.guard.recovered_at is not None
    assert all(o.code != grpc.StatusCode.OK for o in replay_outcomes)
    assert {o.reason for o in replay_outcomes} <= {"NONCE_STORE_RECOVERING", "NONCE_REPLAYED"}
    assert len(done) >= before + 10  # clients made progress after the loss
    seen = [c.request.transaction_id for c in e.gw.recorder.calls]
    assert sorted(seen) == sorted([f"CAP-{i}" for i in range(5)] + done)  # each exactly once


async def test_sdk_learns_the_server_clock_from_a_skew_refusal(make_env: EnvFactory) -> None:
    e = await make_env()
    clock = Clock(now=lambda: time.time() - 1000)  # the hospital's clock is 1000 s slow
    channel, stub = _sdk_stub(e.gw, e.creds[HOSPITAL], clock)
    try:
        await stub.GetClaim(claim_service_pb2.GetClaimRequest(transaction_id="T-1"), timeout=10)
    finally:
        await channel.close()
    assert abs(clock.offset - 1000) <= 2
    assert len(e.gw.recorder.calls) == 1
