"""Calls batched with no timer: the first item goes at once, alone; the items
that come while a call is in flight go together in the next one. An unloaded
caller adds no wait; a loaded one makes fewer calls, each of which costs both
processes a few hundred µs of CPU. The adapter's relayed answers and the
router's hand-offs to the adapter go this way."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("iclaim.batching")

I = TypeVar("I")  # noqa: E741 - an item
O = TypeVar("O")  # noqa: E741 - its outcome

_Waiting = tuple[I, "asyncio.Future[O]"]


class NoTimerBatches(Generic[I, O]):
    def __init__(
        self,
        one: Callable[[I], Awaitable[O]],
        many: Callable[[list[I]], Awaitable[Sequence[O]]],
        *,
        failed: O,
        take: Callable[[Sequence[I]], int],
        error_event: str,
    ) -> None:
        """`one` sends an item alone, `many` several (an outcome each, in order);
        `take` says how many of the waiting items, from the front, one call
        carries (at least one); `failed` is the outcome of an item whose call
        raised, answered garbled or was cancelled, and `error_event` the log
        line of a call that raised."""
        self._one = one
        self._many = many
        self._failed = failed
        self._take = take
        self._error_event = error_event
        self._waiting: list[_Waiting[I, O]] = []
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> O:
        outcome: asyncio.Future[O] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, outcome))
        if self._sender is None or self._sender.done():
            # Its own context: the sender serves every caller, not the first one's
            # request (log fields, trace).
            self._sender = asyncio.get_running_loop().create_task(self._send(), context=contextvars.Context())
        return await outcome

    async def _send(self) -> None:
        batch: list[_Waiting[I, O]] = []
        try:
            while self._waiting:
                count = max(1, self._take([item for item, _ in self._waiting]))
                batch, self._waiting = self._waiting[:count], self._waiting[count:]
                items = [item for item, _ in batch]
                try:
                    outcomes = (
                        [await self._one(items[0])] if len(items) == 1 else list(await self._many(items))
                    )
                except Exception:  # a bug, the callee's promise broken: nothing is known done
                    log.exception(self._error_event)
                    outcomes = []
                if len(outcomes) != len(batch):
                    outcomes = [self._failed] * len(batch)
                self._settle(batch, outcomes)
                batch = []
        finally:  # cancelled (the process stops): whoever waits learns nothing was done
            left, self._waiting = batch + self._waiting, []
            self._settle(left, [self._failed] * len(left))

    @staticmethod
    def _settle(batch: Sequence[_Waiting[I, O]], outcomes: Sequence[O]) -> None:
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
