"""Wakes waiters when a claim changes or pull work arrives, across replicas,
via PostgreSQL LISTEN/NOTIFY on one dedicated connection. A claim's waiters
are told the new state the notification carries, so they need not read it.
Changes written by this replica reach its waiters in process (`writing`); a
write is announced only where another replica may wait (claim_writes `announced`)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import asyncpg
import structlog

from services.claim_router.domain import State
from services.claim_router.model import ClaimChange, ClaimRecord
from services.claim_router.store import LEGACY_NOTIFY_CHANNEL, NOTIFY_CHANNEL, PULL_NOTIFY_CHANNEL

log = structlog.get_logger("claim_router.watch")


class ChangeHub:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        # New at each start: a claim left waited for by a process that died is
        # then announced (its waiter is no longer this replica).
        self.replica = secrets.token_hex(8)
        self._waiters: dict[str, set[ClaimChange]] = defaultdict(set)
        # Announcements of pull work heard, per insurer, and wake-ups of all
        # (a reconnect): what a poll that found nothing compares later.
        self._pull_heard: dict[str, int] = defaultdict(int)
        self._all_woken = 0
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._keepalive())

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        # A router of the previous release announces its changes only here.
        await conn.add_listener(LEGACY_NOTIFY_CHANNEL, self._on_notify)
        await conn.add_listener(PULL_NOTIFY_CHANNEL, self._on_notify)
        self._conn = conn

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if channel == NOTIFY_CHANNEL:
            transaction_id, _, state = payload.partition(" ")
            self._wake(transaction_id, _announced_state(state))
        elif channel == LEGACY_NOTIFY_CHANNEL:
            self._wake(payload, None)
        else:
            self.pull_stored(payload)

    def pull_stored(self, insurer_code: str) -> None:
        """A pull claim for the insurer was stored: here (told in process) or
        on another replica (announced)."""
        self._pull_heard[insurer_code] += 1
        self._wake(_pull_key(insurer_code), None)

    def _wake(self, key: str, state: State | None) -> None:
        for event in self._waiters.get(key, ()):
            event.announce(state)

    def _wake_all(self) -> None:
        self._all_woken += 1
        for events in self._waiters.values():
            for event in events:
                event.announce(None)  # whatever was missed: read it

    @contextlib.contextmanager
    def writing(self, transaction_ids: Sequence[str]) -> Iterator[Callable[[ClaimRecord], None]]:
        """A write of these claims by this replica: their waiters here answer
        from the record it stored (other replicas' hear the notification). One
        the write did not store is woken to read the claim."""
        events = [event for t in transaction_ids for event in self._waiters.get(t, ())]
        for event in events:
            event.local_writes += 1
        try:
            yield self._written
        finally:
            for event in events:
                event.local_writes -= 1
                if event.record is None:
                    event.set()

    def _written(self, rec: ClaimRecord) -> None:
        for event in self._waiters.get(rec.transaction_id, ()):
            event.written_here(rec)

    async def _keepalive(self) -> None:
        # A dropped LISTEN connection would silently stop wake-ups: probe it and
        # reconnect; waiters are woken to re-read whatever they might have missed.
        while not self._closing:
            await asyncio.sleep(2.0)
            try:
                assert self._conn is not None
                await self._conn.execute("SELECT 1", timeout=5)
            except Exception:
                log.warning("listen_connection_lost")
                with contextlib.suppress(Exception):
                    if self._conn is not None:
                        await self._conn.close(timeout=1)
                with contextlib.suppress(Exception):
                    await self._connect()
                self._wake_all()

    def claim_changes(self, transaction_id: str) -> contextlib.AbstractContextManager[ClaimChange]:
        """An event set whenever the claim changes, while the block runs."""
        return self._subscription(transaction_id)

    def pull_heard(self, insurer_code: str) -> int:
        """Grows whenever pull work for the insurer may have arrived (an
        announcement, or one possibly missed): unchanged, nothing was heard."""
        return self._pull_heard.get(insurer_code, 0) + self._all_woken

    def pull_ready(self, insurer_code: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set whenever a pull claim for the insurer is stored."""
        return self._subscription(_pull_key(insurer_code))

    @contextlib.contextmanager
    def _subscription(self, key: str) -> Iterator[ClaimChange]:
        event = ClaimChange()
        self._waiters[key].add(event)
        try:
            yield event
        finally:
            self._waiters[key].discard(event)
            if not self._waiters[key]:
                del self._waiters[key]

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
        self._wake_all()


def _pull_key(insurer_code: str) -> str:
    # Transaction ids start with "txn_", so the two kinds of key never meet.
    return f"pull:{insurer_code}"


def _announced_state(text: str) -> State | None:
    """The state a notification names; None for anything else (then it is read)."""
    try:
        return State(int(text))
    except ValueError:
        return None
