"""PostgreSQL storage of claims and the router's outbox (schema `router`).

SQL only: which states a query selects comes from domain's named sets, bound
as parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

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


_COLUMNS = (
    "transaction_id, hospital_code, insurer_code, claim_ref, state, billed_amount_satang,"
    " approved_amount_satang, envelope, envelope_sha256, decision_envelope, status_reason,"
    " delivery_mode, submitted_at, decided_at, updated_at, delivered_at, taken_at, traceparent"
)
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


def _announced(row: str, me: int, terminal: int) -> str:
    """When a write of claim `row` (its new version) is announced: unless the
    writing replica ($me) knows that no waiter elsewhere needs it. Its own
    waiters are told in process (ChangeHub.writing). A submission's waiter
    (`waiter`) waits for a state in $terminal only; a claim stored by an earlier
    release (waiter NULL), or a store without a replica id ($me NULL), announces
    every change, as before."""
    return (
        f"NOT (${me}::text IS NOT NULL AND {row}.waiter IS NOT NULL"
        f" AND ({row}.waiter IN ('', ${me}) OR {row}.state <> ALL(${terminal}::smallint[]))"
        " AND NOT EXISTS (SELECT 1 FROM router.claim_interest i"
        f"  WHERE i.transaction_id = {row}.transaction_id AND i.replica <> ${me}))"
    )


# A claim as read, as it is to be, and the events that change emits.
_Change = tuple[ClaimRecord, ClaimRecord, Sequence[Event]]


def _event_columns(events: Sequence[Event]) -> tuple[list[str], list[bytes]]:
    return [topic for topic, _ in events], [payload for _, payload in events]


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
        round trip, one implicit transaction). `waits`: this replica's caller
        waits for the decision (the claim's `waiter`). `pull_lease_s`: a pull
        claim handed straight to a PullClaims call waiting here, so stored
        leased for that long and delivered (`rec` DELIVERED, its events both
        changes): the lease a poll would take next, in the same commit."""
        # A push claim is stored already leased for its first hand-off, which the
        # caller starts at once with the record in hand: no second commit to
        # lease it, and the poller leaves it alone unless that hand-off fails.
        push = rec.delivery_mode != DELIVERY_PULL
        if pull_lease_s is not None and (push or rec.state != State.DELIVERED):
            raise ValueError("only a pull claim, DELIVERED, is stored leased")
        topics, payloads = _event_columns(events)
        row = await self._pool.fetchrow(
            "WITH inserted AS ("
            f"  INSERT INTO router.claims ({_COLUMNS}, next_attempt_at, delivery_attempts, waiter,"
            "   lease_until, envelope_bytes)"
            "  VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,now(),NULL,now(),"
            "   CASE WHEN $23::float8 IS NULL THEN NULL ELSE now() END,"
            "   CASE WHEN $23::float8 IS NULL THEN NULL ELSE now() END, $15,"
            "   now() + make_interval(secs => $13), $14, $22,"
            "   now() + make_interval(secs => $23::float8), $24)"
            "  ON CONFLICT (hospital_code, claim_ref) DO NOTHING"
            # Only what the database decided: the rest is `rec` (the envelope
            # alone is kilobytes, stored out of line).
            "  RETURNING transaction_id, insurer_code, delivery_mode, submitted_at, updated_at,"
            "  delivered_at, taken_at, lease_until, xmin AS row_version),"
            f" {_emit_cte('inserted', 16)}"
            # Nobody waits for a claim to be RECEIVED (a watch reads the claim
            # once subscribed; the submission waits for the decision), so only a
            # pull claim notifies, its insurer's waiting PullClaims, and only
            # those of another replica (this one's are woken in process). A
            # commit with no NOTIFY also skips PostgreSQL's notification queue lock.
            " SELECT inserted.*,"
            "  CASE WHEN inserted.delivery_mode = 'pull' AND inserted.lease_until IS NULL"
            "   AND ($20::text IS NULL OR EXISTS ("
            "   SELECT 1 FROM router.pull_pollers p WHERE p.insurer_code = inserted.insurer_code"
            "    AND p.replica <> $20 AND p.seen_at > now() - make_interval(secs => $21)))"
            "  THEN pg_notify($19, inserted.insurer_code) END"
            " FROM inserted",
            rec.transaction_id,
            rec.hospital_code,
            rec.insurer_code,
            rec.claim_ref,
            int(rec.state),
            rec.billed_amount_satang,
            rec.approved_amount_satang,
            rec.envelope,
            rec.envelope_sha256,
            rec.decision_envelope,
            rec.status_reason,
            rec.delivery_mode,
            PUSH_HANDOFF_LEASE_S if push else 0.0,
            1 if push else 0,
            rec.traceparent or None,
            topics,
            payloads,
            tracing.current_traceparent() or None,
            PULL_NOTIFY_CHANNEL,
            self._replica,
            PULL_POLLER_FRESH_S,
            self._waiter_column(waits),
            pull_lease_s,
            rec.envelope_bytes,
        )
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
        ids = [cur.transaction_id for cur, _, _ in changes]
        events = [
            (cur.transaction_id, topic, payload, traceparent)
            for (cur, _, evs), traceparent in items
            for topic, payload in evs
        ]
        rows = await self._pool.fetch(
            "WITH input AS ("
            "  SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::text[], $5::text[],"
            "   $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::bool[], $10::xid[])"
            "  AS i(transaction_id, state, approved_amount_satang, decision_envelope, status_reason,"
            "   decided_at, delivered_at, taken_at, touched, row_version)),"
            " updated AS ("
            "  UPDATE router.claims c SET state = i.state, approved_amount_satang = i.approved_amount_satang,"
            "  decision_envelope = i.decision_envelope, status_reason = i.status_reason,"
            "  decided_at = i.decided_at, delivered_at = i.delivered_at, taken_at = i.taken_at,"
            # Data minimisation: once no delivery can send the envelope again
            # (ENVELOPE_SPENT_STATES) the hub stops keeping it; its size and
            # hash stay (audit sizes, a resubmission's comparison).
            "  envelope = CASE WHEN i.state = ANY($20::smallint[]) THEN '' ELSE c.envelope END,"
            "  envelope_bytes = coalesce(c.envelope_bytes, octet_length(c.envelope)),"
            # Only a change the claim's readers see moves updated_at (not a hand-off note).
            "  updated_at = CASE WHEN i.touched THEN now() ELSE c.updated_at END,"
            # A pull claim under review is no longer offered: its lease is over.
            "  lease_until = CASE WHEN i.state = $11::smallint THEN NULL ELSE c.lease_until END"
            "  FROM input i WHERE c.transaction_id = i.transaction_id AND c.xmin = i.row_version"
            # Only what the database decided: the rest is the change as computed.
            "  RETURNING c.transaction_id, c.state, c.updated_at, c.waiter, c.xmin AS row_version),"
            # Each claim's events, in order, only for the claims written.
            " emitted AS ("
            "  INSERT INTO router.outbox (topic, payload, traceparent)"
            "  SELECT e.topic, e.payload, e.traceparent FROM updated"
            "  JOIN unnest($12::text[], $13::text[], $14::bytea[], $15::text[]) WITH ORDINALITY"
            "   AS e(transaction_id, topic, payload, traceparent, n)"
            "   ON e.transaction_id = updated.transaction_id"
            "  ORDER BY e.n)"
            " SELECT updated.transaction_id, updated.updated_at, updated.row_version,"
            f"  CASE WHEN {_announced('updated', 18, 19)} THEN pg_notify($17, updated.transaction_id) END,"
            f"  CASE WHEN {_announced('updated', 18, 19)} THEN"
            "   pg_notify($16, updated.transaction_id || ' ' || updated.state) END"
            " FROM updated",
            ids,
            [int(new.state) for _, new, _ in changes],
            [new.approved_amount_satang for _, new, _ in changes],
            [new.decision_envelope for _, new, _ in changes],
            [new.status_reason for _, new, _ in changes],
            [new.decided_at for _, new, _ in changes],
            [new.handed_off_at for _, new, _ in changes],
            [new.taken_at for _, new, _ in changes],
            [new.updated_at != cur.updated_at for cur, new, _ in changes],
            [cur.row_version for cur, _, _ in changes],
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
            f" WHERE {_announced('c', 7, 8)}",
            topics,
            payloads,
            tracing.current_traceparent() or None,
            [rec.transaction_id for rec, _ in delivered],
            LEGACY_NOTIFY_CHANNEL,
            NOTIFY_CHANNEL,
            self._replica,
            _states(TERMINAL_STATES),
        )

    # --- waits elsewhere (see _announced) ---------------------------------------------
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
        process, as the announcement may not be made (`_announced`)."""
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
