"""A database that stops or drops its connections is UNAVAILABLE (retryable)
at every service, never INTERNAL: the shared interceptor for any RPC of any
service, the gateway's auth check for its registry and nonce ledger.

On a PostgreSQL of the test's own (stopped and started here; never the
machine's, which other tests use)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import redis as sync_redis
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from grpc_status import rpc_status

from gateway.authz.server import build_server
from iclaim.crypto import signing
from iclaim.errors import error_info_of
from iclaim.v1 import claim_service_pb2
from iclaim_hub.common.db import create_pool
from iclaim_hub.common.server import new_server
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.registry.model import Principal
from iclaim_hub.registry.store import RegistryStore
from iclaim_ops.devstack.infra import ensure_database
from tests.support.gateway import authz_config
from tests.support.private_postgres import PrivatePostgres, private_postgres

SERVICE = "test.v1.Store"
GET_CLAIM = "/iclaim.v1.ClaimService/GetClaim"
BODY = claim_service_pb2.GetClaimRequest(transaction_id="T-1").SerializeToString()
MASTER_KEY = secrets.token_bytes(32)


@pytest.fixture(scope="module")
async def pg() -> AsyncIterator[PrivatePostgres]:
    async with private_postgres() as server:
        yield server


@pytest.fixture
async def running_pg(pg: PrivatePostgres) -> AsyncIterator[PrivatePostgres]:
    """The module's server, started again if a test left it stopped."""
    if not pg.running:
        await pg.start()
    yield pg
    if not pg.running:
        await pg.start()


# --- the shared interceptor -------------------------------------------------------------
@pytest.fixture
async def store_channel(running_pg: PrivatePostgres) -> AsyncIterator[grpc.aio.Channel]:
    """A service whose handlers read the database through a pool, as every store does."""
    pool = await create_pool(await ensure_database(running_pg.server_url, "interceptor"), max_size=2)

    async def unary(request: bytes, context: Any) -> bytes:
        if request == b"sleep":
            await pool.execute("SELECT pg_sleep(30)")
        return str(await pool.fetchval("SELECT 1")).encode()

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        yield str(await pool.fetchval("SELECT 2")).encode()

    server = new_server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(stream),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)
    await pool.close()


def _code_and_reason(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    assert ("x-iclaim-reason", info.reason) in tuple(err.trailing_metadata() or ())
    return err.code(), info.reason


UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")


async def test_a_stopped_database_is_unavailable_until_it_is_back(
    store_channel: grpc.aio.Channel, running_pg: PrivatePostgres
) -> None:
    call = store_channel.unary_unary(f"/{SERVICE}/Unary")
    assert await call(b"") == b"1"
    await running_pg.stop("fast")  # the pooled connection is cut, new ones are refused
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"")
        assert _code_and_reason(err.value) == UNAVAILABLE
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for item in store_channel.unary_stream(f"/{SERVICE}/Stream")(b""):
            got.append(item)
    assert got == [b"first"]
    assert _code_and_reason(err.value) == UNAVAILABLE

    await running_pg.start()
    assert await call(b"") == b"1"  # the pool reconnects by itself


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_connection_lost_in_the_middle_of_a_statement_is_unavailable(
    store_channel: grpc.aio.Channel, running_pg: PrivatePostgres, mode: str
) -> None:
    call = asyncio.ensure_future(store_channel.unary_unary(f"/{SERVICE}/Unary")(b"sleep", timeout=20))
    await asyncio.sleep(0.5)  # the statement is running
    await running_pg.stop(mode)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert _code_and_reason(err.value) == UNAVAILABLE


# --- the gateway's auth check: registry and nonce ledger ----------------------------------
def _check_request(key_id: str, secret: bytes) -> external_auth_pb2.CheckRequest:
    ts, nonce = int(time.time()), secrets.token_urlsafe(18)
    headers = {
        signing.H_CLIENT: "10670",
        signing.H_KEY_ID: key_id,
        signing.H_TIMESTAMP: str(ts),
        signing.H_NONCE: nonce,
        signing.H_SIGNATURE: signing.sign(secret, "10670", key_id, GET_CLAIM, ts, nonce, BODY),
    }
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        path=GET_CLAIM, method="POST", headers=headers, raw_body=b"\x00" + len(BODY).to_bytes(4, "big") + BODY
    )
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )


def _outcome(resp: external_auth_pb2.CheckResponse) -> tuple[str, str]:
    """(grpc-status, reason) the client will see; ("0", "OK") when allowed."""
    if resp.HasField("ok_response"):
        return "0", "OK"
    headers = {h.header.key: h.header.value for h in resp.denied_response.headers}
    return headers["grpc-status"], headers["x-iclaim-reason"]


async def test_the_auth_check_refuses_with_unavailable_while_its_database_is_down(
    running_pg: PrivatePostgres, redis_url: str
) -> None:
    database_url = await ensure_database(running_pg.server_url, "authz")
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    secret = secrets.token_bytes(32)
    try:
        registry = RegistryStore(pool, SecretBox(MASTER_KEY))
        await registry.migrate()
        await registry.upsert_principal(Principal(code="10670", role="hospital", display_name="h"))
        await registry.add_signing_key("10670", "k1", secret)
    finally:
        await pool.close()
    app = await build_server(
        authz_config("127.0.0.1:0", database_url, redis_url, MASTER_KEY, rate_limit_per_s=0)
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = external_auth_pb2_grpc.AuthorizationStub(ch)
            assert _outcome(await stub.Check(_check_request("k1", secret), timeout=5)) == ("0", "OK")
            await running_pg.stop("fast")
            # A key not cached yet is read from the registry.
            resp = await stub.Check(_check_request("k2", secret), timeout=5)
            assert _outcome(resp) == ("14", "REGISTRY_UNAVAILABLE")
            # A cached key, but the nonce store lost its data: the ledger must be read.
            sync_redis.Redis.from_url(redis_url).flushdb()
            resp = await stub.Check(_check_request("k1", secret), timeout=5)
            assert _outcome(resp) == ("14", "NONCE_STORE_UNAVAILABLE")
    finally:
        await app.stop(0)
