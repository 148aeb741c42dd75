"""Shared helpers for the audit_log service tests (no tests here)."""
from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from iclaim_hub.internal.v1 import audit_log_pb2_grpc as pb_grpc
from services.audit_log.server import Config, Running, build_server

DAY_S = 86_400


def event(
    i: int,
    *,
    origin: str = "10670",
    destination: str = "AIA",
    tx: str = "",
    age_days: float = 0.0,
    event_id: str | None = None,
) -> pb.AuditEvent:
    ev = pb.AuditEvent(
        event_id=event_id or f"ev-{i}",
        kind=pb.AUDIT_EVENT_KIND_CLAIM_STATE_CHANGE,
        origin_principal=origin,
        source_address="10.0.0.7",
        destination=destination,
        route="/iclaim.v1.ClaimService/SubmitClaim",
        size_bytes=1000 + i,
        duration_ms=i % 50,
        service_type="claim_router",
        outcome_code="OK",
        outcome_reason="CLAIM_STATE_RECEIVED",
        transaction_id=tx or f"tx-{i}",
        envelope_sha256="ab" * 32,
    )
    ev.occurred_at.FromSeconds(int(time.time() - age_days * DAY_S))
    return ev


@asynccontextmanager
async def audit_server(
    database_url: str, *, access_log: Path | None = None, box: SecretBox | None = None
) -> AsyncIterator[tuple[Running, pb_grpc.AuditLogServiceStub]]:
    config = Config(
        database_url=database_url,
        listen_addr="127.0.0.1:0",
        access_log=access_log,
        tail_poll_s=0.05,
        checkpoint_interval_s=3600,
        retention_interval_s=86_400,
    )
    running = await build_server(config, box=box or SecretBox(os.urandom(32)))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield running, pb_grpc.AuditLogServiceStub(channel)
    finally:
        await channel.close()
        await running.close()
