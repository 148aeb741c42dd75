"""A replica that starts while a peer migrates waits for it, and a migration
runs to its end, however much longer than the hot path's statement timeout
that takes (iclaim_hub/common/db.py apply_migrations): a start-up cut off there
would crash-loop the pod behind a long migration. Real PostgreSQL; the pool's
statement timeout is shrunk to 0.3 s so the test needs only a second or two."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from iclaim_hub.common import db

SCHEMA = "wait_test"


@pytest.fixture
def short_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "QUERY_TIMEOUT_S", 0.3)


async def test_a_replica_waits_for_a_peer_that_holds_the_migration_lock(
    database_url: str, short_statements: None, tmp_path: Path
) -> None:
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE t (id int PRIMARY KEY);")
    pool = await db.create_pool(database_url, max_size=2)
    peer = await asyncpg.connect(database_url)
    try:
        # Short statements really are cut off at 0.3 s on this pool.
        with pytest.raises(asyncio.TimeoutError):
            await pool.execute("SELECT pg_sleep(1)")
        await peer.execute("SELECT pg_advisory_lock($1)", db._lock_key(SCHEMA))
        waiting = asyncio.create_task(db.apply_migrations(pool, SCHEMA, tmp_path))
        await asyncio.sleep(1.0)  # three statement timeouts
        assert not waiting.done()
        await peer.execute("SELECT pg_advisory_unlock($1)", db._lock_key(SCHEMA))
        assert await asyncio.wait_for(waiting, 10) == ["0001_t.sql"]
    finally:
        await peer.close()
        await pool.close()


async def test_a_migration_longer_than_a_statement_timeout_completes(
    database_url: str, short_statements: None, tmp_path: Path
) -> None:
    (tmp_path / "0001_slow.sql").write_text("SELECT pg_sleep(1); CREATE TABLE slow (id int PRIMARY KEY);")
    pool = await db.create_pool(database_url, max_size=1)
    try:
        assert await db.apply_migrations(pool, SCHEMA, tmp_path) == ["0001_slow.sql"]
        assert await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.slow") == 0
    finally:
        await pool.close()
