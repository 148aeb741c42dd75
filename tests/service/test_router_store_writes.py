"""The router store's one-statement writes: a claim and its events stored
together, and a transition that applies only to the row as it was read,
deciding again when another writer got there first."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import asyncpg
import pytest

from iclaim_hub.common.db import create_pool
from services.claim_router.domain import State
from services.claim_router.model import ClaimRecord, Event, Mutation
from services.claim_router.store import WRITES_IN_FLIGHT, PgClaimStore
from services.claim_router.usecases import ClaimRouter, DeliveryReport
from tests.support.router_records import claim_record as _claim


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[tuple[PgClaimStore, asyncpg.Pool]]:
    pool = await create_pool(database_url, max_size=4)
    s = PgClaimStore(pool)
    await s.migrate()
    yield s, pool
    await pool.close()


async def _outbox(pool: asyncpg.Pool) -> list[tuple[str, bytes]]:
    rows = await pool.fetch("SELECT topic, payload FROM router.outbox ORDER BY id")
    return [(r["topic"], bytes(r["payload"])) for r in rows]


def _read_back(rec: ClaimRecord) -> ClaimRecord:
    """`rec` as a read returns it: without the envelope, which only deliveries carry."""
    return rec.with_changes(envelope="")


async def test_insert_stores_the_events_in_order_once(store: tuple[PgClaimStore, asyncpg.Pool]) -> None:
    s, pool = store
    events: list[Event] = [("audit", b"a1"), ("billing", b"b1"), ("audit", b"a2")]
    stored, created = await s.insert(_claim("INS1"), events)
    assert created and stored.row_version != 0
    # What it returns without reading the row back is what a read finds.
    read = await s.get(stored.transaction_id)
    assert read is not None and (read, read.row_version) == (_read_back(stored), stored.row_version)
    again, created_again = await s.insert(_claim("INS1"), events)
    assert not created_again and again.transaction_id == stored.transaction_id
    assert await _outbox(pool) == events


async def test_a_transition_on_a_stale_read_decides_again(store: tuple[PgClaimStore, asyncpg.Pool]) -> None:
    s, pool = store
    stale, _ = await s.insert(_claim("CAS1"), [])
    # Another writer moves the row on after `stale` was read.
    await s.transition(
        stale.transaction_id, lambda cur: (cur.with_changes(state=State.DELIVERED), [("audit", b"delivered")])
    )
    seen: list[State] = []

    def decide(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
        seen.append(cur.state)
        return cur.with_changes(state=State.APPROVED), [("audit", b"approved")]

    stored = await s.transition(stale.transaction_id, decide, stale)
    assert stored is not None and stored.state == State.APPROVED
    read = await s.get(stale.transaction_id)
    assert read is not None and (read, read.row_version) == (stored, stored.row_version)
    assert await s.state_of(stale.transaction_id) == State.APPROVED
    # Tried on the stale read, refused by the row version, decided again on what was there.
    assert seen == [State.RECEIVED, State.DELIVERED]
    # Only the write that happened emitted.
    assert await _outbox(pool) == [("audit", b"delivered"), ("audit", b"approved")]


async def test_concurrent_transitions_all_apply_once(store: tuple[PgClaimStore, asyncpg.Pool]) -> None:
    s, pool = store
    claim, _ = await s.insert(_claim("CAS2"), [])

    def bump(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
        new = cur.with_changes(approved_amount_satang=cur.approved_amount_satang + 1)
        return new, [("audit", str(new.approved_amount_satang).encode())]

    await asyncio.gather(*(s.transition(claim.transaction_id, bump, claim) for _ in range(8)))
    final = await s.get(claim.transaction_id)
    assert final is not None and final.approved_amount_satang == 8
    assert sorted(int(p) for _, p in await _outbox(pool)) == list(range(1, 9))


async def test_an_unchanged_claim_writes_nothing(store: tuple[PgClaimStore, asyncpg.Pool]) -> None:
    s, pool = store
    claim, _ = await s.insert(_claim("CAS3"), [])
    same = await s.transition(claim.transaction_id, lambda cur: (None, []), claim)
    assert same == claim and same.row_version == claim.row_version
    assert await s.transition("txn_" + "f" * 28, lambda cur: (None, [])) is None


async def test_transition_many_writes_once_and_retries_only_what_moved(
    store: tuple[PgClaimStore, asyncpg.Pool],
) -> None:
    s, pool = store
    claims = [(await s.insert(_claim(f"MANY{n}"), []))[0] for n in range(4)]
    ids = [c.transaction_id for c in claims]
    seen: list[tuple[str, State]] = []
    moved = False

    async def move_the_second() -> None:
        await s.transition(
            ids[1], lambda cur: (cur.with_changes(state=State.DELIVERED), [("audit", b"moved")])
        )

    def deliver(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
        seen.append((cur.transaction_id, cur.state))
        if cur.transaction_id == ids[3]:
            return None, []  # nothing to change
        return cur.with_changes(approved_amount_satang=7), [("audit", cur.transaction_id[-4:].encode())]

    # Another writer moves one claim between the batch's read and its write.
    real_write = s._write

    async def write_after_a_rival(
        changes: Sequence[tuple[ClaimRecord, ClaimRecord, Sequence[Event]]], tp: str | None
    ) -> dict[str, ClaimRecord]:
        nonlocal moved
        if not moved:
            moved = True
            await move_the_second()
        return await real_write(changes, tp)

    s._write = write_after_a_rival  # type: ignore[method-assign]
    for txid in ids:  # read, not taken from this replica's cache (the next test)
        s._recent.forget(txid)
    stored = await s.transition_many([*ids, ids[0], "txn_" + "f" * 28], deliver)
    assert sorted(stored) == sorted(ids)  # each found once; the unknown one absent
    for txid in ids[:3]:
        read = await s.get(txid)
        assert read is not None and read.approved_amount_satang == 7
        assert (read, read.row_version) == (stored[txid], stored[txid].row_version)
    assert stored[ids[3]] == _read_back(claims[3])
    # The moved one was decided again on what the rival left; the others once.
    assert sorted(seen) == sorted(
        [
            (ids[0], State.RECEIVED),
            (ids[1], State.RECEIVED),
            (ids[2], State.RECEIVED),
            (ids[3], State.RECEIVED),
            (ids[1], State.DELIVERED),
        ]
    )
    assert stored[ids[1]].state == State.DELIVERED
    # Each write's events once, in order; none for the refused write.
    assert await _outbox(pool) == [
        ("audit", b"moved"),
        ("audit", ids[0][-4:].encode()),
        ("audit", ids[2][-4:].encode()),
        ("audit", ids[1][-4:].encode()),
    ]


class _SqlSeen:
    """The pool, noting the first words of each statement the store runs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.seen: list[str] = []

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        self.seen.append(sql.split()[0] + (" claims" if "FROM router.claims WHERE" in sql else ""))
        return await self._pool.fetch(sql, *args)


async def test_transition_many_starts_from_the_claims_at_hand(
    store: tuple[PgClaimStore, asyncpg.Pool],
) -> None:
    s, pool = store
    claims = [(await s.insert(_claim(f"HAND{n}"), []))[0] for n in range(3)]
    ids = [c.transaction_id for c in claims]
    # Another replica moves the second: this replica's copy of it is stale.
    await PgClaimStore(pool).transition(ids[1], lambda cur: (cur.with_changes(approved_amount_satang=5), []))
    seen: list[tuple[str, int]] = []

    def approve(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
        seen.append((cur.transaction_id, cur.approved_amount_satang))
        if cur.transaction_id == ids[2]:
            return None, []  # no change: stands only on the claim as read
        return cur.with_changes(state=State.DELIVERED), []

    counted = _SqlSeen(pool)
    s._pool = counted  # type: ignore[assignment]
    stored = await s.transition_many(ids, approve)
    s._pool = pool
    # The first round writes from the copies at hand and reads only the one
    # `approve` left unchanged; the stale one, refused by its version, is read then.
    assert counted.seen == ["SELECT claims", "WITH", "SELECT claims", "WITH"]
    assert sorted(seen) == sorted([(ids[0], 0), (ids[1], 0), (ids[2], 0), (ids[2], 0), (ids[1], 5)])
    assert [stored[t].state for t in ids] == [State.DELIVERED, State.DELIVERED, State.RECEIVED]
    assert stored[ids[1]].approved_amount_satang == 5
    for txid in ids:
        assert await s.get(txid) == stored[txid]


async def test_transition_many_takes_a_settled_copy_without_a_read(
    store: tuple[PgClaimStore, asyncpg.Pool],
) -> None:
    s, pool = store
    claims = [(await s.insert(_claim(f"SETL{n}"), []))[0] for n in range(3)]
    ids = [c.transaction_id for c in claims]
    # Another replica moves the first on: this replica's copy is stale, but
    # `settled` says no version could make a difference to this mutation.
    await PgClaimStore(pool).transition(ids[0], lambda cur: (cur.with_changes(approved_amount_satang=5), []))
    counted = _SqlSeen(pool)
    s._pool = counted  # type: ignore[assignment]
    stored = await s.transition_many(ids, lambda cur: (None, []), lambda cur: cur.transaction_id != ids[2])
    s._pool = pool
    assert counted.seen == ["SELECT claims"]  # only the unsettled one
    assert stored[ids[0]].approved_amount_satang == 0  # as at hand
    assert stored[ids[1]] == _read_back(claims[1]) and stored[ids[2]] == _read_back(claims[2])


async def test_a_taken_report_after_the_decision_reads_nothing(
    store: tuple[PgClaimStore, asyncpg.Pool],
) -> None:
    """The usual webhook claim: decided (taken with it) before the delivery
    layer's ReportTakenBatch arrives. Nothing to write, nothing to read; a claim
    not yet taken is written, one of another insurer's refused without a read."""
    s, pool = store
    decided, _ = await s.insert(_claim("7A4E01", "webhook"), [])
    await s.transition(
        decided.transaction_id,
        lambda cur: (cur.with_changes(state=State.APPROVED, taken_at=datetime.now(UTC)), []),
    )
    fresh, _ = await s.insert(_claim("7A4E02", "webhook"), [])
    router = ClaimRouter(s, directory=None, push=None, changes=None)  # type: ignore[arg-type]
    counted = _SqlSeen(pool)
    s._pool = counted  # type: ignore[assignment]
    refused = await router.report_taken_many(
        [
            DeliveryReport(decided.transaction_id, "AIA"),
            DeliveryReport(fresh.transaction_id, "MTL"),  # not its insurer
        ]
    )
    assert counted.seen == [] and refused == [(1, "CLAIM_NOT_FOUND")]
    assert await router.report_taken_many([DeliveryReport(fresh.transaction_id, "AIA")]) == []
    s._pool = pool
    assert counted.seen == ["WITH"]
    taken = await s.get(fresh.transaction_id)
    assert taken is not None and taken.state == State.DELIVERED and taken.taken_at is not None
    still = await s.get(decided.transaction_id)
    assert still is not None and still.state == State.APPROVED


# How the store's combined statements begin: updates, inserts.
_UPDATES = "WITH input AS"
_INSERTS = "WITH incoming AS"


class _FirstWritesSlow:
    """The pool, holding the first claim writes of a kind (`kind`: how their
    statement begins; as many as a store runs at once) 0.3 s each, so that the
    others meet behind them."""

    def __init__(self, pool: asyncpg.Pool, kind: str = _UPDATES) -> None:
        self._pool = pool
        self._kind = kind
        self.writes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._pool, name)  # reads go straight through

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        if sql.startswith(self._kind):
            self.writes += 1
            if self.writes <= WRITES_IN_FLIGHT:
                await asyncio.sleep(0.3)
        return await self._pool.fetch(sql, *args)


async def test_writes_that_meet_share_one_statement(store: tuple[PgClaimStore, asyncpg.Pool]) -> None:
    s, pool = store
    claims = [(await s.insert(_claim(f"GRP{n}"), []))[0] for n in range(5)]

    def approve(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
        return cur.with_changes(state=State.APPROVED), [("audit", cur.transaction_id[-4:].encode())]

    slow = _FirstWritesSlow(pool)
    s._pool = slow  # type: ignore[assignment]
    first = [asyncio.create_task(s.transition(c.transaction_id, approve)) for c in claims[:WRITES_IN_FLIGHT]]
    await asyncio.sleep(0.05)  # their statements under way
    rest = await asyncio.gather(*(s.transition(c.transaction_id, approve) for c in claims[WRITES_IN_FLIGHT:]))
    written = [*(await asyncio.gather(*first)), *rest]
    s._pool = pool
    assert slow.writes == WRITES_IN_FLIGHT + 1  # the others, which met, went together
    for claim, rec in zip(claims, written, strict=True):
        read = await s.get(claim.transaction_id)
        assert rec is not None and read is not None and read.state == State.APPROVED
        assert (read, read.row_version) == (rec, rec.row_version)
    # Each claim's event once; the outbox holds them all.
    assert sorted(await _outbox(pool)) == sorted(("audit", c.transaction_id[-4:].encode()) for c in claims)
    writers = await pool.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM router.claims WHERE transaction_id = ANY($1::text[])",
        [c.transaction_id for c in claims],
    )
    assert writers == WRITES_IN_FLIGHT + 1


async def test_one_claims_writes_that_meet_are_decided_in_turn(
    store: tuple[PgClaimStore, asyncpg.Pool],
) -> None:
    s, pool = store
    claim, _ = await s.insert(_claim("GRPSAME"), [])
    seen: list[int] = []

    def add(n: int) -> Mutation:
        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            seen.append(cur.approved_amount_satang)
            return cur.with_changes(approved_amount_satang=cur.approved_amount_satang + n), []

        return mutate

    slow = _FirstWritesSlow(pool)
    s._pool = slow  # type: ignore[assignment]
    await asyncio.gather(*(s.transition(claim.transaction_id, add(n)) for n in (1, 10, 100)))
    s._pool = pool
    read = await s.get(claim.transaction_id)
    # Never in one statement: each applied on what the one before left (those
    # written beside or behind the first were refused by their version and decided again).
    assert read is not None and read.approved_amount_satang == 111
    assert len(seen) >= 5


_TRACE: contextvars.ContextVar[str] = contextvars.ContextVar("trace", default="")


def _trace(n: int) -> str:
    return f"00-{n:032x}-{n:016x}-01"


async def test_inserts_that_meet_share_one_statement(
    store: tuple[PgClaimStore, asyncpg.Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """New claims stored while the store's statements are under way go together
    in the next, each with its own events, trace and delivery columns; one
    (hospital, claim_ref) is stored once: a resubmission that meets its first
    submission goes in a later statement and finds it, as one of a claim
    stored before does."""
    s, pool = store
    # The trace each caller's events carry: its own task's, as a request's span.
    monkeypatch.setattr("services.claim_router.store.tracing.current_traceparent", _TRACE.get)
    earlier, _ = await s.insert(_claim("MEET0"), [])
    await s.insert(_claim("ALONE4", "pull").with_changes(state=State.DELIVERED), [], pull_lease_s=60.0)

    async def submit(
        rec: ClaimRecord, trace: int, pull_lease_s: float | None = None
    ) -> tuple[ClaimRecord, bool]:
        _TRACE.set(_trace(trace))  # in its own task: its own context
        return await s.insert(rec, [("audit", rec.claim_ref.encode())], pull_lease_s=pull_lease_s)

    def again(ref: str) -> ClaimRecord:  # a resubmission: another transaction id
        return _claim(ref).with_changes(transaction_id="txn_" + ref.lower().rjust(27, "0") + "b")

    slow = _FirstWritesSlow(pool, _INSERTS)
    s._pool = slow  # type: ignore[assignment]
    first = []
    for n in range(WRITES_IN_FLIGHT):
        first.append(asyncio.create_task(submit(_claim(f"SLOW{n}"), 100 + n)))
        await asyncio.sleep(0.02)  # its statement under way before the next
    met = await asyncio.gather(
        submit(_claim("MEET1"), 1),
        submit(_claim("MEET2"), 2),
        submit(again("MEET2"), 3),
        submit(again("MEET0"), 4),
        submit(_claim("MEET4", "pull").with_changes(state=State.DELIVERED), 5, pull_lease_s=60.0),
        submit(_claim("MEET5", "pull"), 6),
    )
    alone = await asyncio.gather(*first)
    s._pool = pool
    # The slow ones alone; the rest in one; the resubmission of MEET2 after it.
    assert slow.writes == WRITES_IN_FLIGHT + 2
    [(m1, c1), (m2, c2), (m2_again, c3), (m0_again, c4), (m4, c5), (m5, c6)] = met
    assert (c1, c2, c3, c4, c5, c6) == (True, True, False, False, True, True)
    assert m2_again.transaction_id == m2.transaction_id and m0_again.transaction_id == earlier.transaction_id
    for rec in (*[r for r, _ in alone], m1, m2, m4, m5):
        read = await s.get(rec.transaction_id)
        assert read is not None and (read, read.row_version) == (_read_back(rec), rec.row_version)
    assert (m4.handed_off_at is not None, m5.handed_off_at is None) == (True, True)
    # Each stored claim's event once, with its caller's trace; none for the two not stored.
    outbox = await pool.fetch("SELECT payload, traceparent FROM router.outbox")
    assert sorted((bytes(r["payload"]), r["traceparent"]) for r in outbox) == sorted(
        [(b"SLOW0", _trace(100)), (b"SLOW1", _trace(101))][:WRITES_IN_FLIGHT]
        + [(b"MEET1", _trace(1)), (b"MEET2", _trace(2)), (b"MEET4", _trace(5)), (b"MEET5", _trace(6))]
    )
    rows = {
        r["claim_ref"]: r
        for r in await pool.fetch(
            "SELECT claim_ref, xmin::text AS writer, delivery_attempts, lease_until IS NOT NULL AS leased,"
            " delivered_at IS NOT NULL AS delivered, taken_at IS NOT NULL AS taken,"
            " next_attempt_at > submitted_at AS held FROM router.claims"
        )
    }
    assert len({rows[ref]["writer"] for ref in ("MEET1", "MEET2", "MEET4", "MEET5")}) == 1
    columns = ("delivery_attempts", "leased", "delivered", "taken", "held")
    # Each row as it would have been stored alone.
    assert (
        [rows["MEET1"][c] for c in columns]
        == [rows["SLOW0"][c] for c in columns]
        == [1, False, False, False, True]
    )
    assert (
        [rows["MEET4"][c] for c in columns]
        == [rows["ALONE4"][c] for c in columns]
        == [0, True, True, True, False]
    )
    assert [rows["MEET5"][c] for c in columns] == [0, False, False, False, False]


async def test_lone_writes_keep_one_cached_plan(database_url: str) -> None:
    """A claim stored or changed alone (the usual case below full load) runs a
    statement PostgreSQL plans once and caches: over arrays it plans afresh
    at nearly every call, which costs it more than the write. Counted by the
    connection's plan cache, not by a clock."""
    pool = await create_pool(database_url, max_size=1)  # one connection: one plan cache
    try:
        s = PgClaimStore(pool)
        await s.migrate()
        # A table of some size, its statistics taken, as a running hub's.
        await pool.execute(
            "INSERT INTO router.claims (transaction_id, hospital_code, insurer_code, claim_ref, state,"
            " billed_amount_satang, envelope, envelope_sha256, delivery_mode)"
            " SELECT 'txn_old' || g, '10670', 'AIA', 'OLD' || g, 9, 100, 'e', '', 'grpc'"
            " FROM generate_series(1, 2000) g"
        )
        await pool.execute("ANALYZE router.claims")
        for n in range(12):
            claim, _ = await s.insert(_claim(f"PLAN{n}"), [("audit", b"stored")])
            await s.transition(
                claim.transaction_id,
                lambda cur: (cur.with_changes(state=State.DELIVERED), [("audit", b"d")]),
                claim,
            )
        plans = {
            r["kind"]: (r["generic_plans"], r["custom_plans"])
            for r in await pool.fetch(
                "SELECT split_part(statement, ' ', 2) AS kind, generic_plans, custom_plans"
                " FROM pg_prepared_statements WHERE statement LIKE 'WITH in%'"
            )
        }
    finally:
        await pool.close()
    # PostgreSQL tries five custom plans before it settles on the generic one.
    assert plans == {"incoming": (7, 5), "input": (7, 5)}


async def test_only_deliveries_read_the_envelope(store: tuple[PgClaimStore, asyncpg.Pool]) -> None:
    """Reads for the API and for a change leave the envelope (kilobytes stored
    out of line) in the database and know its size; a pull lease carries it."""
    s, _ = store
    envelope = "h.k.i.c.t" * 900  # past the TOAST threshold, as a real claim's
    push, _ = await s.insert(_claim("ENV1").with_changes(envelope=envelope, envelope_bytes=len(envelope)), [])
    pull, _ = await s.insert(
        _claim("ENV2", "pull").with_changes(envelope=envelope, envelope_bytes=len(envelope)), []
    )
    assert push.envelope == envelope  # the submission's own record: what the hand-off sends
    read = await s.get(push.transaction_id)
    by_ref = await s.find_by_ref(push.hospital_code, push.claim_ref)
    listed = await s.list_for_hospital(
        push.hospital_code, state=None, insurer_code=None, after=None, limit=10
    )
    many = await s.transition_many([push.transaction_id], lambda cur: (None, []))
    changed = await s.transition(
        push.transaction_id, lambda cur: (cur.with_changes(state=State.CANCELLED), []), read
    )
    for rec in (read, by_ref, *listed, many[push.transaction_id], changed):
        assert rec is not None and (rec.envelope, rec.envelope_bytes) == ("", len(envelope))
    leased = await s.lease_pull(pull.insurer_code, 10, 60.0, lambda rec: [])
    assert [(r.transaction_id, r.envelope, r.envelope_bytes) for r in leased] == [
        (pull.transaction_id, envelope, len(envelope))
    ]
