"""Gateway-pod sidecar: ships Envoy's access log to audit_log over Append.

`python -m services.audit_log.shipper`. In-cluster the gateway and audit_log
run in different pods, so audit_log cannot tail the file itself. shipping.py
does the work; this wires it: config, the channel to audit_log, grpc.health.v1
for the probes, and shutdown (on SIGTERM it first ships what is complete,
bounded by the flush window, then stops).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

from iclaim_hub.common.channels import INTERNAL_CLIENT_OPTIONS, internal_target
from iclaim_hub.common.config import env_addr, env_float, env_int
from iclaim_hub.common.server import (
    GrpcApp,
    ServeConfig,
    bind_server,
    run_service,
)
from iclaim_hub.internal.v1 import audit_log_pb2_grpc as pb_grpc
from services.audit_log.shipping import MAX_BATCH, Settings, Shipper

log = structlog.get_logger("audit_log.shipper")

HEALTH_NAME = "iclaim.audit.AccessLogShipper"
# Reconnect quickly once audit_log is back (gRPC's default backoff grows to 120 s).
CHANNEL_OPTIONS = [
    *INTERNAL_CLIENT_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class Config:
    serve: ServeConfig  # the health endpoint and /metrics
    shipping: Settings
    target: str = "127.0.0.1:50071"  # audit_log

    @classmethod
    def from_env(cls) -> Config:
        state = Path(os.environ.get("ICLAIM_STATE_DIR") or ".iclaim/dev")
        access_log = Path(os.environ.get("ICLAIM_ENVOY_ACCESS_LOG") or state / "envoy-access.log")
        default_state = access_log.with_name(access_log.name + ".shipper-state")
        return cls(
            # ICLAIM_SHIPPER_ADDR (grpc.health.v1 only), ICLAIM_SHIPPER_METRICS_PORT
            serve=ServeConfig.from_env("SHIPPER", "127.0.0.1:50072", 9106),
            shipping=Settings(
                access_log=access_log,
                state_path=Path(os.environ.get("ICLAIM_SHIPPER_STATE") or default_state),
                batch_size=env_int("ICLAIM_SHIPPER_BATCH", 500, lo=1, hi=MAX_BATCH),
                poll_s=env_float("ICLAIM_SHIPPER_POLL_S", 0.2, lo=0.01, hi=60),
                deadline_s=env_float("ICLAIM_SHIPPER_DEADLINE_S", 5.0, lo=0.1, hi=120),
                backoff_max_s=env_float("ICLAIM_SHIPPER_BACKOFF_MAX_S", 5.0, lo=0.05, hi=300),
                flush_s=env_float("ICLAIM_SHIPPER_FLUSH_S", 10.0, lo=0, hi=300),
                rotate_bytes=env_int("ICLAIM_SHIPPER_ROTATE_BYTES", 0, lo=0, hi=1 << 40),
                envoy_admin=(
                    env_addr("ICLAIM_ENVOY_ADMIN_ADDR", "")
                    if os.environ.get("ICLAIM_ENVOY_ADMIN_ADDR")
                    else ""
                ),
            ),
            target=env_addr("ICLAIM_AUDIT_TARGET", "127.0.0.1:50071"),
        )


@dataclass(kw_only=True)
class ShipperApp(GrpcApp):
    """The health server plus the shipping task, which stops first: what is
    complete is shipped while the probes still see SERVING."""

    shipper: Shipper
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        await super().start()
        self._task = asyncio.create_task(self.shipper.run(), name="access-log-shipper")

    async def stop(self, grace: float) -> None:
        self.shipper.stop()
        try:
            if self._task is not None:
                await self._task  # returns once flushed or out of flush time
        finally:
            await super().stop(grace)


async def build_shipper(config: Config) -> ShipperApp:
    """Binds the health endpoint; starts nothing."""
    channel = grpc.aio.insecure_channel(internal_target(config.target), options=CHANNEL_OPTIONS)
    shipper = Shipper(config.shipping, pb_grpc.AuditLogServiceStub(channel))
    server, port, health = await bind_server(config.serve.listen_addr, [], [HEALTH_NAME])
    if port == 0:
        await channel.close()
        raise RuntimeError(f"cannot bind {config.serve.listen_addr}")
    log.info(
        "shipper_built",
        access_log=str(config.shipping.access_log),
        state=str(config.shipping.state_path),
        target=config.target,
    )
    return ShipperApp(server=server, port=port, health=health, cleanup=channel.close, shipper=shipper)


def main() -> None:
    run_service(Config.from_env, build_shipper)


if __name__ == "__main__":
    main()
