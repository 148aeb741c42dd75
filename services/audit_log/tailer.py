"""Tails Envoy's JSON access log into the audit log.

Entries and the file position are committed in one transaction, so a crash
neither loses nor repeats a line (event ids deduplicate anyway). Only complete
lines are read; malformed lines are counted and skipped. A rotated file
(renamed to `<path>.1`) is finished before the new one is started; a
truncated file is re-read from the start.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from iclaim.audit.entry import AuditEntry
from iclaim_hub.common.db import is_connection_lost
from services.audit_log import metrics
from services.audit_log.appender import AppendStore, timed_append
from services.audit_log.domain import OffsetUpdate, Position
from services.audit_log.events import check_entry
from services.audit_log.ingest import MalformedLine, entry_from_line

log = structlog.get_logger("audit_log.tailer")

SOURCE = "envoy-access-log"
MAX_READ = 1 << 20
MAX_LINE = 256 * 1024


@dataclass(frozen=True)
class Chunk:
    entries: list[AuditEntry]
    next_offset: int
    malformed: int


@dataclass(frozen=True)
class ReadPlan:
    path: Path  # the live file or its rotated predecessor
    file_id: str
    offset: int
    switch: bool  # a file not seen before: record its position even if nothing is read


def file_id(path: Path) -> str | None:
    """dev:inode plus a hash of the first line (guards against inode reuse)."""
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            first = f.readline(4096)
    except FileNotFoundError:
        return None
    if not first.endswith(b"\n"):
        return None  # nothing complete to ingest yet
    return f"{st.st_dev}:{st.st_ino}:{hashlib.sha256(first).hexdigest()[:16]}"


def read_chunk(path: Path, offset: int) -> Chunk:
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(MAX_READ)
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) >= MAX_READ:  # one absurdly long line: skip past it
            return Chunk([], offset + len(data), 1)
        return Chunk([], offset, 0)
    entries: list[AuditEntry] = []
    malformed = 0
    now_us = int(time.time() * 1_000_000)
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        try:
            if len(line) > MAX_LINE:
                raise MalformedLine("line too long")
            entry = entry_from_line(line)
        except MalformedLine:
            malformed += 1
            continue
        if check_entry(entry, now_us) is not None:
            malformed += 1
            continue
        entries.append(entry)
    return Chunk(entries, offset + end + 1, malformed)


def file_size(path: Path) -> int:
    """0 for a file that is not there (rotated away, not yet created)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def rotated_path(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def plan_read(path: Path, stored: Position | None) -> ReadPlan | None:
    """Which file to read next and from where, given the consumed position.

    Shared by the in-process tailer and the gateway-pod shipper, so both
    handle rotation and truncation alike."""
    current = file_id(path)
    rotated = rotated_path(path)
    if stored is not None and stored.file_id != current and file_id(rotated) == stored.file_id:
        return ReadPlan(rotated, stored.file_id, stored.byte_offset, False)
    if current is None:
        return None
    offset = 0
    if stored is not None and stored.file_id == current:
        offset = stored.byte_offset
        if os.path.getsize(path) < offset:
            offset = 0  # truncated in place
    return ReadPlan(path, current, offset, switch=stored is None or stored.file_id != current)


def next_position(path: Path, plan: ReadPlan, chunk: Chunk) -> Position | None:
    """The position to record after `chunk` was read per `plan`; None: no change."""
    if chunk.next_offset != plan.offset or plan.switch:
        return Position(plan.file_id, chunk.next_offset)
    if plan.path != path:
        # The rotated file is finished: move on to the new one at 0.
        current = file_id(path)
        if current is not None:
            return Position(current, 0)
    return None


class OffsetStore(AppendStore, Protocol):
    async def ingest_offset(self, source: str) -> Position | None:
        """How far `source` has been consumed (committed with its entries)."""


# (inode, size, mtime) of the live file and its rotated predecessor; None: absent.
FilesSeen = tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]


def files_seen(path: Path) -> FilesSeen:
    def seen(p: Path) -> tuple[int, int, int] | None:
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    return seen(path), seen(rotated_path(path))


@dataclass(eq=False)
class AccessLogTailer:
    store: OffsetStore
    path: Path
    poll_s: float = 0.2
    # The files as they were when a step last found nothing to ingest: while
    # they stay so, a poll skips the database (an idle gateway's log cost five
    # reads a second before).
    _idle_on: FilesSeen | None = field(default=None, init=False, repr=False)

    async def _commit(self, chunk: Chunk, pos: Position) -> None:
        if chunk.malformed:
            metrics.INGEST_MALFORMED.inc(chunk.malformed)
            log.warning("access_log_malformed_lines", count=chunk.malformed)
        await timed_append(self.store, chunk.entries, "gateway", OffsetUpdate(SOURCE, pos))

    async def step(self) -> int:
        """Ingests what is there now; returns how many bytes it consumed."""
        seen = files_seen(self.path)
        if seen == self._idle_on:
            return 0
        self._idle_on = None
        plan = plan_read(self.path, await self.store.ingest_offset(SOURCE))
        if plan is None:
            self._idle_on = seen
            return 0
        chunk = read_chunk(plan.path, plan.offset)  # page-cache read of at most 1 MiB
        pos = next_position(self.path, plan, chunk)
        if pos is None:
            self._idle_on = seen
            return 0
        await self._commit(chunk, pos)
        return max(chunk.next_offset - plan.offset, 0)

    async def run(self) -> None:
        while True:
            try:
                consumed = await self.step()
            except Exception as exc:
                # A database outage is expected and retried: a warning, not a
                # traceback every poll; anything else is a bug worth its trace.
                if is_connection_lost(exc):
                    log.warning("access_log_ingest_waiting", error=type(exc).__name__)
                else:
                    log.exception("access_log_ingest_failed")
                consumed = 0
            if not consumed:
                await asyncio.sleep(self.poll_s)
