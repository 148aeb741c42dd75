"""The claim as the router keeps it, and the shapes a state change takes.

Pure data: shared by the use cases, the store and the workers, so none of
them has to import another to talk about a claim."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

from iclaim.errors import Code
from services.claim_router.domain import State


@dataclass(frozen=True)
class ClaimRecord:
    transaction_id: str
    hospital_code: str
    insurer_code: str
    claim_ref: str
    state: State
    billed_amount_satang: int
    approved_amount_satang: int
    # The claim's JWE as the hospital sealed it: only what the router delivers
    # (the submission, a push hand-off, a pull lease) carries it; other reads
    # leave it "" and keep its size in envelope_bytes.
    envelope: str
    envelope_bytes: int
    envelope_sha256: str
    decision_envelope: str
    status_reason: str
    delivery_mode: str  # grpc | webhook (handed to the delivery layer) | pull
    submitted_at: datetime
    decided_at: datetime | None
    updated_at: datetime
    # When the claim left the router: handed to the delivery layer (push) or
    # first leased (pull). Stored in the column `delivered_at`.
    handed_off_at: datetime | None = None
    # When the router learned the insurer took it (push: ReportTaken; pull:
    # first lease). A push claim becomes DELIVERED only then.
    taken_at: datetime | None = None
    # W3C traceparent of the SubmitClaim that stored it ("" when tracing is off):
    # later work on the claim (hand-off retries, the decision) joins its trace.
    traceparent: str = ""
    # The stored row's version as read (0: unknown). Storage's, for optimistic
    # updates: not part of the claim, so not compared.
    row_version: int = dataclasses.field(default=0, compare=False, repr=False)

    def with_changes(self, **changes: object) -> ClaimRecord:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


Event = tuple[str, bytes]  # (outbox topic, payload)


class OutboxEvent(NamedTuple):
    """An unsent outbox event, with the trace it was emitted in ("" for none)."""

    id: int
    payload: bytes
    traceparent: str = ""


# Given the locked current row, returns the new row (None: unchanged) and the
# events to store with it; raising leaves the row as it was.
Mutation = Callable[[ClaimRecord], tuple[ClaimRecord | None, Sequence[Event]]]


class Leased(list[ClaimRecord]):
    """The claims a pull lease took. `exhausted`: nothing else was there to
    offer (fewer than asked for found, none left out for the answer's size)."""

    def __init__(self, records: Sequence[ClaimRecord] = (), *, exhausted: bool) -> None:
        super().__init__(records)
        self.exhausted = exhausted


@dataclass(frozen=True, slots=True)
class DecisionOutcome:
    """What became of one of several decisions recorded together: code OK
    (recorded, or the same decision again), or the refusal PostDecision would
    have raised; `state` the claim's, with DECISION_CONFLICT."""

    transaction_id: str
    code: Code = Code.OK
    reason: str = ""
    state: State | None = None


class ClaimChange(asyncio.Event):
    """Set whenever the claim changes. `state` is the state the latest change
    announced, or None when it did not say (a router of the previous release,
    a reconnected listener): then the waiter reads it. `record` is the claim as
    this replica wrote it, when the latest change was written here: a waiter
    answers from it instead of reading the claim again."""

    state: State | None = None
    record: ClaimRecord | None = None
    # Writes of this claim under way on this replica: a waiter woken by their
    # notification (which may come first) waits for the record instead of reading.
    local_writes: int = 0

    def announce(self, state: State | None) -> None:
        """A change heard by notification. A record in hand is dropped when
        another state is announced (the notification of its own write may come
        after it). One that does not say (None) keeps it: the waiter reads the
        state and answers from the record only if they agree."""
        if self.record is not None and state is not None and self.record.state != state:
            self.record = None
        self.state = state
        self.set()

    def written_here(self, rec: ClaimRecord) -> None:
        self.state = rec.state
        self.record = rec
        self.set()


class LocalWaiters(Protocol):
    """This replica's waiters, as the store that writes claims sees them."""

    # Names this replica (process) to the others: a claim's `waiter`, an
    # interest row's `replica`.
    replica: str

    def pull_stored(self, insurer_code: str) -> None:
        """A pull claim for the insurer was stored (committed) here."""

    def writing(
        self, transaction_ids: Sequence[str]
    ) -> AbstractContextManager[Callable[[ClaimRecord], None]]:
        """While a write of these claims is under way; gives what to call with
        each claim the write stored (committed), as a read would return it."""
