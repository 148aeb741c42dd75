"""Wiring for audit_log: config from env, store, background loops, servicers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from iclaim.v1 import audit_trail_service_pb2, audit_trail_service_pb2_grpc
from iclaim_hub.common.config import ConfigError, env_bool, env_float, env_int, env_str
from iclaim_hub.common.db import create_pool
from iclaim_hub.common.server import (
    GrpcApp,
    ServeConfig,
    bind_server,
    run_service,
)
from iclaim_hub.crypto.secretbox import SecretBox, check_master_key, master_key_from_env
from iclaim_hub.internal.v1 import audit_log_pb2, audit_log_pb2_grpc
from services.audit_log.appender import Appender
from services.audit_log.checkpointer import Checkpointer, load_or_create_signer
from services.audit_log.db_login import ALLOW_OWNER_ENV, check_login
from services.audit_log.retention import Retention
from services.audit_log.service import AuditLogServicer
from services.audit_log.store import AuditStore
from services.audit_log.tailer import AccessLogTailer
from services.audit_log.trail import AuditTrailServicer
from services.audit_log.usecases import AuditLog

log = structlog.get_logger("audit_log")
SERVICE_NAME = audit_log_pb2.DESCRIPTOR.services_by_name["AuditLogService"].full_name
TRAIL_SERVICE_NAME = audit_trail_service_pb2.DESCRIPTOR.services_by_name["AuditTrailService"].full_name


@dataclass(frozen=True)
class Config:
    serve: ServeConfig
    database_url: str = field(repr=False)
    master_key: bytes = field(repr=False)  # seals the checkpoint signing key
    origin: str = "iclaim.dev/audit"
    access_log: Path | None = None  # None: do not tail Envoy's log
    tail_poll_s: float = 0.2
    checkpoint_interval_s: float = 60.0
    retention_days: int = 90
    retention_interval_s: float = 3600.0
    # A pass at start (expiry does not wait out a restart); tests that expire on
    # their own call turn it off, or it may race their first entries.
    retention_at_start: bool = True
    # Dev only: start even if the login cannot act as iclaim_audit_writer.
    allow_owner: bool = False

    def __post_init__(self) -> None:
        check_master_key(self.master_key)
        if not 90 <= self.retention_days <= 730:
            raise ConfigError("ICLAIM_AUDIT_RETENTION_DAYS must be within 90..730")
        if not self.origin or any(c.isspace() or c == "+" for c in self.origin):
            raise ConfigError("ICLAIM_AUDIT_ORIGIN must be one token without spaces or '+'")

    @classmethod
    def from_env(cls) -> Config:
        state = Path(os.environ.get("ICLAIM_STATE_DIR") or ".iclaim/dev")
        access_log = Path(os.environ.get("ICLAIM_ENVOY_ACCESS_LOG") or state / "envoy-access.log")
        return cls(
            # ICLAIM_AUDIT_ADDR, ICLAIM_AUDIT_METRICS_PORT
            serve=ServeConfig.from_env("AUDIT", "127.0.0.1:50071", 9103),
            database_url=env_str("ICLAIM_DATABASE_URL"),
            master_key=master_key_from_env(),
            origin=env_str("ICLAIM_AUDIT_ORIGIN", "iclaim.dev/audit"),
            access_log=access_log if env_bool("ICLAIM_AUDIT_TAIL_ACCESS_LOG", True) else None,
            tail_poll_s=env_float("ICLAIM_AUDIT_TAIL_POLL_S", 0.2, lo=0.01, hi=60),
            checkpoint_interval_s=env_float("ICLAIM_AUDIT_CHECKPOINT_INTERVAL_S", 60.0, lo=0.1, hi=86_400),
            retention_days=env_int("ICLAIM_AUDIT_RETENTION_DAYS", 90, lo=90, hi=730),
            retention_interval_s=env_float("ICLAIM_AUDIT_RETENTION_INTERVAL_S", 3600.0, lo=1, hi=86_400),
            allow_owner=env_bool(ALLOW_OWNER_ENV, False),
        )


class _Loops:
    """Background loops: started with the server, cancelled after it drained."""

    def __init__(self) -> None:
        self._loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._loops.append((name, loop))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(loop(), name=name) for name, loop in self._loops]

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(kw_only=True)
class AuditApp(GrpcApp):
    """The service, with the handles tests reach for."""

    pool: asyncpg.Pool
    store: AuditStore


async def build_server(config: Config) -> AuditApp:
    """Migrates, builds the loops and the servicers, binds; starts nothing."""
    pool = await create_pool(config.database_url)
    try:
        store = AuditStore(pool)
        check_login(await store.migrate(), config.allow_owner)
        signer = await load_or_create_signer(store, SecretBox(config.master_key), config.origin)
    except BaseException:
        await pool.close()
        raise
    checkpointer = Checkpointer(store, signer, config.origin)
    appender = Appender(store)
    retention = Retention(store, config.retention_days)
    loops = _Loops()
    loops.add("audit-appender", appender.run)
    loops.add("audit-checkpointer", lambda: checkpointer.run(config.checkpoint_interval_s))
    loops.add(
        "audit-retention",
        lambda: retention.run(config.retention_interval_s, at_start=config.retention_at_start),
    )
    if config.access_log is not None:
        loops.add("audit-tailer", AccessLogTailer(store, config.access_log, config.tail_poll_s).run)

    usecases = AuditLog(store, store, appender, checkpointer, retention)
    servicers = [
        partial(audit_log_pb2_grpc.add_AuditLogServiceServicer_to_server, AuditLogServicer(usecases)),
        # The public, read-only trail (routed by the gateway; own entries only).
        partial(
            audit_trail_service_pb2_grpc.add_AuditTrailServiceServicer_to_server,
            AuditTrailServicer(usecases),
        ),
    ]
    server, port, health = await bind_server(
        config.serve.listen_addr, servicers, [SERVICE_NAME, TRAIL_SERVICE_NAME]
    )
    if port == 0:
        await pool.close()
        raise RuntimeError(f"cannot bind {config.serve.listen_addr}")

    async def cleanup() -> None:
        await loops.cancel()
        await pool.close()

    log.info(
        "audit_log_built",
        access_log=str(config.access_log),
        writer_role=store.writer_role_enforced,
        verifier_key=checkpointer.verifier_key,
    )
    return AuditApp(
        server=server,
        port=port,
        health=health,
        workers=[loops.start],
        cleanup=cleanup,
        pool=pool,
        store=store,
    )


def main() -> None:
    run_service(Config.from_env, build_server)
