"""Ships complete lines of Envoy's access log to audit_log over Append.

Reads with the tailer's own code (same mapping, same rotation and truncation
handling), sends batches, and moves its recorded position only after audit_log
acknowledged them (= durable). A crash resends at most one chunk; the event id
(Envoy's x-request-id) deduplicates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from prometheus_client import Counter, Gauge

from iclaim.audit.entry import AuditEntry
from iclaim_hub.audit.wire import event_of_entry
from iclaim_hub.common.config import ConfigError
from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from iclaim_hub.internal.v1 import audit_log_pb2_grpc as pb_grpc
from services.audit_log.domain import Position
from services.audit_log.rotation import Rotator
from services.audit_log.shipper_state import load_position, save_position
from services.audit_log.tailer import (
    file_id,
    file_size,
    next_position,
    plan_read,
    read_chunk,
    rotated_path,
)

log = structlog.get_logger("audit_log.shipper")

MAX_BATCH = 1000  # AuditLogService.Append's limit per call

LINES_SHIPPED = Counter("iclaim_shipper_lines_shipped_total", "Access-log lines acknowledged by audit_log.")
DUPLICATES = Counter("iclaim_shipper_duplicates_total", "Shipped lines audit_log already had (resends).")
BATCHES = Counter("iclaim_shipper_batches_total", "Append calls acknowledged by audit_log.")
APPEND_FAILURES = Counter(
    "iclaim_shipper_append_failures_total", "Append calls that failed (retried).", ["code"]
)
MALFORMED = Counter("iclaim_shipper_malformed_lines_total", "Access-log lines skipped as malformed.")
REJECTED = Counter("iclaim_shipper_rejected_events_total", "Events audit_log refused as invalid (skipped).")
LAG_BYTES = Gauge("iclaim_shipper_lag_bytes", "Complete or partial bytes not yet shipped.")


@dataclass(frozen=True)
class Settings:
    access_log: Path
    state_path: Path  # the recorded position
    batch_size: int = 500
    poll_s: float = 0.2
    deadline_s: float = 5.0  # per Append call
    backoff_max_s: float = 5.0
    flush_s: float = 10.0  # once stopping, ship what is complete for at most this long
    rotate_bytes: int = 0  # rotate the access log past this size (0: never; rotation.py)
    envoy_admin: str = ""  # Envoy's admin address, told to reopen its log after a rotation

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ConfigError(f"ICLAIM_SHIPPER_BATCH must be within 1..{MAX_BATCH}")
        if self.state_path in (self.access_log, rotated_path(self.access_log)):
            raise ConfigError("ICLAIM_SHIPPER_STATE must not be the access log")
        if self.rotate_bytes > 0 and not self.envoy_admin:
            raise ConfigError("ICLAIM_SHIPPER_ROTATE_BYTES needs ICLAIM_ENVOY_ADMIN_ADDR (to reopen the log)")


class _OutOfTime(Exception):
    """Stopping and the flush window is over: leave the rest for the next start."""


def lag_bytes(path: Path, pos: Position | None) -> int:
    if pos is None:
        return file_size(path)
    if file_id(path) == pos.file_id:
        return max(file_size(path) - pos.byte_offset, 0)
    rotated = rotated_path(path)
    if file_id(rotated) == pos.file_id:
        return max(file_size(rotated) - pos.byte_offset, 0) + file_size(path)
    return file_size(path)


class Shipper:
    def __init__(self, settings: Settings, stub: pb_grpc.AuditLogServiceAsyncStub) -> None:
        self._cfg = settings
        self._stub = stub
        self._pos = load_position(settings.state_path)
        self._stop = asyncio.Event()
        self._flush_until: float | None = None
        self._rotator = (
            Rotator(settings.access_log, settings.rotate_bytes, settings.envoy_admin)
            if settings.rotate_bytes > 0
            else None
        )

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
            await self._send(chunk.entries[i : i + size])
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
                if self._rotator is not None and not self._stop.is_set():
                    await self._rotator.after_step(self._pos)
            except _OutOfTime:
                log.warning("shipper_flush_incomplete", lag_bytes=lag_bytes(self._cfg.access_log, self._pos))
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
        with contextlib.suppress(TimeoutError):  # not wait_for: it can lose a cancel (3.11)
            async with asyncio.timeout(seconds):
                await self._stop.wait()
