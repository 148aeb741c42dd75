"""The soak's own Redis and PostgreSQL, and the stack on them.

Both are private (never the machine's 6379/5432): the chaos driver flushes the
one and restarts the other. Redis runs without persistence, as the gateway's
nonce store should (gateway/authz/nonces.py)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis

from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_ops.devstack.infra import Infra, ensure_database
from iclaim_ops.devstack.stack import Ports, Stack, free_port
from iclaim_ops.devstack.up import prepare
from iclaim_ops.devstack.private_postgres import PrivatePostgres, private_postgres


class RedisServer:
    """A `redis-server` child on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        log = open(folder / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self._proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(folder)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        client = aioredis.Redis.from_url(self.url)
        try:
            while True:
                with contextlib.suppress(OSError, aioredis.RedisError):
                    if await client.ping():
                        return
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} did not start")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def flushall(self) -> None:
        client = aioredis.Redis.from_url(self.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# The hub's settings that differ from production, and why.
STACK_ENV = {
    # Sandbox timing (§8): REVIEW- and SLOW- claims decided while the hub is being killed.
    "ICLAIM_SIM_REVIEW_S": "2",
    "ICLAIM_SIM_SLOW_S": "5",
    # Pushes to a killed sandbox: probe the DOWN circuit every 5 s (30 s in production)
    # and back off to at most 10 s (60 s), so the run settles within a bounded wait.
    "ICLAIM_DELIVERY_PROBE_S": "5",
    "ICLAIM_DELIVERY_BACKOFF_MAX_S": "10",
    # The evidence counts each claim's state changes in the router's outbox:
    # relayed events kept a day (the default, pinned against the caller's
    # environment), far longer than any soak.
    "ICLAIM_OUTBOX_KEEP_S": "86400",
    # Delivery expiry at its default, pinned likewise: no claim here may end
    # FAILED/DELIVERY_EXPIRED (the outcome check counts one as wrong).
    "ICLAIM_DELIVERY_EXPIRY_S": "86400",
}


@asynccontextmanager
async def soak_stack(
    state_dir: Path, log_level: str, layout: str = "split"
) -> AsyncIterator[tuple[Stack, PrivatePostgres, RedisServer]]:
    """Private PostgreSQL and Redis, the registry seeded, every hub process and
    the sandbox insurers started; everything stopped afterwards."""
    redis_server = RedisServer(state_dir / "redis")
    try:
        await redis_server.wait_ready()
        async with private_postgres() as pg:
            database_url = await ensure_database(pg.server_url)
            master_key = SecretBox.new_master_key()
            env = {**STACK_ENV, "ICLAIM_LOG_LEVEL": log_level}
            stack = Stack(
                state_dir, database_url, redis_server.url, master_key, Ports.free(), env, layout=layout
            )
            infra = Infra(database_url, redis_server.url, [])
            await prepare(state_dir, infra, master_key, stack.gateway, state_dir / "credentials.json")
            await stack.start()
            try:
                yield stack, pg, redis_server
            finally:
                await stack.stop()
    finally:
        redis_server.stop()
