"""The SQL of the router's claim writes: new claims stored, and claims'
changes stored where each row is still the version read, each with its
outbox events and notifications in the same statement. Each comes in two
forms, one claim's values as scalars or several claims' as arrays (group
commit, write_combiner); see _rows_from_params for why both."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_INSERTED_COLUMNS = (
    "transaction_id, hospital_code, insurer_code, claim_ref, state, billed_amount_satang,"
    " approved_amount_satang, envelope, envelope_sha256, decision_envelope, status_reason,"
    " delivery_mode, submitted_at, decided_at, updated_at, delivered_at, taken_at, traceparent"
)


def announced(row: str, me: int, terminal: int) -> str:
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


# A new claim's values, as the insert statement takes them ($1..$18).
_INCOMING = (
    ("transaction_id", "text"),
    ("hospital_code", "text"),
    ("insurer_code", "text"),
    ("claim_ref", "text"),
    ("state", "smallint"),
    ("billed_amount_satang", "bigint"),
    ("approved_amount_satang", "bigint"),
    ("envelope", "text"),
    ("envelope_sha256", "text"),
    ("decision_envelope", "text"),
    ("status_reason", "text"),
    ("delivery_mode", "text"),
    ("handoff_lease_s", "float8"),
    ("delivery_attempts", "int"),
    ("traceparent", "text"),
    ("waiter", "text"),
    ("pull_lease_s", "float8"),
    ("envelope_bytes", "int"),
)


def _rows_from_params(columns: Sequence[tuple[str, str]], many: bool) -> str:
    """A statement's input rows from its first parameters, one per column
    (name, type), numbered `n` in order: one row's values as scalars, or
    several rows' as arrays (`many`). One row (the usual case below full load)
    gets the scalar form: PostgreSQL plans a statement over arrays afresh at
    nearly every call (it sizes them from the values), at a cost of 0.1-0.4 ms
    each, more than the write itself; the scalar form keeps one cached plan."""
    if not many:
        return (
            "SELECT "
            + ", ".join(f"${n}::{kind} AS {name}" for n, (name, kind) in enumerate(columns, 1))
            + ", 1 AS n"
        )
    arrays = ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(columns, 1))
    return f"SELECT * FROM unnest({arrays}) WITH ORDINALITY AS i({', '.join(name for name, _ in columns)}, n)"


def _insert_statement(many: bool) -> str:
    """The statement storing new claims, their events and notifications."""
    first = len(_INCOMING) + 1  # the events' parameters, after the claims'
    return (
        f"WITH incoming AS ({_rows_from_params(_INCOMING, many)}),"
        " inserted AS ("
        f"  INSERT INTO router.claims ({_INSERTED_COLUMNS}, next_attempt_at, delivery_attempts, waiter,"
        "   lease_until, envelope_bytes)"
        "  SELECT i.transaction_id, i.hospital_code, i.insurer_code, i.claim_ref, i.state,"
        "   i.billed_amount_satang, i.approved_amount_satang, i.envelope, i.envelope_sha256,"
        "   i.decision_envelope, i.status_reason, i.delivery_mode, now(), NULL, now(),"
        "   CASE WHEN i.pull_lease_s IS NULL THEN NULL ELSE now() END,"
        "   CASE WHEN i.pull_lease_s IS NULL THEN NULL ELSE now() END, i.traceparent,"
        "   now() + make_interval(secs => i.handoff_lease_s), i.delivery_attempts, i.waiter,"
        "   now() + make_interval(secs => i.pull_lease_s), i.envelope_bytes"
        "  FROM incoming i ORDER BY i.n"
        "  ON CONFLICT (hospital_code, claim_ref) DO NOTHING"
        # Only what the database decided: the rest is the record (the envelope
        # alone is kilobytes, stored out of line).
        "  RETURNING transaction_id, hospital_code, claim_ref, insurer_code, delivery_mode,"
        "  submitted_at, updated_at, delivered_at, taken_at, lease_until, xmin AS row_version),"
        # Each claim's events, in order, only for the claims stored.
        " emitted AS ("
        "  INSERT INTO router.outbox (topic, payload, traceparent)"
        "  SELECT e.topic, e.payload, e.traceparent FROM inserted"
        f"  JOIN unnest(${first}::text[], ${first + 1}::text[], ${first + 2}::bytea[], ${first + 3}::text[])"
        "   WITH ORDINALITY AS e(transaction_id, topic, payload, traceparent, n)"
        "   ON e.transaction_id = inserted.transaction_id"
        "  ORDER BY e.n)"
        # Nobody waits for a claim to be RECEIVED (a watch reads the claim once
        # subscribed; the submission waits for the decision), so only a pull
        # claim notifies, its insurer's waiting PullClaims, and only those of
        # another replica (this one's are woken in process). A commit with no
        # NOTIFY also skips PostgreSQL's notification queue lock.
        " SELECT inserted.*,"
        "  CASE WHEN inserted.delivery_mode = 'pull' AND inserted.lease_until IS NULL"
        f"   AND (${first + 5}::text IS NULL OR EXISTS ("
        "   SELECT 1 FROM router.pull_pollers p WHERE p.insurer_code = inserted.insurer_code"
        f"    AND p.replica <> ${first + 5} AND p.seen_at > now() - make_interval(secs => ${first + 6})))"
        f"  THEN pg_notify(${first + 4}, inserted.insurer_code) END"
        " FROM inserted"
    )


_INSERT_ONE = _insert_statement(many=False)
_INSERT_MANY = _insert_statement(many=True)


# A claim's change, as the update statement takes it ($1..$10).
_CHANGED = (
    ("transaction_id", "text"),
    ("state", "smallint"),
    ("approved_amount_satang", "bigint"),
    ("decision_envelope", "text"),
    ("status_reason", "text"),
    ("decided_at", "timestamptz"),
    ("delivered_at", "timestamptz"),
    ("taken_at", "timestamptz"),
    ("touched", "bool"),
    ("row_version", "xid"),
)


def _update_statement(many: bool) -> str:
    """The statement storing claims' changes where each row is still the
    version read, with their events and notifications."""
    return (
        f"WITH input AS ({_rows_from_params(_CHANGED, many)}),"
        " updated AS ("
        "  UPDATE router.claims c SET state = i.state, approved_amount_satang = i.approved_amount_satang,"
        "  decision_envelope = i.decision_envelope, status_reason = i.status_reason,"
        "  decided_at = i.decided_at, delivered_at = i.delivered_at, taken_at = i.taken_at,"
        # Data minimisation: once no delivery can send the envelope again
        # (ENVELOPE_SPENT_STATES) the hub stops keeping it; its size and hash
        # stay (audit sizes, a resubmission's comparison).
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
        f"  CASE WHEN {announced('updated', 18, 19)} THEN pg_notify($17, updated.transaction_id) END,"
        f"  CASE WHEN {announced('updated', 18, 19)} THEN"
        "   pg_notify($16, updated.transaction_id || ' ' || updated.state) END"
        " FROM updated"
    )


_UPDATE_ONE = _update_statement(many=False)
_UPDATE_MANY = _update_statement(many=True)


def _params(columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The statement's first parameters, as _rows_from_params reads them: a lone
    row's values, or one array per column; each row a value by column name."""
    if len(rows) == 1:
        return [rows[0][name] for name, _ in columns]
    return [[row[name] for row in rows] for name, _ in columns]


def insert(claims: Sequence[Mapping[str, Any]]) -> tuple[str, list[Any]]:
    """The insert statement for `claims` (each a value per _INCOMING column) and
    its first parameters; the events' and notifications' follow them."""
    return (_INSERT_ONE if len(claims) == 1 else _INSERT_MANY), _params(_INCOMING, claims)


def update(changes: Sequence[Mapping[str, Any]]) -> tuple[str, list[Any]]:
    """The update statement for `changes` (each a value per _CHANGED column) and
    its first parameters; the rest follow them."""
    return (_UPDATE_ONE if len(changes) == 1 else _UPDATE_MANY), _params(_CHANGED, changes)
