"""The router's DecisionIntakeService as the adapter's DecisionIntake: one
RecordDecision call with a deadline, its status read as acknowledged, refused
for good, or worth retrying."""

from __future__ import annotations

import asyncio

import grpc

from iclaim.v1 import claim_service_pb2
from iclaim_hub.internal.v1 import decision_intake_pb2, decision_intake_pb2_grpc
from services.insurer_adapter import simulator
from services.insurer_adapter.model import PendingDecision, SendOutcome, SendResult

_STATE = {
    simulator.APPROVED: claim_service_pb2.CLAIM_STATE_APPROVED,
    simulator.PARTIALLY_APPROVED: claim_service_pb2.CLAIM_STATE_PARTIALLY_APPROVED,
    simulator.DENIED: claim_service_pb2.CLAIM_STATE_DENIED,
    simulator.PENDING_REVIEW: claim_service_pb2.CLAIM_STATE_PENDING_REVIEW,
}
# Acknowledged: the router has it (ALREADY_EXISTS = same decision recorded before).
_ACK = {grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS}
# The router will never take it: retrying cannot help.
_PERMANENT = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
}


class RouterDecisionIntake:
    def __init__(
        self, stub: decision_intake_pb2_grpc.DecisionIntakeServiceAsyncStub, deadline_s: float
    ) -> None:
        self._stub = stub
        self._deadline_s = deadline_s

    async def record(self, decision: PendingDecision) -> SendResult:
        request = decision_intake_pb2.RecordDecisionRequest(
            transaction_id=decision.transaction_id,
            insurer_code=decision.insurer_code,
            state=_STATE[decision.state],
            approved_amount_satang=decision.approved_satang,
            decision_envelope=decision.envelope,
            reason_code=decision.reason_code,
        )
        code = grpc.StatusCode.OK
        detail = ""
        try:
            await self._stub.RecordDecision(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as exc:
            code, detail = exc.code(), exc.details() or ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a channel failure is retried like UNAVAILABLE
            code, detail = grpc.StatusCode.UNAVAILABLE, type(exc).__name__
        if code in _ACK:
            return SendResult(SendOutcome.ACKNOWLEDGED, code.name, detail)
        if code in _PERMANENT:
            return SendResult(SendOutcome.REJECTED, code.name, detail)
        return SendResult(SendOutcome.RETRY, code.name, detail)
