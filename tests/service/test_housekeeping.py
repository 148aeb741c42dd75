"""Housekeeping on real PostgreSQL: the router's relayed outbox events and the
adapter's finished deliveries go once past their kept window, and nothing
else does (an event not yet relayed, a delivery still waiting, failed, or
with its report to the router outstanding, a delivery handed off again lately).
Rows are aged by moving their timestamps back, not by waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from iclaim_hub.common.purge import Purge
from services.claim_router.events import TOPIC_AUDIT, TOPIC_BILLING
from services.claim_router.domain import State
from services.claim_router.outbox_purge import purge_outbox
from services.claim_router.store import SPENT_ENVELOPES, PgClaimStore
from services.insurer_adapter.store import TAKEN_ENVELOPES, PgAdapterStore
from tests.support.delivery_endpoints import Harness, delivery_harness, wait_for
from tests.support.router_env import running_env
from tests.support.router_records import claim_record, router_pool

DAY_S = 86_400.0


def _purged(table: str) -> float:
    return REGISTRY.get_sample_value("iclaim_rows_purged_total", {"table": table}) or 0.0


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with router_pool(database_url) as p:
        yield p


async def _event(pool: asyncpg.Pool, ref: str, *, age_s: float, sent: bool, topic: str = TOPIC_AUDIT) -> int:
    """One outbox event, created `age_s` ago; its id."""
    await PgClaimStore(pool).insert(claim_record(ref), [(topic, ref.encode())])
    event_id = int(await pool.fetchval("SELECT max(id) FROM router.outbox"))
    await pool.execute(
        "UPDATE router.outbox SET created_at = now() - make_interval(secs => $2),"
        " sent_at = CASE WHEN $3 THEN now() - make_interval(secs => $2) END WHERE id = $1",
        event_id,
        age_s,
        sent,
    )
    return event_id


async def _outbox_ids(pool: asyncpg.Pool) -> set[int]:
    return {r["id"] for r in await pool.fetch("SELECT id FROM router.outbox")}


async def test_relayed_events_past_the_window_go_and_the_rest_stay(pool: asyncpg.Pool) -> None:
    old_sent = [await _event(pool, f"OLD{n}", age_s=2 * DAY_S, sent=True) for n in range(3)]
    old_billing = await _event(pool, "OLDB", age_s=2 * DAY_S, sent=True, topic=TOPIC_BILLING)
    old_unsent = await _event(pool, "STUCK", age_s=3 * DAY_S, sent=False)
    young_sent = await _event(pool, "YOUNG", age_s=60, sent=True)
    young_unsent = await _event(pool, "NEW", age_s=0, sent=False)

    removed = await purge_outbox(PgClaimStore(pool), DAY_S)

    assert removed == 4
    assert await _outbox_ids(pool) == {old_unsent, young_sent, young_unsent}
    assert not {*old_sent, old_billing} & await _outbox_ids(pool)
    # The claims themselves are records, not housekeeping.
    assert await pool.fetchval("SELECT count(*) FROM router.claims") == 7
    assert await purge_outbox(PgClaimStore(pool), DAY_S) == 0


async def test_nothing_above_the_first_event_inside_the_window_goes(pool: asyncpg.Pool) -> None:
    """Ids grow with time; an older event written after a younger one (a long
    transaction) waits for the next pass rather than make a pass scan the table."""
    young = await _event(pool, "YOUNG", age_s=10, sent=True)
    late_old = await _event(pool, "LATE", age_s=2 * DAY_S, sent=True)
    assert await purge_outbox(PgClaimStore(pool), DAY_S) == 0
    assert await _outbox_ids(pool) == {young, late_old}
    await pool.execute("UPDATE router.outbox SET created_at = now() - interval '2 days' WHERE id = $1", young)
    assert await purge_outbox(PgClaimStore(pool), DAY_S) == 2


async def test_an_empty_outbox_is_a_pass_with_nothing_to_do(pool: asyncpg.Pool) -> None:
    assert await purge_outbox(PgClaimStore(pool), DAY_S) == 0


async def test_the_router_purges_at_start_and_counts_it(database_url: str) -> None:
    """Through the router's own wiring (ICLAIM_OUTBOX_KEEP_S, the pass at start)."""
    async with router_pool(database_url, max_size=2) as p:
        gone = await _event(p, "GONE", age_s=2 * 3600, sent=True)
        kept = await _event(p, "KEPT", age_s=2 * 3600, sent=False)
        before = _purged("router_outbox")
        async with running_env(database_url, outbox_keep_s=3600.0):

            async def purged() -> bool:
                return gone not in await _outbox_ids(p)

            await wait_for(purged, what="the pass at start")
        assert kept in await _outbox_ids(p)
        assert _purged("router_outbox") - before == 1


async def _as_before_the_trigger(pool: asyncpg.Pool, sql: str, *args: object) -> None:
    """`sql` as a release before the envelope change wrote it: the migrations'
    trigger that blanks what such a write leaves is off for this session."""
    async with pool.acquire() as conn:
        await conn.execute("SET session_replication_role = replica")
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.execute("RESET session_replication_role")


async def _backfill_done(pool: asyncpg.Pool, schema: str, name: str) -> bool:
    return bool(
        await pool.fetchval(f"SELECT done_at IS NOT NULL FROM {schema}.backfills WHERE name = $1", name)
    )


async def test_the_router_walks_its_backfill_from_start(database_url: str) -> None:
    """Through the router's own wiring: a finished claim stored with its
    envelope (as before migration 0006) loses it once the router is up."""
    async with router_pool(database_url, max_size=2) as p:
        old = claim_record("BACKFILLED").with_changes(state=State.APPROVED, envelope="e" * 100)
        await _as_before_the_trigger(
            p,
            "INSERT INTO router.claims (transaction_id, hospital_code, insurer_code, claim_ref, state,"
            " billed_amount_satang, envelope, envelope_sha256, delivery_mode)"
            " VALUES ($1, '10670', 'AIA', $2, $3, 100, $4, $5, 'grpc')",
            old.transaction_id,
            old.claim_ref,
            int(old.state),
            old.envelope,
            "0" * 64,
        )
        assert await p.fetchval(
            "SELECT envelope FROM router.claims WHERE transaction_id = $1", old.transaction_id
        )
        await p.execute("UPDATE router.backfills SET after_key = '', done_at = NULL")
        async with running_env(database_url):

            async def done() -> bool:
                return await _backfill_done(p, "router", SPENT_ENVELOPES.name)

            await wait_for(done, what="the backfill")
        row = await p.fetchrow(
            "SELECT envelope, envelope_bytes FROM router.claims WHERE transaction_id = $1", old.transaction_id
        )
        assert (row["envelope"], row["envelope_bytes"]) == ("", 100)


# --- the adapter's deliveries --------------------------------------------------------


@pytest.fixture
async def h(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with delivery_harness(database_url, tmp_path) as harness:
        await harness.add_insurer("TESTPULL", "pull", "")  # deliveries wait; nothing is pushed
        yield harness


async def _delivered(h: Harness, count: int) -> list[str]:
    """`count` deliveries as DeliverClaim stores them, by an adapter stopped
    afterwards: its reporter would otherwise report a row the test marks
    pending, making it purgeable under the test's feet."""
    stub = await h.start_adapter()
    ids = await h.deliver(stub, "TESTPULL", count)
    await h.stop_adapter()
    return ids


async def _move(h: Harness, txid: str, *, state: str, report: str, age_s: float) -> str:
    """The delivery moved to `state` / `report`, last handed off `age_s` ago."""
    await h.pool.execute(
        "UPDATE adapter.deliveries SET state = $2, report_state = $3,"
        " report_kind = CASE WHEN $3 = 'none' THEN NULL WHEN $2 = 'failed' THEN 'expired' ELSE 'taken' END,"
        " taken_at = CASE WHEN $2 = 'taken' THEN now() END,"
        " last_delivered_at = now() - make_interval(secs => $4) WHERE transaction_id = $1",
        txid,
        state,
        report,
        age_s,
    )
    return txid


async def _delivery_ids(h: Harness) -> set[str]:
    return {r["transaction_id"] for r in await h.pool.fetch("SELECT transaction_id FROM adapter.deliveries")}


async def test_finished_deliveries_past_the_window_go_and_the_rest_stay(h: Harness) -> None:
    ids = iter(await _delivered(h, 7))
    old = 3 * DAY_S
    done = [await _move(h, next(ids), state="taken", report="done", age_s=old) for _ in range(3)]
    kept = {
        await _move(h, next(ids), state="taken", report="pending", age_s=old),  # the router not yet told
        await _move(h, next(ids), state="failed", report="done", age_s=old),  # an operator may redrive
        await _move(h, next(ids), state="waiting", report="none", age_s=old),
        await _move(h, next(ids), state="taken", report="done", age_s=60),  # handed off again lately
    }
    store = PgAdapterStore(h.pool)

    assert await store.purge_finished(2 * DAY_S, 2) == 2  # at most `limit` a statement
    assert await store.purge_finished(2 * DAY_S, 2) == 1
    assert await _delivery_ids(h) == kept
    assert not set(done) & await _delivery_ids(h)


async def test_the_adapter_purges_at_start_and_counts_it(h: Harness) -> None:
    first, second = await _delivered(h, 2)
    gone = await _move(h, first, state="taken", report="done", age_s=3 * 3600)
    # Failed: nothing the restarted adapter does to it (a pending report would be sent).
    kept = await _move(h, second, state="failed", report="done", age_s=3 * 3600)
    before = _purged("adapter_deliveries")
    # The harness's deliveries expire after an hour; the window must be longer.
    await h.start_adapter(deliveries_keep_s=2 * 3600.0)

    async def purged() -> bool:
        return gone not in await _delivery_ids(h)

    await wait_for(purged, what="the pass at start")
    assert kept in await _delivery_ids(h)
    assert _purged("adapter_deliveries") - before == 1


async def test_the_adapter_walks_its_backfill_from_start(h: Harness) -> None:
    """Through the adapter's own wiring: a taken delivery stored with its
    envelope (as before migration 0004) loses it once the adapter is up."""
    (txid,) = await _delivered(h, 1)
    await _as_before_the_trigger(
        h.pool,
        "UPDATE adapter.deliveries SET state = 'taken', report_state = 'done', report_kind = 'taken',"
        " taken_at = now() WHERE transaction_id = $1",
        txid,
    )
    await h.pool.execute("UPDATE adapter.backfills SET after_key = '', done_at = NULL")
    assert await h.pool.fetchval("SELECT envelope FROM adapter.deliveries WHERE transaction_id = $1", txid)
    await h.start_adapter()

    async def done() -> bool:
        return await _backfill_done(h.pool, "adapter", TAKEN_ENVELOPES.name)

    await wait_for(done, what="the backfill")
    held = await h.pool.fetchval("SELECT envelope FROM adapter.deliveries WHERE transaction_id = $1", txid)
    assert held == ""


# --- the timer ---------------------------------------------------------------------------


async def test_a_failing_pass_is_counted_and_the_next_one_runs(pool: asyncpg.Pool) -> None:
    """A database outage fails a pass; the loop carries on (here: a closed pool,
    then a working one)."""
    calls: list[str] = []

    async def one_pass() -> int:
        calls.append("pass")
        if len(calls) == 1:
            raise ConnectionResetError("the database restarted")
        return await purge_outbox(PgClaimStore(pool), DAY_S)

    failures = REGISTRY.get_sample_value("iclaim_purge_failures_total", {"table": "test_table"}) or 0.0
    purge = Purge("test_table", one_pass, every_s=0.01)
    purge.start()
    try:
        await wait_for(lambda: len(calls) >= 3, what="passes after the failed one")
    finally:
        await purge.close()
    after = REGISTRY.get_sample_value("iclaim_purge_failures_total", {"table": "test_table"}) or 0.0
    assert after - failures == 1
