"""The router's DecisionIntakeService.RecordDecision as the dispatcher's
AnswerSink: relays a decision an insurer answered a push with (§10.6) under
PostDecision's rules, and says what became of it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from iclaim.errors import reason_in_trailers
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


# What one RecordPushAnswers may carry (decision_intake.proto).
MAX_PER_CALL = 500


def _refusal(reason: str) -> AnswerOutcome:
    return AnswerOutcome.CONFLICT if reason == "DECISION_CONFLICT" else AnswerOutcome.REFUSED


def _request(insurer_code: str, answer: PushAnswer) -> decision_intake_pb2.RecordDecisionRequest:
    return decision_intake_pb2.RecordDecisionRequest(
        transaction_id=answer.transaction_id,
        insurer_code=insurer_code,
        state=answer.state,  # type: ignore[arg-type]  # an int of ClaimState, checked by the router
        approved_amount_satang=answer.approved_amount_satang,
        decision_envelope=answer.decision_envelope,
        reason_code=answer.reason_code,
        push_answer=True,
    )


class RouterAnswers:
    def __init__(self, channel: grpc.aio.Channel, deadline_s: float) -> None:
        self._stub = decision_intake_pb2_grpc.DecisionIntakeServiceStub(channel)
        self._deadline_s = deadline_s

    async def record_many(self, answers: Sequence[tuple[str, PushAnswer]]) -> list[AnswerOutcome]:
        """(insurer_code, answer) each, in RecordPushAnswers calls (one commit
        each at the router); one call each against a router that does not know
        it yet (a rolling upgrade). Never raises: an outage is UNRECORDED."""
        outcomes: list[AnswerOutcome] = []
        for start in range(0, len(answers), MAX_PER_CALL):
            chunk = answers[start : start + MAX_PER_CALL]
            request = decision_intake_pb2.RecordPushAnswersRequest(
                answers=[_request(code, answer) for code, answer in chunk]
            )
            try:
                reply = await self._stub.RecordPushAnswers(request, timeout=self._deadline_s)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    outcomes += await asyncio.gather(*(self.record(code, answer) for code, answer in chunk))
                else:
                    outcomes += [AnswerOutcome.UNRECORDED] * len(chunk)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a channel failure is an outage
                outcomes += [AnswerOutcome.UNRECORDED] * len(chunk)
                continue
            refused = {r.index: r.reason for r in reply.refused}
            outcomes += [
                _refusal(refused[i]) if i in refused else AnswerOutcome.RECORDED for i in range(len(chunk))
            ]
        return outcomes

    async def record(self, insurer_code: str, answer: PushAnswer) -> AnswerOutcome:
        request = _request(insurer_code, answer)
        try:
            await self._stub.RecordDecision(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as err:
            if (
                err.code() == grpc.StatusCode.FAILED_PRECONDITION
                and reason_in_trailers(err.trailing_metadata()) == "DECISION_CONFLICT"
            ):
                return AnswerOutcome.CONFLICT
            return AnswerOutcome.REFUSED if err.code() in _REFUSALS else AnswerOutcome.UNRECORDED
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a channel failure is an outage
            return AnswerOutcome.UNRECORDED
        return AnswerOutcome.RECORDED
