"""The bench's stand-in for autovacuum applies autovacuum's default rules and
counts the transaction ids its work takes (the bench leaves them out of the
claims' commits)."""

from __future__ import annotations

import asyncpg

from bench.autovacuum import StandInAutovacuum, run_due, tables_due, throttle_as_autovacuum


async def _due(conn: asyncpg.Connection) -> list[tuple[str, bool]]:
    # Table counters reach pg_stat_user_tables when a backend flushes them.
    await conn.execute("SELECT pg_stat_force_next_flush()")
    return [t for t in await tables_due(conn) if t[0] == "public.t"]


async def test_analyse_after_changes_vacuum_after_inserts(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE public.t (id int)")
        await conn.execute("INSERT INTO public.t SELECT generate_series(1, 40)")
        assert await _due(conn) == []  # 40 changed: under the 50-row floor
        await conn.execute("INSERT INTO public.t SELECT generate_series(1, 40)")
        assert await _due(conn) == [("public.t", False)]
        assert await run_due(conn, "public.t", False) == 1
        assert await _due(conn) == []
        await conn.execute("UPDATE public.t SET id = id + 1 WHERE id <= 10")  # 20 changed of 80
        assert await _due(conn) == []
        await conn.execute("INSERT INTO public.t SELECT generate_series(1, 1100)")
        assert await _due(conn) == [("public.t", True)]
        assert await run_due(conn, "public.t", True) == 1
        assert await _due(conn) == []
        stats = await conn.fetchrow(
            "SELECT c.reltuples, s.last_vacuum, s.last_analyze FROM pg_class c"
            " JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = 'public.t'::regclass"
        )
        assert stats["reltuples"] == 1180 and stats["last_vacuum"] and stats["last_analyze"]
    finally:
        await conn.close()


async def test_the_stand_in_names_its_backend_for_the_cpu_split(database_url: str) -> None:
    """The bench shows the stand-in's CPU apart within PostgreSQL's by its
    backend: the pid it records must be its own connection's."""
    stand_in = StandInAutovacuum(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        started = await stand_in.start()
        autovacuum_on = await conn.fetchval("SHOW autovacuum") == "on"
        assert started is not autovacuum_on
        if started:
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            pids = {r["pid"] for r in rows}
            assert stand_in.backend_pid in pids and stand_in.backend_pid != conn.get_server_pid()
        else:
            assert stand_in.backend_pid is None
    finally:
        await stand_in.stop()
        await conn.close()


async def test_the_stand_in_takes_autovacuums_cost_delay(database_url: str) -> None:
    """A manual VACUUM runs unthrottled (vacuum_cost_delay 0); autovacuum
    sleeps by its own delay and limit. The stand-in's session takes those."""
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SHOW vacuum_cost_delay") == "0"
        expected_delay = await conn.fetchval("SHOW autovacuum_vacuum_cost_delay")
        limit = await conn.fetchval("SHOW autovacuum_vacuum_cost_limit")
        expected_limit = await conn.fetchval("SHOW vacuum_cost_limit") if limit == "-1" else limit
        await throttle_as_autovacuum(conn)
        assert await conn.fetchval("SHOW vacuum_cost_delay") == expected_delay != "0"
        assert await conn.fetchval("SHOW vacuum_cost_limit") == expected_limit
    finally:
        await conn.close()
