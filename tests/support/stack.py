"""The whole clearinghouse as `make run` starts it (child processes, real Envoy),
on the machine's PostgreSQL and Redis, on free ports."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from iclaim.client.credentials import Credentials, load_dev_credentials
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_ops.devstack.infra import Infra
from iclaim_ops.devstack.stack import Ports, Stack
from iclaim_ops.devstack.up import prepare
from tests.support.databases import REDIS_BASE_URL, create_db, drop_db

# Simulated delays shortened where a test does not measure them.
STACK_ENV = {"ICLAIM_SIM_REVIEW_S": "2", "ICLAIM_SIM_SLOW_S": "10"}


class RunningStack:
    def __init__(self, stack: Stack, credentials_path: Path, database_url: str) -> None:
        self.stack = stack
        self.credentials_path = credentials_path
        self.database_url = database_url

    def creds(self, code: str | None = None) -> Credentials:
        return load_dev_credentials(code, self.credentials_path)

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url)


@asynccontextmanager
async def running_stack_in(
    state_dir: Path, env: dict[str, str] | None = None, redis_db: int | None = None, layout: str = "split"
) -> AsyncIterator[RunningStack]:
    """The stack on a scratch database; `env` adds to STACK_ENV (every process);
    `layout` picks the hub's processes (iclaim_ops.devstack.stack.LAYOUTS)."""
    name, database_url = await create_db()
    if redis_db is None:
        redis_db = int(os.environ.get("ICLAIM_TEST_STACK_REDIS_DB", "12"))
    redis_url = f"{REDIS_BASE_URL}/{redis_db}"
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushdb()
    master_key = SecretBox.new_master_key()
    stack = Stack(
        state_dir,
        database_url,
        redis_url,
        master_key,
        Ports.free(),
        {**STACK_ENV, **(env or {})},
        layout=layout,
    )
    credentials_path = state_dir / "credentials.json"
    infra = Infra(database_url, redis_url, [])
    await prepare(state_dir, infra, master_key, stack.gateway, credentials_path)
    await stack.start()
    try:
        yield RunningStack(stack, credentials_path, database_url)
    finally:
        await stack.stop()
        await drop_db(name)
        sync_redis.Redis.from_url(redis_url).flushdb()


async def run_admin(stack: RunningStack, *args: str) -> dict[str, Any]:
    """`iclaim admin ARGS` against the stack, as an operator runs it; its JSON answer."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iclaim.cli", "admin", *args,
        "--admin-config", str(stack.stack.admin_config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result
