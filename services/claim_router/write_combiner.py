"""Group commit for the router's claim writes: writes that arrive while the
statements allowed at once are under way go together in the next statement,
one commit for all of them.

Nothing waits on a timer: a write with fewer statements under way goes at
once (1 in flight costs what it did), and under load the writes that queued
behind them share the next. Two writes of one claim never share a statement
(an UPDATE touches a row once): the later waits for the next round, where its
row-version check refuses it if the first changed the claim, as it would have
alone. Each writer gets back only its own claims as written."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

C = TypeVar("C")  # one claim's change
R = TypeVar("R")  # one claim as written


class _Entry(Generic[C, R]):
    def __init__(self, changes: Sequence[C], keys: frozenset[str], context: str | None) -> None:
        self.changes = changes
        self.keys = keys
        self.context = context  # what each of its changes carries into the statement (its trace)
        self.done: asyncio.Future[dict[str, R]] = asyncio.get_running_loop().create_future()
        # Its writer may be gone (cancelled): an outcome nobody reads is no warning.
        self.done.add_done_callback(_retrieved)

    def settle(self, written: dict[str, R] | None, exc: BaseException | None = None) -> None:
        if self.done.done():
            return
        if isinstance(exc, asyncio.CancelledError):
            self.done.cancel()
        elif exc is not None:
            self.done.set_exception(exc)
        else:
            assert written is not None
            self.done.set_result({k: v for k, v in written.items() if k in self.keys})


def _retrieved(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()


class WriteCombiner(Generic[C, R]):
    def __init__(
        self,
        write: Callable[[list[tuple[C, str | None]]], Awaitable[dict[str, R]]],
        key: Callable[[C], str],
        in_flight: int = 1,
    ) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be >= 1")
        self._write = write  # one statement for the lot: claim id -> as written
        self._key = key
        # Statements at once: a write goes at once while fewer are under way.
        self._in_flight = in_flight
        self._queue: list[_Entry[C, R]] = []
        self._drainers: set[asyncio.Task[None]] = set()

    async def write(self, changes: Sequence[C], context: str | None) -> dict[str, R]:
        """Writes `changes` (with `context`), alone or with others; returns those
        of its claims the statement wrote. Raises what the statement raised."""
        entry: _Entry[C, R] = _Entry(changes, frozenset(self._key(c) for c in changes), context)
        self._queue.append(entry)
        if len(self._drainers) < self._in_flight:
            self._drainers.add(asyncio.get_running_loop().create_task(self._drain()))
        # A caller that goes away leaves its write to be done (or not) all the same.
        return await asyncio.shield(entry.done)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._next_batch()
                items = [(change, entry.context) for entry in batch for change in entry.changes]
                try:
                    written = await self._write(items)
                except BaseException as exc:
                    for entry in batch:
                        entry.settle(None, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for entry in batch:
                    entry.settle(written)
        finally:
            # At once, not in a done callback: a write queued after this point
            # must find it gone and start another.
            self._drainers.discard(asyncio.current_task())
            if not self._drainers:
                # Cancelled (the store closing): no writer waits for a write never made.
                for entry in self._queue:
                    entry.done.cancel()
                self._queue = []

    def _next_batch(self) -> list[_Entry[C, R]]:
        batch: list[_Entry[C, R]] = []
        taken: set[str] = set()
        waiting: list[_Entry[C, R]] = []
        for entry in self._queue:
            if entry.keys & taken:
                waiting.append(entry)  # a claim already in this statement: the next one
            else:
                taken |= entry.keys
                batch.append(entry)
        self._queue = waiting
        return batch
