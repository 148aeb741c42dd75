"""Wiring for the billing service: config from env, pool, store, use cases,
servicers, health, reflection, and the background work (the PAID outbox and
the metrics refresh)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog

from iclaim_hub.common.channels import INTERNAL_CLIENT_OPTIONS, internal_target
from iclaim.v1 import billing_service_pb2, billing_service_pb2_grpc
from iclaim_hub.common.config import ConfigError, env_addr, env_float, env_int, env_str
from iclaim_hub.common.db import create_pool
from iclaim_hub.common.grpc_tracing import client_interceptors
from iclaim_hub.common.server import (
    GrpcApp,
    ServeConfig,
    bind_server,
    run_service,
)
from iclaim_hub.internal.v1 import billing_intake_pb2, billing_intake_pb2_grpc
from services.billing import metrics
from services.billing.domain import DEFAULT_CREDIT_DAYS, bangkok_date
from services.billing.notifier import PaidNotifier
from services.billing.router_decisions import RouterDecisions
from services.billing.service import BillingIntakeServicer, BillingServicer
from services.billing.store import PgBillingStore
from services.billing.usecases import Billing

log = structlog.get_logger("iclaim.billing")
SERVICE_NAMES = (
    billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
    billing_intake_pb2.DESCRIPTOR.services_by_name["BillingIntakeService"].full_name,
)
DB_POOL_SIZE = 20
_TERM = re.compile(r"^([0-9]{5}):([A-Z0-9_]{2,16})=([0-9]{1,3})$")


def parse_credit_terms(raw: str) -> dict[tuple[str, str], int]:
    """`10670:AIA=30,10671:MTL=45` -> {(hospital, insurer): days}."""
    terms: dict[tuple[str, str], int] = {}
    for item in filter(None, (s.strip() for s in raw.split(","))):
        m = _TERM.match(item)
        if not m or int(m.group(3)) > 365:
            raise ConfigError(
                f"ICLAIM_BILLING_CREDIT_TERMS: bad entry {item!r} (want HCODE:INSURER=DAYS, days 0..365)"
            )
        terms[(m.group(1), m.group(2))] = int(m.group(3))
    return terms


@dataclass(frozen=True)
class Config:
    serve: ServeConfig
    database_url: str
    router_target: str = "127.0.0.1:50051"
    default_credit_days: int = DEFAULT_CREDIT_DAYS
    credit_terms: Mapping[tuple[str, str], int] = field(default_factory=dict)
    outbox_poll_s: float = 1.0
    rpc_deadline_s: float = 5.0
    metrics_refresh_s: float = 15.0

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            serve=ServeConfig.from_env("BILLING", "127.0.0.1:50081", 9104),
            database_url=env_str("ICLAIM_DATABASE_URL"),
            router_target=env_addr("ICLAIM_ROUTER_TARGET", "127.0.0.1:50051"),
            default_credit_days=env_int("ICLAIM_BILLING_CREDIT_DAYS", DEFAULT_CREDIT_DAYS, lo=0, hi=365),
            credit_terms=parse_credit_terms(os.environ.get("ICLAIM_BILLING_CREDIT_TERMS", "")),
            outbox_poll_s=env_float("ICLAIM_BILLING_OUTBOX_POLL_S", 1.0, lo=0.05, hi=60),
        )


@dataclass(kw_only=True)
class BillingApp(GrpcApp):
    # The use cases behind the servicers, for tests and the bench to drive directly.
    usecases: Billing


class _Background:
    """Named loops started with the server and cancelled after it drains."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def starter(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
        def start() -> None:
            self._tasks.append(asyncio.create_task(loop(), name=name))

        return start

    async def cancel(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()


async def _refresh_metrics(billing: Billing, every_s: float) -> None:
    while True:
        try:
            metrics.publish(await billing.metrics_snapshot(bangkok_date(datetime.now(UTC))))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("metrics_refresh_failed")
        await asyncio.sleep(every_s)


async def build_server(config: Config) -> BillingApp:
    """Migrates and binds config.serve.listen_addr (port 0 picks one); returns
    the app unstarted."""
    pool = await create_pool(config.database_url, max_size=DB_POOL_SIZE)
    channel: grpc.aio.Channel | None = None
    try:
        store = PgBillingStore(pool)
        await store.migrate()
        for (hospital, insurer), days in config.credit_terms.items():
            await store.set_credit_term(hospital, insurer, days)
        channel = grpc.aio.insecure_channel(
            internal_target(config.router_target),
            options=INTERNAL_CLIENT_OPTIONS,
            interceptors=client_interceptors(),
        )
        notifier = PaidNotifier(store, channel, deadline_s=config.rpc_deadline_s, poll_s=config.outbox_poll_s)
        billing = Billing(
            store,
            default_credit_days=config.default_credit_days,
            on_paid=notifier.wake,
            decisions=RouterDecisions(channel, deadline_s=config.rpc_deadline_s),
        )
        servicers = [
            partial(billing_service_pb2_grpc.add_BillingServiceServicer_to_server, BillingServicer(billing)),
            partial(
                billing_intake_pb2_grpc.add_BillingIntakeServiceServicer_to_server,
                BillingIntakeServicer(billing),
            ),
        ]
        server, port, health = await bind_server(config.serve.listen_addr, servicers, SERVICE_NAMES)
    except BaseException:
        if channel is not None:
            await channel.close()
        await pool.close()
        raise

    background = _Background()
    router_channel = channel

    async def cleanup() -> None:
        await background.cancel()
        await router_channel.close()
        await pool.close()

    return BillingApp(
        server=server,
        port=port,
        health=health,
        workers=(
            background.starter("billing-paid-outbox", notifier.run),
            background.starter(
                "billing-metrics", lambda: _refresh_metrics(billing, config.metrics_refresh_s)
            ),
        ),
        cleanup=cleanup,
        usecases=billing,
    )


def main() -> None:
    run_service(Config.from_env, build_server)
