"""gateway.authz wiring: config, registry key cache, nonce store, servicer,
health, reflection, metrics, graceful shutdown.

Env: ICLAIM_AUTHZ_ADDR (127.0.0.1:50091), ICLAIM_AUTHZ_METRICS_PORT (9105),
ICLAIM_DATABASE_URL, ICLAIM_REDIS_URL, ICLAIM_MASTER_KEY,
ICLAIM_AUTHZ_KEY_CACHE_TTL_S (4, at most 5), ICLAIM_LOG_LEVEL,
ICLAIM_RATE_LIMIT_PER_S (per verified principal, 200; 0 turns the limit off),
ICLAIM_RATE_LIMIT_BURST (2 x the rate).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import structlog
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1.health import aio as _health_aio

from gateway.authz.authorizer import Authorizer
from gateway.authz.keys import DEFAULT_TTL_S, MAX_TTL_S, CachedKeys
from gateway.authz.nonces import RedisReplayGuard, redis_client
from gateway.authz.ratelimit import RedisRateLimiter
from gateway.authz.service import AuthorizationService
from gateway.authz.store import PgMarkerLedger
from iclaim_hub.common.config import ConfigError, env_addr, env_float, env_int, env_str
from iclaim_hub.common.db import create_pool
from iclaim_hub.common.logging import configure_logging
from iclaim_hub.common.server import (
    add_health_and_reflection,
    mark_serving,
    new_server,
    serve_app,
)
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.registry.store import RegistryStore

log = structlog.get_logger("gateway.authz")

DEFAULT_RATE_PER_S = 200.0
SERVICE_NAME = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name


@dataclass(frozen=True)
class Config:
    listen_addr: str
    metrics_port: int
    database_url: str
    redis_url: str
    key_cache_ttl_s: float = DEFAULT_TTL_S
    rate_limit_per_s: float = DEFAULT_RATE_PER_S
    rate_limit_burst: int = 2 * int(DEFAULT_RATE_PER_S)

    @classmethod
    def from_env(cls) -> Config:
        config = cls(
            listen_addr=env_addr("ICLAIM_AUTHZ_ADDR", "127.0.0.1:50091"),
            metrics_port=env_int("ICLAIM_AUTHZ_METRICS_PORT", 9105, lo=-1, hi=65535),
            database_url=env_str("ICLAIM_DATABASE_URL"),
            redis_url=env_str("ICLAIM_REDIS_URL"),
            key_cache_ttl_s=env_float(
                "ICLAIM_AUTHZ_KEY_CACHE_TTL_S", DEFAULT_TTL_S, lo=0.0, hi=MAX_TTL_S
            ),
            rate_limit_per_s=(rate := env_float(
                "ICLAIM_RATE_LIMIT_PER_S", DEFAULT_RATE_PER_S, lo=0.0, hi=1e6
            )),
            rate_limit_burst=env_int(
                "ICLAIM_RATE_LIMIT_BURST", max(1, int(2 * rate)), lo=1, hi=10_000_000
            ),
        )
        if not config.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("ICLAIM_REDIS_URL must be a redis:// , rediss:// or unix:// URL")
        return config


@dataclass
class AuthzApp:
    server: grpc.aio.Server
    port: int
    health: _health_aio.HealthServicer
    guard: RedisReplayGuard
    cleanup: Callable[[], Awaitable[None]]

    async def start(self) -> None:
        await self.server.start()

    async def close(self, grace: float = 1.0) -> None:
        await self.server.stop(grace)
        await self.cleanup()


async def build_server(
    config: Config,
    box: SecretBox,
    *,
    clock: Callable[[], float] = time.time,
) -> AuthzApp:
    """Connects the stores, applies the `gateway` migrations, detects a lost
    nonce store, and binds (port 0 picks a free port). Call start() to serve."""
    pool = await create_pool(config.database_url, max_size=10)
    redis = redis_client(config.redis_url)
    try:
        registry = RegistryStore(pool, box)
        await registry.migrate()  # idempotent; the schema the key lookups read
        ledger = PgMarkerLedger(pool)
        await ledger.migrate()
        guard = RedisReplayGuard(redis, ledger, clock=clock)
        await guard.start()
    except BaseException:
        await redis.aclose()
        await pool.close()
        raise
    keys = CachedKeys(registry, ttl_s=config.key_cache_ttl_s)
    limiter = (
        RedisRateLimiter(
            redis, per_second=config.rate_limit_per_s, burst=config.rate_limit_burst, clock=clock
        )
        if config.rate_limit_per_s > 0
        else None
    )
    authorizer = Authorizer(keys, guard, clock=clock, limiter=limiter)

    server = new_server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationService(authorizer), server
    )
    health = add_health_and_reflection(server, [SERVICE_NAME])
    port = server.add_insecure_port(config.listen_addr)
    await mark_serving(health, [SERVICE_NAME])

    async def close_all() -> None:
        await redis.aclose()
        await pool.close()

    return AuthzApp(server=server, port=port, health=health, guard=guard, cleanup=close_all)


async def serve() -> None:
    config = Config.from_env()
    box = SecretBox.from_env()
    await serve_app(await build_server(config, box), config.listen_addr, config.metrics_port)


def main() -> None:
    configure_logging(os.environ.get("ICLAIM_LOG_LEVEL", "INFO"))
    asyncio.run(serve())
