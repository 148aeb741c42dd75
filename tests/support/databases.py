"""The machine's PostgreSQL and Redis for tests (or those named by
ICLAIM_TEST_PG_URL / ICLAIM_TEST_REDIS_URL): a scratch database per use."""

from __future__ import annotations

import os

import asyncpg

from iclaim_ops.devstack.infra import create_scratch_database, drop_database

PG_ADMIN_URL = os.environ.get("ICLAIM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("ICLAIM_TEST_REDIS_URL", "redis://127.0.0.1:6379")


async def create_db() -> tuple[str, str]:
    return await create_scratch_database(PG_ADMIN_URL)


async def drop_db(name: str) -> None:
    await drop_database(PG_ADMIN_URL, name)


async def database_names() -> set[str]:
    """Every database on the server, to find what a run created beside its own."""
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        return {row["datname"] for row in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()
