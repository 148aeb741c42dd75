"""Proving one principal's own audit trail (docs/protocol.md §12).

`verify_trail` reads a `TrailSource` — the public AuditTrailService through the
gateway for participants, or an operator's adapter over the internal service —
and checks every entry against a signed checkpoint with an inclusion proof."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from iclaim.audit.entry import AuditEntry, entry_leaf_hash
from iclaim.audit.merkle import MerkleError, verify_inclusion
from iclaim.audit.note import open_checkpoint, parse_verifier_key
from iclaim.progress import NoProgress, ProgressSink
from iclaim.v1 import audit_trail_service_pb2 as pb
from iclaim.v1 import audit_trail_service_pb2_grpc as pb_grpc

DEFAULT_ORIGIN = "iclaim.dev/audit"
RPC_TIMEOUT_S = 10.0
PAGE_SIZE = 1000


@dataclass(frozen=True)
class TrailItem:
    leaf_index: int
    leaf_hash: bytes
    event_id: str
    entry: AuditEntry | None  # None once expired: only the leaf hash is kept


@dataclass(frozen=True)
class TrailPage:
    items: Sequence[TrailItem]
    next_start_index: int


class TrailSource(Protocol):
    async def checkpoint(self) -> tuple[str, str]:
        """The latest signed checkpoint note and the verifier key it names."""

    async def page(self, start_index: int, max_entries: int) -> TrailPage: ...

    async def by_transaction(self, transaction_id: str) -> Sequence[TrailItem]: ...

    async def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]: ...


@dataclass
class TrailReport:
    tree_size: int = 0
    verified: int = 0
    expired: int = 0
    problems: list[str] = field(default_factory=list)
    entries: list[AuditEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify_trail(
    source: TrailSource,
    principal: str,
    verifier_key: str | None,
    origin: str = DEFAULT_ORIGIN,
    transaction_id: str = "",
    progress: ProgressSink | None = None,
) -> TrailReport:
    """Fetches one principal's entries and proves each is in the signed log
    (one inclusion proof each: `progress` sees them proved)."""
    report = TrailReport()
    note, served_key = await source.checkpoint()
    cp = open_checkpoint(note, parse_verifier_key(verifier_key or served_key), origin)
    report.tree_size = cp.tree_size
    if transaction_id:
        items = [i for i in await source.by_transaction(transaction_id) if i.leaf_index < cp.tree_size]
    else:
        items, start = [], 0
        while start < cp.tree_size:
            page = await source.page(start, PAGE_SIZE)
            items.extend(i for i in page.items if i.leaf_index < cp.tree_size)
            if page.next_start_index <= start:
                break
            start = page.next_start_index
    shown = progress or NoProgress()
    shown.set_total(len(items))
    for item in items:
        shown.advance()
        where = f"entry {item.leaf_index} (event {item.event_id})"
        entry = item.entry
        if entry is None:
            report.expired += 1
            continue
        if principal not in (entry.origin_principal, entry.destination):
            report.problems.append(f"{where}: not {principal}'s entry")
            continue
        if entry_leaf_hash(entry, item.leaf_index) != item.leaf_hash:
            report.problems.append(f"{where}: data does not match its leaf hash")
            continue
        proof = await source.inclusion_proof(item.leaf_index, cp.tree_size)
        try:
            verify_inclusion(item.leaf_index, cp.tree_size, item.leaf_hash, proof, cp.root_hash)
        except MerkleError as exc:
            report.problems.append(f"{where}: not in the signed log: {exc}")
            continue
        report.verified += 1
        report.entries.append(entry)
    return report


_ENTRY_FIELDS = tuple(f.name for f in fields(AuditEntry))


def trail_item(e: Any) -> TrailItem:
    """A public `AuditTrailEntry` as a TrailItem."""
    entry = None if e.expired else AuditEntry(**{n: getattr(e, n) for n in _ENTRY_FIELDS})
    return TrailItem(e.leaf_index, e.leaf_hash, e.event_id, entry)


class GatewayTrail:
    """The caller's own trail over the public AuditTrailService (signed channel)."""

    def __init__(self, channel: Any) -> None:
        self._stub = pb_grpc.AuditTrailServiceStub(channel)

    async def checkpoint(self) -> tuple[str, str]:
        cp = await self._stub.GetAuditCheckpoint(pb.GetAuditCheckpointRequest(), timeout=RPC_TIMEOUT_S)
        return cp.note, cp.verifier_key

    async def page(self, start_index: int, max_entries: int) -> TrailPage:
        got = await self._stub.ListAuditEntries(
            pb.ListAuditEntriesRequest(start_index=start_index, max_entries=max_entries),
            timeout=RPC_TIMEOUT_S,
        )
        return TrailPage([trail_item(e) for e in got.entries], got.next_start_index)

    async def by_transaction(self, transaction_id: str) -> list[TrailItem]:
        got = await self._stub.ListAuditEntries(
            pb.ListAuditEntriesRequest(transaction_id=transaction_id), timeout=RPC_TIMEOUT_S
        )
        return [trail_item(e) for e in got.entries]

    async def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        got = await self._stub.GetAuditInclusionProof(
            pb.GetAuditInclusionProofRequest(leaf_index=leaf_index, tree_size=tree_size),
            timeout=RPC_TIMEOUT_S,
        )
        return list(got.proof)
