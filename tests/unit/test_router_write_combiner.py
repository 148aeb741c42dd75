"""Group commit of the router's claim writes (services/claim_router/write_combiner.py):
writes that meet share a statement, one claim's two writes never do, each
writer gets its own claims back, a failed statement fails only its writers."""

from __future__ import annotations

import asyncio

import pytest

from services.claim_router.write_combiner import WriteCombiner

Change = tuple[str, int]  # (claim, new value)


class Statements:
    """A fake statement: records what it carried; the first one waits to be let go."""

    def __init__(self) -> None:
        self.carried: list[list[tuple[Change, str | None]]] = []
        self.hold = asyncio.Event()
        self.fail_next: Exception | None = None
        self.refuse: set[str] = set()  # claims whose row version no longer matches

    async def write(self, items: list[tuple[Change, str | None]]) -> dict[str, int]:
        self.carried.append(items)
        if len(self.carried) == 1:
            await self.hold.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return {claim: value for (claim, value), _ in items if claim not in self.refuse}


def combiner(statements: Statements) -> WriteCombiner[Change, int]:
    return WriteCombiner(statements.write, lambda change: change[0])


async def test_a_write_with_none_in_flight_goes_alone_at_once() -> None:
    statements = Statements()
    statements.hold.set()
    writes = combiner(statements)
    assert await writes.write([("a", 1)], "trace-a") == {"a": 1}
    assert statements.carried == [[(("a", 1), "trace-a")]]


async def test_writes_that_meet_share_the_next_statement_each_with_its_trace() -> None:
    statements = Statements()
    writes = combiner(statements)
    first = asyncio.create_task(writes.write([("a", 1)], "ta"))
    await asyncio.sleep(0)
    others = [
        asyncio.create_task(writes.write([("b", 2), ("c", 3)], "tb")),
        asyncio.create_task(writes.write([("d", 4)], None)),
    ]
    await asyncio.sleep(0)
    statements.hold.set()
    assert await first == {"a": 1}
    assert [await task for task in others] == [{"b": 2, "c": 3}, {"d": 4}]
    assert statements.carried[1] == [(("b", 2), "tb"), (("c", 3), "tb"), (("d", 4), None)]
    assert len(statements.carried) == 2


async def test_one_claims_two_writes_never_share_a_statement() -> None:
    statements = Statements()
    writes = combiner(statements)
    first = asyncio.create_task(writes.write([("x", 0)], None))
    await asyncio.sleep(0)
    again = [asyncio.create_task(writes.write([("a", n)], None)) for n in (1, 2)]
    other = asyncio.create_task(writes.write([("b", 3)], None))
    await asyncio.sleep(0)
    statements.hold.set()
    await first
    assert [await task for task in again] == [{"a": 1}, {"a": 2}]
    await other
    # The second write of "a" waited for the statement after the first's.
    assert [[claim for (claim, _), _ in items] for items in statements.carried] == [["x"], ["a", "b"], ["a"]]


async def test_a_writer_gets_only_what_was_written_of_its_own() -> None:
    statements = Statements()
    statements.hold.set()
    statements.refuse = {"b"}  # changed since it was read
    writes = combiner(statements)
    results = await asyncio.gather(writes.write([("a", 1), ("b", 2)], None), writes.write([("c", 3)], None))
    assert results == [{"a": 1}, {"c": 3}]


async def test_a_failed_statement_fails_its_writers_only() -> None:
    statements = Statements()
    writes = combiner(statements)
    first = asyncio.create_task(writes.write([("a", 1)], None))
    await asyncio.sleep(0)
    statements.fail_next = ConnectionResetError("database gone")
    statements.hold.set()
    with pytest.raises(ConnectionResetError):
        await first
    assert await writes.write([("b", 2)], None) == {"b": 2}


async def test_a_writer_that_goes_away_leaves_its_write_and_the_others_their_answers() -> None:
    statements = Statements()
    writes = combiner(statements)
    gone = asyncio.create_task(writes.write([("a", 1)], None))
    await asyncio.sleep(0)
    later = asyncio.create_task(writes.write([("b", 2)], None))
    await asyncio.sleep(0)
    gone.cancel()
    statements.hold.set()
    assert await later == {"b": 2}
    assert [[claim for (claim, _), _ in items] for items in statements.carried] == [["a"], ["b"]]


async def test_with_two_in_flight_a_second_write_goes_at_once_and_a_third_waits() -> None:
    statements = Statements()
    writes: WriteCombiner[Change, int] = WriteCombiner(statements.write, lambda c: c[0], in_flight=2)
    first = asyncio.create_task(writes.write([("a", 1)], None))
    await asyncio.sleep(0)
    second = asyncio.create_task(writes.write([("b", 2)], None))
    await asyncio.sleep(0)
    assert await second == {"b": 2}  # beside the first, still held
    third = asyncio.create_task(writes.write([("c", 3)], None))
    fourth = asyncio.create_task(writes.write([("d", 4)], None))
    await asyncio.sleep(0)
    assert await third == {"c": 3} and await fourth == {"d": 4}  # the second's drainer took them
    statements.hold.set()
    assert await first == {"a": 1}
    assert [[k for (k, _), _ in items] for items in statements.carried] == [["a"], ["b"], ["c", "d"]]
    with pytest.raises(ValueError):
        WriteCombiner(statements.write, lambda c: c[0], in_flight=0)
