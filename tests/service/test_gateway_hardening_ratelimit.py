"""The per-principal token bucket (gateway/authz/ratelimit.py), taken inside the
nonce store's admission (gateway/authz/nonces.py), on real Redis and
PostgreSQL with a controllable clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.authz.nonces import RedisReplayGuard, nonce_key, redis_client
from gateway.authz.ratelimit import RateLimit
from gateway.authz.store import PgMarkerLedger
from iclaim.errors import ResourceExhausted, Unauthenticated, Unavailable


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[PgMarkerLedger]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    ledger = PgMarkerLedger(pool)
    await ledger.migrate()
    yield ledger
    await pool.close()


async def _guard(
    redis: aioredis.Redis, ledger: PgMarkerLedger, clock: Clock, rate: RateLimit
) -> RedisReplayGuard:
    guard = RedisReplayGuard(redis, ledger, clock=clock, rate=rate)
    await guard.start()
    return guard


class Nonces:
    """A fresh nonce per call, all stamped with the clock's time."""

    def __init__(self, guard: RedisReplayGuard, clock: Clock) -> None:
        self.guard, self.clock, self.n = guard, clock, 0

    async def take(self, principal: str) -> str:
        self.n += 1
        nonce = f"{self.n:016d}"
        await self.guard.admit(principal, nonce, int(self.clock()), principal)
        return nonce


async def test_burst_then_steady_rate_per_principal(
    redis_client: aioredis.Redis, ledger: PgMarkerLedger
) -> None:
    clock = Clock()
    calls = Nonces(await _guard(redis_client, ledger, clock, RateLimit(per_second=10, burst=5)), clock)
    for _ in range(5):
        await calls.take("10670")
    with pytest.raises(ResourceExhausted) as exc:
        await calls.take("10670")
    assert exc.value.reason == "RATE_LIMITED"
    assert exc.value.metadata == {"retry_after_ms": "100"}  # one token every 100 ms
    await calls.take("AIA")  # its own bucket
    clock.t += 0.1
    await calls.take("10670")
    with pytest.raises(ResourceExhausted):
        await calls.take("10670")
    clock.t += 10  # refills up to the burst, not beyond
    for _ in range(5):
        await calls.take("10670")
    with pytest.raises(ResourceExhausted):
        await calls.take("10670")
    # The bucket key expires on its own once full again (no unbounded growth).
    ttl = await redis_client.pttl("iclaim:gw:rate:10670")
    assert 0 < ttl <= 1500


async def test_a_call_refused_for_its_rate_leaves_its_nonce_unused(
    redis_client: aioredis.Redis, ledger: PgMarkerLedger
) -> None:
    clock = Clock()
    guard = await _guard(redis_client, ledger, clock, RateLimit(per_second=1, burst=1))
    ts = int(clock())
    await guard.admit("10670", "a" * 16, ts, "10670")
    with pytest.raises(ResourceExhausted):
        await guard.admit("10670", "b" * 16, ts, "10670")
    assert not await redis_client.exists(nonce_key("10670", "b" * 16))
    clock.t += 1
    await guard.admit("10670", "b" * 16, ts, "10670")  # the same request, once a token is back
    # A replay is refused as one, and still spends a token (it was a signed call).
    clock.t += 1
    with pytest.raises(Unauthenticated) as exc:
        await guard.admit("10670", "b" * 16, ts, "10670")
    assert exc.value.reason == "NONCE_REPLAYED"
    with pytest.raises(ResourceExhausted):
        await guard.admit("10670", "c" * 16, ts, "10670")


async def test_one_redis_call_per_admission(
    redis_url: str, redis_client: aioredis.Redis, ledger: PgMarkerLedger
) -> None:
    # Counted on the server with MONITOR, for the guard's own connection only:
    # Redis is shared with whatever else runs on this machine, so its global
    # command statistics can move under the test.
    name = f"admission-probe-{uuid.uuid4().hex[:8]}"
    probe = aioredis.Redis.from_url(redis_url, client_name=name, max_connections=1)
    try:
        clock = Clock()
        guard = await _guard(probe, ledger, clock, RateLimit(per_second=1000, burst=1000))
        await guard.admit("10670", "w" * 16, int(clock()), "10670")  # loads the script
        addr = next(c["addr"] for c in await redis_client.client_list() if c.get("name") == name)
        seen: list[str] = []
        async with redis_client.monitor() as monitor:
            for i in range(10):
                await guard.admit("10670", f"{i:016d}", int(clock()), "10670")
            await probe.echo("probe-done")
            async with asyncio.timeout(10):
                async for line in monitor.listen():
                    if f"{line['client_address']}:{line['client_port']}" != addr:
                        continue
                    if line["command"].upper().startswith("ECHO"):
                        break
                    seen.append(line["command"].split()[0].upper())
        # Each admission is exactly one command, a script call, which took the
        # principal's token in it (10 of the burst, plus the first).
        assert seen == ["EVALSHA"] * 10
        tokens = float(await redis_client.hget("iclaim:gw:rate:10670", "t") or 0)
        assert tokens == pytest.approx(1000 - 11)
    finally:
        await probe.aclose()


async def test_two_replicas_share_one_bucket(redis_client: aioredis.Redis, ledger: PgMarkerLedger) -> None:
    clock = Clock()
    rate = RateLimit(per_second=1, burst=2)
    a = Nonces(await _guard(redis_client, ledger, clock, rate), clock)
    b = Nonces(await _guard(redis_client, ledger, clock, rate), clock)
    b.n = 100
    await a.take("10670")
    await b.take("10670")
    with pytest.raises(ResourceExhausted):
        await a.take("10670")


async def test_a_rate_limited_admission_needs_the_principal(
    redis_client: aioredis.Redis, ledger: PgMarkerLedger
) -> None:
    clock = Clock()
    guard = await _guard(redis_client, ledger, clock, RateLimit(per_second=1, burst=1))
    with pytest.raises(ValueError):
        await guard.admit("10670", "p" * 16, int(clock()))


@pytest.mark.parametrize(("per_second", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_rate_must_be_positive(per_second: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimit(per_second, burst)


async def test_redis_down_fails_closed(ledger: PgMarkerLedger) -> None:
    dead = redis_client("redis://127.0.0.1:1/0")
    guard = RedisReplayGuard(dead, ledger, rate=RateLimit(per_second=1, burst=1))
    with pytest.raises(Unavailable) as exc:
        await guard.admit("10670", "d" * 16, 1_800_000_000, "10670")
    assert exc.value.reason == "RATE_LIMITER_UNAVAILABLE"
    await dead.aclose()
