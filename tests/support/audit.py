"""Shared harness for the audit_log tests: events, access-log lines, a config
and a running server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from iclaim_hub.common.access_log import ENVOY_JSON_FORMAT
from iclaim_hub.common.server import ServeConfig
from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from iclaim_hub.internal.v1 import audit_log_pb2_grpc as pb_grpc
from services.audit_log.server import AuditApp, Config, build_server

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


def line(i: int, **over: object) -> bytes:
    """One Envoy access-log line (event id 5f0c2c1e-0000-4000-8000-<i:012d>)."""
    doc: dict[str, object] = {
        "event_id": f"5f0c2c1e-0000-4000-8000-{i:012d}",
        "start_time": f"{time.time():.3f}",
        "principal": "10670",
        "claimed_client": "10670",
        "source_address": "192.0.2.10",
        "route": "/iclaim.v1.ClaimService/SubmitClaim",
        "upstream_cluster": "claim_router",
        "request_bytes": 1200,
        "response_bytes": 300,
        "duration_ms": 12,
        "grpc_status": 0,
        "reason_trailer": None,
        "reason_header": None,
        "req_transaction_id": None,
        "resp_transaction_id": "01JD3T0000000000000000000" if i % 2 else None,
        "envelope_sha256": "cd" * 32,
        "request": f"h:{i:032x}",
    }
    assert set(doc) == set(ENVOY_JSON_FORMAT)  # the contract Envoy is configured with
    doc.update(over)
    return json.dumps(doc).encode() + b"\n"


def audit_config(
    database_url: str,
    *,
    listen_addr: str = "127.0.0.1:0",
    master_key: bytes | None = None,
    **over: Any,
) -> Config:
    """A test config: any free port, no /metrics, quiet background loops."""
    settings: dict[str, Any] = {
        "access_log": None,
        "tail_poll_s": 0.05,
        "checkpoint_interval_s": 3600,
        "retention_interval_s": 86_400,
        "retention_at_start": False,  # only the test's own ApplyRetention expires
    }
    settings.update(over)
    return Config(
        serve=ServeConfig(listen_addr=listen_addr, metrics_port=-1),
        database_url=database_url,
        master_key=master_key or os.urandom(32),
        **settings,
    )


@asynccontextmanager
async def audit_server(
    database_url: str, *, access_log: Path | None = None
) -> AsyncIterator[tuple[AuditApp, pb_grpc.AuditLogServiceStub]]:
    app = await build_server(audit_config(database_url, access_log=access_log))
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield app, pb_grpc.AuditLogServiceStub(channel)
    finally:
        await channel.close()
        await app.stop(1.0)
