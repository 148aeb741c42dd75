"""The nonce store and its loss detection against real Redis and PostgreSQL
(several guards stand for several gateway replicas)."""

from __future__ import annotations

import asyncio

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.authz.replay import retry_not_before
from gateway.authz.nonces import (
    MARKER_KEY,
    RECOVERED_KEY,
    RedisReplayGuard,
    nonce_key,
    redis_client,
)
from gateway.authz.replay import nonce_expires_at
from gateway.authz.store import PgMarkerLedger
from iclaim.errors import Unauthenticated, Unavailable


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    await PgMarkerLedger(p).migrate()
    yield p
    await p.close()


async def _guard(pool: asyncpg.Pool, redis: aioredis.Redis) -> RedisReplayGuard:
    g = RedisReplayGuard(redis, PgMarkerLedger(pool))
    await g.start()
    return g


async def test_first_boot_is_not_a_loss_and_nonces_are_single_use(
    pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    await redis_client.set(MARKER_KEY, "left-over-from-someone-else")
    g = await _guard(pool, redis_client)
    assert g.recovered_at is None
    ts = int(time.time())
    await g.admit("10670", "n" * 16, ts)
    with pytest.raises(Unauthenticated) as exc:
        await g.admit("10670", "n" * 16, ts)
    assert exc.value.reason == "NONCE_REPLAYED" and "replay" in exc.value.message
    await g.admit("AIA", "n" * 16, ts)  # pairs are per client
    # Remembered exactly as long as the timestamp stays acceptable (absolute expiry).
    expire_at = await redis_client.expiretime(nonce_key("10670", "n" * 16))
    assert expire_at == nonce_expires_at(ts)


async def test_gateway_restart_keeps_nonces_and_is_not_a_loss(
    pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    ts = int(time.time())
    await (await _guard(pool, redis_client)).admit("10670", "r" * 16, ts)
    restarted = await _guard(pool, redis_client)
    assert restarted.recovered_at is None
    with pytest.raises(Unauthenticated):
        await restarted.admit("10670", "r" * 16, ts)


async def test_loss_while_down_is_detected_at_start(pool: asyncpg.Pool, redis_client: aioredis.Redis) -> None:
    ts = int(time.time())
    await (await _guard(pool, redis_client)).admit("10670", "a" * 16, ts)
    await redis_client.flushdb()
    g = await _guard(pool, redis_client)
    assert g.recovered_at is not None and abs(g.recovered_at - time.time()) < 5
    with pytest.raises(Unavailable) as exc:
        await g.admit("10670", "a" * 16, ts)  # the replay the loss would have allowed
    assert exc.value.reason == "NONCE_STORE_RECOVERING"
    await g.admit("10670", "b" * 16, retry_not_before(g.recovered_at))
    rows = await pool.fetch("SELECT * FROM gateway.nonce_store_losses")
    assert len(rows) == 1
    assert float(await redis_client.get(RECOVERED_KEY)) == pytest.approx(g.recovered_at)


async def test_replicas_agree_on_one_recovery(pool: asyncpg.Pool, redis_client: aioredis.Redis) -> None:
    a, b = await _guard(pool, redis_client), await _guard(pool, redis_client)
    ts = int(time.time())
    await a.admit("10670", "c" * 16, ts)
    await redis_client.flushdb()
    with pytest.raises(Unavailable):
        await a.admit("10670", "c" * 16, ts)
    with pytest.raises(Unavailable):
        await b.admit("10670", "c" * 16, ts)  # b learns the recovery from a
    assert a.recovered_at == b.recovered_at is not None
    assert len(await pool.fetch("SELECT * FROM gateway.nonce_store_losses")) == 1
    later = retry_not_before(a.recovered_at)
    await b.admit("10670", "d" * 16, later)
    with pytest.raises(Unauthenticated):
        await a.admit("10670", "d" * 16, later)


async def test_redis_down_is_unavailable(pool: asyncpg.Pool) -> None:
    dead = redis_client("redis://127.0.0.1:1/0")  # the production client settings
    g = RedisReplayGuard(dead, PgMarkerLedger(pool))
    start = time.monotonic()
    with pytest.raises(Unavailable) as exc:
        await g.admit("10670", "e" * 16, int(time.time()))
    assert exc.value.reason == "NONCE_STORE_UNAVAILABLE"
    assert time.monotonic() - start < 2  # fails fast, well inside Envoy's check timeout
    await dead.aclose()


def _reply(command: bytes) -> bytes:
    upper = command.upper()
    if b"\r\nGET\r\n" in upper:
        return b"$-1\r\n"
    return b"+PONG\r\n" if b"\r\nPING\r\n" in upper else b"+OK\r\n"


async def test_a_store_that_stops_answering_is_asked_once_not_retried(pool: asyncpg.Pool) -> None:
    """The admission script is not idempotent (a rate token, then the nonce): a
    client that sent it again after a lost answer would refuse the request as
    its own replay. So the production client never retries (with a retrying
    policy this counts 4): the script goes once, then UNAVAILABLE.
    The store here answers the connection's set-up, then nothing."""
    scripts = 0

    async def mute_on_scripts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal scripts
        while data := await reader.read(65536):
            if b"EVAL" in data.upper():
                scripts += data.upper().count(b"EVAL")
                continue  # never answered
            # A first start as the guard sees it: no marker yet (GET: nil), then
            # the marker set, health checks answered.
            commands = [c for c in data.split(b"*")[1:] if c]
            writer.write(b"".join(_reply(c) for c in commands))
            await writer.drain()

    server = await asyncio.start_server(mute_on_scripts, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = redis_client(f"redis://127.0.0.1:{port}/0")
    try:
        g = RedisReplayGuard(client, PgMarkerLedger(pool))
        with pytest.raises(Unavailable) as exc:
            await g.admit("10670", "f" * 16, int(time.time()))
        assert exc.value.reason == "NONCE_STORE_UNAVAILABLE"
        assert scripts == 1
    finally:
        await client.aclose()
        server.close()
