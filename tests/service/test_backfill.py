"""Housekeeping's backfills (iclaim_hub/common/backfill.py) on real PostgreSQL:
a walk over a table's primary key from a shared cursor, one batch a
transaction, that another replica waits out, resumes where it stopped, ends
done for good, and outlives a failed batch. The table and its step here are
the test's own; the router's and adapter's real ones are in
test_envelope_retention.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import REGISTRY

from iclaim_hub.common.backfill import Backfill, Progress, run_batch, walk
from iclaim_hub.common.db import create_pool

SCHEMA = "backfill_test"
STEP = (
    "WITH batch AS (SELECT id FROM backfill_test.items WHERE id > $1 ORDER BY id LIMIT $2),"
    " changed AS (UPDATE backfill_test.items i SET v = v + 1 FROM batch"
    "  WHERE i.id = batch.id AND i.v < $3 RETURNING 1)"
    " SELECT (SELECT max(id) FROM batch) AS last, (SELECT count(*) FROM batch) AS seen,"
    " (SELECT count(*) FROM changed) AS changed"
)
BUMP = Backfill(SCHEMA, "test_bump", STEP, (1,))
FAILING_STEP = STEP.replace(
    "(SELECT count(*) FROM changed) AS changed",
    "(SELECT count(*) FROM changed) / (SELECT count(*) - count(*) FROM batch) AS changed",
)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=4)
    await p.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    await p.execute(
        f"CREATE TABLE {SCHEMA}.items (id text PRIMARY KEY, v integer NOT NULL);"
        f"CREATE TABLE {SCHEMA}.backfills (name text PRIMARY KEY, after_key text NOT NULL DEFAULT '',"
        " done_at timestamptz);"
        f"INSERT INTO {SCHEMA}.backfills (name) VALUES ('test_bump')"
    )
    # v = 1 for a third of them: rows the write path already wrote right.
    await p.executemany(
        f"INSERT INTO {SCHEMA}.items VALUES ($1, $2)", [(f"k{n:02d}", int(n % 3 == 0)) for n in range(10)]
    )
    yield p
    await p.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    await p.close()


async def _values(pool: asyncpg.Pool) -> dict[str, int]:
    return {r["id"]: r["v"] for r in await pool.fetch(f"SELECT id, v FROM {SCHEMA}.items")}


async def _cursor(pool: asyncpg.Pool) -> tuple[str, bool]:
    row = await pool.fetchrow(f"SELECT after_key, done_at IS NOT NULL AS done FROM {SCHEMA}.backfills")
    return row["after_key"], row["done"]


async def test_a_walk_goes_batch_by_batch_to_the_end_and_stays_done(pool: asyncpg.Pool) -> None:
    assert await run_batch(pool, BUMP, 4) == (Progress.MOVED, 2)  # k00..k03, k00 and k03 right already
    assert await _cursor(pool) == ("k03", False)
    assert await run_batch(pool, BUMP, 4) == (Progress.MOVED, 3)  # k04..k07, k06 right already
    assert await run_batch(pool, BUMP, 4) == (Progress.DONE, 1)  # k08, k09 (k09 right already)
    assert await _cursor(pool) == ("k09", True)
    assert set((await _values(pool)).values()) == {1}

    # Done for good: a row stored since is the write path's business, not the walk's.
    await pool.execute(f"INSERT INTO {SCHEMA}.items VALUES ('k99', 0)")
    assert await run_batch(pool, BUMP, 4) == (Progress.DONE, 0)
    assert (await _values(pool))["k99"] == 0


async def test_a_table_that_ends_on_a_full_batch_is_done_one_batch_later(pool: asyncpg.Pool) -> None:
    assert await run_batch(pool, BUMP, 5) == (Progress.MOVED, 3)
    assert await run_batch(pool, BUMP, 5) == (Progress.MOVED, 3)
    assert await run_batch(pool, BUMP, 5) == (Progress.DONE, 0)
    assert await _cursor(pool) == ("k09", True)


async def test_another_replica_holding_the_cursor_is_waited_out(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as other, other.transaction():
        await other.execute(f"SELECT 1 FROM {SCHEMA}.backfills WHERE name = 'test_bump' FOR UPDATE")
        assert await run_batch(pool, BUMP, 4) == (Progress.BUSY, 0)
    assert await _cursor(pool) == ("", False)
    assert await run_batch(pool, BUMP, 4) == (Progress.MOVED, 2)


async def test_a_backfill_not_registered_is_nothing_to_do(pool: asyncpg.Pool) -> None:
    unknown = Backfill(SCHEMA, "test_unregistered", STEP, (1,))
    assert await run_batch(pool, unknown, 4) == (Progress.DONE, 0)
    assert set((await _values(pool)).values()) == {0, 1}


async def test_a_batch_whose_cursor_cannot_move_changes_no_row(pool: asyncpg.Pool) -> None:
    """The batch's rows and the cursor move in one transaction: the step ran,
    the cursor's update failed, and the rows are as they were."""
    assert await run_batch(pool, BUMP, 4) == (Progress.MOVED, 2)
    before = await _values(pool)
    await pool.execute(f"ALTER TABLE {SCHEMA}.backfills ADD CONSTRAINT not_k07 CHECK (after_key <> 'k07')")
    with pytest.raises(asyncpg.CheckViolationError):
        await run_batch(pool, BUMP, 4)  # k04..k07
    assert await _values(pool) == before
    assert await _cursor(pool) == ("k03", False)
    await pool.execute(f"ALTER TABLE {SCHEMA}.backfills DROP CONSTRAINT not_k07")
    assert await run_batch(pool, BUMP, 4) == (Progress.MOVED, 3)


async def test_a_failed_batch_is_counted_and_the_walk_goes_on(pool: asyncpg.Pool) -> None:
    """The walk counts a failed batch and tries it again."""
    calls = 0

    async def flaky() -> tuple[Progress, int]:
        nonlocal calls
        calls += 1
        if calls == 2:
            # Fails after its UPDATE ran (a division by zero at run time): rolled back.
            await run_batch(pool, Backfill(SCHEMA, "test_bump", FAILING_STEP, (1,)), 4)
        return await run_batch(pool, BUMP, 4)

    failures = REGISTRY.get_sample_value("iclaim_backfill_failures_total", {"backfill": "test_bump"}) or 0.0
    changed = await walk(flaky, "test_bump", pause_s=0, retry_s=0)
    assert changed == 6 and calls == 4
    assert set((await _values(pool)).values()) == {1}
    assert await _cursor(pool) == ("k09", True)
    after = REGISTRY.get_sample_value("iclaim_backfill_failures_total", {"backfill": "test_bump"}) or 0.0
    assert after == failures + 1
