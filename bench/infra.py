"""What PostgreSQL and Redis spend on a bench phase: the CPU of their processes
(the bench database's backends and the server's background processes; the
Redis server) and the write transactions PostgreSQL assigned, each a WAL flush
at commit. Both servers are the machine's, shared with nothing else while the
bench runs (as in CI)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
import redis

from bench import cpu


@dataclass(frozen=True)
class InfraSnapshot:
    postgres: Mapping[int, float]  # pid -> CPU seconds so far
    redis: Mapping[int, float]
    next_xid: int
    commits: int  # the database's, as pg_stat_database has heard of them (see commits())


async def _postgres_pids(conn: asyncpg.Connection, database: str) -> list[int]:
    """The bench database's backends and the server's own processes
    (WAL writer, checkpointer, background writer, autovacuum, ...)."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR datname IS NULL", database
    )
    return [r["pid"] for r in rows]


async def snapshot(admin_url: str, database: str, redis_url: str) -> InfraSnapshot:
    conn = await asyncpg.connect(admin_url)
    try:
        pids = await _postgres_pids(conn, database)
        # The next xid to be assigned, read without taking one.
        next_xid = int(await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
        committed = await _commits(conn, database)
    finally:
        await conn.close()
    redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    return InfraSnapshot(
        postgres={p: cpu.cpu_seconds(p) for p in pids},
        redis={redis_pid: cpu.cpu_seconds(redis_pid)},
        next_xid=next_xid,
        commits=committed,
    )


async def commits(admin_url: str, database: str) -> int:
    """The database's committed transactions as pg_stat_database counts them:
    read-only ones too (each statement outside a transaction is one). Backends
    report theirs at most once a second while busy and 10 s after they go
    idle (PostgreSQL 15+), so a reading lags by up to that much."""
    conn = await asyncpg.connect(admin_url)
    try:
        return await _commits(conn, database)
    finally:
        await conn.close()


async def _commits(conn: asyncpg.Connection, database: str) -> int:
    value = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database)
    return int(value or 0)


def _spent(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU spent between two snapshots by the processes alive at the second
    (a backend that started meanwhile counts from zero)."""
    return round(sum(s - before.get(pid, 0.0) for pid, s in after.items()), 2)


def used(
    before: InfraSnapshot, after: InfraSnapshot, stand_in_pid: int | None = None
) -> dict[str, float | int]:
    """PostgreSQL's CPU, with the autovacuum stand-in's backend (`stand_in_pid`)
    apart: ANALYZE of tables minutes old runs every few seconds whatever the
    load, which a hub with tables of real size pays once per 10 % of growth."""
    stand_in = {pid: s for pid, s in after.postgres.items() if pid == stand_in_pid}
    rest = {pid: s for pid, s in after.postgres.items() if pid != stand_in_pid}
    return {
        "postgres": _spent(before.postgres, rest),
        "postgres_autovacuum_stand_in": _spent(before.postgres, stand_in),
        "redis": _spent(before.redis, after.redis),
        "write_transactions": after.next_xid - before.next_xid,
    }
