"""Key lifecycle without restarts (real PostgreSQL and Redis, authz over gRPC):
at most two active signing keys per principal, rotation and revocation in the
registry, revocation and suspension reaching every gateway replica within 5 s,
secrets sealed at rest and never logged."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from structlog.testing import capture_logs

from gateway.authz.server import build_server
from iclaim.crypto import signing
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.registry.model import Principal
from iclaim_hub.registry.store import GatewayKey, RegistryStore, TooManyActiveKeys
from iclaim.v1 import claim_service_pb2
from tests.support.gateway import authz_config

GET_CLAIM = "/iclaim.v1.ClaimService/GetClaim"
BODY = claim_service_pb2.GetClaimRequest(transaction_id="T-1").SerializeToString()
# The registry and the authz replicas share it.
MASTER_KEY = secrets.token_bytes(32)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


@pytest.fixture
async def registry(pool: asyncpg.Pool) -> RegistryStore:
    store = RegistryStore(pool, SecretBox(MASTER_KEY))
    await store.migrate()
    for code, role in (("10670", "hospital"), ("AIA", "insurer")):
        await store.upsert_principal(Principal(code=code, role=role, display_name=code))
    return store


async def test_at_most_two_active_keys_and_rotation(registry: RegistryStore) -> None:
    await registry.add_signing_key("10670", "k1", secrets.token_bytes(32))
    await registry.add_signing_key("10670", "k2", secrets.token_bytes(32))
    with pytest.raises(TooManyActiveKeys) as exc:
        await registry.add_signing_key("10670", "k3", secrets.token_bytes(32))
    assert exc.value.reason == "TOO_MANY_ACTIVE_KEYS"
    assert await registry.active_signing_key_ids("10670") == ["k1", "k2"]
    # Re-sealing an already active key is not a third key.
    await registry.add_signing_key("10670", "k2", secrets.token_bytes(32))
    # Rotation revokes the oldest when two are active, in one transaction.
    await registry.rotate_signing_key("10670", "k3", secrets.token_bytes(32))
    assert await registry.active_signing_key_ids("10670") == ["k2", "k3"]
    assert await registry.signing_key("10670", "k1") is None
    # Or revokes the named one.
    await registry.rotate_signing_key("10670", "k4", secrets.token_bytes(32), revoke_key_id="k3")
    assert await registry.active_signing_key_ids("10670") == ["k2", "k4"]
    # Revoke, then a new key fits again; a revoked key cannot be re-activated past the limit.
    with pytest.raises(TooManyActiveKeys):
        await registry.add_signing_key("10670", "k1", secrets.token_bytes(32))
    await registry.revoke_signing_key("10670", "k2")
    await registry.add_signing_key("10670", "k5", secrets.token_bytes(32))
    assert await registry.active_signing_key_ids("10670") == ["k4", "k5"]
    key = await registry.signing_key("10670", "k5")
    assert isinstance(key, GatewayKey) and key.require_mtls is False


async def test_the_database_itself_refuses_a_third_active_key(
    registry: RegistryStore, pool: asyncpg.Pool
) -> None:
    # Every writer, not only RegistryStore, is held to the limit; concurrent adds too.
    results = await asyncio.gather(
        *(registry.add_signing_key("AIA", f"c{i}", secrets.token_bytes(32)) for i in range(6)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 2
    assert all(isinstance(r, TooManyActiveKeys) for r in results if r is not None)
    await pool.execute(
        "INSERT INTO registry.signing_keys (principal_code, key_id, secret_sealed, status)"
        " VALUES ('AIA', 'raw', '\\x00', 'revoked')"
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE registry.signing_keys SET status = 'active' WHERE key_id = 'raw'")


async def test_secrets_are_sealed_at_rest(registry: RegistryStore, pool: asyncpg.Pool) -> None:
    secret = secrets.token_bytes(32)
    await registry.add_signing_key("10670", "k1", secret)
    sealed = await pool.fetchval("SELECT secret_sealed FROM registry.signing_keys WHERE key_id = 'k1'")
    assert secret not in bytes(sealed)
    other = RegistryStore(pool, SecretBox(secrets.token_bytes(32)))  # wrong master key
    assert await other.signing_key("10670", "k1") is None


# --- two authz replicas on one database -------------------------------------------------
def _check_request(code: str, key_id: str, secret: bytes) -> external_auth_pb2.CheckRequest:
    ts, nonce = int(time.time()), secrets.token_urlsafe(18)
    headers = {
        signing.H_CLIENT: code,
        signing.H_KEY_ID: key_id,
        signing.H_TIMESTAMP: str(ts),
        signing.H_NONCE: nonce,
        signing.H_SIGNATURE: signing.sign(secret, code, key_id, GET_CLAIM, ts, nonce, BODY),
    }
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        path=GET_CLAIM,
        method="POST",
        headers=headers,
        raw_body=b"\x00" + len(BODY).to_bytes(4, "big") + BODY,
    )
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )


def _reason(resp: external_auth_pb2.CheckResponse) -> str:
    if resp.HasField("ok_response"):
        return "OK"
    return {h.header.key: h.header.value for h in resp.denied_response.headers}["x-iclaim-reason"]


async def test_revocation_and_suspension_reach_both_replicas_within_5s(
    registry: RegistryStore, database_url: str, redis_url: str
) -> None:
    secret_h, secret_i = secrets.token_bytes(32), secrets.token_bytes(32)
    await registry.add_signing_key("10670", "k1", secret_h)
    await registry.upsert_principal(Principal(code="10671", role="hospital", display_name="b"))
    await registry.add_signing_key("10671", "k1", secret_i)
    config = authz_config(
        "127.0.0.1:0", database_url, redis_url, MASTER_KEY, rate_limit_per_s=0
    )  # the default key-cache TTL
    apps = [await build_server(config) for _ in range(2)]
    channels = []
    try:
        stubs = []
        for app in apps:
            await app.start()
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
            channels.append(ch)
            stubs.append(external_auth_pb2_grpc.AuthorizationStub(ch))

        async def reasons() -> list[str]:
            out = []
            for stub in stubs:
                for code, secret in (("10670", secret_h), ("10671", secret_i)):
                    out.append(_reason(await stub.Check(_check_request(code, "k1", secret), timeout=5)))
            return out

        assert await reasons() == ["OK"] * 4  # both replicas have both keys cached
        await registry.revoke_signing_key("10670", "k1")
        await registry.set_suspended("10671", True)
        changed_at = time.monotonic()
        while True:
            now = await reasons()
            if now == ["BAD_SIGNATURE", "PRINCIPAL_SUSPENDED"] * 2:
                break
            assert time.monotonic() - changed_at < 5.0, now
            await asyncio.sleep(0.2)
        assert time.monotonic() - changed_at <= 5.0
    finally:
        for ch in channels:
            await ch.close()
        for app in apps:
            await app.stop(0)


async def test_no_secret_is_ever_logged(registry: RegistryStore, database_url: str, redis_url: str) -> None:
    secret = secrets.token_bytes(32)
    forged = secrets.token_bytes(32)
    config = authz_config("127.0.0.1:0", database_url, redis_url, MASTER_KEY, key_cache_ttl_s=0)
    with capture_logs() as logs:
        await registry.add_signing_key("10670", "k1", secret)
        await registry.rotate_signing_key("10670", "k2", secrets.token_bytes(32))
        app = await build_server(config)
        await app.start()
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        try:
            stub = external_auth_pb2_grpc.AuthorizationStub(ch)
            results = [
                _reason(await stub.Check(_check_request("10670", "k1", s), timeout=5))
                for s in (secret, forged, secret)
            ]
            bad = _check_request("10670", "k1", secret)
            bad.attributes.request.http.headers[signing.H_NONCE] = "x"  # malformed
            results.append(_reason(await stub.Check(bad, timeout=5)))
        finally:
            await ch.close()
            await app.stop(0)
    assert results == ["OK", "BAD_SIGNATURE", "OK", "MALFORMED_METADATA"]
    assert any(e.get("event") == "deny" for e in logs)  # denials are logged...
    text = repr(logs)
    for s in (secret, forged):  # ...without any form of a secret
        for form in (signing.b64url(s), s.hex(), repr(s), s.hex().upper()):
            assert form not in text
    # nor signatures (a signature is a MAC that could be replayed within the window)
    assert signing.H_SIGNATURE not in text
