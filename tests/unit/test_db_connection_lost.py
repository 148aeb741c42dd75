"""Which driver errors are a database outage (UNAVAILABLE, retryable) and which
are a bug (INTERNAL): iclaim_hub.common.db.is_connection_lost.

Socket-level failures are produced for real by asyncpg (no server needed);
server answers are the driver's own exception classes, as it raises them for
each SQLSTATE."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import asyncpg.exceptions as pgerr
import pytest

from iclaim.errors import Code
from iclaim_hub.common.db import DATABASE_UNAVAILABLE, is_connection_lost, unavailable_when_connection_lost


async def _raised(coro: object) -> BaseException:
    try:
        await coro  # type: ignore[misc]
    except BaseException as exc:  # noqa: BLE001 - the error is what is under test
        return exc
    raise AssertionError("expected an error")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts TCP connections and never answers (a hung database)."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_a_refused_connection_is_lost() -> None:
    exc = await _raised(asyncpg.connect(host="127.0.0.1", port=_closed_port(), user="x", timeout=5))
    assert isinstance(exc, OSError)
    assert is_connection_lost(exc)


async def test_a_missing_unix_socket_is_lost(tmp_path: Path) -> None:
    # What a local server that is stopped looks like (its socket file is gone).
    exc = await _raised(asyncpg.connect(f"postgresql://x@/db?host={tmp_path}", timeout=5))
    assert isinstance(exc, FileNotFoundError)
    assert is_connection_lost(exc)


async def test_no_answer_in_time_is_lost(silent_server: int) -> None:
    exc = await _raised(asyncpg.connect(host="127.0.0.1", port=silent_server, user="x", timeout=0.2))
    assert isinstance(exc, TimeoutError)
    assert is_connection_lost(exc)


async def test_our_own_os_errors_and_timeouts_are_bugs(tmp_path: Path) -> None:
    # The same types raised outside the driver say nothing about the database.
    with pytest.raises(FileNotFoundError) as missing:
        (tmp_path / "nope").read_text()
    assert not is_connection_lost(missing.value)
    timeout = await _raised(asyncio.wait_for(asyncio.sleep(1), 0.01))
    assert isinstance(timeout, TimeoutError)
    assert not is_connection_lost(timeout)
    assert not is_connection_lost(ConnectionResetError("not from the driver"))


@pytest.mark.parametrize(
    "error",
    [
        pgerr.CannotConnectNowError("the database system is shutting down"),  # 57P03
        pgerr.CannotConnectNowError("the database system is starting up"),
        pgerr.AdminShutdownError("terminating connection due to administrator command"),  # 57P01
        pgerr.CrashShutdownError("terminating connection due to crash of another process"),  # 57P02
        pgerr.TooManyConnectionsError("sorry, too many clients already"),  # 53300
        pgerr.ConnectionDoesNotExistError("connection was closed in the middle of operation"),  # 08003
        pgerr.ConnectionFailureError("connection failure"),  # 08006
        pgerr.ClientCannotConnectError("cannot connect"),  # 08001
        asyncpg.InterfaceError("cannot perform operation: connection is closed"),
        asyncpg.InterfaceError("pool is closing"),
        asyncpg.InterfaceError("pool is closed"),
        # A pooled connection whose server sent its FATAL and is hanging up: the
        # protocol is discarding that error (state 2) when the next query starts.
        pgerr.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        pgerr.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    ],
    ids=lambda e: type(e).__name__ + ":" + str(e)[:30],
)
def test_outages_are_lost(error: BaseException) -> None:
    assert is_connection_lost(error)


@pytest.mark.parametrize(
    "error",
    [
        pgerr.ProtocolViolationError("bind message supplies 1 parameters"),  # 08P01: ours
        pgerr.UniqueViolationError("duplicate key"),
        pgerr.UndefinedTableError('relation "x" does not exist'),
        pgerr.QueryCanceledError("canceling statement due to statement timeout"),
        pgerr.SerializationError("could not serialize access"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.InterfaceError(
            "cannot call Connection.fetch(): connection has been released back to the pool"
        ),
        pgerr.InternalClientError("cannot switch to state 12; another operation (15) is in progress"),
        pgerr.InternalClientError("unknown error in protocol implementation"),
        ValueError("a bug"),
        KeyError("a bug"),
    ],
    ids=lambda e: type(e).__name__ + ":" + str(e)[:30],
)
def test_bugs_are_not_lost(error: BaseException) -> None:
    assert not is_connection_lost(error)


async def test_unavailable_when_connection_lost_maps_only_outages(tmp_path: Path) -> None:
    with pytest.raises(Exception) as mapped, unavailable_when_connection_lost():
        await asyncpg.connect(f"postgresql://x@/db?host={tmp_path}", timeout=5)
    assert getattr(mapped.value, "code", None) == Code.UNAVAILABLE
    assert getattr(mapped.value, "reason", None) == DATABASE_UNAVAILABLE
    assert isinstance(mapped.value.__cause__, FileNotFoundError)

    with pytest.raises(pgerr.UniqueViolationError), unavailable_when_connection_lost():
        raise pgerr.UniqueViolationError("duplicate key")


async def test_an_argument_the_driver_cannot_encode_is_a_bug_whatever_it_says(database_url: str) -> None:
    """An argument asyncpg cannot encode raises an error that quotes the
    caller's value in its message: a value that reads "connection is closed"
    must not pass for an outage (the hub would answer UNAVAILABLE, and the
    caller retry for ever, a request it should refuse)."""
    conn = await asyncpg.connect(database_url)
    try:
        for value in ("connection is closed\ud800", "x\ud800 pool is closed"):
            error = await _raised(conn.fetchval("SELECT $1::text", value))
            assert "invalid input for query argument" in str(error), error
            assert not is_connection_lost(error)
        # The real one still is.
        await conn.close()
        assert is_connection_lost(await _raised(conn.fetchval("SELECT 1")))
    finally:
        await conn.close()
