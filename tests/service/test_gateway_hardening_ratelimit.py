"""The per-principal token bucket (gateway/authz/ratelimit.py) on real Redis,
with a controllable clock."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway.authz.ratelimit import RedisRateLimiter
from gateway.authz.nonces import redis_client
from iclaim.errors import ResourceExhausted, Unavailable


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


async def test_burst_then_steady_rate_per_principal(redis_client: aioredis.Redis) -> None:
    clock = Clock()
    limiter = RedisRateLimiter(redis_client, per_second=10, burst=5, clock=clock)
    for _ in range(5):
        await limiter.take("10670")
    with pytest.raises(ResourceExhausted) as exc:
        await limiter.take("10670")
    assert exc.value.reason == "RATE_LIMITED"
    assert exc.value.metadata == {"retry_after_ms": "100"}  # one token every 100 ms
    await limiter.take("AIA")  # its own bucket
    clock.t += 0.1
    await limiter.take("10670")
    with pytest.raises(ResourceExhausted):
        await limiter.take("10670")
    clock.t += 10  # refills up to the burst, not beyond
    for _ in range(5):
        await limiter.take("10670")
    with pytest.raises(ResourceExhausted):
        await limiter.take("10670")
    # The bucket key expires on its own once full again (no unbounded growth).
    ttl = await redis_client.pttl("iclaim:gw:rate:10670")
    assert 0 < ttl <= 1500


async def test_two_replicas_share_one_bucket(redis_client: aioredis.Redis) -> None:
    clock = Clock()
    a = RedisRateLimiter(redis_client, per_second=1, burst=2, clock=clock)
    b = RedisRateLimiter(redis_client, per_second=1, burst=2, clock=clock)
    await a.take("10670")
    await b.take("10670")
    with pytest.raises(ResourceExhausted):
        await a.take("10670")


async def test_redis_down_fails_closed() -> None:
    dead = redis_client("redis://127.0.0.1:1/0")
    limiter = RedisRateLimiter(dead, per_second=1, burst=1)
    with pytest.raises(Unavailable) as exc:
        await limiter.take("10670")
    assert exc.value.reason == "RATE_LIMITER_UNAVAILABLE"
    await dead.aclose()
