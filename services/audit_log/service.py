"""iclaim_hub.internal.v1.AuditLogService: messages in and out; the rules are
in usecases.py."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from iclaim.audit.verifier import StoredLeaf
from iclaim_hub.audit.wire import entry_of_event, event_of_entry
from iclaim_hub.common.access_log import PRINCIPAL_HEADER
from iclaim_hub.common.fields import copy_fields
from iclaim_hub.common.proto_time import timestamp, timestamp_or_none
from iclaim_hub.common.servicer import Serves
from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from iclaim_hub.internal.v1 import audit_log_pb2_grpc as pb_grpc
from services.audit_log.domain import Hold, StoredCheckpoint
from services.audit_log.usecases import AuditLog, Reader

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_SCOPES = {pb.LEGAL_HOLD_SCOPE_PRINCIPAL: "principal", pb.LEGAL_HOLD_SCOPE_TRANSACTION: "transaction"}
_SCOPE_ENUM = {v: k for k, v in _SCOPES.items()}


def _reader(requested: str, context: Ctx) -> Reader:
    """A call through the gateway carries the principal it verified."""
    md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    return Reader(verified=md.get(PRINCIPAL_HEADER, ""), requested=requested)


def _log_entry(leaf: StoredLeaf) -> pb.LogEntry:
    ev = event_of_entry(leaf.entry) if leaf.entry else pb.AuditEvent(event_id=leaf.event_id)
    return pb.LogEntry(
        leaf_index=leaf.leaf_index, leaf_hash=leaf.leaf_hash, event=ev, expired=leaf.entry is None
    )


def _hold(h: Hold) -> pb.LegalHold:
    return copy_fields(
        pb.LegalHold,
        h,
        scope=_SCOPE_ENUM[h.scope],
        placed_at=timestamp(h.placed_at),
        released_at=timestamp_or_none(h.released_at),
    )


class AuditLogServicer(Serves[AuditLog], pb_grpc.AuditLogServiceServicer):
    def _checkpoint(self, cp: StoredCheckpoint) -> pb.Checkpoint:
        return copy_fields(
            pb.Checkpoint, cp, signed_at=timestamp(cp.signed_at), verifier_key=self.use_cases.verifier_key
        )

    async def Append(self, request: pb.AppendRequest, context: Ctx) -> pb.AppendResponse:
        result = await self.use_cases.append([entry_of_event(ev) for ev in request.events])
        return pb.AppendResponse(appended=result.appended, duplicates=result.duplicates)

    async def GetCheckpoint(self, request: pb.GetCheckpointRequest, context: Ctx) -> pb.GetCheckpointResponse:
        return pb.GetCheckpointResponse(checkpoint=self._checkpoint(await self.use_cases.checkpoint()))

    async def SignCheckpoint(
        self, request: pb.SignCheckpointRequest, context: Ctx
    ) -> pb.SignCheckpointResponse:
        return pb.SignCheckpointResponse(checkpoint=self._checkpoint(await self.use_cases.sign_checkpoint()))

    async def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: Ctx
    ) -> pb.GetInclusionProofResponse:
        p = await self.use_cases.inclusion_proof(
            request.leaf_index, request.tree_size, _reader(request.principal, context)
        )
        return copy_fields(pb.GetInclusionProofResponse, p)

    async def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: Ctx
    ) -> pb.GetConsistencyProofResponse:
        proof = await self.use_cases.consistency_proof(request.first_size, request.second_size)
        return copy_fields(pb.GetConsistencyProofResponse, request, proof=proof)

    async def ListEntries(self, request: pb.ListEntriesRequest, context: Ctx) -> pb.ListEntriesResponse:
        page = await self.use_cases.list_entries(
            request.start_index, request.max_entries, _reader(request.principal, context)
        )
        return copy_fields(pb.ListEntriesResponse, page, entries=[_log_entry(x) for x in page.leaves])

    async def ListEntriesByTransaction(
        self, request: pb.ListEntriesByTransactionRequest, context: Ctx
    ) -> pb.ListEntriesByTransactionResponse:
        leaves = await self.use_cases.entries_by_transaction(
            request.transaction_id, _reader(request.principal, context)
        )
        return pb.ListEntriesByTransactionResponse(entries=[_log_entry(x) for x in leaves])

    async def PlaceLegalHold(
        self, request: pb.PlaceLegalHoldRequest, context: Ctx
    ) -> pb.PlaceLegalHoldResponse:
        hold = await self.use_cases.place_hold(
            _SCOPES.get(request.scope, ""), request.value, request.reference
        )
        return pb.PlaceLegalHoldResponse(hold=_hold(hold))

    async def ReleaseLegalHold(
        self, request: pb.ReleaseLegalHoldRequest, context: Ctx
    ) -> pb.ReleaseLegalHoldResponse:
        return pb.ReleaseLegalHoldResponse(hold=_hold(await self.use_cases.release_hold(request.hold_id)))

    async def ListLegalHolds(
        self, request: pb.ListLegalHoldsRequest, context: Ctx
    ) -> pb.ListLegalHoldsResponse:
        holds = await self.use_cases.holds(request.include_released)
        return pb.ListLegalHoldsResponse(holds=[_hold(h) for h in holds])

    async def ApplyRetention(
        self, request: pb.ApplyRetentionRequest, context: Ctx
    ) -> pb.ApplyRetentionResponse:
        expired = await self.use_cases.apply_retention()
        return pb.ApplyRetentionResponse(expired=expired, retention_days=self.use_cases.retention_days)
