"""The open claims this replica stored last, as it stored them: an insurer's
decision usually reaches the replica that took the submission milliseconds
later, and finds the claim here instead of reading it again.

Only a starting point for an optimistic write (the store's transition checks
the row version, and re-reads on a mismatch): another replica may have
changed the claim since. Bounded: the oldest entry goes first; a claim that
leaves the open states goes at once (nothing more to decide)."""

from __future__ import annotations

from collections import OrderedDict

from services.claim_router.domain import OPEN_STATES
from services.claim_router.model import ClaimRecord

DEFAULT_MAX_CLAIMS = 10_000


class RecentClaims:
    def __init__(self, max_claims: int = DEFAULT_MAX_CLAIMS) -> None:
        if max_claims < 0:
            raise ValueError("max_claims must be >= 0")
        self._max = max_claims
        self._claims: OrderedDict[str, ClaimRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._claims)

    def get(self, transaction_id: str) -> ClaimRecord | None:
        return self._claims.get(transaction_id)

    def stored(self, rec: ClaimRecord) -> None:
        """`rec` as this replica just stored it (with its row version)."""
        tid = rec.transaction_id
        if rec.state not in OPEN_STATES or not rec.row_version:
            self._claims.pop(tid, None)
            return
        # The envelope (kilobytes) is not needed to decide on the claim.
        self._claims[tid] = rec.with_changes(envelope="") if rec.envelope else rec
        self._claims.move_to_end(tid)
        while len(self._claims) > self._max:
            self._claims.popitem(last=False)

    def forget(self, transaction_id: str) -> None:
        """The claim changed in a way not given to `stored`: read it next time."""
        self._claims.pop(transaction_id, None)
