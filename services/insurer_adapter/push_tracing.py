"""The push span: one per attempt, in the trace of the DeliverClaim call that
stored the delivery (its row keeps the traceparent), so a push made later, by
any replica, still joins the claim's trace. The pushers send the span's
context to the insurer as `traceparent` (gRPC metadata or an HTTP header).
Installed only with tracing on (server.py)."""

from __future__ import annotations

from opentelemetry.trace import SpanKind, Status, StatusCode

from iclaim_hub.common import tracing
from services.insurer_adapter.model import Delivery, Endpoint, PushResult
from services.insurer_adapter.pushers import Pusher


class TracedPusher:
    def __init__(self, inner: Pusher) -> None:
        self._inner = inner

    async def push(self, endpoint: Endpoint, delivery: Delivery) -> PushResult:
        attributes = {"iclaim.insurer": endpoint.insurer_code, "iclaim.push.mode": endpoint.mode}
        with tracing.span(
            "insurer.push", parent=delivery.traceparent, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            result = await self._inner.push(endpoint, delivery)
            span.set_attribute("iclaim.push.attempt", delivery.attempts)
            if not result.taken:
                # A PushError value: our fixed vocabulary, never the insurer's text.
                span.set_status(Status(StatusCode.ERROR, result.error))
            return result

    async def close(self) -> None:
        await self._inner.close()
