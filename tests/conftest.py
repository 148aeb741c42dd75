"""Shared fixtures: a fresh PostgreSQL database and a private Redis DB per session.

Real servers only (the machine's, or those named by ICLAIM_TEST_PG_URL /
ICLAIM_TEST_REDIS_URL)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Awaitable

import pytest
import redis.asyncio as aioredis

from tests.support.databases import REDIS_BASE_URL, create_db, drop_db

# `pytester`: tests/portal/test_browser_artifacts.py runs a small browser suite of its own.
pytest_plugins = ["pytester"]


@pytest.fixture
async def make_database() -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Factory: each call creates an empty database and returns its URL."""
    created: list[str] = []

    async def make() -> str:
        name, url = await create_db()
        created.append(name)
        return url

    yield make
    for name in created:
        await drop_db(name)


@pytest.fixture
async def database_url(make_database: Callable[[], Awaitable[str]]) -> str:
    return await make_database()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis logical DB of its own (1..15), flushed before and after."""
    db = int(os.environ.get("ICLAIM_TEST_REDIS_DB", "9"))
    url = f"{REDIS_BASE_URL}/{db}"
    import redis as sync_redis

    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
