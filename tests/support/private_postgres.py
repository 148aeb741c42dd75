"""The whole stack on a PostgreSQL server of the test's own
(iclaim_ops/devstack/private_postgres.py), which the test may stop and start.

Never the machine's PostgreSQL: other tests use that one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_ops.devstack.infra import Infra, ensure_database
from iclaim_ops.devstack.private_postgres import PrivatePostgres, private_postgres
from iclaim_ops.devstack.stack import Ports, Stack
from iclaim_ops.devstack.up import prepare
from tests.support.stack import STACK_ENV, RunningStack

__all__ = ["PrivatePostgres", "private_postgres", "running_stack_on"]


@asynccontextmanager
async def running_stack_on(state_dir: Path, server_url: str, redis_url: str) -> AsyncIterator[RunningStack]:
    """The whole stack (as tests/support/stack.py starts it) on the PostgreSQL
    of `server_url` and the Redis of `redis_url`, both the caller's own."""
    database_url = await ensure_database(server_url)
    master_key = SecretBox.new_master_key()
    stack = Stack(state_dir, database_url, redis_url, master_key, Ports.free(), dict(STACK_ENV))
    credentials_path = state_dir / "credentials.json"
    await prepare(state_dir, Infra(database_url, redis_url, []), master_key, stack.gateway, credentials_path)
    await stack.start()
    try:
        yield RunningStack(stack, credentials_path, database_url)
    finally:
        await stack.stop()
