"""The router's DecisionIntakeService.RecordDecision as the dispatcher's
AnswerSink: relays a decision an insurer answered a push with (§10.6) under
PostDecision's rules, and says what became of it."""

from __future__ import annotations

import asyncio

import grpc
from google.rpc import status_pb2

from iclaim.errors import error_info_of
from iclaim_hub.internal.v1 import decision_intake_pb2, decision_intake_pb2_grpc
from services.insurer_adapter.model import AnswerOutcome, PushAnswer

_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


def _reason(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                info = error_info_of(status_pb2.Status.FromString(value))
            except Exception:  # noqa: BLE001 - a garbled trailer is no reason
                return ""
            return str(info.reason) if info is not None else ""
    return ""


class RouterAnswers:
    def __init__(self, channel: grpc.aio.Channel, deadline_s: float) -> None:
        self._stub = decision_intake_pb2_grpc.DecisionIntakeServiceStub(channel)
        self._deadline_s = deadline_s

    async def record(self, insurer_code: str, answer: PushAnswer) -> AnswerOutcome:
        request = decision_intake_pb2.RecordDecisionRequest(
            transaction_id=answer.transaction_id,
            insurer_code=insurer_code,
            state=answer.state,  # type: ignore[arg-type]  # an int of ClaimState, checked by the router
            approved_amount_satang=answer.approved_amount_satang,
            decision_envelope=answer.decision_envelope,
            reason_code=answer.reason_code,
            push_answer=True,
        )
        try:
            await self._stub.RecordDecision(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err) == "DECISION_CONFLICT":
                return AnswerOutcome.CONFLICT
            return AnswerOutcome.REFUSED if err.code() in _REFUSALS else AnswerOutcome.UNRECORDED
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a channel failure is an outage
            return AnswerOutcome.UNRECORDED
        return AnswerOutcome.RECORDED
