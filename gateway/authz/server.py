"""gateway.authz wiring: config, registry key cache, nonce store, rate limit,
servicer, health and reflection.

Env: ICLAIM_AUTHZ_ADDR (127.0.0.1:50091: gRPC health, reflection and the gRPC
Check), ICLAIM_AUTHZ_HTTP_ADDR (127.0.0.1:50092: the HTTP check the gateway's
Envoy calls), ICLAIM_AUTHZ_METRICS_PORT (9105),
ICLAIM_DATABASE_URL, ICLAIM_REDIS_URL, ICLAIM_MASTER_KEY,
ICLAIM_AUTHZ_KEY_CACHE_TTL_S (4, at most 5), ICLAIM_LOG_LEVEL, ICLAIM_SHUTDOWN_GRACE_S,
ICLAIM_RATE_LIMIT_PER_S (per verified principal, 200; 0 turns the limit off),
ICLAIM_RATE_LIMIT_BURST (2 x the rate).
"""

from __future__ import annotations

import asyncio
from functools import partial
from dataclasses import dataclass, field

from aiohttp import web

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from gateway.authz import frame
from gateway.authz.authorizer import Authorizer
from gateway.authz.checker import Checker
from gateway.authz.http_check import http_server
from gateway.authz.keys import DEFAULT_TTL_S, MAX_TTL_S, CachedKeys
from gateway.authz.nonces import RedisReplayGuard, redis_client
from gateway.authz.ratelimit import RateLimit
from gateway.authz.service import AuthorizationService
from gateway.authz.store import PgMarkerLedger
from iclaim_hub.common.access_log import pseudonym_key
from iclaim_hub.common.config import ConfigError, env_addr, env_float, env_int, env_str
from iclaim_hub.common.db import create_pool, is_connection_lost
from iclaim_hub.common.server import (
    GrpcApp,
    ServeConfig,
    bind_server,
    run_service,
)
from iclaim_hub.crypto.secretbox import SecretBox, check_master_key, master_key_from_env
from iclaim_hub.registry.store import RegistryStore

DEFAULT_RATE_PER_S = 200.0
SERVICE_NAME = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name


@dataclass(frozen=True)
class Config:
    serve: ServeConfig
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    # Opens the registry's signing secrets; keys the access log's hashes.
    master_key: bytes = field(repr=False)
    key_cache_ttl_s: float = DEFAULT_TTL_S
    rate_limit_per_s: float = DEFAULT_RATE_PER_S
    rate_limit_burst: int = 2 * int(DEFAULT_RATE_PER_S)
    http_addr: str = "127.0.0.1:0"  # the HTTP check; port 0: any free port

    def __post_init__(self) -> None:
        check_master_key(self.master_key)

    @classmethod
    def from_env(cls) -> Config:
        config = cls(
            serve=ServeConfig.from_env("AUTHZ", "127.0.0.1:50091", 9105),
            database_url=env_str("ICLAIM_DATABASE_URL"),
            redis_url=env_str("ICLAIM_REDIS_URL"),
            master_key=master_key_from_env(),
            key_cache_ttl_s=env_float("ICLAIM_AUTHZ_KEY_CACHE_TTL_S", DEFAULT_TTL_S, lo=0.0, hi=MAX_TTL_S),
            rate_limit_per_s=(
                rate := env_float("ICLAIM_RATE_LIMIT_PER_S", DEFAULT_RATE_PER_S, lo=0.0, hi=1e6)
            ),
            rate_limit_burst=env_int("ICLAIM_RATE_LIMIT_BURST", max(1, int(2 * rate)), lo=1, hi=10_000_000),
            http_addr=env_addr("ICLAIM_AUTHZ_HTTP_ADDR", "127.0.0.1:50092"),
        )
        if not config.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("ICLAIM_REDIS_URL must be a redis:// , rediss:// or unix:// URL")
        return config


@dataclass(kw_only=True)
class AuthzApp(GrpcApp):
    guard: RedisReplayGuard  # tests read when it recovered from a nonce-store loss
    http: web.Server
    http_listener: asyncio.Server  # bound, serving from start()

    async def start(self) -> None:
        await super().start()
        await self.http_listener.start_serving()

    async def stop(self, grace: float) -> None:
        # The HTTP check drains with the gRPC server: Envoy retries nothing, so
        # a check cut off mid-way is a refused call.
        self.http_listener.close()
        await asyncio.sleep(0)  # requests already read start before idle connections close
        self.http.pre_shutdown()
        await asyncio.gather(self.http.shutdown(grace), super().stop(grace))
        await self.http_listener.wait_closed()


async def _bind_http(addr: str, checker: Checker) -> tuple[web.Server, asyncio.Server]:
    host, _, port = addr.rpartition(":")
    http = http_server(checker)
    listener = await asyncio.get_running_loop().create_server(
        http, host.strip("[]"), int(port), start_serving=False
    )
    return http, listener


async def build_server(config: Config) -> AuthzApp:
    """Connects the stores, applies the `gateway` migrations, detects a lost
    nonce store, and binds (port 0 picks a free port). Call start() to serve."""
    pool = await create_pool(config.database_url, max_size=10)
    redis = redis_client(config.redis_url)
    try:
        registry = RegistryStore(pool, SecretBox(config.master_key))
        await registry.migrate()  # idempotent; the schema the key lookups read
        ledger = PgMarkerLedger(pool)
        await ledger.migrate()
        rate = (
            RateLimit(config.rate_limit_per_s, config.rate_limit_burst)
            if config.rate_limit_per_s > 0
            else None
        )
        guard = RedisReplayGuard(redis, ledger, rate=rate)
        await guard.start()
    except BaseException:
        await redis.aclose()
        await pool.close()
        raise
    keys = CachedKeys(registry, is_outage=is_connection_lost, ttl_s=config.key_cache_ttl_s)
    authorizer = Authorizer(keys, guard, pseudonym_key=pseudonym_key(config.master_key))
    checker = Checker(authorizer)

    async def close_all() -> None:
        await redis.aclose()
        await pool.close()

    try:
        http, http_listener = await _bind_http(config.http_addr, checker)
    except BaseException:
        await close_all()
        raise
    try:
        server, port, health = await bind_server(
            config.serve.listen_addr,
            [
                partial(
                    external_auth_pb2_grpc.add_AuthorizationServicer_to_server, AuthorizationService(checker)
                )
            ],
            [SERVICE_NAME],
            max_receive_bytes=frame.MAX_CHECK_REQUEST_BYTES,
        )
    except BaseException:
        http_listener.close()
        await close_all()
        raise

    return AuthzApp(
        server=server,
        port=port,
        health=health,
        cleanup=close_all,
        guard=guard,
        http=http,
        http_listener=http_listener,
    )


def main() -> None:
    run_service(Config.from_env, build_server)
