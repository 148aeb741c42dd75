"""The portal's own PostgreSQL schema: one asyncpg pool, ordered SQL migrations
applied at start (the same shape as the hub's, written here because the portal
is participant software and imports nothing of the hub)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA = "portal"
QUERY_TIMEOUT_S = 5.0
# One lock id for every portal instance on a database, so two starting at once
# do not both apply a migration.
_MIGRATION_LOCK = 0x1C1A_0012


async def connect(database_url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=8,
        command_timeout=QUERY_TIMEOUT_S,
        server_settings={"search_path": SCHEMA},
    )
    await apply_migrations(pool)
    return pool


async def apply_migrations(pool: asyncpg.Pool, directory: Path = MIGRATIONS) -> list[str]:
    """Applies each not yet applied `NNNN_name.sql`, in order, each in its own transaction."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
                "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {SCHEMA}.schema_migrations")}
            for path in sorted(directory.glob("*.sql")):
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (version) VALUES ($1)", path.name
                    )
                applied.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied
