"""The adapter's batched "taken" reports and writes: one router call and one
store call per window, whatever is pending sent on close, pushes the router
did not acknowledge written with their report pending (and the outbox told),
a failed write dropped (the leases end and the claims are pushed again)
rather than raised into the push that added it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from services.insurer_adapter.model import NewDelivery, PendingReport, ReportKind
from services.insurer_adapter.taken_marks import TakenMarks

AT = datetime(2026, 11, 27, tzinfo=UTC)


class Store:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[tuple[str, bool]]] = []
        self.added: list[tuple[list[tuple[str, bool]], float]] = []
        self.fail = fail

    async def mark_taken_many(self, taken: Sequence[tuple[str, datetime, bool]]) -> None:
        self.calls.append([(txid, reported) for txid, _, reported in taken])
        if self.fail:
            raise ConnectionResetError("gone")

    async def add_taken_many(
        self, taken: Sequence[tuple[NewDelivery, datetime, bool]], expiry_s: float
    ) -> None:
        self.added.append(([(d.transaction_id, reported) for d, _, reported in taken], expiry_s))


class Router:
    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.calls: list[list[PendingReport]] = []
        self.refuse = refuse

    async def report_taken_many(self, reports: Sequence[PendingReport]) -> set[str]:
        self.calls.append(list(reports))
        return {r.transaction_id for r in reports if r.transaction_id not in self.refuse}


class Outbox:
    def __init__(self) -> None:
        self.nudges = 0

    def notify(self) -> None:
        self.nudges += 1


async def test_pushes_within_a_window_are_one_report_and_one_write() -> None:
    store, router, outbox = Store(), Router(), Outbox()
    marks = TakenMarks(store, router, outbox.notify, window_s=0.05)
    for n in range(3):
        marks.add(f"t{n}", "INS1", AT)
    await asyncio.sleep(0.15)
    marks.add("t3", "INS2", AT)
    await asyncio.sleep(0.15)
    assert [[r.transaction_id for r in call] for call in router.calls] == [["t0", "t1", "t2"], ["t3"]]
    assert router.calls[1] == [PendingReport("t3", "INS2", ReportKind.TAKEN, AT, 1)]
    assert store.calls == [[("t0", True), ("t1", True), ("t2", True)], [("t3", True)]]
    assert outbox.nudges == 0


async def test_unacknowledged_reports_are_written_pending_and_the_outbox_told() -> None:
    store, router, outbox = Store(), Router(refuse=frozenset({"t1"})), Outbox()
    marks = TakenMarks(store, router, outbox.notify, window_s=60)
    marks.add("t0", "INS1", AT)
    marks.add("t1", "INS1", AT)
    await marks.close()
    assert store.calls == [[("t0", True), ("t1", False)]]
    assert outbox.nudges == 1


async def test_close_sends_what_is_pending() -> None:
    store, router, outbox = Store(), Router(), Outbox()
    marks = TakenMarks(store, router, outbox.notify, window_s=60)
    marks.add("t0", "INS1", AT)
    await marks.close()
    assert store.calls == [[("t0", True)]]
    assert len(router.calls) == 1


async def test_a_failed_write_is_dropped_not_raised() -> None:
    store, router, outbox = Store(fail=True), Router(), Outbox()
    marks = TakenMarks(store, router, outbox.notify, window_s=0.01)
    marks.add("t0", "INS1", AT)
    await asyncio.sleep(0.1)
    marks.add("t1", "INS1", AT)
    await marks.close()
    assert store.calls == [[("t0", True)], [("t1", True)]]


def _new(txid: str) -> NewDelivery:
    return NewDelivery(txid, "INS1", "10670", "C-1", 100, "e", None, envelope_sha256="0" * 64)


async def test_pushes_made_before_storing_are_stored_taken_apart_from_stored_rows() -> None:
    store, router, outbox = Store(), Router(refuse=frozenset({"n1"})), Outbox()
    marks = TakenMarks(store, router, outbox.notify, window_s=60, expiry_s=77.0)
    marks.add("t0", "INS1", AT)
    marks.add("n0", "INS1", AT, _new("n0"))
    marks.add("n1", "INS1", AT, _new("n1"))
    marks.add("n0", "INS1", AT, _new("n0"))  # pushed twice: one row, one upsert of it
    await marks.close()
    assert [r.transaction_id for r in router.calls[0]] == ["t0", "n0", "n1", "n0"]
    assert store.calls == [[("t0", True)]]
    assert store.added == [([("n0", True), ("n1", False)], 77.0)]
    assert outbox.nudges == 1


async def test_a_batch_of_only_unstored_pushes_writes_no_stored_rows() -> None:
    store, router, outbox = Store(), Router(), Outbox()
    marks = TakenMarks(store, router, outbox.notify, window_s=60)
    marks.add("n0", "INS1", AT, _new("n0"))
    await marks.close()
    assert store.calls == [] and [ids for ids, _ in store.added] == [[("n0", True)]]


async def test_pushes_the_router_knows_taken_are_marked_not_reported() -> None:
    """A push answered with a decision the router recorded: the router noted it
    taken with the decision, so it is written taken and reported, without a call."""
    store, router, outbox = Store(), Router(), Outbox()
    marks = TakenMarks(store, router, outbox.notify, window_s=60, expiry_s=5.0)
    marks.add("k0", "INS1", AT, known=True)
    marks.add("k1", "INS1", AT, _new("k1"), known=True)
    marks.add("t0", "INS1", AT)
    await marks.close()
    assert [[r.transaction_id for r in call] for call in router.calls] == [["t0"]]
    assert store.calls == [[("k0", True), ("t0", True)]]
    assert store.added == [([("k1", True)], 5.0)]
    assert outbox.nudges == 0
    # Only such pushes: no router call at all.
    marks.add("k2", "INS1", AT, known=True)
    await marks.close()
    assert len(router.calls) == 1 and store.calls[-1] == [("k2", True)]
