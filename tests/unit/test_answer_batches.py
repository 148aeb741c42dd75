"""The adapter's relay of decisions answered in pushes (§10.6), batched with
no timer: the first goes alone at once, those that arrive while a call is in
flight go together next; an answer alone, and a traced push's answer, go
through the single call; whatever goes wrong, every waiter gets an outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from iclaim.limits import MAX_REQUEST_BYTES
from iclaim_hub.common.handoff import MAX_ENVELOPE_BYTES_PER_CALL
from services.insurer_adapter.answer_batches import MAX_BATCH, BatchedAnswers
from services.insurer_adapter.model import AnswerOutcome, PushAnswer
from services.insurer_adapter.push_answer import from_json


def _answer(n: int) -> PushAnswer:
    return PushAnswer(f"txn_{n:028x}", 4, 100_00, "e.n.v.e.l", "")


class Sink:
    """Holds each call until the test releases it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.singles: list[str] = []
        self.release = asyncio.Event()
        self.outcome = AnswerOutcome.RECORDED
        self.fail: Exception | None = None
        self.short = False

    async def record(self, insurer_code: str, answer: PushAnswer) -> AnswerOutcome:
        self.singles.append(answer.transaction_id)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return self.outcome

    async def record_many(self, answers: Sequence[tuple[str, PushAnswer]]) -> list[AnswerOutcome]:
        self.batches.append([a.transaction_id for _, a in answers])
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [self.outcome] * (len(answers) - (1 if self.short else 0))


async def _until(predicate: object) -> None:
    for _ in range(500):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


async def test_the_first_goes_alone_and_those_arriving_meanwhile_go_together() -> None:
    sink = Sink()
    batched = BatchedAnswers(sink, traced=lambda: False)
    first = asyncio.create_task(batched.record("AIA", _answer(0)))
    await _until(lambda: len(sink.singles) == 1)
    rest = [asyncio.create_task(batched.record("AIA", _answer(n))) for n in range(1, 5)]
    await asyncio.sleep(0.01)
    assert sink.batches == []  # nothing sent while the first call is in flight
    sink.release.set()
    assert await first == AnswerOutcome.RECORDED
    assert await asyncio.gather(*rest) == [AnswerOutcome.RECORDED] * 4
    # The first alone through the single call (no read at the router), the rest together.
    assert sink.singles == [_answer(0).transaction_id]
    assert sink.batches == [[_answer(n).transaction_id for n in range(1, 5)]]


async def test_a_batch_is_capped_and_the_rest_follow() -> None:
    sink = Sink()
    sink.release.set()
    batched = BatchedAnswers(sink, traced=lambda: False, max_batch=3)
    outcomes = await asyncio.gather(*(batched.record("AIA", _answer(n)) for n in range(7)))
    assert outcomes == [AnswerOutcome.RECORDED] * 7
    assert [len(b) for b in sink.batches] == [3, 3]
    assert sink.singles == [_answer(6).transaction_id]  # the one left over, alone


async def test_a_traced_push_answer_goes_alone_through_the_single_call() -> None:
    sink = Sink()
    sink.release.set()
    batched = BatchedAnswers(sink, traced=lambda: True)
    assert await batched.record("AIA", _answer(1)) == AnswerOutcome.RECORDED
    assert sink.singles == [_answer(1).transaction_id] and sink.batches == []


@pytest.mark.parametrize("trouble", ["raises", "short answer"])
async def test_a_failing_or_garbled_batch_is_unrecorded_for_everyone(trouble: str) -> None:
    sink = Sink()
    sink.release.set()
    if trouble == "raises":
        sink.fail = RuntimeError("boom")
    else:
        sink.short = True
    batched = BatchedAnswers(sink, traced=lambda: False)
    outcomes = await asyncio.gather(*(batched.record("AIA", _answer(n)) for n in range(3)))
    assert outcomes == [AnswerOutcome.UNRECORDED] * 3
    sink.fail, sink.short = None, False  # the next one is sent afresh
    assert await batched.record("AIA", _answer(9)) == AnswerOutcome.RECORDED
    sink.fail = RuntimeError("boom")  # a single call that raises: unrecorded too
    assert await batched.record("AIA", _answer(10)) == AnswerOutcome.UNRECORDED


async def test_waiters_learn_nothing_was_recorded_when_the_sender_is_cancelled() -> None:
    sink = Sink()
    batched = BatchedAnswers(sink, traced=lambda: False)
    first = asyncio.create_task(batched.record("AIA", _answer(0)))
    await _until(lambda: len(sink.singles) == 1)
    second = asyncio.create_task(batched.record("AIA", _answer(1)))
    await asyncio.sleep(0)
    await batched.close()
    assert await first == AnswerOutcome.UNRECORDED
    assert await second == AnswerOutcome.UNRECORDED


async def test_a_cancelled_push_does_not_cancel_the_batch() -> None:
    sink = Sink()
    batched = BatchedAnswers(sink, traced=lambda: False)
    first = asyncio.create_task(batched.record("AIA", _answer(0)))
    second = asyncio.create_task(batched.record("AIA", _answer(1)))
    await _until(lambda: len(sink.batches) == 1)
    first.cancel()
    sink.release.set()
    assert await second == AnswerOutcome.RECORDED
    assert sink.batches == [[_answer(0).transaction_id, _answer(1).transaction_id]]


async def test_a_batch_is_capped_by_its_envelopes_size_too() -> None:
    """Decision envelopes may be up to 64 KiB each: a batch carries at most
    MAX_ENVELOPE_BYTES_PER_CALL of them, or the router would refuse the whole
    call over its request limit and every answer in it would go unrecorded."""
    sink = Sink()
    sink.release.set()
    batched = BatchedAnswers(sink, traced=lambda: False)
    big = 60 * 1024

    def answer(n: int) -> PushAnswer:
        return PushAnswer(f"txn_{n:028x}", 4, 100_00, "e" * big, "")

    outcomes = await asyncio.gather(*(batched.record("AIA", answer(n)) for n in range(40)))
    assert outcomes == [AnswerOutcome.RECORDED] * 40
    per_call = MAX_ENVELOPE_BYTES_PER_CALL // big
    assert sink.batches and all(len(b) <= per_call for b in sink.batches)
    assert sum(len(b) for b in sink.batches) + len(sink.singles) == 40
    # Room for the other fields: each answer's id, codes and amounts well under 256 bytes.
    assert MAX_ENVELOPE_BYTES_PER_CALL + MAX_BATCH * 256 < MAX_REQUEST_BYTES


def test_an_answer_nested_too_deep_is_taken_not_a_crash() -> None:
    """A 2xx webhook body is the insurer's: JSON nested past Python's recursion
    limit is no decision object, so the push is taken (push_answer.from_json)."""
    deep = b"[" * 100_000 + b"]" * 100_000
    assert from_json(deep, "txn_" + "0" * 28).taken
    nested = b'{"decision": {"state": "CLAIM_STATE_APPROVED", "x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}}"
    result = from_json(nested, "txn_" + "0" * 28)
    assert result.taken  # taken whatever its decision part is worth
