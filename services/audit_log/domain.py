"""The audit log's records and the one pure step of an append: which events are
new, where they go and which subtree hashes they complete. No I/O here."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from iclaim.audit.entry import AuditEntry, entry_leaf_hash
from iclaim.audit.merkle import CompactRange

HOLD_SCOPES = ("principal", "transaction")


@dataclass(frozen=True)
class Position:
    """How far an access-log file has been consumed."""

    file_id: str
    byte_offset: int


@dataclass(frozen=True)
class OffsetUpdate:
    """An ingest position committed with the entries read up to it."""

    source: str
    position: Position


@dataclass(frozen=True)
class AppendOutcome:
    appended: dict[str, int]  # event_id -> leaf index
    duplicates: int
    tree_size: int


@dataclass(frozen=True)
class StoredCheckpoint:
    tree_size: int
    root_hash: bytes
    signed_at: datetime
    note: str


@dataclass(frozen=True)
class Hold:
    hold_id: int
    scope: str  # one of HOLD_SCOPES
    value: str
    reference: str
    placed_at: datetime
    released_at: datetime | None


@dataclass(frozen=True)
class AppendPlan:
    leaves: list[tuple[int, AuditEntry, bytes]]  # (leaf index, entry, leaf hash), in order
    nodes: list[tuple[int, int, bytes]]  # (level, index, hash) of completed subtrees
    tree: CompactRange  # the tree's right border after the append


def plan_append(tree: CompactRange, entries: Sequence[AuditEntry], known: Collection[str]) -> AppendPlan:
    """Places each event not yet in the log (by event id; the first of repeats
    within the call) at the next index, in the given order."""
    grown = tree.copy()
    seen = set(known)
    leaves: list[tuple[int, AuditEntry, bytes]] = []
    nodes: list[tuple[int, int, bytes]] = []
    for entry in entries:
        if entry.event_id in seen:
            continue
        seen.add(entry.event_id)
        index = grown.size
        leaf = entry_leaf_hash(entry, index)
        nodes.extend(grown.append(leaf))
        leaves.append((index, entry, leaf))
    return AppendPlan(leaves, nodes, grown)
