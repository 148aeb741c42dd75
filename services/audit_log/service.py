"""AuditLogService servicer: thin; validation in events.py, storage in store.py."""
from __future__ import annotations

import time
from typing import Any, TypeAlias

import grpc
from google.protobuf import timestamp_pb2

from iclaim.audit.entry import AuditEntry
from iclaim_hub.audit.wire import entry_of_event, event_of_entry
from iclaim.audit.verifier import StoredLeaf
from iclaim_hub.common.access_log import PRINCIPAL_HEADER
from iclaim.errors import InvalidArgument, NotFound, PermissionDenied
from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from iclaim_hub.internal.v1 import audit_log_pb2_grpc as pb_grpc
from services.audit_log import metrics, proofs
from services.audit_log.appender import Appender
from services.audit_log.checkpointer import Checkpointer
from services.audit_log.events import (
    HOLD_REFERENCE_RE,
    TRANSACTION_RE,
    check_entry,
    valid_principal,
)
from services.audit_log.store import AuditStore, Hold, StoredCheckpoint

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

MAX_EVENTS_PER_APPEND = 1000
MAX_LIST = 1000
DEFAULT_LIST = 100
_SCOPES = {pb.LEGAL_HOLD_SCOPE_PRINCIPAL: "principal", pb.LEGAL_HOLD_SCOPE_TRANSACTION: "transaction"}
_SCOPE_ENUM = {v: k for k, v in _SCOPES.items()}


def _invalid(msg: str) -> InvalidArgument:
    return InvalidArgument(msg, reason="AUDIT_EVENT_INVALID")


def entry_from_event(ev: pb.AuditEvent, now_us: int) -> AuditEntry:
    entry = entry_of_event(ev)
    bad = check_entry(entry, now_us)
    if bad is not None:
        # Name the field, never echo its value: it may be what must not be stored.
        raise _invalid(f"event field {bad.field} is not of its expected form")
    return entry


def _log_entry(leaf: StoredLeaf) -> pb.LogEntry:
    ev = event_of_entry(leaf.entry) if leaf.entry else pb.AuditEvent(event_id=leaf.event_id)
    return pb.LogEntry(
        leaf_index=leaf.leaf_index, leaf_hash=leaf.leaf_hash, event=ev,
        expired=leaf.entry is None,
    )


def _ts(dt: Any) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(dt)
    return t


def _hold(h: Hold) -> pb.LegalHold:
    out = pb.LegalHold(
        hold_id=h.hold_id, scope=_SCOPE_ENUM[h.scope], value=h.value, reference=h.reference,
        placed_at=_ts(h.placed_at),
    )
    if h.released_at is not None:
        out.released_at.CopyFrom(_ts(h.released_at))
    return out


def principal_filter(requested: str, context: Ctx) -> str | None:
    """The principal whose entries a read may return.

    A call that carries a gateway-verified principal sees only its own
    entries, whatever it asks for; internal callers may read everything or
    filter by any principal."""
    if requested and not valid_principal(requested):
        raise InvalidArgument("principal is not a principal code", reason="PRINCIPAL_INVALID")
    md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    verified = md.get(PRINCIPAL_HEADER, "")
    if verified:
        if requested and requested != verified:
            raise PermissionDenied("only your own audit trail", reason="AUDIT_NOT_YOURS")
        return verified
    return requested or None


class AuditLogServicer(pb_grpc.AuditLogServiceServicer):
    def __init__(
        self, store: AuditStore, appender: Appender, checkpointer: Checkpointer,
        retention_days: int,
    ) -> None:
        self._store = store
        self._appender = appender
        self._checkpointer = checkpointer
        self._retention_days = retention_days

    async def Append(self, request: pb.AppendRequest, context: Ctx) -> pb.AppendResponse:
        if not request.events:
            raise _invalid("no events")
        if len(request.events) > MAX_EVENTS_PER_APPEND:
            raise _invalid(f"at most {MAX_EVENTS_PER_APPEND} events per call")
        now_us = int(time.time() * 1_000_000)
        entries = [entry_from_event(ev, now_us) for ev in request.events]
        result = await self._appender.append(entries)
        return pb.AppendResponse(appended=result.appended, duplicates=result.duplicates)

    def _checkpoint(self, cp: StoredCheckpoint) -> pb.Checkpoint:
        return pb.Checkpoint(
            note=cp.note, tree_size=cp.tree_size, root_hash=cp.root_hash,
            signed_at=_ts(cp.signed_at), verifier_key=self._checkpointer.verifier_key,
        )

    async def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: Ctx
    ) -> pb.GetCheckpointResponse:
        return pb.GetCheckpointResponse(
            checkpoint=self._checkpoint(await self._checkpointer.latest())
        )

    async def SignCheckpoint(
        self, request: pb.SignCheckpointRequest, context: Ctx
    ) -> pb.SignCheckpointResponse:
        return pb.SignCheckpointResponse(
            checkpoint=self._checkpoint(await self._checkpointer.sign_now())
        )

    async def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: Ctx
    ) -> pb.GetInclusionProofResponse:
        principal = principal_filter(request.principal, context)
        size = request.tree_size or (await self._checkpointer.latest()).tree_size
        current = await self._store.tree_size()
        if size < 0 or size > current:
            raise InvalidArgument("tree_size beyond the log", reason="TREE_SIZE_INVALID")
        if not 0 <= request.leaf_index < size:
            raise InvalidArgument("leaf_index outside the tree", reason="LEAF_INDEX_INVALID")
        leaf = await self._store.entry(request.leaf_index)
        if leaf is None or (
            principal is not None
            and (leaf.entry is None or principal not in (
                leaf.entry.origin_principal, leaf.entry.destination))
        ):
            raise NotFound("no such entry", reason="AUDIT_ENTRY_NOT_FOUND")
        proof = await proofs.inclusion_proof(self._store, request.leaf_index, size)
        return pb.GetInclusionProofResponse(
            leaf_index=request.leaf_index, tree_size=size, leaf_hash=leaf.leaf_hash, proof=proof
        )

    async def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: Ctx
    ) -> pb.GetConsistencyProofResponse:
        m, n = request.first_size, request.second_size
        current = await self._store.tree_size()
        if not 0 < m <= n <= current:
            raise InvalidArgument(
                "need 0 < first_size <= second_size <= tree size", reason="TREE_SIZE_INVALID"
            )
        proof = await proofs.consistency_proof(self._store, m, n)
        return pb.GetConsistencyProofResponse(first_size=m, second_size=n, proof=proof)

    async def ListEntries(
        self, request: pb.ListEntriesRequest, context: Ctx
    ) -> pb.ListEntriesResponse:
        principal = principal_filter(request.principal, context)
        if request.start_index < 0 or not 0 <= request.max_entries <= MAX_LIST:
            raise InvalidArgument("bad start_index or max_entries", reason="PAGE_INVALID")
        limit = request.max_entries or DEFAULT_LIST
        size = await self._store.tree_size()
        leaves = await self._store.list_entries(request.start_index, limit, principal)
        leaves = [x for x in leaves if x.leaf_index < size]
        nxt = leaves[-1].leaf_index + 1 if len(leaves) == limit else max(size, request.start_index)
        return pb.ListEntriesResponse(
            entries=[_log_entry(x) for x in leaves], next_start_index=nxt, tree_size=size
        )

    async def ListEntriesByTransaction(
        self, request: pb.ListEntriesByTransactionRequest, context: Ctx
    ) -> pb.ListEntriesByTransactionResponse:
        principal = principal_filter(request.principal, context)
        if not TRANSACTION_RE.match(request.transaction_id):
            raise InvalidArgument("transaction_id malformed", reason="TRANSACTION_ID_INVALID")
        leaves = await self._store.entries_by_transaction(
            request.transaction_id, principal, MAX_LIST
        )
        return pb.ListEntriesByTransactionResponse(entries=[_log_entry(x) for x in leaves])

    async def PlaceLegalHold(
        self, request: pb.PlaceLegalHoldRequest, context: Ctx
    ) -> pb.PlaceLegalHoldResponse:
        scope = _SCOPES.get(request.scope)
        if scope is None:
            raise InvalidArgument("scope required", reason="HOLD_INVALID")
        ok = valid_principal(request.value) if scope == "principal" else bool(
            TRANSACTION_RE.match(request.value))
        if not ok or not HOLD_REFERENCE_RE.match(request.reference):
            raise InvalidArgument("hold value or reference malformed", reason="HOLD_INVALID")
        hold = await self._store.place_hold(scope, request.value, request.reference)
        return pb.PlaceLegalHoldResponse(hold=_hold(hold))

    async def ReleaseLegalHold(
        self, request: pb.ReleaseLegalHoldRequest, context: Ctx
    ) -> pb.ReleaseLegalHoldResponse:
        hold = await self._store.release_hold(request.hold_id)
        if hold is None:
            raise NotFound("no such hold", reason="HOLD_NOT_FOUND")
        return pb.ReleaseLegalHoldResponse(hold=_hold(hold))

    async def ListLegalHolds(
        self, request: pb.ListLegalHoldsRequest, context: Ctx
    ) -> pb.ListLegalHoldsResponse:
        holds = await self._store.holds(request.include_released)
        return pb.ListLegalHoldsResponse(holds=[_hold(h) for h in holds])

    async def ApplyRetention(
        self, request: pb.ApplyRetentionRequest, context: Ctx
    ) -> pb.ApplyRetentionResponse:
        n = await expire_all(self._store, self._retention_days)
        return pb.ApplyRetentionResponse(expired=n, retention_days=self._retention_days)


async def expire_all(store: AuditStore, retention_days: int) -> int:
    total = 0
    while True:
        n = await store.expire(retention_days)
        total += n
        if n < 10_000:
            break
    metrics.ENTRIES_EXPIRED.inc(total)
    return total

