"""What audit_log does for a caller: append, checkpoints, proofs, reads scoped
to the reader, legal holds and retention. Between the thin servicers and the
stores; no proto or gRPC types here."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from iclaim.audit.entry import AuditEntry
from iclaim.audit.verifier import StoredLeaf
from iclaim.errors import InvalidArgument, NotFound, PermissionDenied
from services.audit_log import proofs
from services.audit_log.appender import Appender, AppendResult
from services.audit_log.checkpointer import Checkpointer
from services.audit_log.domain import HOLD_SCOPES, Hold, StoredCheckpoint
from services.audit_log.events import HOLD_REFERENCE_RE, TRANSACTION_RE, check_entry, valid_principal
from services.audit_log.retention import Retention

MAX_EVENTS_PER_APPEND = 1000
MAX_LIST = 1000
DEFAULT_LIST = 100


class LogReader(proofs.NodeReader, Protocol):
    async def tree_size(self) -> int: ...

    async def entry(self, leaf_index: int) -> StoredLeaf | None: ...

    async def list_entries(self, start: int, limit: int, principal: str | None) -> list[StoredLeaf]:
        """From `start` in index order; with a principal, only its entries."""

    async def entries_by_transaction(
        self, transaction_id: str, principal: str | None, limit: int
    ) -> list[StoredLeaf]: ...


class HoldStore(Protocol):
    async def place_hold(self, scope: str, value: str, reference: str) -> Hold: ...

    async def release_hold(self, hold_id: int) -> Hold | None: ...

    async def holds(self, include_released: bool) -> list[Hold]: ...


@dataclass(frozen=True)
class Reader:
    """Who reads: the gateway-verified principal ("" for an internal caller)
    and the principal asked about ("" for all)."""

    verified: str = ""
    requested: str = ""


@dataclass(frozen=True)
class Page:
    leaves: list[StoredLeaf]
    next_start_index: int
    tree_size: int


@dataclass(frozen=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    proof: list[bytes]


def _invalid_event(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="AUDIT_EVENT_INVALID")


def principal_filter(reader: Reader) -> str | None:
    """The principal whose entries a read may return.

    A call that carries a gateway-verified principal sees only its own
    entries, whatever it asks for; internal callers may read everything or
    filter by any principal."""
    if reader.requested and not valid_principal(reader.requested):
        raise InvalidArgument("principal is not a principal code", reason="PRINCIPAL_INVALID")
    if reader.verified:
        if reader.requested and reader.requested != reader.verified:
            raise PermissionDenied("only your own audit trail", reason="AUDIT_NOT_YOURS")
        return reader.verified
    return reader.requested or None


@dataclass(frozen=True, eq=False)
class AuditLog:
    reader: LogReader
    hold_store: HoldStore
    appender: Appender
    checkpointer: Checkpointer
    retention: Retention

    # --- append --------------------------------------------------------------
    async def append(self, entries: Sequence[AuditEntry]) -> AppendResult:
        """All or nothing: one event not of its expected form refuses the call."""
        if not entries:
            raise _invalid_event("no events")
        if len(entries) > MAX_EVENTS_PER_APPEND:
            raise _invalid_event(f"at most {MAX_EVENTS_PER_APPEND} events per call")
        now_us = int(time.time() * 1_000_000)
        for entry in entries:
            bad = check_entry(entry, now_us)
            if bad is not None:
                # Name the field, never echo its value: it may be what must not be stored.
                raise _invalid_event(f"event field {bad.field} is not of its expected form")
        return await self.appender.append(entries)

    # --- checkpoints and proofs ----------------------------------------------
    @property
    def verifier_key(self) -> str:
        return self.checkpointer.verifier_key

    async def checkpoint(self) -> StoredCheckpoint:
        return await self.checkpointer.latest()

    async def sign_checkpoint(self) -> StoredCheckpoint:
        return await self.checkpointer.sign_now()

    async def inclusion_proof(self, leaf_index: int, tree_size: int, reader: Reader) -> InclusionProof:
        """Proof for one entry the reader may see; tree_size 0: the latest checkpoint's."""
        principal = principal_filter(reader)
        size = tree_size or (await self.checkpointer.latest()).tree_size
        current = await self.reader.tree_size()
        if size < 0 or size > current:
            raise InvalidArgument("tree_size beyond the log", reason="TREE_SIZE_INVALID")
        if not 0 <= leaf_index < size:
            raise InvalidArgument("leaf_index outside the tree", reason="LEAF_INDEX_INVALID")
        leaf = await self.reader.entry(leaf_index)
        if leaf is None or (
            principal is not None
            and (leaf.entry is None or principal not in (leaf.entry.origin_principal, leaf.entry.destination))
        ):
            raise NotFound("no such entry", reason="AUDIT_ENTRY_NOT_FOUND")
        proof = await proofs.inclusion_proof(self.reader, leaf_index, size)
        return InclusionProof(leaf_index, size, leaf.leaf_hash, proof)

    async def consistency_proof(self, first_size: int, second_size: int) -> list[bytes]:
        current = await self.reader.tree_size()
        if not 0 < first_size <= second_size <= current:
            raise InvalidArgument(
                "need 0 < first_size <= second_size <= tree size", reason="TREE_SIZE_INVALID"
            )
        return await proofs.consistency_proof(self.reader, first_size, second_size)

    # --- reads ---------------------------------------------------------------
    async def list_entries(self, start_index: int, max_entries: int, reader: Reader) -> Page:
        """One page from start_index; max_entries 0: DEFAULT_LIST."""
        principal = principal_filter(reader)
        if start_index < 0 or not 0 <= max_entries <= MAX_LIST:
            raise InvalidArgument("bad start_index or max_entries", reason="PAGE_INVALID")
        limit = max_entries or DEFAULT_LIST
        size = await self.reader.tree_size()
        leaves = await self.reader.list_entries(start_index, limit, principal)
        # Entries appended after the size was read wait for the next page.
        leaves = [x for x in leaves if x.leaf_index < size]
        nxt = leaves[-1].leaf_index + 1 if len(leaves) == limit else max(size, start_index)
        return Page(leaves, nxt, size)

    async def entries_by_transaction(self, transaction_id: str, reader: Reader) -> list[StoredLeaf]:
        principal = principal_filter(reader)
        if not TRANSACTION_RE.match(transaction_id):
            raise InvalidArgument("transaction_id malformed", reason="TRANSACTION_ID_INVALID")
        return await self.reader.entries_by_transaction(transaction_id, principal, MAX_LIST)

    # --- legal holds and retention -------------------------------------------
    async def place_hold(self, scope: str, value: str, reference: str) -> Hold:
        """scope: one of HOLD_SCOPES ("" when the caller named none)."""
        if scope not in HOLD_SCOPES:
            raise InvalidArgument("scope required", reason="HOLD_INVALID")
        ok = valid_principal(value) if scope == "principal" else bool(TRANSACTION_RE.match(value))
        if not ok or not HOLD_REFERENCE_RE.match(reference):
            raise InvalidArgument("hold value or reference malformed", reason="HOLD_INVALID")
        return await self.hold_store.place_hold(scope, value, reference)

    async def release_hold(self, hold_id: int) -> Hold:
        hold = await self.hold_store.release_hold(hold_id)
        if hold is None:
            raise NotFound("no such hold", reason="HOLD_NOT_FOUND")
        return hold

    async def holds(self, include_released: bool) -> list[Hold]:
        return await self.hold_store.holds(include_released)

    @property
    def retention_days(self) -> int:
        return self.retention.days

    async def apply_retention(self) -> int:
        return await self.retention.expire_all()
