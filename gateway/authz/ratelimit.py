"""Per-principal rate limit (token bucket in Redis, shared by every replica).

Keyed on the VERIFIED principal, so a forger cannot drain a hospital's budget
and a hospital cannot escape its own by naming another client. One Lua call:
refill by elapsed time, take one token or say how long until there is one;
run inside the nonce store's admission, in the same Redis call.
"""

from __future__ import annotations

from dataclasses import dataclass

from iclaim.errors import ResourceExhausted, Unavailable

PREFIX = "iclaim:gw:rate:"
RETRY_AFTER_KEY = "retry_after_ms"  # ErrorInfo metadata: when to try again

# A Lua function, not a script: the nonce store runs it inside its admission
# script (gateway/authz/nonces.py), so a check spends one Redis round trip.
TAKE_TOKEN_LUA = """
local function take_token(key, rate, burst, now)
  local v = redis.call('HMGET', key, 't', 'ts')
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
  redis.call('HSET', key, 't', tostring(tokens), 'ts', tostring(ts))
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
  return {allowed, wait}
end
"""


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per verified principal: `per_second` refill, `burst` deep."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")

    def args(self, principal: str, now_s: float) -> tuple[str, list[float | int]]:
        """The bucket's key and take_token's rate, burst and now (ms)."""
        return PREFIX + principal, [self.per_second, self.burst, int(now_s * 1000)]


def rate_limiter_unavailable() -> Unavailable:
    # Fails closed like the nonce store it shares Redis (and a call) with.
    return Unavailable("rate limiter unavailable", reason="RATE_LIMITER_UNAVAILABLE")


def rate_limited(retry_after_ms: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"rate limit exceeded; retry after {retry_after_ms} ms",
        reason="RATE_LIMITED",
        metadata={RETRY_AFTER_KEY: str(retry_after_ms)},
    )
