"""Relays decisions answered in pushes (§10.6) to the router a batch at a
time, with no timer: the first goes at once, alone; those that come in while
a call is in flight go together in the next one (one router commit for all).
An unloaded adapter adds no wait; a loaded one makes fewer calls and commits.
One answer alone goes through the single call, which the router answers from
the claim as it stored it, without the read a batch makes.

With tracing switched on, every answer goes alone, through the single call,
so that the decision joins its claim's trace (the router's batch write
belongs to no one claim's trace): tracing trades this saving for the view.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from services.insurer_adapter.model import AnswerOutcome, PushAnswer

# Answers one call carries at most; more wait for the next.
MAX_BATCH = 200


class AnswersSink(Protocol):
    async def record(self, insurer_code: str, answer: PushAnswer) -> AnswerOutcome: ...

    async def record_many(self, answers: Sequence[tuple[str, PushAnswer]]) -> list[AnswerOutcome]:
        """An outcome for each, in order; never raises."""


_Waiting = tuple[str, PushAnswer, "asyncio.Future[AnswerOutcome]"]


class BatchedAnswers:
    def __init__(self, sink: AnswersSink, traced: Callable[[], bool], max_batch: int = MAX_BATCH) -> None:
        self._sink = sink
        self._traced = traced  # whether answers must keep their claims' traces
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._sender: asyncio.Task[None] | None = None

    async def record(self, insurer_code: str, answer: PushAnswer) -> AnswerOutcome:
        if self._traced():
            return await self._sink.record(insurer_code, answer)
        outcome: asyncio.Future[AnswerOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((insurer_code, answer, outcome))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())
        return await outcome

    async def _send(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
                try:
                    if len(batch) == 1:
                        outcomes = [await self._sink.record(batch[0][0], batch[0][1])]
                    else:
                        outcomes = await self._sink.record_many([(code, answer) for code, answer, _ in batch])
                except Exception:  # noqa: BLE001 - the sink should not raise; if it does, nothing was recorded
                    outcomes = []
                if len(outcomes) != len(batch):
                    outcomes = [AnswerOutcome.UNRECORDED] * len(batch)
                _settle(batch, outcomes)
                batch = []
        finally:  # cancelled (the adapter stops): whoever waits learns nothing was recorded
            left, self._waiting = batch + self._waiting, []
            _settle(left, [AnswerOutcome.UNRECORDED] * len(left))


def _settle(batch: Sequence[_Waiting], outcomes: Sequence[AnswerOutcome]) -> None:
    for (_, _, future), outcome in zip(batch, outcomes, strict=True):
        if not future.done():
            future.set_result(outcome)
