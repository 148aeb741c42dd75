"""iclaim.v1.AuditTrailService: the public, read-only view of the log.

Served through the gateway; every read is forced to the verified caller's own
entries by the internal servicer's principal filter (origin or destination)."""
from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from iclaim_hub.common.server import caller_of
from iclaim_hub.internal.v1 import audit_log_pb2 as ipb
from iclaim.v1 import audit_trail_service_pb2 as pb
from iclaim.v1 import audit_trail_service_pb2_grpc as pb_grpc
from services.audit_log.service import AuditLogServicer

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_KIND = {
    ipb.AUDIT_EVENT_KIND_GATEWAY_CALL: "GATEWAY_CALL",
    ipb.AUDIT_EVENT_KIND_CLAIM_STATE_CHANGE: "CLAIM_STATE_CHANGE",
}


def trail_entry(e: ipb.LogEntry) -> pb.AuditTrailEntry:
    ev = e.event
    return pb.AuditTrailEntry(
        leaf_index=e.leaf_index,
        leaf_hash=e.leaf_hash,
        expired=e.expired,
        event_id=ev.event_id,
        kind="" if e.expired else _KIND.get(ev.kind, ""),
        origin_principal=ev.origin_principal,
        source_address=ev.source_address,
        destination=ev.destination,
        route=ev.route,
        occurred_at_us=ev.occurred_at.seconds * 1_000_000 + ev.occurred_at.nanos // 1000,
        size_bytes=ev.size_bytes,
        duration_ms=ev.duration_ms,
        service_type=ev.service_type,
        outcome_code=ev.outcome_code,
        outcome_reason=ev.outcome_reason,
        transaction_id=ev.transaction_id,
        envelope_sha256=ev.envelope_sha256,
    )


class AuditTrailServicer(pb_grpc.AuditTrailServiceServicer):
    def __init__(self, log: AuditLogServicer) -> None:
        self._log = log

    async def GetAuditCheckpoint(
        self, request: pb.GetAuditCheckpointRequest, context: Ctx
    ) -> pb.AuditCheckpoint:
        caller_of(context)
        cp = (await self._log.GetCheckpoint(ipb.GetCheckpointRequest(), context)).checkpoint
        return pb.AuditCheckpoint(
            note=cp.note, tree_size=cp.tree_size, root_hash=cp.root_hash,
            signed_at=cp.signed_at, verifier_key=cp.verifier_key,
        )

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: Ctx
    ) -> pb.ListAuditEntriesResponse:
        me = caller_of(context).code
        if request.transaction_id:
            by_tx = await self._log.ListEntriesByTransaction(
                ipb.ListEntriesByTransactionRequest(
                    transaction_id=request.transaction_id, principal=me),
                context,
            )
            entries = [trail_entry(e) for e in by_tx.entries]
            size = (await self._log.GetCheckpoint(ipb.GetCheckpointRequest(), context))
            return pb.ListAuditEntriesResponse(
                entries=entries, next_start_index=size.checkpoint.tree_size,
                tree_size=size.checkpoint.tree_size,
            )
        page = await self._log.ListEntries(
            ipb.ListEntriesRequest(
                start_index=request.start_index, max_entries=request.max_entries, principal=me),
            context,
        )
        return pb.ListAuditEntriesResponse(
            entries=[trail_entry(e) for e in page.entries],
            next_start_index=page.next_start_index,
            tree_size=page.tree_size,
        )

    async def GetAuditInclusionProof(
        self, request: pb.GetAuditInclusionProofRequest, context: Ctx
    ) -> pb.AuditInclusionProof:
        me = caller_of(context).code
        proof = await self._log.GetInclusionProof(
            ipb.GetInclusionProofRequest(
                leaf_index=request.leaf_index, tree_size=request.tree_size, principal=me),
            context,
        )
        return pb.AuditInclusionProof(
            leaf_index=proof.leaf_index, tree_size=proof.tree_size,
            leaf_hash=proof.leaf_hash, proof=list(proof.proof),
        )

    async def GetAuditConsistencyProof(
        self, request: pb.GetAuditConsistencyProofRequest, context: Ctx
    ) -> pb.AuditConsistencyProof:
        caller_of(context)
        proof = await self._log.GetConsistencyProof(
            ipb.GetConsistencyProofRequest(
                first_size=request.first_size, second_size=request.second_size),
            context,
        )
        return pb.AuditConsistencyProof(
            first_size=proof.first_size, second_size=proof.second_size, proof=list(proof.proof)
        )
