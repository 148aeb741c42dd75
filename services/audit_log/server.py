"""Wiring for audit_log: config from env, store, background tasks, server."""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import structlog
from grpc_health.v1 import health as grpc_health

from iclaim_hub.common.config import ConfigError, env_addr, env_bool, env_float, env_int, env_str
from iclaim_hub.common.db import create_pool
from iclaim_hub.common.logging import configure_logging
from iclaim_hub.common.metrics import start_metrics_server
from iclaim_hub.common.server import (
    add_health_and_reflection,
    mark_serving,
    new_server,
    run_until_signal,
)
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.internal.v1 import audit_log_pb2, audit_log_pb2_grpc
from iclaim.v1 import audit_trail_service_pb2, audit_trail_service_pb2_grpc
from services.audit_log.appender import Appender
from services.audit_log.checkpointer import Checkpointer, load_or_create_signer
from services.audit_log.service import AuditLogServicer, expire_all
from services.audit_log.store import AuditStore
from services.audit_log.tailer import AccessLogTailer
from services.audit_log.trail import AuditTrailServicer

log = structlog.get_logger("audit_log")
SERVICE_NAME = audit_log_pb2.DESCRIPTOR.services_by_name["AuditLogService"].full_name
TRAIL_SERVICE_NAME = audit_trail_service_pb2.DESCRIPTOR.services_by_name[
    "AuditTrailService"
].full_name


@dataclass(frozen=True)
class Config:
    database_url: str
    listen_addr: str = "127.0.0.1:50071"
    metrics_port: int = 9103
    origin: str = "iclaim.dev/audit"
    access_log: Path | None = None  # None: do not tail Envoy's log
    tail_poll_s: float = 0.2
    checkpoint_interval_s: float = 60.0
    retention_days: int = 90
    retention_interval_s: float = 3600.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not 90 <= self.retention_days <= 730:
            raise ConfigError("ICLAIM_AUDIT_RETENTION_DAYS must be within 90..730")
        if not self.origin or any(c.isspace() or c == "+" for c in self.origin):
            raise ConfigError("ICLAIM_AUDIT_ORIGIN must be one token without spaces or '+'")

    @classmethod
    def from_env(cls) -> Config:
        state = Path(os.environ.get("ICLAIM_STATE_DIR") or ".iclaim/dev")
        access_log = Path(os.environ.get("ICLAIM_ENVOY_ACCESS_LOG") or state / "envoy-access.log")
        return cls(
            database_url=env_str("ICLAIM_DATABASE_URL"),
            listen_addr=env_addr("ICLAIM_AUDIT_ADDR", "127.0.0.1:50071"),
            metrics_port=env_int("ICLAIM_AUDIT_METRICS_PORT", 9103, lo=-1, hi=65535),
            origin=env_str("ICLAIM_AUDIT_ORIGIN", "iclaim.dev/audit"),
            access_log=access_log if env_bool("ICLAIM_AUDIT_TAIL_ACCESS_LOG", True) else None,
            tail_poll_s=env_float("ICLAIM_AUDIT_TAIL_POLL_S", 0.2, lo=0.01, hi=60),
            checkpoint_interval_s=env_float(
                "ICLAIM_AUDIT_CHECKPOINT_INTERVAL_S", 60.0, lo=0.1, hi=86_400
            ),
            retention_days=env_int("ICLAIM_AUDIT_RETENTION_DAYS", 90, lo=90, hi=730),
            retention_interval_s=env_float(
                "ICLAIM_AUDIT_RETENTION_INTERVAL_S", 3600.0, lo=1, hi=86_400
            ),
            log_level=os.environ.get("ICLAIM_LOG_LEVEL", "INFO"),
        )


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    pool: asyncpg.Pool
    store: AuditStore
    checkpointer: Checkpointer
    health: grpc_health.aio.HealthServicer
    tasks: list[asyncio.Task[None]]

    async def stop_tasks(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def close(self, grace: float = 1.0) -> None:
        await self.server.stop(grace)
        await self.stop_tasks()
        await self.pool.close()


async def _retention_loop(store: AuditStore, days: int, interval_s: float) -> None:
    while True:
        try:
            n = await expire_all(store, days)
            if n:
                log.info("entries_expired", count=n, retention_days=days)
        except Exception:
            log.exception("retention_failed")
        await asyncio.sleep(interval_s)


async def build_server(config: Config, *, box: SecretBox | None = None) -> Running:
    """Migrates, starts the background tasks and the server (port 0 allowed)."""
    pool = await create_pool(config.database_url)
    store = AuditStore(pool)
    await store.migrate()
    signer = await load_or_create_signer(store, box or SecretBox.from_env(), config.origin)
    checkpointer = Checkpointer(store, signer, config.origin)
    appender = Appender(store)
    server = new_server()
    log_servicer = AuditLogServicer(store, appender, checkpointer, config.retention_days)
    audit_log_pb2_grpc.add_AuditLogServiceServicer_to_server(log_servicer, server)
    # The public, read-only trail (routed by the gateway; own entries only).
    audit_trail_service_pb2_grpc.add_AuditTrailServiceServicer_to_server(
        AuditTrailServicer(log_servicer), server
    )
    health = add_health_and_reflection(server, [SERVICE_NAME, TRAIL_SERVICE_NAME])
    port = server.add_insecure_port(config.listen_addr)
    if port == 0:
        raise RuntimeError(f"cannot bind {config.listen_addr}")
    tasks = [
        asyncio.create_task(appender.run(), name="audit-appender"),
        asyncio.create_task(
            checkpointer.run(config.checkpoint_interval_s), name="audit-checkpointer"
        ),
        asyncio.create_task(
            _retention_loop(store, config.retention_days, config.retention_interval_s),
            name="audit-retention",
        ),
    ]
    if config.access_log is not None:
        tailer = AccessLogTailer(store, config.access_log, config.tail_poll_s)
        tasks.append(asyncio.create_task(tailer.run(), name="audit-tailer"))
    await server.start()
    await mark_serving(health, [SERVICE_NAME])
    return Running(server, port, pool, store, checkpointer, health, tasks)


async def _serve(config: Config) -> None:
    running = await build_server(config)
    metrics_port = start_metrics_server(config.metrics_port)
    log.info(
        "audit_log_started", addr=config.listen_addr, port=running.port, metrics_port=metrics_port,
        access_log=str(config.access_log), writer_role=running.store.writer_role_enforced,
        verifier_key=running.checkpointer.verifier_key,
    )

    async def cleanup() -> None:
        await running.stop_tasks()
        await running.pool.close()

    await run_until_signal(running.server, running.health, on_stop=cleanup)


def main() -> None:
    config = Config.from_env()
    configure_logging(config.log_level)
    asyncio.run(_serve(config))
