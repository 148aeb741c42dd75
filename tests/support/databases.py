"""The machine's PostgreSQL and Redis for tests (or those named by
ICLAIM_TEST_PG_URL / ICLAIM_TEST_REDIS_URL): a scratch database per use."""

from __future__ import annotations

import os

from iclaim_ops.devstack.infra import create_scratch_database, drop_database

PG_ADMIN_URL = os.environ.get("ICLAIM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("ICLAIM_TEST_REDIS_URL", "redis://127.0.0.1:6379")


async def create_db() -> tuple[str, str]:
    return await create_scratch_database(PG_ADMIN_URL)


async def drop_db(name: str) -> None:
    await drop_database(PG_ADMIN_URL, name)
