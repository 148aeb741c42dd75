"""Gateway-pod sidecar: ships Envoy's access log to audit_log over Append.

`python -m services.audit_log.shipper`. In-cluster the gateway and audit_log
run in different pods, so audit_log cannot tail the file itself. This reads
complete lines with the tailer's own code (same mapping, same rotation and
truncation handling), sends them in batches, and records its position in a
local state file only after audit_log acknowledged them (= durable). A crash
resends at most one chunk; the event id (Envoy's x-request-id) deduplicates it.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health_pb2
from prometheus_client import Counter, Gauge

from iclaim.audit.entry import AuditEntry
from iclaim_hub.audit.wire import event_of_entry
from iclaim_hub.common.config import ConfigError, env_addr, env_float, env_int, env_str
from iclaim_hub.common.logging import configure_logging
from iclaim_hub.common.metrics import start_metrics_server
from iclaim_hub.common.server import (
    CLIENT_OPTIONS,
    add_health_and_reflection,
    mark_serving,
    new_server,
)
from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from iclaim_hub.internal.v1 import audit_log_pb2_grpc as pb_grpc
from services.audit_log.shipper_state import load_position, save_position
from services.audit_log.tailer import (
    Position,
    file_id,
    next_position,
    plan_read,
    read_chunk,
    rotated_path,
)

log = structlog.get_logger("audit_log.shipper")

HEALTH_NAME = "iclaim.audit.AccessLogShipper"
MAX_BATCH = 1000  # AuditLogService.Append's limit per call
# Reconnect quickly once audit_log is back (gRPC's default backoff grows to 120 s).
CHANNEL_OPTIONS = [
    *CLIENT_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

LINES_SHIPPED = Counter(
    "iclaim_shipper_lines_shipped_total", "Access-log lines acknowledged by audit_log."
)
DUPLICATES = Counter(
    "iclaim_shipper_duplicates_total", "Shipped lines audit_log already had (resends)."
)
BATCHES = Counter("iclaim_shipper_batches_total", "Append calls acknowledged by audit_log.")
APPEND_FAILURES = Counter(
    "iclaim_shipper_append_failures_total", "Append calls that failed (retried).", ["code"]
)
MALFORMED = Counter(
    "iclaim_shipper_malformed_lines_total", "Access-log lines skipped as malformed."
)
REJECTED = Counter(
    "iclaim_shipper_rejected_events_total", "Events audit_log refused as invalid (skipped)."
)
LAG_BYTES = Gauge("iclaim_shipper_lag_bytes", "Complete or partial bytes not yet shipped.")


@dataclass(frozen=True)
class Config:
    access_log: Path
    state_path: Path
    target: str = "127.0.0.1:50071"
    listen_addr: str = "127.0.0.1:50072"
    metrics_port: int = 9106
    batch_size: int = 500
    poll_s: float = 0.2
    deadline_s: float = 5.0
    backoff_max_s: float = 5.0
    flush_s: float = 10.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ConfigError(f"ICLAIM_SHIPPER_BATCH must be within 1..{MAX_BATCH}")
        if self.state_path in (self.access_log, rotated_path(self.access_log)):
            raise ConfigError("ICLAIM_SHIPPER_STATE must not be the access log")

    @classmethod
    def from_env(cls) -> Config:
        state = Path(os.environ.get("ICLAIM_STATE_DIR") or ".iclaim/dev")
        access_log = Path(os.environ.get("ICLAIM_ENVOY_ACCESS_LOG") or state / "envoy-access.log")
        default_state = access_log.with_name(access_log.name + ".shipper-state")
        return cls(
            access_log=access_log,
            state_path=Path(os.environ.get("ICLAIM_SHIPPER_STATE") or default_state),
            target=env_addr("ICLAIM_AUDIT_TARGET", "127.0.0.1:50071"),
            listen_addr=env_addr("ICLAIM_SHIPPER_ADDR", "127.0.0.1:50072"),
            metrics_port=env_int("ICLAIM_SHIPPER_METRICS_PORT", 9106, lo=-1, hi=65535),
            batch_size=env_int("ICLAIM_SHIPPER_BATCH", 500, lo=1, hi=MAX_BATCH),
            poll_s=env_float("ICLAIM_SHIPPER_POLL_S", 0.2, lo=0.01, hi=60),
            deadline_s=env_float("ICLAIM_SHIPPER_DEADLINE_S", 5.0, lo=0.1, hi=120),
            backoff_max_s=env_float("ICLAIM_SHIPPER_BACKOFF_MAX_S", 5.0, lo=0.05, hi=300),
            flush_s=env_float("ICLAIM_SHIPPER_FLUSH_S", 10.0, lo=0, hi=300),
            log_level=env_str("ICLAIM_LOG_LEVEL", "INFO"),
        )


class _OutOfTime(Exception):
    """Stopping and the flush window is over: leave the rest for the next start."""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def lag_bytes(path: Path, pos: Position | None) -> int:
    if pos is None:
        return _size(path)
    if file_id(path) == pos.file_id:
        return max(_size(path) - pos.byte_offset, 0)
    rotated = rotated_path(path)
    if file_id(rotated) == pos.file_id:
        return max(_size(rotated) - pos.byte_offset, 0) + _size(path)
    return _size(path)


class Shipper:
    def __init__(self, config: Config, stub: pb_grpc.AuditLogServiceAsyncStub) -> None:
        self._cfg = config
        self._stub = stub
        self._pos = load_position(config.state_path)
        self._stop = asyncio.Event()
        self._flush_until: float | None = None

    def stop(self) -> None:
        self._stop.set()

    def _out_of_time(self) -> bool:
        if not self._stop.is_set():
            return False
        if self._flush_until is None:
            self._flush_until = time.monotonic() + self._cfg.flush_s
        return time.monotonic() >= self._flush_until

    async def step(self) -> bool:
        """Ships one chunk of complete lines; False when there was nothing to ship."""
        path = self._cfg.access_log
        plan = plan_read(path, self._pos)
        if plan is None:
            return False
        chunk = read_chunk(plan.path, plan.offset)  # at most 1 MiB
        pos = next_position(path, plan, chunk)
        if pos is None:
            return False
        size = self._cfg.batch_size
        for i in range(0, len(chunk.entries), size):
            await self._send(chunk.entries[i:i + size])
        # Acknowledged = durable in the log: only now may the position move.
        save_position(self._cfg.state_path, pos)
        self._pos = pos
        if chunk.malformed:
            MALFORMED.inc(chunk.malformed)
            log.warning("access_log_malformed_lines", count=chunk.malformed)
        return True

    async def _send(self, entries: Sequence[AuditEntry]) -> None:
        request = pb.AppendRequest(events=[event_of_entry(e) for e in entries])
        delay = 0.1
        while True:
            try:
                resp = await self._stub.Append(request, timeout=self._cfg.deadline_s)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    await self._send_each(entries)
                    return
                APPEND_FAILURES.labels(code.name).inc()
                log.warning("audit_append_failed", code=code.name, retry_in_s=round(delay, 2))
            else:
                BATCHES.inc()
                LINES_SHIPPED.inc(len(entries))
                DUPLICATES.inc(resp.duplicates)
                return
            self._update_lag()  # it grows while audit_log is away
            if self._out_of_time():
                raise _OutOfTime
            await self._pause(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._cfg.backoff_max_s)

    async def _send_each(self, entries: Sequence[AuditEntry]) -> None:
        """audit_log refused the batch: find and skip the refused events only
        (e.g. a timestamp its clock puts too far in the future)."""
        if len(entries) > 1:
            for entry in entries:
                await self._send([entry])
            return
        REJECTED.inc()
        log.warning("audit_event_rejected", event_id=entries[0].event_id)

    async def run(self) -> None:
        """Ships until stopped; then flushes what is complete (bounded by flush_s)."""
        while True:
            try:
                shipped = await self.step()
            except _OutOfTime:
                log.warning("shipper_flush_incomplete",
                            lag_bytes=lag_bytes(self._cfg.access_log, self._pos))
                return
            except Exception:
                log.exception("access_log_ship_failed")
                shipped = False
            self._update_lag()
            if shipped and not self._out_of_time():
                continue
            if self._stop.is_set():
                return
            await self._pause(self._cfg.poll_s)

    def _update_lag(self) -> None:
        LAG_BYTES.set(lag_bytes(self._cfg.access_log, self._pos))

    async def _pause(self, seconds: float) -> None:
        """Sleeps; a stop request cuts it short (but retries go on while flushing)."""
        if self._stop.is_set():
            await asyncio.sleep(min(seconds, 0.2))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


async def _serve(config: Config) -> None:
    channel = grpc.aio.insecure_channel(config.target, options=CHANNEL_OPTIONS)
    shipper = Shipper(config, pb_grpc.AuditLogServiceStub(channel))
    server = new_server()
    health = add_health_and_reflection(server, [HEALTH_NAME])
    port = server.add_insecure_port(config.listen_addr)
    if port == 0:
        raise RuntimeError(f"cannot bind {config.listen_addr}")
    await server.start()
    await mark_serving(health, [HEALTH_NAME])
    metrics_port = start_metrics_server(config.metrics_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shipper.stop)
    log.info(
        "shipper_started", access_log=str(config.access_log), state=str(config.state_path),
        target=config.target, port=port, metrics_port=metrics_port,
    )
    try:
        await shipper.run()
    finally:
        await health.set(HEALTH_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        await health.enter_graceful_shutdown()
        await server.stop(1.0)
        await channel.close()
    log.info("stopped")


def main() -> None:
    config = Config.from_env()
    configure_logging(config.log_level)
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
