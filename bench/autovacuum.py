"""A stand-in for PostgreSQL's autovacuum while the bench runs on a server
that has it switched off.

This machine kind's PostgreSQL runs with `autovacuum = off` (set for CI). A
bench database is minutes old; never analysed, PostgreSQL believes its tables
empty, and the generic plans it caches then seq-scan them: the router's claim
write cost 1.8 to 2.7 ms of PostgreSQL's time with a few thousand claims, the
audit log's duplicate check 13 ms, against 0.1 ms and 1 ms with statistics.
Analysing once is not enough: a cached plan is made again only when its tables
are analysed, so one made when a table was small stays while it grows. A running
system never pays this (autovacuum analyses a table each time 10 % of it has
changed), so a bench that did would measure the machine's settings, not the hub.

While the bench runs, this applies autovacuum's default rules (analyse a table
once 50 rows + 10 % of it changed; vacuum it once 50 + 20 % are dead or
1,000 + 20 % were inserted) every few seconds, from a connection to the bench
database: its work is counted as PostgreSQL's CPU, as autovacuum's would be.
It also takes autovacuum's cost-based delay (the server's
autovacuum_vacuum_cost_delay and _limit), which a VACUUM typed at a prompt
does not: unthrottled, each round took both CPUs for a few hundred
milliseconds, and the open loop's p99 measured those bursts, not the hub
(README, Benchmarks: the open loop's tail).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

# Autovacuum's default nap is a minute; a bench phase lasts seconds, so the
# stand-in looks more often, to give a minutes-old database the statistics a
# running one has.
NAPTIME_S = 5.0

_DUE = """
SELECT format('%I.%I', s.schemaname, s.relname) AS name,
  s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0) AS analyse,
  s.n_dead_tup > 50 + 0.2 * greatest(c.reltuples, 0)
   OR s.n_ins_since_vacuum > 1000 + 0.2 * greatest(c.reltuples, 0) AS vacuum
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
ORDER BY 1
"""


async def tables_due(conn: asyncpg.Connection) -> list[tuple[str, bool]]:
    """The tables autovacuum's rules call for now: (name, vacuum as well as analyse)."""
    return [(row["name"], row["vacuum"]) for row in await conn.fetch(_DUE) if row["vacuum"] or row["analyse"]]


_AUTOVACUUM_THROTTLE = """
SELECT current_setting('autovacuum_vacuum_cost_delay') AS delay,
  CASE current_setting('autovacuum_vacuum_cost_limit')
    WHEN '-1' THEN current_setting('vacuum_cost_limit')
    ELSE current_setting('autovacuum_vacuum_cost_limit') END AS cost_limit
"""


async def throttle_as_autovacuum(conn: asyncpg.Connection) -> None:
    """Gives this session's VACUUM and ANALYZE the delay autovacuum would take
    (-1 means the plain vacuum settings, as the server reads it)."""
    row = await conn.fetchrow(_AUTOVACUUM_THROTTLE)
    if row["delay"] not in ("-1", "-1ms"):
        await conn.execute("SELECT set_config('vacuum_cost_delay', $1, false)", row["delay"])
    await conn.execute("SELECT set_config('vacuum_cost_limit', $1, false)", row["cost_limit"])


async def run_due(conn: asyncpg.Connection, table: str, vacuum: bool) -> int:
    """Vacuums (which takes no transaction id) and analyses the table; returns
    how many transaction ids that took (one, unless there was nothing to record)."""
    if vacuum:
        await conn.execute(f"VACUUM {table}")
    async with conn.transaction():
        await conn.execute(f"ANALYZE {table}")
        assigned = await conn.fetchval("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
    return 1 if assigned else 0


class StandInAutovacuum:
    """Runs while the bench does, only if the server's autovacuum is off."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._task: asyncio.Task[None] | None = None
        # Transaction ids its statements took (each ANALYZE of a table takes
        # one), so that the bench can leave them out of the claims' commits.
        self.transactions = 0
        # Its backend, so that the bench can show its CPU apart within PostgreSQL's.
        self.backend_pid: int | None = None

    async def start(self) -> bool:
        """True if the server's autovacuum is off and the stand-in started."""
        conn = await asyncpg.connect(self._url)
        if await conn.fetchval("SHOW autovacuum") == "on":
            await conn.close()
            return False
        self.backend_pid = conn.get_server_pid()
        await throttle_as_autovacuum(conn)
        self._task = asyncio.create_task(self._run(conn))
        return True

    async def _run(self, conn: asyncpg.Connection) -> None:
        try:
            while True:
                for table, vacuum in await tables_due(conn):
                    self.transactions += await run_due(conn, table, vacuum)
                await asyncio.sleep(NAPTIME_S)
        finally:
            await conn.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
