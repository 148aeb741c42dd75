"""PostgreSQL storage of claims and the router's outbox (schema `router`).

SQL only: which states a query selects comes from domain's named sets, bound
as parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from iclaim_hub.common import tracing
from iclaim_hub.common.backfill import Backfill
from iclaim_hub.common.db import apply_migrations
from iclaim_hub.registry.model import DELIVERY_PULL
from services.claim_router.domain import (
    ENVELOPE_SPENT_STATES,
    OPEN_STATES,
    PULL_OFFER_STATES,
    PUSH_HANDOFF_LEASE_S,
    TERMINAL_STATES,
    State,
    within_byte_budget,
)
from services.claim_router.model import ClaimRecord, Event, Leased, LocalWaiters, Mutation, OutboxEvent
from services.claim_router.recent import RecentClaims
from services.claim_router import claim_writes
from services.claim_router.claim_writes import announced
from services.claim_router.write_combiner import WriteCombiner

SCHEMA = "router"
MIGRATIONS = Path(__file__).parent / "migrations"
# A claim changed: payload "<transaction_id> <state number>", so a waiter
# knows the new state without reading it.
NOTIFY_CHANNEL = "iclaim_claim_state"
# The same for routers of the previous release, which listen here for the
# bare transaction_id. Still sent so that both wake each other during a
# rolling upgrade; stop sending it once no such router runs (next release).
LEGACY_NOTIFY_CHANNEL = "iclaim_claim_changed"
PULL_NOTIFY_CHANNEL = "iclaim_pull_ready"


# What a read returns: the claim without its envelope (kilobytes stored out of
# line, which only a delivery sends on), but with the envelope's size: stored
# since migration 0006 (the envelope is dropped once the claim is done), else
# taken by octet_length from the stored value's header without fetching it.
_READ_COLUMNS = (
    "transaction_id, hospital_code, insurer_code, claim_ref, state, billed_amount_satang,"
    " approved_amount_satang, coalesce(envelope_bytes, octet_length(envelope)) AS envelope_bytes,"
    " envelope_sha256,"
    " decision_envelope, status_reason, delivery_mode, submitted_at, decided_at, updated_at,"
    " delivered_at, taken_at, traceparent"
)
# What a delivery (push hand-off, pull lease) returns: the envelope too.
_DELIVERY_COLUMNS = f"{_READ_COLUMNS}, envelope"


# The row version an optimistic update checks (see transition): PostgreSQL's
# xmin, which every UPDATE of the row changes.
_VERSIONED = f"{_READ_COLUMNS}, xmin AS row_version"


def _record(row: asyncpg.Record) -> ClaimRecord:
    return ClaimRecord(
        transaction_id=row["transaction_id"],
        hospital_code=row["hospital_code"],
        insurer_code=row["insurer_code"],
        claim_ref=row["claim_ref"],
        state=State(row["state"]),
        billed_amount_satang=row["billed_amount_satang"],
        approved_amount_satang=row["approved_amount_satang"],
        envelope=row.get("envelope") or "",
        envelope_bytes=row["envelope_bytes"],
        envelope_sha256=row["envelope_sha256"],
        decision_envelope=row["decision_envelope"],
        status_reason=row["status_reason"],
        delivery_mode=row["delivery_mode"],
        submitted_at=row["submitted_at"],
        decided_at=row["decided_at"],
        updated_at=row["updated_at"],
        handed_off_at=row["delivered_at"],
        taken_at=row["taken_at"],
        traceparent=row["traceparent"] or "",
        row_version=row.get("row_version") or 0,
    )


def _states(states: frozenset[State]) -> list[int]:
    return sorted(int(s) for s in states)


# Claims that finished before migration 0006 (which made the write of a spent
# state blank the envelope) blanked the same way, a batch at a time (0007).
SPENT_ENVELOPES = Backfill(
    SCHEMA,
    "router_spent_envelopes",
    "WITH batch AS ("
    " SELECT transaction_id FROM router.claims WHERE transaction_id > $1 ORDER BY transaction_id LIMIT $2),"
    # Locked in claim order, as every writer locks claims (_write_rows).
    " spent AS ("
    " SELECT c.transaction_id FROM router.claims c JOIN batch USING (transaction_id)"
    "  WHERE c.state = ANY($3::int[]) AND c.envelope <> '' ORDER BY c.transaction_id FOR UPDATE OF c),"
    " blanked AS ("
    " UPDATE router.claims c SET envelope_bytes = coalesce(c.envelope_bytes, octet_length(c.envelope)),"
    "  envelope = ''"
    " FROM spent WHERE c.transaction_id = spent.transaction_id RETURNING 1)"
    " SELECT (SELECT max(transaction_id) FROM batch) AS last, (SELECT count(*) FROM batch) AS seen,"
    " (SELECT count(*) FROM blanked) AS changed",
    (_states(ENVELOPE_SPENT_STATES),),
)


def _emit_cte(source: str | None, first: int) -> str:
    """A CTE storing a statement's events in the outbox, in order, once per row
    of `source` (none when the claim was not written; None: once). Parameters
    $first, $first+1 and $first+2 are the topics, the payloads and the
    traceparent each event carries (the relay sends it there). Unreferenced, a
    data-modifying CTE still runs."""
    rows = f"{source}, " if source else ""
    return (
        "emitted AS ("
        " INSERT INTO router.outbox (topic, payload, traceparent)"
        f" SELECT e.topic, e.payload, ${first + 2}"
        f" FROM {rows}unnest(${first}::text[], ${first + 1}::bytea[])"
        " WITH ORDINALITY AS e(topic, payload, n) ORDER BY e.n)"
    )


# Claim write statements a replica runs at once; more writes wait and go together.
WRITES_IN_FLIGHT = 2

# A replica's note that it polls for an insurer (pull_pollers) counts this
# long; it renews it while it polls (usecases.PULL_POLLER_RENEW_S).
PULL_POLLER_FRESH_S = 90.0


# A claim as read, as it is to be, and the events that change emits.
_Change = tuple[ClaimRecord, ClaimRecord, Sequence[Event]]
# A claim to store: the record, its events, whether this replica waits for its
# decision and the pull lease it is stored with (insert's arguments).
_New = tuple[ClaimRecord, Sequence[Event], bool, float | None]


def _ref(hospital_code: str, claim_ref: str) -> str:
    """A claim's (hospital, claim_ref), the key a resubmission finds it by, as
    one string (a NUL is in neither: proto strings are checked text)."""
    return f"{hospital_code}\x00{claim_ref}"


def _ref_key(rec: ClaimRecord) -> str:
    return _ref(rec.hospital_code, rec.claim_ref)


def _event_columns(events: Sequence[Event]) -> tuple[list[str], list[bytes]]:
    return [topic for topic, _ in events], [payload for _, payload in events]


def _changed(cur: ClaimRecord, new: ClaimRecord) -> dict[str, Any]:
    """A claim's change for the update statement (claim_writes._CHANGED)."""
    return {
        "transaction_id": cur.transaction_id,
        "state": int(new.state),
        "approved_amount_satang": new.approved_amount_satang,
        "decision_envelope": new.decision_envelope,
        "status_reason": new.status_reason,
        "decided_at": new.decided_at,
        "delivered_at": new.handed_off_at,
        "taken_at": new.taken_at,
        # Only a change the claim's readers see moves updated_at.
        "touched": new.updated_at != cur.updated_at,
        "row_version": cur.row_version,
    }


class PgClaimStore:
    """Implements the use cases' ClaimStore, PushDeliverer's PushStore and
    OutboxRelay's OutboxStore."""

    def __init__(self, pool: asyncpg.Pool, *, waiters: LocalWaiters | None = None) -> None:
        self._pool = pool
        # Open claims as this replica stored them: a decision starts from one.
        self._recent = RecentClaims()
        # Claim writes that meet share a statement (group commit). Two at once,
        # so that one held up (a row lock, a slow flush) does not hold up all.
        self._writes: WriteCombiner[_Change, ClaimRecord] = WriteCombiner(
            self._write_rows, lambda change: change[0].transaction_id, in_flight=WRITES_IN_FLIGHT
        )
        # New claims that meet share a statement too, two (hospital, claim_ref)
        # alike never the same one: the later finds the earlier stored.
        self._inserts: WriteCombiner[_New, asyncpg.Record] = WriteCombiner(
            self._insert_rows, lambda new: _ref_key(new[0]), in_flight=WRITES_IN_FLIGHT
        )
        # Given each claim an update stores, so that this replica's waiters
        # answer from it instead of reading it again (ChangeHub).
        self._waiters = waiters
        # Who this replica is to the other replicas' announcements (None: a store
        # with no waiters of its own announces every change, as before).
        self._replica = waiters.replica if waiters is not None else None

    def _waiter_column(self, waits: bool) -> str | None:
        if self._replica is None:
            return None
        return self._replica if waits else ""

    async def migrate(self) -> None:
        await apply_migrations(self._pool, SCHEMA, MIGRATIONS)

    async def insert(
        self,
        rec: ClaimRecord,
        events: Sequence[Event],
        *,
        waits: bool = False,
        pull_lease_s: float | None = None,
    ) -> tuple[ClaimRecord, bool]:
        """Stores a new claim unless (hospital, claim_ref) exists; returns (stored, created).
        The claim, its events and its notifications go in one statement (one
        round trip, one implicit transaction), shared with the claims other
        callers store meanwhile (group commit, as for updates). `waits`: this replica's caller
        waits for the decision (the claim's `waiter`). `pull_lease_s`: a pull
        claim handed straight to a PullClaims call waiting here, so stored
        leased for that long and delivered (`rec` DELIVERED, its events both
        changes): the lease a poll would take next, in the same commit."""
        if pull_lease_s is not None and (rec.delivery_mode != DELIVERY_PULL or rec.state != State.DELIVERED):
            raise ValueError("only a pull claim, DELIVERED, is stored leased")
        new: _New = (rec, events, waits, pull_lease_s)
        row = (await self._inserts.write([new], tracing.current_traceparent() or None)).get(_ref_key(rec))
        if row is not None:
            # A claim stored leased is offered to no one: nobody else to wake.
            offered = rec.delivery_mode == DELIVERY_PULL and row["lease_until"] is None
            if offered and self._waiters is not None:
                self._waiters.pull_stored(rec.insurer_code)
            stored = rec.with_changes(
                submitted_at=row["submitted_at"],
                updated_at=row["updated_at"],
                decided_at=None,
                handed_off_at=row["delivered_at"],
                taken_at=row["taken_at"],
                row_version=row["row_version"],
            )
            self._recent.stored(stored)
            return stored, True
        existing = await self.find_by_ref(rec.hospital_code, rec.claim_ref)
        assert existing is not None
        return existing, False

    def _incoming(self, rec: ClaimRecord, waits: bool, pull_lease_s: float | None) -> dict[str, Any]:
        """A new claim's values for the insert statement (claim_writes._INCOMING)."""
        # A push claim is stored already leased for its first hand-off, which the
        # caller starts at once with the record in hand: no second commit to
        # lease it, and the poller leaves it alone unless that hand-off fails.
        push = rec.delivery_mode != DELIVERY_PULL
        return {
            "transaction_id": rec.transaction_id,
            "hospital_code": rec.hospital_code,
            "insurer_code": rec.insurer_code,
            "claim_ref": rec.claim_ref,
            "state": int(rec.state),
            "billed_amount_satang": rec.billed_amount_satang,
            "approved_amount_satang": rec.approved_amount_satang,
            "envelope": rec.envelope,
            "envelope_sha256": rec.envelope_sha256,
            "decision_envelope": rec.decision_envelope,
            "status_reason": rec.status_reason,
            "delivery_mode": rec.delivery_mode,
            "handoff_lease_s": PUSH_HANDOFF_LEASE_S if push else 0.0,
            "delivery_attempts": 1 if push else 0,
            "traceparent": rec.traceparent or None,
            "waiter": self._waiter_column(waits),
            "pull_lease_s": pull_lease_s,
            "envelope_bytes": rec.envelope_bytes,
        }

    async def _insert_rows(self, items: list[tuple[_New, str | None]]) -> dict[str, asyncpg.Record]:
        """One statement for the new claims the combiner gathered, each with the
        trace its events carry; returns the rows stored, by (hospital, claim_ref).
        In (hospital, claim_ref) order, so that two statements that meet on a
        resubmitted claim wait for each other in one order, never in a cycle."""
        items = sorted(items, key=lambda item: _ref_key(item[0][0]))
        events = [
            (rec.transaction_id, topic, payload, traceparent)
            for (rec, evs, _, _), traceparent in items
            for topic, payload in evs
        ]
        sql, claims = claim_writes.insert(
            [self._incoming(rec, waits, pull_lease_s) for (rec, _, waits, pull_lease_s), _ in items]
        )
        rows = await self._pool.fetch(
            sql,
            *claims,
            [txid for txid, _, _, _ in events],
            [topic for _, topic, _, _ in events],
            [payload for _, _, payload, _ in events],
            [traceparent for _, _, _, traceparent in events],
            PULL_NOTIFY_CHANNEL,
            self._replica,
            PULL_POLLER_FRESH_S,
        )
        return {_ref(r["hospital_code"], r["claim_ref"]): r for r in rows}

    async def find_by_ref(self, hospital_code: str, claim_ref: str) -> ClaimRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_VERSIONED} FROM router.claims WHERE hospital_code = $1 AND claim_ref = $2",
            hospital_code,
            claim_ref,
        )
        return None if row is None else _record(row)

    async def get(self, transaction_id: str) -> ClaimRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_VERSIONED} FROM router.claims WHERE transaction_id = $1", transaction_id
        )
        return None if row is None else _record(row)

    def recent(self, transaction_id: str) -> ClaimRecord | None:
        """The open claim as this replica last stored it, if at hand: maybe
        stale, so only a starting point for `transition` (cached=True)."""
        return self._recent.get(transaction_id)

    async def state_of(self, transaction_id: str) -> State | None:
        """The claim's state alone: what a waiter checks on each wake-up,
        without fetching the envelopes stored out of line."""
        value = await self._pool.fetchval(
            "SELECT state FROM router.claims WHERE transaction_id = $1", transaction_id
        )
        return None if value is None else State(value)

    async def list_for_hospital(
        self,
        hospital_code: str,
        *,
        state: State | None,
        insurer_code: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[ClaimRecord]:
        rows = await self._pool.fetch(
            f"SELECT {_READ_COLUMNS} FROM router.claims WHERE hospital_code = $1"
            " AND ($2::smallint IS NULL OR state = $2)"
            " AND ($3::text IS NULL OR insurer_code = $3)"
            " AND ($4::timestamptz IS NULL OR (submitted_at, transaction_id) > ($4, $5))"
            " ORDER BY submitted_at, transaction_id LIMIT $6",
            hospital_code,
            None if state is None else int(state),
            insurer_code,
            None if after is None else after[0],
            None if after is None else after[1],
            limit,
        )
        return [_record(r) for r in rows]

    async def transition(
        self,
        transaction_id: str,
        mutate: Mutation,
        current: ClaimRecord | None = None,
        *,
        cached: bool = False,
    ) -> ClaimRecord | None:
        """Runs `mutate` on the claim as read and stores its result and events
        atomically, in one statement that applies only if the row is still the
        version that was read; if another writer got there first, reads again
        and runs `mutate` again (so it must be free of side effects). `current`,
        the record as the caller just read it, saves the first read. One round
        trip for a write instead of a locking transaction's five. `cached`:
        `current` is `recent()`'s, maybe stale, so a write refused by its
        version, and an answer of no change or a refusal by `mutate`, stand
        only once `mutate` has seen the claim as read."""
        while True:
            if current is None or not current.row_version:
                current = await self.get(transaction_id)
                cached = False
                if current is None:
                    return None
            try:
                new, events = mutate(current)
            except Exception:
                if not cached:
                    raise
                current = None  # refused on what may be an old version: decide on the claim as read
                continue
            if new is None:
                if not cached:
                    return current
                current = None
                continue
            written = await self._write([(current, new, events)], tracing.current_traceparent() or None)
            if transaction_id in written:
                return written[transaction_id]
            current = None  # changed since it was read: decide again on what is there now

    async def transition_many(
        self,
        transaction_ids: Sequence[str],
        mutate: Mutation,
        settled: Callable[[ClaimRecord], bool] | None = None,
    ) -> dict[str, ClaimRecord]:
        """`transition` for many claims at once: one read and one write (one
        commit) per round, a further round only for the claims another writer
        changed in between. The first round starts from the claims this
        replica stored last (`recent`), reading only the others: one there,
        maybe stale, stands for no change or a refusal by `mutate` only once
        read. `settled(copy)`: `mutate` changes nothing on this copy nor on any
        later version of the claim (it may rely only on what never reverts: a
        claim's route, a state it cannot return to, a time once noted); such a
        claim, open or closed when this replica last stored it, is not read.
        Returns each claim found as stored (a settled one as at hand, a closed
        one without envelopes); the events carry no trace (the batch is no one
        claim's)."""
        stored: dict[str, ClaimRecord] = {}
        pending = sorted(set(transaction_ids))
        if settled is not None:
            for tid in pending:
                copy = self._recent.get(tid) or self._recent.closed(tid)
                if copy is not None and settled(copy):
                    stored[tid] = copy
            pending = [tid for tid in pending if tid not in stored]
        at_hand = {t: rec for t in pending if (rec := self._recent.get(t)) is not None and rec.row_version}
        while pending:
            changes: list[_Change] = []
            to_read: list[str] = []
            for tid in pending:
                cached = at_hand.pop(tid, None)
                if cached is None:
                    to_read.append(tid)
                    continue
                try:
                    new, events = mutate(cached)
                except Exception:
                    new = None
                if new is None:
                    to_read.append(tid)  # decided on what may be an old version
                else:
                    changes.append((cached, new, events))
            if to_read:
                rows = await self._pool.fetch(
                    f"SELECT {_VERSIONED} FROM router.claims WHERE transaction_id = ANY($1::text[])"
                    " ORDER BY transaction_id",
                    to_read,
                )
                for row in rows:
                    current = _record(row)
                    new, events = mutate(current)
                    if new is None:
                        stored[current.transaction_id] = current
                    else:
                        changes.append((current, new, events))
            changes.sort(key=lambda change: change[0].transaction_id)
            written = await self._write(changes, None) if changes else {}
            stored.update(written)
            pending = [cur.transaction_id for cur, _, _ in changes if cur.transaction_id not in written]
        return stored

    async def _write(self, changes: Sequence[_Change], traceparent: str | None) -> dict[str, ClaimRecord]:
        """Stores each change whose row is still the version read, with its
        events and a notification, in one statement; returns those written."""
        ids = [cur.transaction_id for cur, _, _ in changes]
        writing = self._waiters.writing(ids) if self._waiters is not None else contextlib.nullcontext(None)
        with writing as hand_off:
            written = await self._writes.write(changes, traceparent)
            for rec in written.values():
                # As a read returns it: without the envelope.
                as_read = rec.with_changes(envelope="") if rec.envelope else rec
                self._recent.stored(as_read)
                if hand_off is not None:
                    hand_off(as_read)
        return written

    async def _write_rows(self, items: list[tuple[_Change, str | None]]) -> dict[str, ClaimRecord]:
        """One statement for the writes the combiner gathered, each change with
        the trace its events carry; in claim order, as every writer locks rows."""
        items = sorted(items, key=lambda item: item[0][0].transaction_id)
        changes = [change for change, _ in items]
        events = [
            (cur.transaction_id, topic, payload, traceparent)
            for (cur, _, evs), traceparent in items
            for topic, payload in evs
        ]
        sql, claims = claim_writes.update([_changed(cur, new) for cur, new, _ in changes])
        rows = await self._pool.fetch(
            sql,
            *claims,
            int(State.PENDING_REVIEW),
            [txid for txid, _, _, _ in events],
            [topic for _, topic, _, _ in events],
            [payload for _, _, payload, _ in events],
            [traceparent for _, _, _, traceparent in events],
            NOTIFY_CHANNEL,
            LEGACY_NOTIFY_CHANNEL,
            self._replica,
            _states(TERMINAL_STATES),
            _states(ENVELOPE_SPENT_STATES),
        )
        new_by_id = {cur.transaction_id: new for cur, new, _ in changes}
        return {
            r["transaction_id"]: new_by_id[r["transaction_id"]].with_changes(
                updated_at=r["updated_at"], row_version=r["row_version"]
            )
            for r in rows
        }

    async def _emit_delivered(
        self, conn: asyncpg.Connection, delivered: Sequence[tuple[ClaimRecord, Sequence[Event]]]
    ) -> None:
        """Stores the events of claims a lease delivered, in order, and announces
        each claim's change where a waiter elsewhere may need it: one statement
        for the lot. The events carry the trace they were emitted in (the relay
        sends them there)."""
        if not delivered:
            return
        topics, payloads = _event_columns([event for _, events in delivered for event in events])
        await conn.execute(
            f"WITH {_emit_cte(None, 1)}"
            f" SELECT pg_notify($5, c.transaction_id), pg_notify($6, c.transaction_id || ' ' || c.state)"
            " FROM unnest($4::text[]) AS u(transaction_id)"
            " JOIN router.claims c ON c.transaction_id = u.transaction_id"
            f" WHERE {announced('c', 7, 8)}",
            topics,
            payloads,
            tracing.current_traceparent() or None,
            [rec.transaction_id for rec, _ in delivered],
            LEGACY_NOTIFY_CHANNEL,
            NOTIFY_CHANNEL,
            self._replica,
            _states(TERMINAL_STATES),
        )

    # --- waits elsewhere (see claim_writes.announced) ------------------------------
    async def note_interest(self, transaction_id: str) -> int | None:
        if self._replica is None:
            return None
        interest_id: int = await self._pool.fetchval(
            "INSERT INTO router.claim_interest (transaction_id, replica) VALUES ($1, $2) RETURNING id",
            transaction_id,
            self._replica,
        )
        return interest_id

    async def drop_interest(self, interest_id: int) -> None:
        await self._pool.execute("DELETE FROM router.claim_interest WHERE id = $1", interest_id)

    async def note_pull_poller(self, insurer_code: str) -> bool:
        """This replica polls for the insurer: other replicas announce its new
        claims for a while. True when it was not noted (or no longer fresh)."""
        if self._replica is None:
            return False
        return bool(
            await self._pool.fetchval(
                "WITH before AS (SELECT seen_at > now() - make_interval(secs => $3) AS fresh"
                "  FROM router.pull_pollers WHERE insurer_code = $1 AND replica = $2),"
                " noted AS (INSERT INTO router.pull_pollers (insurer_code, replica) VALUES ($1, $2)"
                "  ON CONFLICT (insurer_code, replica) DO UPDATE SET seen_at = now())"
                " SELECT NOT coalesce((SELECT fresh FROM before), false)",
                insurer_code,
                self._replica,
                PULL_POLLER_FRESH_S,
            )
        )

    async def forget_old_interest(self, older_than_s: float) -> int:
        """Removes interest rows a replica that died left behind (they cost
        announcements only; a live wait older than this falls back to its
        periodic re-read), and pull poller notes as old. Returns the former's count."""
        await self._pool.execute(
            "DELETE FROM router.pull_pollers WHERE seen_at < now() - make_interval(secs => $1)",
            older_than_s,
        )
        status = await self._pool.execute(
            "DELETE FROM router.claim_interest WHERE since < now() - make_interval(secs => $1)",
            older_than_s,
        )
        return int(status.split()[-1])

    # --- push hand-off to the delivery layer ------------------------------------------
    async def lease_push(self, limit: int, lease_s: float) -> list[ClaimRecord]:
        """Takes due push claims not yet handed off and hides them for `lease_s`
        while handing them to the delivery layer."""
        rows = await self._pool.fetch(
            "UPDATE router.claims SET next_attempt_at = now() + make_interval(secs => $2),"
            " delivery_attempts = delivery_attempts + 1"
            " WHERE transaction_id IN ("
            "  SELECT transaction_id FROM router.claims"
            # Spelled as in the partial index claims_push_due, so the planner uses it.
            "  WHERE delivered_at IS NULL AND delivery_mode IN ('grpc', 'webhook')"
            "   AND next_attempt_at <= now() AND state = ANY($3::smallint[])"
            "  ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_DELIVERY_COLUMNS}",
            limit,
            lease_s,
            _states(OPEN_STATES),
        )
        leased = [_record(r) for r in rows]
        for rec in leased:
            self._recent.forget(rec.transaction_id)  # its version changed
        return leased

    async def mark_handed_off(self, transaction_id: str) -> None:
        """The delivery layer stored the claim: it is no longer due here. The
        state does not change; the delivery layer reports when the insurer took it."""
        self._recent.forget(transaction_id)  # its version changes
        await self._pool.execute(
            "UPDATE router.claims SET delivered_at = now()"
            " WHERE transaction_id = $1 AND delivered_at IS NULL",
            transaction_id,
        )

    async def retry_push_later(self, transaction_id: str, delay_s: float) -> None:
        self._recent.forget(transaction_id)  # its version changes
        await self._pool.execute(
            "UPDATE router.claims SET next_attempt_at = now() + make_interval(secs => $2)"
            " WHERE transaction_id = $1 AND delivered_at IS NULL",
            transaction_id,
            delay_s,
        )

    # --- pull delivery -------------------------------------------------------------
    async def lease_pull(
        self,
        insurer_code: str,
        limit: int,
        lease_s: float,
        on_delivered: Callable[[ClaimRecord], Sequence[Event]],
    ) -> Leased:
        """Offers open pull claims whose lease has passed; RECEIVED ones become DELIVERED."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT transaction_id, state, octet_length(envelope) AS size FROM router.claims"
                " WHERE insurer_code = $1 AND delivery_mode = 'pull'"
                "  AND state = ANY($3::smallint[])"
                "  AND (lease_until IS NULL OR lease_until < now())"
                " ORDER BY submitted_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                insurer_code,
                limit,
                _states(PULL_OFFER_STATES),
            )
            # Only what fits one answer is leased; the rest stay offered.
            found = len(rows)
            rows = rows[: within_byte_budget([r["size"] for r in rows])]
            exhausted = found < limit and len(rows) == found
            if not rows:
                return Leased(exhausted=exhausted)
            first_time = {r["transaction_id"] for r in rows if r["state"] == State.RECEIVED}
            updated = await conn.fetch(
                "UPDATE router.claims SET lease_until = now() + make_interval(secs => $2),"
                " state = $3::smallint, delivered_at = COALESCE(delivered_at, now()),"
                " taken_at = COALESCE(taken_at, now()),"
                " updated_at = CASE WHEN state = $4::smallint THEN now() ELSE updated_at END"
                f" WHERE transaction_id = ANY($1::text[]) RETURNING {_DELIVERY_COLUMNS},"
                " xmin AS row_version",
                [r["transaction_id"] for r in rows],
                lease_s,
                int(State.DELIVERED),
                int(State.RECEIVED),
            )
            records = sorted((_record(r) for r in updated), key=lambda r: r.submitted_at)
            delivered = [rec for rec in records if rec.transaction_id in first_time]
            await self._emit_delivered(conn, [(rec, on_delivered(rec)) for rec in delivered])
        for rec in records:  # committed: the insurer's decision starts from these
            self._recent.stored(rec)
        self._tell_waiters_here(delivered)
        return Leased(records, exhausted=exhausted)

    def _tell_waiters_here(self, written: Sequence[ClaimRecord]) -> None:
        """This replica's waiters for claims written outside `_write`: told in
        process, as the announcement may not be made (`claim_writes.announced`)."""
        if self._waiters is None or not written:
            return
        with self._waiters.writing([rec.transaction_id for rec in written]) as hand_off:
            for rec in written:
                hand_off(rec.with_changes(envelope="") if rec.envelope else rec)

    async def next_pull_offer_s(self, insurer_code: str) -> float | None:
        """Seconds until the first of the insurer's leased open pull claims is
        offered again (its lease ends); None when none is leased."""
        value = await self._pool.fetchval(
            "SELECT EXTRACT(EPOCH FROM min(lease_until) - now())::float8 FROM router.claims"
            " WHERE insurer_code = $1 AND delivery_mode = 'pull'"
            "  AND state = ANY($2::smallint[]) AND lease_until >= now()",
            insurer_code,
            _states(PULL_OFFER_STATES),
        )
        return None if value is None else max(float(value), 0.0)

    async def pull_waiting_since(self) -> dict[str, datetime]:
        """Per pull insurer, since when its longest-waiting claim has been
        ready to pull (never leased: since submission; lease ended: since then)."""
        rows = await self._pool.fetch(
            "SELECT insurer_code, min(COALESCE(lease_until, submitted_at)) AS since"
            " FROM router.claims WHERE delivery_mode = 'pull' AND state = ANY($1::smallint[])"
            "  AND (lease_until IS NULL OR lease_until < now())"
            " GROUP BY insurer_code",
            _states(PULL_OFFER_STATES),
        )
        return {r["insurer_code"]: r["since"] for r in rows}

    async def hospitals_submitting_since(self, since: datetime) -> int:
        value = await self._pool.fetchval(
            "SELECT count(DISTINCT hospital_code) FROM router.claims WHERE submitted_at >= $1", since
        )
        return int(value or 0)

    # --- outbox --------------------------------------------------------------------
    async def outbox_next(self, topic: str, limit: int, sent: Sequence[int]) -> list[OutboxEvent]:
        # The UPDATE's rows are not yet visible to the SELECT of the same
        # statement: those just marked are left out by id.
        rows = await self._pool.fetch(
            "WITH marked AS (UPDATE router.outbox SET sent_at = now() WHERE id = ANY($3::bigint[]))"
            " SELECT id, payload, traceparent FROM router.outbox"
            " WHERE topic = $1 AND sent_at IS NULL AND id <> ALL($3::bigint[]) ORDER BY id LIMIT $2",
            topic,
            limit,
            list(sent),
        )
        return [OutboxEvent(r["id"], bytes(r["payload"]), r["traceparent"] or "") for r in rows]

    async def outbox_mark_sent(self, ids: Sequence[int]) -> None:
        await self._pool.execute(
            "UPDATE router.outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", list(ids)
        )

    async def outbox_purge_edge(self, keep_s: float) -> int:
        """The lowest event id inside the kept window (so every id below it was
        created before the window). Walks the primary key from the oldest row:
        once a pass has removed what was due, it reads a row or two."""
        return int(
            await self._pool.fetchval(
                "SELECT coalesce("
                " (SELECT id FROM router.outbox WHERE created_at >= now() - make_interval(secs => $1)"
                "  ORDER BY id LIMIT 1),"
                " (SELECT max(id) + 1 FROM router.outbox), 0)",
                keep_s,
            )
        )

    async def purge_sent_outbox(self, below_id: int, limit: int) -> int:
        """Removes at most `limit` relayed events with ids below `below_id`; an
        event not yet acknowledged downstream stays, however old."""
        status = await self._pool.execute(
            "DELETE FROM router.outbox WHERE id IN ("
            " SELECT id FROM router.outbox WHERE id < $1 AND sent_at IS NOT NULL ORDER BY id LIMIT $2)",
            below_id,
            limit,
        )
        return int(status.split()[-1])
