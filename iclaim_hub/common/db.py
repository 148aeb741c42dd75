"""asyncpg pool (one per process) and ordered SQL migrations applied at start-up."""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg
import structlog

log = structlog.get_logger("iclaim.db")

QUERY_TIMEOUT_S = 10.0


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=QUERY_TIMEOUT_S,
        timeout=10.0,
    )
    assert pool is not None
    return pool


def _lock_key(schema: str) -> int:
    return int.from_bytes(hashlib.sha256(schema.encode()).digest()[:8], "big", signed=True)


async def apply_migrations(pool: asyncpg.Pool, schema: str, directory: Path) -> list[str]:
    """Applies `NNNN_name.sql` files in order, each once, under an advisory lock
    so that replicas starting together do not race."""
    files = sorted(p for p in directory.glob("*.sql"))
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"] for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
            }
            for path in files:
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
                    await conn.execute(path.read_text())
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', path.name
                    )
                applied.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    if applied:
        log.info("migrations_applied", schema=schema, versions=applied)
    return applied
