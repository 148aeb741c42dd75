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
from iclaim_hub.common.fields import copy_fields
from iclaim_hub.common.proto_time import timestamp
from iclaim_hub.common.server import caller_of
from iclaim_hub.common.servicer import Serves
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


class AuditTrailServicer(Serves[AuditLog], pb_grpc.AuditTrailServiceServicer):
    async def GetAuditCheckpoint(
        self, request: pb.GetAuditCheckpointRequest, context: Ctx
    ) -> pb.AuditCheckpoint:
        caller_of(context)
        cp = await self.use_cases.checkpoint()
        return copy_fields(
            pb.AuditCheckpoint,
            cp,
            signed_at=timestamp(cp.signed_at),
            verifier_key=self.use_cases.verifier_key,
        )

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: Ctx
    ) -> pb.ListAuditEntriesResponse:
        reader = _own(context)
        if request.transaction_id:
            leaves = await self.use_cases.entries_by_transaction(request.transaction_id, reader)
            size = (await self.use_cases.checkpoint()).tree_size
            return pb.ListAuditEntriesResponse(
                entries=[_trail_entry(x) for x in leaves], next_start_index=size, tree_size=size
            )
        page = await self.use_cases.list_entries(request.start_index, request.max_entries, reader)
        return copy_fields(pb.ListAuditEntriesResponse, page, entries=[_trail_entry(x) for x in page.leaves])

    async def GetAuditInclusionProof(
        self, request: pb.GetAuditInclusionProofRequest, context: Ctx
    ) -> pb.AuditInclusionProof:
        p = await self.use_cases.inclusion_proof(request.leaf_index, request.tree_size, _own(context))
        return copy_fields(pb.AuditInclusionProof, p)

    async def GetAuditConsistencyProof(
        self, request: pb.GetAuditConsistencyProofRequest, context: Ctx
    ) -> pb.AuditConsistencyProof:
        caller_of(context)
        proof = await self.use_cases.consistency_proof(request.first_size, request.second_size)
        return copy_fields(pb.AuditConsistencyProof, request, proof=proof)
