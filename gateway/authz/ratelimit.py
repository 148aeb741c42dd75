"""Per-principal rate limit (token bucket in Redis, shared by every replica).

Keyed on the VERIFIED principal, so a forger cannot drain a hospital's budget
and a hospital cannot escape its own by naming another client. One Lua call:
refill by elapsed time, take one token or say how long until there is one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from iclaim.errors import ResourceExhausted, Unavailable

log = structlog.get_logger("gateway.authz.ratelimit")

PREFIX = "iclaim:gw:rate:"
RETRY_AFTER_KEY = "retry_after_ms"  # ErrorInfo metadata: when to try again

_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  ts = now
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""


def rate_limited(retry_after_ms: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"rate limit exceeded; retry after {retry_after_ms} ms",
        reason="RATE_LIMITED",
        metadata={RETRY_AFTER_KEY: str(retry_after_ms)},
    )


class RedisRateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        per_second: float,
        burst: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = per_second
        self._burst = burst
        self._clock = clock
        self._script = redis.register_script(_TAKE)

    async def take(self, principal: str) -> None:
        """Takes one token for `principal` or raises RESOURCE_EXHAUSTED RATE_LIMITED."""
        try:
            allowed, wait = await self._script(
                keys=[PREFIX + principal],
                args=[self._rate, self._burst, int(self._clock() * 1000)],
            )
        except RedisError as exc:
            # Fail closed like the nonce store on the same Redis.
            log.warning("rate_limiter_unavailable", error=type(exc).__name__)
            raise Unavailable("rate limiter unavailable", reason="RATE_LIMITER_UNAVAILABLE") from exc
        if int(allowed) != 1:
            raise rate_limited(max(1, int(wait)))
