"""The shipper's consumed position, persisted atomically in a small JSON file.

Written only after audit_log acknowledged the events before it, so a crash
at any point resends at most the last unacknowledged chunk (deduplicated by
event id) and never skips a line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import structlog

from services.audit_log.domain import Position

log = structlog.get_logger("audit_log.shipper")


def load_position(path: Path) -> Position | None:
    try:
        doc = json.loads(path.read_bytes())
        pos = Position(str(doc["file_id"]), int(doc["byte_offset"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        # Unreadable state: start over; the audit log drops what it already has.
        log.warning("shipper_state_unreadable", path=str(path))
        return None
    return pos if pos.byte_offset >= 0 else None


def save_position(path: Path, pos: Position) -> None:
    """Temp file + fsync + rename + directory fsync: the old or the new state, never half."""
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps({"file_id": pos.file_id, "byte_offset": pos.byte_offset}).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
