"""The kit's durable inbox (sqlite3): each transaction_id once per insurer,
survives a restart, bounded, and forgets closed rows after the retention."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from iclaim.errors import ResourceExhausted
from iclaim.insurer.inbox import DB_NAME, DECIDED, FAILED, RECEIVED, REVIEWING, Inbox, PutResult
from iclaim.v1 import insurer_service_pb2 as ipb


def _d(txid: str = "txn_1", envelope: str = "a.b.c.d.e") -> ipb.ClaimDelivery:
    return ipb.ClaimDelivery(
        transaction_id=txid, hospital_code="10670", claim_ref="C-1", billed_amount_satang=5, envelope=envelope
    )


async def test_a_delivery_is_new_once_then_a_duplicate_per_insurer(tmp_path: Path) -> None:
    inbox = await Inbox.open(tmp_path)
    try:
        assert await inbox.put("AIA", _d()) is PutResult.NEW
        assert await inbox.put("AIA", _d(envelope="other")) is PutResult.DUPLICATE
        assert await inbox.put("MTL", _d()) is PutResult.NEW  # another insurer's id space
        item = await inbox.get("AIA", "txn_1")
        assert item is not None and item.state == RECEIVED and item.delivery.envelope == "a.b.c.d.e"
        assert inbox.undecided == 2
    finally:
        await inbox.close()
    assert stat.S_IMODE((tmp_path / DB_NAME).stat().st_mode) == 0o600


async def test_rows_survive_a_restart_and_dedupe_outlives_the_decision(tmp_path: Path) -> None:
    inbox = await Inbox.open(tmp_path)
    await inbox.put("AIA", _d("txn_a"))
    await inbox.put("AIA", _d("txn_b"))
    await inbox.mark("AIA", "txn_b", DECIDED)
    await inbox.close()

    again = await Inbox.open(tmp_path)
    try:
        assert again.undecided == 1
        assert await again.due(["AIA"], 10) == [("AIA", "txn_a")]
        assert await again.put("AIA", _d("txn_b")) is PutResult.DUPLICATE
        decided = await again.get("AIA", "txn_b")
        assert decided is not None and decided.state == DECIDED
        assert decided.delivery.envelope == ""  # the sealed claim is not kept once decided
    finally:
        await again.close()


async def test_due_honours_backoff_and_insurer_and_reset(tmp_path: Path) -> None:
    t = {"now": 1000.0}
    inbox = await Inbox.open(tmp_path, clock=lambda: t["now"])
    try:
        await inbox.put("AIA", _d("txn_a"))
        await inbox.put("MTL", _d("txn_m"))
        assert await inbox.reschedule("AIA", "txn_a", 30.0, "UNAVAILABLE") == 1
        assert await inbox.due(["AIA", "MTL"], 10) == [("MTL", "txn_m")]
        assert await inbox.due(["AIA"], 10) == []
        t["now"] += 31
        assert await inbox.due(["AIA"], 10) == [("AIA", "txn_a")]
        assert await inbox.reschedule("AIA", "txn_a", 30.0, "UNAVAILABLE") == 2
        await inbox.reset_schedule(["AIA"])
        assert await inbox.due(["AIA"], 10) == [("AIA", "txn_a")]
        await inbox.mark("AIA", "txn_a", REVIEWING)
        assert await inbox.due(["AIA"], 1) == [("AIA", "txn_a")]  # reviewing is still open
        await inbox.mark("AIA", "txn_a", FAILED, "DECISION_INVALID")
        assert await inbox.due(["AIA"], 10) == []
        item = await inbox.get("AIA", "txn_a")
        assert item is not None and (item.state, item.last_error, item.attempts) == (
            FAILED,
            "DECISION_INVALID",
            2,
        )
    finally:
        await inbox.close()


async def test_past_its_limit_the_inbox_refuses_new_deliveries_but_still_knows_old_ones(
    tmp_path: Path,
) -> None:
    inbox = await Inbox.open(tmp_path, max_undecided=2)
    try:
        await inbox.put("AIA", _d("txn_1"))
        await inbox.put("AIA", _d("txn_2"))
        with pytest.raises(ResourceExhausted) as info:
            await inbox.put("AIA", _d("txn_3"))
        assert info.value.reason == "INBOX_FULL"
        assert await inbox.put("AIA", _d("txn_1")) is PutResult.DUPLICATE
        await inbox.mark("AIA", "txn_1", DECIDED)
        assert await inbox.put("AIA", _d("txn_3")) is PutResult.NEW
        assert await inbox.counts() == {RECEIVED: 2, DECIDED: 1}
    finally:
        await inbox.close()


async def test_closed_rows_are_purged_after_the_retention_only(tmp_path: Path) -> None:
    t = {"now": 1000.0}
    inbox = await Inbox.open(tmp_path, retention_s=100.0, clock=lambda: t["now"])
    try:
        await inbox.put("AIA", _d("txn_old"))
        await inbox.put("AIA", _d("txn_open"))
        await inbox.mark("AIA", "txn_old", DECIDED)
        t["now"] += 99
        assert await inbox.purge() == 0
        t["now"] += 2
        assert await inbox.purge() == 1  # the open one stays, however old
        assert await inbox.get("AIA", "txn_old") is None
        assert await inbox.get("AIA", "txn_open") is not None
    finally:
        await inbox.close()


async def test_a_closed_inbox_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    from iclaim.errors import Unavailable

    inbox = await Inbox.open(tmp_path)
    await inbox.close()
    with pytest.raises(Unavailable) as info:
        await inbox.put("AIA", _d())
    assert info.value.reason == "INBOX_UNAVAILABLE"


async def test_durability_is_full_fsync_by_default_and_normal_only_when_asked(tmp_path: Path) -> None:
    for choice, level in ((None, 2), ("NORMAL", 1)):
        kw = {} if choice is None else {"synchronous": choice}
        inbox = await Inbox.open(tmp_path / str(choice), **kw)
        try:
            db = inbox._db
            assert db is not None
            assert db.execute("PRAGMA synchronous").fetchone()[0] == level
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            await inbox.close()
    with pytest.raises(ValueError):
        Inbox(tmp_path / "x", synchronous="OFF")


async def test_load_is_get_and_staged_together(tmp_path: Path) -> None:
    from iclaim.insurer.inbox import StagedPost

    inbox = await Inbox.open(tmp_path)
    try:
        assert await inbox.load("AIA", "txn_1") == (None, [])
        await inbox.put("AIA", _d())
        assert await inbox.load("AIA", "txn_1") == (await inbox.get("AIA", "txn_1"), [])
        posts = [StagedPost(0, 1, 0, "", 0.0, "env-0"), StagedPost(1, 2, 5, "", 2.5, "env-1")]
        await inbox.stage("AIA", "txn_1", posts)
        item, staged = await inbox.load("AIA", "txn_1")
        assert (
            item is not None
            and item.state == RECEIVED
            and staged == posts == await inbox.staged("AIA", "txn_1")
        )
        await inbox.mark("AIA", "txn_1", DECIDED)
        item, staged = await inbox.load("AIA", "txn_1")
        assert item is not None and item.state == DECIDED and staged == []
    finally:
        await inbox.close()


async def test_a_row_just_put_loads_from_memory_until_anything_writes_it(tmp_path: Path) -> None:
    from iclaim.errors import Unavailable
    from iclaim.insurer import inbox as inbox_mod
    from iclaim.insurer.inbox import StagedPost

    inbox = await Inbox.open(tmp_path)
    try:
        await inbox.put("AIA", _d("txn_a"))
        hops = 0
        real_hop = inbox._hop

        async def counted(fn: object) -> object:
            nonlocal hops
            hops += 1
            return await real_hop(fn)  # type: ignore[arg-type]

        inbox._hop = counted  # type: ignore[method-assign]
        item, staged = await inbox.load("AIA", "txn_a")
        assert hops == 0 and staged == []
        assert item == await inbox.get("AIA", "txn_a")  # what the row says
        # Each writer drops the remembered row: the next load reads the row.
        posts = [StagedPost(0, 2, 5, "", 0.0, "env-0")]
        for write, expect in (
            (lambda: inbox.stage("AIA", "txn_b", posts), (RECEIVED, 0, posts)),
            (lambda: inbox.reschedule("AIA", "txn_b", 0.0, "WHY"), (RECEIVED, 1, [])),
            (lambda: inbox.mark("AIA", "txn_b", REVIEWING), (REVIEWING, 0, [])),
            (lambda: inbox.mark("AIA", "txn_b", DECIDED), (DECIDED, 0, [])),
        ):
            await inbox.mark("AIA", "txn_b", DECIDED)
            await inbox.purge()
            inbox.retention_s, retention = -1.0, inbox.retention_s
            await inbox.purge()  # gone, so the same id is NEW again
            inbox.retention_s = retention
            assert await inbox.put("AIA", _d("txn_b")) is PutResult.NEW
            await write()
            item, staged = await inbox.load("AIA", "txn_b")
            assert item is not None and (item.state, item.attempts, staged) == expect
        # Bounded; what falls out is read from the row.
        for i in range(inbox_mod.FRESH_MAX + 5):
            await inbox.put("AIA", _d(f"txn_many_{i}"))
        assert len(inbox._fresh) <= inbox_mod.FRESH_MAX
        item, _ = await inbox.load("AIA", "txn_many_0")
        assert item is not None and item.state == RECEIVED
        await inbox.put("AIA", _d("txn_c"))
    finally:
        await inbox.close()
    with pytest.raises(Unavailable):
        await inbox.load("AIA", "txn_c")  # closed: never an answer from memory
