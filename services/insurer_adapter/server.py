"""Wiring of the insurer adapter: config, stores, enrolment, worker, gRPC server."""

from __future__ import annotations

from functools import partial
from dataclasses import dataclass, field

import grpc
import structlog

from iclaim.limits import CLIENT_OPTIONS
from iclaim_hub.common.config import ConfigError, env_addr, env_float, env_str
from iclaim_hub.common.db import create_pool
from iclaim_hub.common.server import (
    GrpcApp,
    ServeConfig,
    bind_server,
    run_service,
)
from iclaim_hub.crypto.secretbox import SecretBox, check_master_key, master_key_from_env
from iclaim_hub.internal.v1 import (
    decision_intake_pb2_grpc,
    insurer_adapter_pb2,
    insurer_adapter_pb2_grpc,
)
from iclaim_hub.registry.store import RegistryStore
from services.insurer_adapter.router_client import RouterDecisionIntake
from services.insurer_adapter.service import InsurerAdapterServicer
from services.insurer_adapter.simulator import Timing
from services.insurer_adapter.store import PgAdapterStore
from services.insurer_adapter.usecases import (
    ClaimIntake,
    Decider,
    Sender,
    SimulatedInsurers,
    WorkSettings,
)
from services.insurer_adapter.worker import Worker

log = structlog.get_logger("iclaim.adapter")

SERVICE_NAME = insurer_adapter_pb2.DESCRIPTOR.services_by_name["InsurerAdapterService"].full_name


@dataclass(frozen=True)
class Config:
    serve: ServeConfig
    database_url: str = field(repr=False)
    master_key: bytes = field(repr=False)
    router_target: str = "127.0.0.1:50051"
    review_s: float = 2.0  # REVIEW-…: PENDING_REVIEW, then APPROVED this much later
    slow_s: float = 10.0  # SLOW-…: decision this much after receipt
    poll_s: float = 0.25
    lease_s: float = 30.0
    rpc_deadline_s: float = 5.0
    retry_base_s: float = 0.2
    retry_max_s: float = 30.0
    enrol_interval_s: float = 30.0

    def __post_init__(self) -> None:
        check_master_key(self.master_key)
        if not self.database_url:
            raise ConfigError("ICLAIM_DATABASE_URL must be set")
        for name in (
            "poll_s",
            "lease_s",
            "rpc_deadline_s",
            "retry_base_s",
            "retry_max_s",
            "enrol_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.review_s < 0 or self.slow_s < 0:
            raise ConfigError("simulator delays must not be negative")
        if self.retry_base_s > self.retry_max_s:
            raise ConfigError("retry base must not exceed retry max")

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            serve=ServeConfig.from_env("ADAPTER", "127.0.0.1:50061", 9102),
            database_url=env_str("ICLAIM_DATABASE_URL"),
            master_key=master_key_from_env(),
            router_target=env_addr("ICLAIM_ROUTER_TARGET", "127.0.0.1:50051"),
            review_s=env_float("ICLAIM_SIM_REVIEW_S", 2.0, lo=0, hi=3600),
            slow_s=env_float("ICLAIM_SIM_SLOW_S", 10.0, lo=0, hi=3600),
            poll_s=env_float("ICLAIM_ADAPTER_POLL_S", 0.25, lo=0.01, hi=60),
            lease_s=env_float("ICLAIM_ADAPTER_LEASE_S", 30.0, lo=1, hi=3600),
            rpc_deadline_s=env_float("ICLAIM_ADAPTER_ROUTER_DEADLINE_S", 5.0, lo=0.1, hi=120),
            retry_base_s=env_float("ICLAIM_ADAPTER_RETRY_BASE_S", 0.2, lo=0.01, hi=60),
            retry_max_s=env_float("ICLAIM_ADAPTER_RETRY_MAX_S", 30.0, lo=0.01, hi=3600),
            enrol_interval_s=env_float("ICLAIM_ADAPTER_ENROL_INTERVAL_S", 30.0, lo=0.1, hi=86400),
        )

    def work_settings(self) -> WorkSettings:
        return WorkSettings(
            timing=Timing(review_s=self.review_s, slow_s=self.slow_s),
            lease_s=self.lease_s,
            retry_base_s=self.retry_base_s,
            retry_max_s=self.retry_max_s,
        )


async def build_server(config: Config) -> GrpcApp:
    """Migrates, enrols the simulated insurers and builds the worker and the
    server, bound to config.serve.listen_addr (port 0 picks a free one)."""
    box = SecretBox(config.master_key)
    pool = await create_pool(config.database_url)
    channel = grpc.aio.insecure_channel(config.router_target, options=CLIENT_OPTIONS)
    try:
        store = PgAdapterStore(pool, box)
        registry = RegistryStore(pool, box)
        await registry.migrate()  # idempotent; lets the adapter start first
        await store.migrate()
        insurers = SimulatedInsurers(registry, store)
        await insurers.enrol()
        router = RouterDecisionIntake(
            decision_intake_pb2_grpc.DecisionIntakeServiceStub(channel), config.rpc_deadline_s
        )
        settings = config.work_settings()
        worker = Worker(
            decider=Decider(store, store, registry, settings),
            sender=Sender(store, router, settings),
            enrol=insurers.enrol,
            release_leases=store.release_leases,
            poll_s=config.poll_s,
            enrol_interval_s=config.enrol_interval_s,
        )
        servicer = InsurerAdapterServicer(ClaimIntake(store, insurers, worker.notify))
        server, port, health = await bind_server(
            config.serve.listen_addr,
            [partial(insurer_adapter_pb2_grpc.add_InsurerAdapterServiceServicer_to_server, servicer)],
            [SERVICE_NAME],
        )
    except BaseException:
        await channel.close()
        await pool.close()
        raise

    async def close() -> None:
        # After the gRPC server stopped: the worker, then its connections.
        await worker.stop()
        await channel.close()
        await pool.close()

    log.info("adapter_built", port=port, router=config.router_target)
    return GrpcApp(server, port, health, workers=(worker.start,), cleanup=close)


def main() -> None:
    run_service(Config.from_env, build_server)
