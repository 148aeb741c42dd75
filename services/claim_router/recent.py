"""The open claims this replica stored last, as it stored them: an insurer's
decision usually reaches the replica that took the submission milliseconds
later, and finds the claim here instead of reading it again.

Only a starting point for an optimistic write (the store's transition checks
the row version, and re-reads on a mismatch): another replica may have
changed the claim since. Bounded: the oldest entry goes first; a claim that
leaves the open states goes at once (nothing more to decide).

It then moves to a second, smaller memory of closed claims, without envelopes
or row version, so never a start for a write: only for what a later version
cannot change (its route, a taken time once noted), which is what the
delivery layer's "taken" report, usually arriving just after the decision,
needs to know it has nothing to write."""

from __future__ import annotations

from collections import OrderedDict

from services.claim_router.domain import OPEN_STATES
from services.claim_router.model import ClaimRecord

DEFAULT_MAX_CLAIMS = 10_000
# Closed claims are wanted for seconds (a report trailing the decision).
DEFAULT_MAX_CLOSED = 4_096


class RecentClaims:
    def __init__(self, max_claims: int = DEFAULT_MAX_CLAIMS, max_closed: int = DEFAULT_MAX_CLOSED) -> None:
        if max_claims < 0 or max_closed < 0:
            raise ValueError("max_claims and max_closed must be >= 0")
        self._max = max_claims
        self._max_closed = max_closed
        self._claims: OrderedDict[str, ClaimRecord] = OrderedDict()
        self._closed: OrderedDict[str, ClaimRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._claims)

    def get(self, transaction_id: str) -> ClaimRecord | None:
        return self._claims.get(transaction_id)

    def closed(self, transaction_id: str) -> ClaimRecord | None:
        """A claim this replica last stored in a closed state: no envelopes, row
        version 0 (so `transition` reads before writing)."""
        return self._closed.get(transaction_id)

    def stored(self, rec: ClaimRecord) -> None:
        """`rec` as this replica just stored it (with its row version)."""
        tid = rec.transaction_id
        self._closed.pop(tid, None)
        if not rec.row_version:
            self._claims.pop(tid, None)
            return
        if rec.state not in OPEN_STATES:
            self._claims.pop(tid, None)
            light = rec.with_changes(envelope="", decision_envelope="", row_version=0)
            _remember(self._closed, light, self._max_closed)
            return
        # The envelope (kilobytes) is not needed to decide on the claim.
        _remember(self._claims, rec.with_changes(envelope="") if rec.envelope else rec, self._max)

    def forget(self, transaction_id: str) -> None:
        """The claim changed in a way not given to `stored`: read it next time."""
        self._claims.pop(transaction_id, None)
        self._closed.pop(transaction_id, None)


def _remember(kept: OrderedDict[str, ClaimRecord], rec: ClaimRecord, bound: int) -> None:
    kept[rec.transaction_id] = rec
    kept.move_to_end(rec.transaction_id)
    while len(kept) > bound:
        kept.popitem(last=False)
