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
from dataclasses import dataclass
from pathlib import Path

import structlog

from iclaim.audit.entry import AuditEntry
from services.audit_log import metrics
from services.audit_log.appender import timed_append
from services.audit_log.events import check_entry
from services.audit_log.ingest import MalformedLine, entry_from_line
from services.audit_log.store import AuditStore, OffsetUpdate

log = structlog.get_logger("audit_log.tailer")

SOURCE = "envoy-access-log"
MAX_READ = 1 << 20
MAX_LINE = 256 * 1024


@dataclass(frozen=True)
class _Chunk:
    entries: list[AuditEntry]
    next_offset: int
    malformed: int


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


def read_chunk(path: Path, offset: int) -> _Chunk:
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(MAX_READ)
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) >= MAX_READ:  # one absurdly long line: skip past it
            return _Chunk([], offset + len(data), 1)
        return _Chunk([], offset, 0)
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
    return _Chunk(entries, offset + end + 1, malformed)


class AccessLogTailer:
    def __init__(self, store: AuditStore, path: Path, poll_s: float = 0.2) -> None:
        self._store = store
        self._path = path
        self._poll_s = poll_s

    async def _commit(self, chunk: _Chunk, fid: str) -> None:
        if chunk.malformed:
            metrics.INGEST_MALFORMED.inc(chunk.malformed)
            log.warning("access_log_malformed_lines", count=chunk.malformed)
        await timed_append(
            self._store, chunk.entries, "gateway",
            offset=OffsetUpdate(SOURCE, fid, chunk.next_offset),
        )

    async def step(self) -> int:
        """Ingests what is there now; returns how many bytes it consumed."""
        current = file_id(self._path)
        if current is None:
            return 0
        stored = await self._store.ingest_offset(SOURCE)
        offset = 0
        if stored is not None:
            if stored.file_id == current:
                offset = stored.byte_offset
                if os.path.getsize(self._path) < offset:
                    offset = 0  # truncated in place
            else:
                rotated = self._path.with_name(self._path.name + ".1")
                if file_id(rotated) == stored.file_id:
                    return await self._drain(rotated, stored.file_id, stored.byte_offset)
        return await self._drain(self._path, current, offset, switch=stored is None
                                 or stored.file_id != current)

    async def _drain(self, path: Path, fid: str, offset: int, switch: bool = False) -> int:
        chunk = read_chunk(path, offset)  # page-cache read of at most 1 MiB
        if chunk.next_offset == offset and not switch:
            if path != self._path:
                # The rotated file is finished: move on to the new one at 0.
                current = file_id(self._path)
                if current is not None:
                    await self._store.append([], offset=OffsetUpdate(SOURCE, current, 0))
            return 0
        await self._commit(chunk, fid)
        return chunk.next_offset - offset

    async def run(self) -> None:
        while True:
            try:
                consumed = await self.step()
            except Exception:
                log.exception("access_log_ingest_failed")
                consumed = 0
            if not consumed:
                await asyncio.sleep(self._poll_s)
