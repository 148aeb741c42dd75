"""The adapter's batched "taken" writes: one store call per window, whatever
is pending written on close, a failed write dropped (the leases end and the
claims are pushed again) rather than raised into the push that added it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from services.insurer_adapter.taken_marks import TakenMarks

AT = datetime(2026, 11, 27, tzinfo=UTC)


class Store:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    async def mark_taken_reported(self, taken: Sequence[tuple[str, datetime]]) -> None:
        self.calls.append([txid for txid, _ in taken])
        if self.fail:
            raise ConnectionResetError("gone")


async def test_marks_within_a_window_are_one_write() -> None:
    store = Store()
    marks = TakenMarks(store, window_s=0.05)
    for n in range(3):
        marks.add(f"t{n}", AT)
    await asyncio.sleep(0.15)
    marks.add("t3", AT)
    await asyncio.sleep(0.15)
    assert store.calls == [["t0", "t1", "t2"], ["t3"]]


async def test_close_writes_what_is_pending() -> None:
    store = Store()
    marks = TakenMarks(store, window_s=60)
    marks.add("t0", AT)
    await marks.close()
    assert store.calls == [["t0"]]


async def test_a_failed_write_is_dropped_not_raised() -> None:
    store = Store(fail=True)
    marks = TakenMarks(store, window_s=0.01)
    marks.add("t0", AT)
    await asyncio.sleep(0.1)
    marks.add("t1", AT)
    await marks.close()
    assert store.calls == [["t0"], ["t1"]]
