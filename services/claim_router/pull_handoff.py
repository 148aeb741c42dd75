"""Pull claims handed straight to a PullClaims call waiting on this replica.

A submission for a pull insurer whose poll waits here reserves that poll,
stores the claim already leased and delivered (one commit, instead of the
insert and then the poll's own lease), and hands it over. The poll answers
with it. Should the poll be gone by then (its caller cancelled), the claim
is leased to no one: offered again when the lease ends, as when a poll's
caller goes away after its lease, so never lost, only later.

Only a poll in its wait accepts a claim, one at a time (it answers at once);
a reservation under way when the wait ends is waited for, briefly, so that a
claim is not left leased to a poll that just timed out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from services.claim_router.model import ClaimRecord

# The most a poll whose wait ended waits for a submission that reserved it
# (an insert, normally milliseconds); beyond it, the claim waits for its lease.
RESERVATION_WAIT_S = 5.0


class PullTaker:
    """A waiting poll, as submissions see it."""

    def __init__(self, ready: asyncio.Event) -> None:
        self._ready = ready  # the poll's wake-up
        self._open = False
        self._reserved = False
        self._settled = asyncio.Event()
        self.handed: list[ClaimRecord] = []

    @property
    def free(self) -> bool:
        return self._open and not self._reserved and not self.handed

    def open(self) -> None:
        """Its wait begins: a submission may reserve it."""
        self._open = True

    async def close(self, wait_s: float = RESERVATION_WAIT_S) -> list[ClaimRecord]:
        """Its wait ended: no new reservation; one under way is waited for (up
        to `wait_s`). Returns what was handed to it."""
        self._open = False
        if self._reserved:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._settled.wait()
            self._reserved = False  # given up on: a late hand-off finds it closed
        handed, self.handed = self.handed, []
        return handed

    def reserve(self) -> None:
        self._reserved = True
        self._settled.clear()

    def hand(self, rec: ClaimRecord) -> bool:
        """Gives the reserved poll its claim; False when it is gone."""
        taken = self._reserved
        self._reserved = False
        if taken:
            self.handed.append(rec)
            self._ready.set()
        self._settled.set()
        return taken

    def gone(self) -> None:
        """The poll ended (answered or cancelled): a late hand-off finds it gone."""
        self._open = False
        self._reserved = False

    def release(self) -> None:
        """The reservation came to nothing (no claim stored)."""
        self._reserved = False
        self._settled.set()


class PullHandOff:
    """The polls waiting on this replica, per insurer."""

    def __init__(self) -> None:
        self._takers: dict[str, list[PullTaker]] = {}

    @contextlib.contextmanager
    def waiting(self, insurer_code: str, ready: asyncio.Event) -> Iterator[PullTaker]:
        """A poll for the insurer, while it lasts; `ready` is set on a hand-off."""
        taker = PullTaker(ready)
        self._takers.setdefault(insurer_code, []).append(taker)
        try:
            yield taker
        finally:
            taker.gone()
            takers = self._takers[insurer_code]
            takers.remove(taker)
            if not takers:
                del self._takers[insurer_code]

    def reserve(self, insurer_code: str) -> PullTaker | None:
        """The longest-waiting free poll for the insurer, reserved; None if none."""
        for taker in self._takers.get(insurer_code, ()):
            if taker.free:
                taker.reserve()
                return taker
        return None
