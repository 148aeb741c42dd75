"""Rotates Envoy's access log in the gateway pod once it grows past a size, and
removes the rotated file once every line of it is shipped, so the pod's log
volume holds about two files' worth, not every request since the pod started
(a full emptyDir gets the pod evicted).

Rotation is a rename to `<log>.1` then Envoy's admin `POST /reopen_logs`: Envoy
flushes what it buffered into the renamed file and opens a new one. The
shipper (plan_read) finishes `<log>.1` before it starts on the new file, and
moves on only once the new file holds a line, i.e. after Envoy reopened; so
`<log>.1` is removed only when the shipper's position is in the new file.
A second rotation waits until the first file is gone: nothing unshipped is
ever renamed over or removed.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import structlog
from prometheus_client import Counter

from services.audit_log.domain import Position
from services.audit_log.tailer import file_id, file_size, rotated_path

log = structlog.get_logger("audit_log.rotation")

ROTATIONS = Counter(
    "iclaim_shipper_rotations_total", "Access-log files rotated (renamed, Envoy told to reopen)."
)
REMOVED = Counter("iclaim_shipper_rotated_removed_total", "Rotated access-log files removed once shipped.")
REOPEN_FAILURES = Counter(
    "iclaim_shipper_reopen_failures_total", "Envoy admin /reopen_logs calls that failed (retried)."
)

REOPEN_TIMEOUT_S = 2.0
REOPEN_RETRY_S = 5.0  # while Envoy still writes to the renamed file


async def reopen_logs(admin: str, timeout_s: float = REOPEN_TIMEOUT_S) -> bool:
    """POST /reopen_logs to Envoy's admin (loopback, in the pod); True on 200."""
    host, _, port = admin.rpartition(":")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            try:
                writer.write(
                    b"POST /reopen_logs HTTP/1.1\r\nHost: envoy-admin\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                status = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return False
    return status.split(b" ")[1:2] == [b"200"]


class Rotator:
    def __init__(self, access_log: Path, max_bytes: int, admin: str) -> None:
        self._live = access_log
        self._rotated = rotated_path(access_log)
        self._max_bytes = max_bytes
        self._admin = admin
        self._next_reopen = 0.0

    async def after_step(self, shipped_to: Position | None) -> None:
        """Called with the shipper's recorded position after each pass."""
        rotated = self._rotated.exists()
        if not rotated and file_size(self._live) < self._max_bytes:
            return  # most passes: nothing to do, no file opened
        live_id = file_id(self._live)
        on_live = shipped_to is not None and live_id is not None and shipped_to.file_id == live_id
        if rotated:
            if on_live:
                self._rotated.unlink(missing_ok=True)  # every line of it acknowledged by audit_log
                REMOVED.inc()
                log.info("access_log_rotated_removed")
            elif not self._live.exists():
                await self._reopen()  # renamed, but Envoy was not told (or did not hear)
            return
        if on_live:  # past max_bytes, and every shipped line is in this file
            os.rename(self._live, self._rotated)
            ROTATIONS.inc()
            log.info("access_log_rotated", bytes=file_size(self._rotated))
            self._next_reopen = 0.0
            await self._reopen()

    async def _reopen(self) -> None:
        # Envoy creates the new file at its next flush: until a line is in it,
        # asking again is harmless but pointless more often than this.
        if time.monotonic() < self._next_reopen:
            return
        self._next_reopen = time.monotonic() + REOPEN_RETRY_S
        if not await reopen_logs(self._admin):
            REOPEN_FAILURES.inc()
            log.warning("envoy_reopen_logs_failed", retry_in_s=REOPEN_RETRY_S)
