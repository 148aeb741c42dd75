"""Lets `verify_trail` run over the public AuditTrailService (through the
gateway, signed as the caller) with the same proof checks as over the
internal AuditLogService: the public messages are mapped onto the internal
shapes the verifier reads."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from iclaim.audit.entry import AuditEntry
from iclaim.audit.wire import event_of_entry
from iclaim.internal.v1 import audit_log_pb2 as ipb
from iclaim.v1 import audit_trail_service_pb2 as pb
from iclaim.v1 import audit_trail_service_pb2_grpc as pb_grpc

def log_entry(e: pb.AuditTrailEntry) -> ipb.LogEntry:
    event = (
        ipb.AuditEvent(event_id=e.event_id)
        if e.expired
        else event_of_entry(AuditEntry(**{f.name: getattr(e, f.name) for f in fields(AuditEntry)}))
    )
    return ipb.LogEntry(
        leaf_index=e.leaf_index, leaf_hash=e.leaf_hash, expired=e.expired, event=event
    )


class GatewayTrailStub:
    """The subset of AuditLogServiceStub that verify_trail calls."""

    def __init__(self, channel: Any) -> None:
        self._stub = pb_grpc.AuditTrailServiceStub(channel)

    async def GetCheckpoint(self, _req: Any, timeout: float) -> ipb.GetCheckpointResponse:
        cp = await self._stub.GetAuditCheckpoint(pb.GetAuditCheckpointRequest(), timeout=timeout)
        return ipb.GetCheckpointResponse(
            checkpoint=ipb.Checkpoint(
                note=cp.note, tree_size=cp.tree_size, root_hash=cp.root_hash,
                signed_at=cp.signed_at, verifier_key=cp.verifier_key,
            )
        )

    async def ListEntries(self, req: ipb.ListEntriesRequest, timeout: float) -> ipb.ListEntriesResponse:
        page = await self._stub.ListAuditEntries(
            pb.ListAuditEntriesRequest(start_index=req.start_index, max_entries=req.max_entries),
            timeout=timeout,
        )
        return ipb.ListEntriesResponse(
            entries=[log_entry(e) for e in page.entries],
            next_start_index=page.next_start_index,
            tree_size=page.tree_size,
        )

    async def ListEntriesByTransaction(
        self, req: ipb.ListEntriesByTransactionRequest, timeout: float
    ) -> ipb.ListEntriesByTransactionResponse:
        page = await self._stub.ListAuditEntries(
            pb.ListAuditEntriesRequest(transaction_id=req.transaction_id), timeout=timeout
        )
        return ipb.ListEntriesByTransactionResponse(entries=[log_entry(e) for e in page.entries])

    async def GetInclusionProof(
        self, req: ipb.GetInclusionProofRequest, timeout: float
    ) -> ipb.GetInclusionProofResponse:
        proof = await self._stub.GetAuditInclusionProof(
            pb.GetAuditInclusionProofRequest(leaf_index=req.leaf_index, tree_size=req.tree_size),
            timeout=timeout,
        )
        return ipb.GetInclusionProofResponse(
            leaf_index=proof.leaf_index, tree_size=proof.tree_size,
            leaf_hash=proof.leaf_hash, proof=list(proof.proof),
        )
