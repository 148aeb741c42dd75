"""claim_router wiring: config, stores, workers, servicers, health, reflection."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1.health import aio as _health_aio

from iclaim_hub.common.config import env_addr, env_float, env_int, env_str
from iclaim_hub.common.db import create_pool
from iclaim_hub.common.logging import configure_logging
from iclaim_hub.common.server import (
    CLIENT_OPTIONS,
    add_health_and_reflection,
    mark_serving,
    new_server,
    serve_app,
)
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.internal.v1 import decision_intake_pb2, decision_intake_pb2_grpc
from iclaim_hub.registry.cache import DirectoryCache
from iclaim_hub.registry.model import DEFAULT_KEY_GRACE_S
from iclaim_hub.registry.store import RegistryStore
from iclaim.public_api import public_service_names
from iclaim.v1 import (
    claim_service_pb2_grpc,
    insurer_service_pb2_grpc,
)
from services.claim_router.delivery import PushDeliverer
from services.claim_router.relay import OutboxRelay
from services.claim_router.service import (
    ClaimRouter,
    ClaimServicer,
    DEFAULT_PULL_LEASE_S,
    ClaimSettlementServicer,
    DecisionIntakeServicer,
    InsurerServicer,
)
from services.claim_router.store import PgClaimStore
from services.claim_router.watch import ChangeHub

HealthServicer = _health_aio.HealthServicer
MAX_KEY_GRACE_S = 366 * 24 * 3600.0
log = structlog.get_logger("claim_router")

# The gateway sends reflection here, so it lists the whole public contract
# (including services that billing and audit_log serve).
PUBLIC_SERVICES = public_service_names()
INTERNAL_SERVICES = [
    decision_intake_pb2.DESCRIPTOR.services_by_name["DecisionIntakeService"].full_name,
    decision_intake_pb2.DESCRIPTOR.services_by_name["ClaimSettlementService"].full_name,
]


@dataclass(frozen=True)
class Config:
    listen_addr: str
    metrics_port: int
    database_url: str
    adapter_target: str
    audit_target: str
    billing_target: str
    # How long a rotated-out encryption key of a principal stays accepted.
    key_grace_s: float = DEFAULT_KEY_GRACE_S
    pull_lease_s: float = DEFAULT_PULL_LEASE_S

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            listen_addr=env_addr("ICLAIM_ROUTER_ADDR", "127.0.0.1:50051"),
            metrics_port=env_int("ICLAIM_ROUTER_METRICS_PORT", 9101, lo=-1, hi=65535),
            database_url=env_str("ICLAIM_DATABASE_URL"),
            adapter_target=env_addr("ICLAIM_ADAPTER_TARGET", "127.0.0.1:50061"),
            audit_target=env_str("ICLAIM_AUDIT_TARGET", "127.0.0.1:50071"),
            billing_target=env_str("ICLAIM_BILLING_TARGET", "127.0.0.1:50081"),
            key_grace_s=env_float(
                "ICLAIM_KEY_GRACE_S", DEFAULT_KEY_GRACE_S, lo=0, hi=MAX_KEY_GRACE_S
            ),
            pull_lease_s=env_float("ICLAIM_PULL_LEASE_S", DEFAULT_PULL_LEASE_S, lo=1, hi=3600),
        )


@dataclass
class RouterApp:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    router: ClaimRouter
    cleanup: Callable[[], Awaitable[None]]

    async def start(self) -> None:
        await self.server.start()

    async def close(self, grace: float = 2.0) -> None:
        await self.server.stop(grace)
        await self.cleanup()


def _channel(target: str) -> grpc.aio.Channel | None:
    if not target or target == "off":
        return None
    return grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS)


async def build_server(config: Config, box: SecretBox) -> RouterApp:
    pool = await create_pool(config.database_url, max_size=20)
    registry = RegistryStore(pool, box)
    await registry.migrate()
    store = PgClaimStore(pool)
    await store.migrate()
    hub = ChangeHub(config.database_url)
    await hub.start()

    adapter_channel = _channel(config.adapter_target)
    deliverer = PushDeliverer(store, adapter_channel) if adapter_channel else None
    audit_channel = _channel(config.audit_target)
    billing_channel = _channel(config.billing_target)
    relay = OutboxRelay(store, audit_channel, billing_channel)

    router = ClaimRouter(
        store,
        DirectoryCache(registry),
        deliverer,
        hub,
        key_grace_s=config.key_grace_s,
        pull_lease_s=config.pull_lease_s,
    )
    server = new_server()
    claim_service_pb2_grpc.add_ClaimServiceServicer_to_server(ClaimServicer(router), server)
    insurer_service_pb2_grpc.add_InsurerServiceServicer_to_server(InsurerServicer(router), server)
    decision_intake_pb2_grpc.add_DecisionIntakeServiceServicer_to_server(
        DecisionIntakeServicer(router), server
    )
    decision_intake_pb2_grpc.add_ClaimSettlementServiceServicer_to_server(
        ClaimSettlementServicer(router), server
    )
    # Reflection goes through the gateway: it lists only the public contract.
    health = add_health_and_reflection(server, PUBLIC_SERVICES)
    port = server.add_insecure_port(config.listen_addr)
    await mark_serving(health, PUBLIC_SERVICES + INTERNAL_SERVICES)
    if deliverer is not None:
        deliverer.start()
    relay.start()

    async def close_all() -> None:
        if deliverer is not None:
            await deliverer.close()
        await relay.close()
        await hub.close()
        for ch in (adapter_channel, audit_channel, billing_channel):
            if ch is not None:
                await ch.close()
        await pool.close()

    return RouterApp(server=server, port=port, health=health, router=router, cleanup=close_all)


async def serve() -> None:
    config = Config.from_env()
    box = SecretBox.from_env()
    await serve_app(await build_server(config, box), config.listen_addr, config.metrics_port)


def main() -> None:
    configure_logging()
    asyncio.run(serve())
