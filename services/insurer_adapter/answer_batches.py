"""Relays decisions answered in pushes (§10.6) to the router a batch at a
time, with no timer (iclaim_hub.common.batching): the first goes at once,
alone; those that come in while a call is in flight go together in the next
one (one router commit for all).
An unloaded adapter adds no wait; a loaded one makes fewer calls and commits.
One answer alone goes through the single call, which the router answers from
the claim as it stored it, without the read a batch makes.

With tracing switched on, every answer goes alone, through the single call,
so that the decision joins its claim's trace (the router's batch write
belongs to no one claim's trace): tracing trades this saving for the view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from iclaim_hub.common.batching import NoTimerBatches
from iclaim_hub.common.handoff import MAX_ENVELOPE_BYTES_PER_CALL, take_within
from services.insurer_adapter.model import AnswerOutcome, PushAnswer

# Answers one call carries at most; more wait for the next.
MAX_BATCH = 200


class AnswersSink(Protocol):
    async def record(self, insurer_code: str, answer: PushAnswer) -> AnswerOutcome: ...

    async def record_many(self, answers: Sequence[tuple[str, PushAnswer]]) -> list[AnswerOutcome]:
        """An outcome for each, in order; never raises."""


class BatchedAnswers:
    def __init__(self, sink: AnswersSink, traced: Callable[[], bool], max_batch: int = MAX_BATCH) -> None:
        self._sink = sink
        self._traced = traced  # whether answers must keep their claims' traces
        self._batches: NoTimerBatches[tuple[str, PushAnswer], AnswerOutcome] = NoTimerBatches(
            self._one,
            sink.record_many,
            failed=AnswerOutcome.UNRECORDED,
            # By size too: each decision envelope may be up to 64 KiB, and the
            # router refuses a request over its limit (every answer in it lost).
            take=lambda waiting: take_within(
                [len(answer.decision_envelope) for _, answer in waiting[:max_batch]],
                max_batch,
                MAX_ENVELOPE_BYTES_PER_CALL,
            ),
            error_event="answer_batch_error",
        )

    async def record(self, insurer_code: str, answer: PushAnswer) -> AnswerOutcome:
        if self._traced():
            return await self._sink.record(insurer_code, answer)
        return await self._batches.submit((insurer_code, answer))

    async def _one(self, item: tuple[str, PushAnswer]) -> AnswerOutcome:
        return await self._sink.record(*item)

    async def close(self) -> None:
        """Whoever still waits learns nothing was recorded."""
        await self._batches.close()
