"""InsurerAdapterService: the router hands claims for push insurers here."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import grpc

from iclaim.errors import IclaimError
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
        new = await self.use_cases.deliver(_delivery_request(request), router_lease_s=_lease_s(request))
        return insurer_adapter_pb2.DeliverClaimResponse(duplicate=not new)

    async def DeliverClaims(
        self,
        request: insurer_adapter_pb2.DeliverClaimsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> insurer_adapter_pb2.DeliverClaimsResponse:
        outcomes = await self.use_cases.deliver_many(
            [(_delivery_request(r), _lease_s(r)) for r in request.claims]
        )
        response = insurer_adapter_pb2.DeliverClaimsResponse()
        for index, outcome in enumerate(outcomes):
            if outcome is False:
                response.duplicates.append(index)
            elif isinstance(outcome, IclaimError):
                response.failed.add(index=index, reason=outcome.reason)
        return response


def _lease_s(r: insurer_adapter_pb2.DeliverClaimRequest) -> float:
    return r.router_lease.ToTimedelta().total_seconds() if r.HasField("router_lease") else 0.0


def _delivery_request(r: insurer_adapter_pb2.DeliverClaimRequest) -> DeliveryRequest:
    return copy_fields(
        DeliveryRequest,
        r,
        submitted_at=r.submitted_at.ToDatetime(tzinfo=UTC) if r.HasField("submitted_at") else None,
        traceparent=tracing.current_traceparent(),  # this call's span: the pushes continue it
    )
