"""iclaim.v1.AuditTrailService: the public, read-only view of the log.

Served through the gateway; every read is scoped to the verified caller's own
entries (origin or destination) by the same use cases as the internal service."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeAlias

import grpc

from iclaim.audit.verifier import StoredLeaf
from iclaim.v1 import audit_trail_service_pb2 as pb
from iclaim.v1 import audit_trail_service_pb2_grpc as pb_grpc
from iclaim_hub.common.proto_time import timestamp
from iclaim_hub.common.server import caller_of
from services.audit_log.events import KINDS
from services.audit_log.usecases import AuditLog, Reader

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _trail_entry(leaf: StoredLeaf) -> pb.AuditTrailEntry:
    if leaf.entry is None:  # expired: only the event id and the leaf hash remain
        return pb.AuditTrailEntry(
            leaf_index=leaf.leaf_index, leaf_hash=leaf.leaf_hash, expired=True, event_id=leaf.event_id
        )
    fields = asdict(leaf.entry)
    fields["kind"] = leaf.entry.kind if leaf.entry.kind in KINDS else ""  # the documented kinds only
    return pb.AuditTrailEntry(leaf_index=leaf.leaf_index, leaf_hash=leaf.leaf_hash, **fields)


def _own(context: Ctx) -> Reader:
    me = caller_of(context).code
    return Reader(verified=me, requested=me)


class AuditTrailServicer(pb_grpc.AuditTrailServiceServicer):
    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def GetAuditCheckpoint(
        self, request: pb.GetAuditCheckpointRequest, context: Ctx
    ) -> pb.AuditCheckpoint:
        caller_of(context)
        cp = await self._log.checkpoint()
        return pb.AuditCheckpoint(
            note=cp.note,
            tree_size=cp.tree_size,
            root_hash=cp.root_hash,
            signed_at=timestamp(cp.signed_at),
            verifier_key=self._log.verifier_key,
        )

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: Ctx
    ) -> pb.ListAuditEntriesResponse:
        reader = _own(context)
        if request.transaction_id:
            leaves = await self._log.entries_by_transaction(request.transaction_id, reader)
            size = (await self._log.checkpoint()).tree_size
            return pb.ListAuditEntriesResponse(
                entries=[_trail_entry(x) for x in leaves], next_start_index=size, tree_size=size
            )
        page = await self._log.list_entries(request.start_index, request.max_entries, reader)
        return pb.ListAuditEntriesResponse(
            entries=[_trail_entry(x) for x in page.leaves],
            next_start_index=page.next_start_index,
            tree_size=page.tree_size,
        )

    async def GetAuditInclusionProof(
        self, request: pb.GetAuditInclusionProofRequest, context: Ctx
    ) -> pb.AuditInclusionProof:
        p = await self._log.inclusion_proof(request.leaf_index, request.tree_size, _own(context))
        return pb.AuditInclusionProof(
            leaf_index=p.leaf_index, tree_size=p.tree_size, leaf_hash=p.leaf_hash, proof=p.proof
        )

    async def GetAuditConsistencyProof(
        self, request: pb.GetAuditConsistencyProofRequest, context: Ctx
    ) -> pb.AuditConsistencyProof:
        caller_of(context)
        proof = await self._log.consistency_proof(request.first_size, request.second_size)
        return pb.AuditConsistencyProof(
            first_size=request.first_size, second_size=request.second_size, proof=proof
        )
