"""Redis nonce store with loss detection (PROTOCOL.md §3).

Every admission runs one Lua script that checks the marker key still holds the
generation this process adopted, takes the principal's rate token when a rate
limit is set (gateway/authz/ratelimit.py), and then SET NX's the nonce with an
absolute expiry: one Redis round trip per check. A missing or foreign marker
means Redis was flushed or restarted empty (or a peer already noticed): we
resync with PostgreSQL, which remembers the generation, and refuse the
window of requests a loss could let through.
A new generation's marker is written to Redis before the generation is
committed to PostgreSQL, so "committed but no marker" always means a loss.

Limitation: a Redis restored from an old snapshot still holds the marker and
is not detected; run the nonce Redis without persistence, or with AOF fsync
always.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Protocol

import asyncpg
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.authz import replay
from gateway.authz.ratelimit import TAKE_TOKEN_LUA, RateLimit, rate_limited, rate_limiter_unavailable
from gateway.authz.replay import SyncAction
from gateway.authz.store import MarkerState
from iclaim.errors import Unauthenticated, Unavailable

log = structlog.get_logger("gateway.authz.nonces")

PREFIX = "iclaim:gw:"
MARKER_KEY = PREFIX + "nonce-store:marker"
RECOVERED_KEY = PREFIX + "nonce-store:recovered-at"

# {outcome, wait_ms}: 1 admitted, 0 replay, 2 rate limited (wait_ms until a
# token), -1 the marker is not ours (resync, then once more). The token is taken
# before the nonce, so a request refused for its rate leaves its nonce unused.
_ADMITTED, _REPLAYED, _RATE_LIMITED = 1, 0, 2
_ADMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, 0} end
if KEYS[3] then
  local t = take_token(KEYS[3], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
  if t[1] ~= 1 then return {2, t[2]} end
end
if redis.call('SET', KEYS[2], '1', 'NX', 'EXAT', ARGV[2]) then return {1, 0} end
return {0, 0}
"""


class MarkerLedger(Protocol):
    """Where the marker generation is remembered durably (PostgreSQL)."""

    async def current(self) -> MarkerState | None: ...

    async def create_first(self, generation: str) -> MarkerState: ...

    async def record_loss(self, expected: str, generation: str, recovered_at: float) -> MarkerState: ...


def redis_client(url: str) -> aioredis.Redis:
    """Short timeouts and no retry: a check waits on this and Envoy gives the
    whole check a few seconds; an outage must fail fast (the client retries
    the whole signed call with a new nonce). Not retrying is also what keeps
    the admission script safe: it takes a rate token and sets the nonce, so
    sent again after an answer lost to a timeout it would refuse the request
    as its own replay. The policy is explicit so that no library default can
    make it retry. (The synchronous `Retry` given here before did nothing on
    the asyncio client, whatever its count said.)"""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


def nonce_key(client: str, nonce: str) -> str:
    return f"{PREFIX}nonce:{client}:{nonce}"


def _new_generation() -> str:
    return secrets.token_hex(16)


RETRY_NOT_BEFORE_KEY = "retry_not_before"  # ErrorInfo metadata: first accepted timestamp


def recovering(recovered_at: float) -> Unavailable:
    first = replay.retry_not_before(recovered_at)
    return Unavailable(
        f"nonce store is recovering from a loss; retry with a timestamp of at least {first}",
        reason="NONCE_STORE_RECOVERING",
        metadata={RETRY_NOT_BEFORE_KEY: str(first)},
    )


class RedisReplayGuard:
    def __init__(
        self,
        redis: aioredis.Redis,
        ledger: MarkerLedger,
        *,
        clock: Callable[[], float] = time.time,
        rate: RateLimit | None = None,
    ) -> None:
        self._redis = redis
        self._ledger = ledger
        self._clock = clock
        self._rate = rate
        self._script = redis.register_script(TAKE_TOKEN_LUA + _ADMIT)
        self._generation: str | None = None
        self._recovered_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def recovered_at(self) -> float | None:
        return self._recovered_at

    async def start(self) -> None:
        await self._resync(self._generation)

    async def admit(self, client: str, nonce: str, timestamp: int, principal: str | None = None) -> None:
        """Accepts (client, nonce) once, and with a rate limit takes one of
        `principal`'s tokens in the same Redis call. Raises Unauthenticated on
        replay, ResourceExhausted when the principal is over its rate, and
        Unavailable while recovering from a loss or when Redis is down."""
        try:
            for _ in range(2):
                self._check_window(timestamp)
                seen = self._generation
                keys, args = self._call(client, nonce, timestamp, principal, seen)
                outcome, wait_ms = await self._script(keys=keys, args=args)
                if outcome == _ADMITTED:
                    return
                if outcome == _REPLAYED:
                    raise Unauthenticated("nonce already used: replay refused", reason="NONCE_REPLAYED")
                if outcome == _RATE_LIMITED:
                    raise rate_limited(max(1, int(wait_ms)))
                await self._resync(seen)  # the marker was not ours
        except RedisError as exc:
            log.warning("nonce_store_unavailable", error=type(exc).__name__)
            if self._rate is not None:
                raise rate_limiter_unavailable() from exc  # the reason a separate limiter gave first
            raise Unavailable("nonce store unavailable", reason="NONCE_STORE_UNAVAILABLE") from exc
        self._check_window(timestamp)
        raise Unavailable("nonce store is resynchronising", reason="NONCE_STORE_RECOVERING")

    def _call(
        self, client: str, nonce: str, timestamp: int, principal: str | None, generation: str | None
    ) -> tuple[list[str], list[str | int | float]]:
        keys = [MARKER_KEY, nonce_key(client, nonce)]
        args: list[str | int | float] = [generation or "", replay.nonce_expires_at(timestamp)]
        if self._rate is not None:
            if principal is None:
                raise ValueError("a rate-limited admission needs the verified principal")
            bucket, bucket_args = self._rate.args(principal, self._clock())
            keys.append(bucket)
            args.extend(bucket_args)
        return keys, args

    def _check_window(self, timestamp: int) -> None:
        if self._recovered_at is not None and replay.refused_after_loss(timestamp, self._recovered_at):
            raise recovering(self._recovered_at)

    async def _resync(self, seen: str | None) -> None:
        async with self._lock:
            if self._generation != seen:
                return  # a concurrent admission already resynced
            try:
                state = await self._sync_once()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise Unavailable("nonce ledger unavailable", reason="NONCE_STORE_UNAVAILABLE") from exc
            self._generation = state.generation
            self._recovered_at = state.recovered_at

    async def _sync_once(self) -> MarkerState:
        """Agrees with PostgreSQL on the current generation, recording a loss
        when Redis lacks its marker. A generation's marker always goes to Redis
        before the generation is committed (see replay.sync_action)."""
        for _ in range(4):
            recorded = await self._ledger.current()
            raw = await self._redis.get(MARKER_KEY)
            marker = raw.decode() if isinstance(raw, bytes) else raw
            action = replay.sync_action(recorded.generation if recorded else None, marker)
            if action is SyncAction.ADOPT:
                assert recorded is not None
                return recorded
            if action is SyncAction.FIRST_BOOT:
                # Nothing was ever accepted under any generation: adopt whatever
                # marker Redis holds (a racing peer's), else ours.
                await self._redis.set(MARKER_KEY, _new_generation(), nx=True)
                raw = await self._redis.get(MARKER_KEY)
                if raw is not None:
                    await self._ledger.create_first(raw.decode() if isinstance(raw, bytes) else raw)
                    log.info("nonce_store_initialised")
                continue
            assert recorded is not None
            now = self._clock()
            fresh = _new_generation()
            await self._redis.set(MARKER_KEY, fresh)
            state = await self._ledger.record_loss(recorded.generation, fresh, now)
            if state.generation == fresh:
                await self._redis.set(RECOVERED_KEY, repr(now))
                log.warning(
                    "nonce_store_loss_detected",
                    recovered_at=now,
                    refusing_until_timestamp=replay.retry_not_before(now),
                )
            # Re-read either way: adopt if our marker survived, else go again.
        raise Unavailable("nonce store is resynchronising", reason="NONCE_STORE_RECOVERING")
