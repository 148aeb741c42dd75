"""InsurerAdapterService: the router hands claims for push insurers here."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import grpc

from iclaim_hub.common import tracing
from iclaim_hub.common.fields import copy_fields
from iclaim_hub.common.servicer import Serves
from iclaim_hub.internal.v1 import insurer_adapter_pb2, insurer_adapter_pb2_grpc
from services.insurer_adapter.model import DeliveryRequest
from services.insurer_adapter.usecases import ClaimIntake


class InsurerAdapterServicer(Serves[ClaimIntake], insurer_adapter_pb2_grpc.InsurerAdapterServiceServicer):
    async def DeliverClaim(
        self,
        request: insurer_adapter_pb2.DeliverClaimRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> insurer_adapter_pb2.DeliverClaimResponse:
        lease = request.router_lease
        lease_s = lease.ToTimedelta().total_seconds() if request.HasField("router_lease") else 0.0
        new = await self.use_cases.deliver(_delivery_request(request), router_lease_s=lease_s)
        return insurer_adapter_pb2.DeliverClaimResponse(duplicate=not new)


def _delivery_request(r: insurer_adapter_pb2.DeliverClaimRequest) -> DeliveryRequest:
    return copy_fields(
        DeliveryRequest,
        r,
        submitted_at=r.submitted_at.ToDatetime(tzinfo=UTC) if r.HasField("submitted_at") else None,
        traceparent=tracing.current_traceparent(),  # this call's span: the pushes continue it
    )
