"""Wiring of the insurer adapter: config, stores, enrolment, worker, gRPC server."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
import grpc
import structlog
from grpc_health.v1 import health

from iclaim_hub.common.config import ConfigError, env_addr, env_float, env_int, env_str
from iclaim_hub.common.db import create_pool
from iclaim_hub.common.logging import configure_logging
from iclaim_hub.common.metrics import start_metrics_server
from iclaim_hub.common.server import (
    CLIENT_OPTIONS,
    add_health_and_reflection,
    mark_serving,
    new_server,
    run_until_signal,
)
from iclaim_hub.crypto.secretbox import MASTER_KEY_ENV, SecretBox
from iclaim.crypto.signing import b64url_decode
from iclaim_hub.internal.v1 import (
    decision_intake_pb2_grpc,
    insurer_adapter_pb2,
    insurer_adapter_pb2_grpc,
)
from iclaim_hub.registry.store import RegistryStore
from services.insurer_adapter.keys import enrol_simulated_insurers
from services.insurer_adapter.service import InsurerAdapterServicer
from services.insurer_adapter.simulator import Timing
from services.insurer_adapter.store import PgAdapterStore
from services.insurer_adapter.worker import Worker, WorkerSettings

log = structlog.get_logger("iclaim.adapter")

SERVICE_NAME = insurer_adapter_pb2.DESCRIPTOR.services_by_name["InsurerAdapterService"].full_name


@dataclass(frozen=True)
class Config:
    database_url: str = field(repr=False)
    master_key: str = field(repr=False)  # base64url, 32 bytes
    addr: str = "127.0.0.1:50061"
    metrics_port: int = 9102
    router_target: str = "127.0.0.1:50051"
    review_s: float = 2.0  # REVIEW-…: PENDING_REVIEW, then APPROVED this much later
    slow_s: float = 10.0  # SLOW-…: decision this much after receipt
    poll_s: float = 0.25
    lease_s: float = 30.0
    rpc_deadline_s: float = 5.0
    retry_base_s: float = 0.2
    retry_max_s: float = 30.0
    enrol_interval_s: float = 30.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        try:
            SecretBox(b64url_decode(self.master_key))
        except ValueError as exc:
            raise ConfigError(f"{MASTER_KEY_ENV} must be 32 bytes, base64url") from exc
        if not self.database_url:
            raise ConfigError("ICLAIM_DATABASE_URL must be set")
        for name in ("poll_s", "lease_s", "rpc_deadline_s", "retry_base_s", "retry_max_s",
                     "enrol_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.review_s < 0 or self.slow_s < 0:
            raise ConfigError("simulator delays must not be negative")
        if self.retry_base_s > self.retry_max_s:
            raise ConfigError("retry base must not exceed retry max")

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            database_url=env_str("ICLAIM_DATABASE_URL"),
            master_key=env_str(MASTER_KEY_ENV),
            addr=env_addr("ICLAIM_ADAPTER_ADDR", "127.0.0.1:50061"),
            metrics_port=env_int("ICLAIM_ADAPTER_METRICS_PORT", 9102, lo=-1, hi=65535),
            router_target=env_addr("ICLAIM_ROUTER_TARGET", "127.0.0.1:50051"),
            review_s=env_float("ICLAIM_SIM_REVIEW_S", 2.0, lo=0, hi=3600),
            slow_s=env_float("ICLAIM_SIM_SLOW_S", 10.0, lo=0, hi=3600),
            poll_s=env_float("ICLAIM_ADAPTER_POLL_S", 0.25, lo=0.01, hi=60),
            lease_s=env_float("ICLAIM_ADAPTER_LEASE_S", 30.0, lo=1, hi=3600),
            rpc_deadline_s=env_float("ICLAIM_ADAPTER_ROUTER_DEADLINE_S", 5.0, lo=0.1, hi=120),
            retry_base_s=env_float("ICLAIM_ADAPTER_RETRY_BASE_S", 0.2, lo=0.01, hi=60),
            retry_max_s=env_float("ICLAIM_ADAPTER_RETRY_MAX_S", 30.0, lo=0.01, hi=3600),
            enrol_interval_s=env_float("ICLAIM_ADAPTER_ENROL_INTERVAL_S", 30.0, lo=0.1, hi=86400),
            log_level=env_str("ICLAIM_LOG_LEVEL", "INFO"),
        )

    def worker_settings(self) -> WorkerSettings:
        return WorkerSettings(
            timing=Timing(review_s=self.review_s, slow_s=self.slow_s),
            poll_s=self.poll_s,
            lease_s=self.lease_s,
            rpc_deadline_s=self.rpc_deadline_s,
            retry_base_s=self.retry_base_s,
            retry_max_s=self.retry_max_s,
            enrol_interval_s=self.enrol_interval_s,
        )


@dataclass
class AdapterServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    worker: Worker
    store: PgAdapterStore
    registry: RegistryStore
    _pool: asyncpg.Pool
    _channel: grpc.aio.Channel

    async def close(self) -> None:
        """After the gRPC server stopped: the worker, then its connections."""
        await self.worker.stop()
        await self._channel.close()
        await self._pool.close()

    async def stop(self, grace: float = 1.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.close()


class _SimulatedInsurers:
    """Which insurers this adapter holds keys for (refreshed on a miss)."""

    def __init__(self, store: PgAdapterStore) -> None:
        self._store = store
        self._codes: frozenset[str] = frozenset()
        self._refreshed = 0.0

    async def refresh(self) -> None:
        self._codes = frozenset(await self._store.current_keys())
        self._refreshed = time.monotonic()

    async def __call__(self, insurer_code: str) -> bool:
        if insurer_code not in self._codes and time.monotonic() - self._refreshed > 1.0:
            await self.refresh()
        return insurer_code in self._codes


async def build_server(config: Config) -> AdapterServer:
    """Migrates, enrols the simulated insurers, starts the worker and the server
    (bound to config.addr; port 0 picks a free one)."""
    box = SecretBox(b64url_decode(config.master_key))
    pool = await create_pool(config.database_url)
    try:
        store = PgAdapterStore(pool, box)
        registry = RegistryStore(pool, box)
        await registry.migrate()  # idempotent; lets the adapter start first
        await store.migrate()

        async def enrol() -> None:
            await enrol_simulated_insurers(registry, store)
            await simulated.refresh()

        simulated = _SimulatedInsurers(store)
        await enrol()

        channel = grpc.aio.insecure_channel(config.router_target, options=CLIENT_OPTIONS)
        worker = Worker(
            store=store,
            keys=store,
            registry=registry,
            router=decision_intake_pb2_grpc.DecisionIntakeServiceStub(channel),
            settings=config.worker_settings(),
            enrol=enrol,
        )
        server = new_server()
        insurer_adapter_pb2_grpc.add_InsurerAdapterServiceServicer_to_server(
            InsurerAdapterServicer(store, simulated, worker.notify), server
        )
        health_servicer = add_health_and_reflection(server, [SERVICE_NAME])
        port = server.add_insecure_port(config.addr)
        await server.start()
        worker.start()
        await mark_serving(health_servicer, [SERVICE_NAME])
    except BaseException:
        await pool.close()
        raise
    log.info("adapter_started", port=port, router=config.router_target)
    return AdapterServer(server, port, health_servicer, worker, store, registry, pool, channel)


async def _serve() -> None:
    config = Config.from_env()
    configure_logging(config.log_level)
    metrics_port = start_metrics_server(config.metrics_port)
    app = await build_server(config)
    log.info("serving", addr=config.addr, metrics_port=metrics_port)
    await run_until_signal(app.server, app.health, on_stop=app.close)


def main() -> None:
    asyncio.run(_serve())
