"""Wiring for the billing service: config from env, store, servicers, health,
reflection, metrics, the PAID outbox worker and graceful shutdown."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
from iclaim_hub.internal.v1 import billing_intake_pb2, billing_intake_pb2_grpc
from iclaim.v1 import billing_service_pb2, billing_service_pb2_grpc
from services.billing import metrics
from services.billing.domain import DEFAULT_CREDIT_DAYS, bangkok_date
from services.billing.notifier import PaidNotifier
from services.billing.service import BillingIntakeServicer, BillingServicer
from services.billing.store import PgBillingStore

log = structlog.get_logger("iclaim.billing")
SERVICE_NAMES = (
    billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
    billing_intake_pb2.DESCRIPTOR.services_by_name["BillingIntakeService"].full_name,
)
_TERM = re.compile(r"^([0-9]{5}):([A-Z0-9_]{2,16})=([0-9]{1,3})$")


def parse_credit_terms(raw: str) -> dict[tuple[str, str], int]:
    """`10670:AIA=30,10671:MTL=45` -> {(hospital, insurer): days}."""
    terms: dict[tuple[str, str], int] = {}
    for item in filter(None, (s.strip() for s in raw.split(","))):
        m = _TERM.match(item)
        if not m or int(m.group(3)) > 365:
            raise ConfigError(f"ICLAIM_BILLING_CREDIT_TERMS: bad entry {item!r}"
                              " (want HCODE:INSURER=DAYS, days 0..365)")
        terms[(m.group(1), m.group(2))] = int(m.group(3))
    return terms


@dataclass(frozen=True)
class Config:
    addr: str = "127.0.0.1:50081"
    metrics_port: int = 9104
    database_url: str = ""
    router_target: str = "127.0.0.1:50051"
    default_credit_days: int = DEFAULT_CREDIT_DAYS
    credit_terms: dict[tuple[str, str], int] = field(default_factory=dict)
    outbox_poll_s: float = 1.0
    rpc_deadline_s: float = 5.0
    metrics_refresh_s: float = 15.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            addr=env_addr("ICLAIM_BILLING_ADDR", "127.0.0.1:50081"),
            metrics_port=env_int("ICLAIM_BILLING_METRICS_PORT", 9104, lo=-1, hi=65535),
            database_url=env_str("ICLAIM_DATABASE_URL"),
            router_target=env_addr("ICLAIM_ROUTER_TARGET", "127.0.0.1:50051"),
            default_credit_days=env_int("ICLAIM_BILLING_CREDIT_DAYS", DEFAULT_CREDIT_DAYS,
                                        lo=0, hi=365),
            credit_terms=parse_credit_terms(os.environ.get("ICLAIM_BILLING_CREDIT_TERMS", "")),
            outbox_poll_s=env_float("ICLAIM_BILLING_OUTBOX_POLL_S", 1.0, lo=0.05, hi=60),
            log_level=os.environ.get("ICLAIM_LOG_LEVEL", "INFO"),
        )


@dataclass
class BillingServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    store: PgBillingStore
    notifier: PaidNotifier
    router_channel: grpc.aio.Channel
    tasks: list[asyncio.Task[None]]

    async def stop(self, grace: float | None = 1.0) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.server.stop(grace)
        await self.router_channel.close()


async def _refresh_metrics(store: PgBillingStore, every_s: float) -> None:
    while True:
        try:
            metrics.publish(await store.metrics_snapshot(bangkok_date(datetime.now(UTC))))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("metrics_refresh_failed")
        await asyncio.sleep(every_s)


async def build_server(config: Config, pool: asyncpg.Pool) -> BillingServer:
    """Migrates, binds config.addr (port 0 picks one) and starts serving and the
    background workers. `pool` is an asyncpg pool the caller owns."""
    store = PgBillingStore(pool, default_credit_days=config.default_credit_days)
    await store.migrate()
    for (hospital, insurer), days in config.credit_terms.items():
        await store.set_credit_term(hospital, insurer, days)
    channel = grpc.aio.insecure_channel(config.router_target, options=CLIENT_OPTIONS)
    notifier = PaidNotifier(store, channel, deadline_s=config.rpc_deadline_s,
                            poll_s=config.outbox_poll_s)
    server = new_server()
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(
        BillingServicer(store, on_paid=notifier.wake), server
    )
    billing_intake_pb2_grpc.add_BillingIntakeServiceServicer_to_server(
        BillingIntakeServicer(store), server
    )
    health_servicer = add_health_and_reflection(server, SERVICE_NAMES)
    port = server.add_insecure_port(config.addr)
    if port == 0:
        raise ConfigError(f"cannot bind {config.addr}")
    await server.start()
    await mark_serving(health_servicer, SERVICE_NAMES)
    tasks = [
        asyncio.create_task(notifier.run(), name="billing-paid-outbox"),
        asyncio.create_task(_refresh_metrics(store, config.metrics_refresh_s),
                            name="billing-metrics"),
    ]
    return BillingServer(server, port, health_servicer, store, notifier, channel, tasks)


async def serve(config: Config) -> None:
    pool = await create_pool(config.database_url)
    try:
        built = await build_server(config, pool)
        metrics_port = start_metrics_server(config.metrics_port)
        log.info("billing_serving", addr=config.addr, port=built.port, metrics_port=metrics_port)

        async def cleanup() -> None:
            for t in built.tasks:
                t.cancel()
            await built.router_channel.close()

        await run_until_signal(built.server, built.health, on_stop=cleanup)
    finally:
        await pool.close()


def main() -> None:
    config = Config.from_env()
    configure_logging(config.log_level)
    asyncio.run(serve(config))
