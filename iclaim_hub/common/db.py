"""asyncpg pool (one per process), ordered SQL migrations applied at start-up,
and which driver errors mean "no database right now" (UNAVAILABLE, not a bug)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import asyncpg.exceptions as pgerr
import structlog

from iclaim.errors import Unavailable

log = structlog.get_logger("iclaim.db")

QUERY_TIMEOUT_S = 10.0
# A replica waits for a peer's migrations (the advisory lock) and runs its own
# for longer than any statement of the hot path may take: the start-up probe
# (120 s in deploy/k8s), not the client, decides when a start has failed.
MIGRATION_TIMEOUT_S = 900.0

DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
# Server answers that mean "not now" rather than "this statement is wrong": a
# connection refused, lost or never established (SQLSTATE class 08), a server
# starting up or shutting down (57P01-57P03), no connection slot free (53300).
_LOST = (
    pgerr.PostgresConnectionError,
    pgerr.CannotConnectNowError,
    pgerr.AdminShutdownError,
    pgerr.CrashShutdownError,
    pgerr.TooManyConnectionsError,
)
# The client side of the same: a connection or pool already closed under us.
_CLOSED = ("connection is closed", "pool is closing", "pool is closed")
# asyncpg's protocol in state 2 (PROTOCOL_ERROR_CONSUME) with no query of ours
# running: the server sent an error unasked, i.e. its FATAL before hanging up
# (shutdown, terminated backend). The connection's next use fails with this.
_HUNG_UP = "another operation (2) is in progress"
_ASYNCPG_DIR = os.path.dirname(asyncpg.__file__) + os.sep


def _raised_in_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(_ASYNCPG_DIR):
            return True
        tb = tb.tb_next
    return False


def is_connection_lost(exc: BaseException) -> bool:
    """True when `exc` says the database is unreachable or went away (refused,
    reset, restarting, out of connections, no answer in time): a retryable
    outage. False for anything a statement or our code got wrong."""
    if isinstance(exc, pgerr.ProtocolViolationError):
        return False  # class 08 too, but it means we sent something malformed
    if isinstance(exc, _LOST):
        return True
    if isinstance(exc, ValueError):
        # asyncpg's DataError (an InterfaceError too): an argument it could not
        # encode. Its message quotes the caller's value, so no text test below.
        return False
    if isinstance(exc, asyncpg.InterfaceError):
        return str(exc).endswith(_CLOSED)
    if isinstance(exc, pgerr.InternalClientError):
        return str(exc).endswith(_HUNG_UP)
    if isinstance(exc, OSError):
        # Refused or reset sockets, a missing unix socket, TimeoutError (an
        # OSError): the database only when raised inside the driver, since a bug
        # in our own file or socket handling raises the same types.
        return _raised_in_driver(exc)
    return False


def database_unavailable() -> Unavailable:
    return Unavailable("database unavailable; retry", reason=DATABASE_UNAVAILABLE)


@contextlib.contextmanager
def unavailable_when_connection_lost() -> Iterator[None]:
    """Re-raises a lost or refused database connection as UNAVAILABLE
    DATABASE_UNAVAILABLE; every other exception passes through unchanged."""
    try:
        yield
    except Exception as exc:
        if not is_connection_lost(exc):
            raise
        # The driver's type only: its message may quote the statement.
        log.warning("database_unavailable", error=type(exc).__name__)
        raise database_unavailable() from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A released connection keeps its session as it is. asyncpg's default reset
    costs a round trip per release (advisory unlock, CLOSE ALL, UNLISTEN, RESET
    ALL) for state the hub never leaves behind: settings are SET LOCAL, locks
    are transaction-scoped (apply_migrations unlocks its own or drops the
    connection), LISTEN and cursors are not used on pooled connections. An open
    transaction is still rolled back by asyncpg before this runs."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=QUERY_TIMEOUT_S,
        timeout=10.0,
        reset=_keep_session,
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
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema), timeout=MIGRATION_TIMEOUT_S)
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
                    await conn.execute(path.read_text(), timeout=MIGRATION_TIMEOUT_S)
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', path.name
                    )
                applied.append(path.name)
        finally:
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
            except BaseException:
                # The pool does not reset sessions: a connection that may still
                # hold the session lock must not go back to it.
                conn.terminate()
                raise
    if applied:
        log.info("migrations_applied", schema=schema, versions=applied)
    return applied
