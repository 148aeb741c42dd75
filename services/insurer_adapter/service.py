"""InsurerAdapterService: the router hands claims for push insurers here."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import grpc

from iclaim_hub.internal.v1 import insurer_adapter_pb2, insurer_adapter_pb2_grpc
from services.insurer_adapter.model import DeliveryRequest
from services.insurer_adapter.usecases import ClaimIntake


class InsurerAdapterServicer(insurer_adapter_pb2_grpc.InsurerAdapterServiceServicer):
    def __init__(self, intake: ClaimIntake) -> None:
        self._intake = intake

    async def DeliverClaim(
        self,
        request: insurer_adapter_pb2.DeliverClaimRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> insurer_adapter_pb2.DeliverClaimResponse:
        new = await self._intake.deliver(_delivery_request(request))
        return insurer_adapter_pb2.DeliverClaimResponse(duplicate=not new)


def _delivery_request(r: insurer_adapter_pb2.DeliverClaimRequest) -> DeliveryRequest:
    return DeliveryRequest(
        transaction_id=r.transaction_id,
        insurer_code=r.insurer_code,
        hospital_code=r.hospital_code,
        claim_ref=r.claim_ref,
        billed_amount_satang=r.billed_amount_satang,
        envelope=r.envelope,
        submitted_at=r.submitted_at.ToDatetime(tzinfo=UTC) if r.HasField("submitted_at") else None,
    )
