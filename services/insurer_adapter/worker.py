"""The simulated insurers' background work as asyncio tasks: the decide and
send passes (usecases.Decider, usecases.Sender) and the periodic enrolment.

A pass that found a full batch runs again at once; otherwise the loop waits for
a wake-up (a new delivery, a new decision) or `poll_s`, since the work may also
come due by time or from another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable

import structlog

from services.insurer_adapter.usecases import Decider, Sender

log = structlog.get_logger("iclaim.adapter.worker")


class Worker:
    def __init__(
        self,
        *,
        decider: Decider,
        sender: Sender,
        enrol: Callable[[], Awaitable[object]],
        release_leases: Callable[[str], Awaitable[None]],
        poll_s: float,
        enrol_interval_s: float,
    ) -> None:
        self._decider = decider
        self._sender = sender
        self._enrol = enrol
        self._release_leases = release_leases
        self._poll_s = poll_s
        self._enrol_interval_s = enrol_interval_s
        self.owner = f"adapter-{secrets.token_hex(6)}"
        self._decide_wake = asyncio.Event()
        self._send_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop("decide", self._decide_wake, self._decide_once)),
            asyncio.create_task(self._loop("send", self._send_wake, self._send_once)),
            asyncio.create_task(self._enrol_loop()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        try:  # so another replica (or our restart) picks the work up at once
            await self._release_leases(self.owner)
        except Exception:  # the leases expire by themselves
            log.warning("lease_release_failed", exc_info=True)

    def notify(self) -> None:
        """A new delivery is committed: decide without waiting for the next poll."""
        self._decide_wake.set()

    async def _decide_once(self) -> bool:
        return await self._decider.decide_due(self.owner, self._send_wake.set)

    async def _send_once(self) -> bool:
        return await self._sender.send_due(self.owner)

    async def _loop(self, name: str, wake: asyncio.Event, once: Callable[[], Awaitable[bool]]) -> None:
        while True:
            try:
                more = await once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is down, say: keep trying
                log.warning("worker_pass_failed", loop=name, exc_info=True)
                more = False
            if more:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self._poll_s)
            wake.clear()

    async def _enrol_loop(self) -> None:
        # Picks up simulated insurers added to the registry after start-up.
        while True:
            await asyncio.sleep(self._enrol_interval_s)
            try:
                await self._enrol()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("enrolment_failed", exc_info=True)
