"""PostgreSQL storage of the adapter (schema `adapter`): the deliveries and, on
the same rows, the outbox of reports to the router. SQL only; the use cases
see it through the protocols in usecases.py, dispatcher.py and reporter.py.

A row has at most one activity at a time, guarded by lease_owner/lease_until
(taken with FOR UPDATE SKIP LOCKED): a push while it waits with no report
pending, or a report while one is pending. An expired lease (a crash) frees it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import asyncpg

from iclaim_hub.common.backfill import Backfill
from iclaim_hub.common.db import apply_migrations, is_connection_lost
from services.insurer_adapter.model import (
    Added,
    Backlog,
    Delivery,
    DeliveryView,
    Lease,
    NewDelivery,
    PendingReport,
    ReportKind,
    StorageUnavailable,
)

SCHEMA = "adapter"
MIGRATIONS = Path(__file__).parent / "migrations"

# Deliveries taken before migration 0004 (which made marking one taken blank
# its envelope) blanked the same way, a batch at a time (0005).
TAKEN_ENVELOPES = Backfill(
    SCHEMA,
    "adapter_taken_envelopes",
    "WITH batch AS ("
    " SELECT transaction_id FROM adapter.deliveries WHERE transaction_id > $1"
    " ORDER BY transaction_id LIMIT $2),"
    # Locked in key order; the purge, the one writer that takes many at once,
    # skips rows locked (purge_finished), so the two never wait on each other.
    " taken AS ("
    " SELECT d.transaction_id FROM adapter.deliveries d JOIN batch USING (transaction_id)"
    "  WHERE d.state = 'taken' AND d.envelope <> '' ORDER BY d.transaction_id FOR UPDATE OF d),"
    " blanked AS ("
    " UPDATE adapter.deliveries d SET envelope = ''"
    " FROM taken WHERE d.transaction_id = taken.transaction_id RETURNING 1)"
    " SELECT (SELECT max(transaction_id) FROM batch) AS last, (SELECT count(*) FROM batch) AS seen,"
    " (SELECT count(*) FROM blanked) AS changed",
)
EXPIRE_BATCH = 500

_DELIVERY_COLUMNS = (
    "d.transaction_id, d.insurer_code, d.hospital_code, d.claim_ref, d.billed_amount_satang,"
    " d.envelope, d.submitted_at, d.received_at, d.attempts, coalesce(d.traceparent, '') AS traceparent"
)


# A delivery's own columns, as the statements that store it after its push
# take them: arrays $1..$9 unnested into t.
_NEW_COLUMNS = (
    "transaction_id, insurer_code, hospital_code, claim_ref, billed_amount_satang, envelope,"
    " envelope_sha256, submitted_at, traceparent"
)
_NEW_VALUES = (
    "t.transaction_id, t.insurer_code, t.hospital_code, t.claim_ref, t.billed_amount_satang, t.envelope,"
    " t.envelope_sha256, t.submitted_at, nullif(t.traceparent, '')"
)
_NEW_ARRAYS = (
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[],"
    " $8::timestamptz[], $9::text[]"
)


_NEW_FIELDS = tuple(c.strip() for c in _NEW_COLUMNS.split(","))


def _new_arrays(news: Sequence[NewDelivery], *, envelope: bool = True) -> list[list[object]]:
    """The columns' arrays; without `envelope`, blank envelopes (a delivery
    stored taken: nothing sends it again)."""
    return [
        [getattr(d, c) for d in news] if envelope or c != "envelope" else [""] * len(news)
        for c in _NEW_FIELDS
    ]


@contextmanager
def _reachable() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if is_connection_lost(exc):
            raise StorageUnavailable(type(exc).__name__) from exc
        raise


class PgAdapterStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def migrate(self) -> None:
        await apply_migrations(self._pool, SCHEMA, MIGRATIONS)

    # --- intake ------------------------------------------------------------------
    async def add_delivery(
        self, d: NewDelivery, expiry_s: float, lease: Lease | None = None
    ) -> tuple[Added, Delivery | None]:
        """Committed before returning. A redelivery of the same content only
        counts; one with other content changes nothing. With `lease`, a new
        delivery is stored already leased for its first push attempt and
        returned as leased (None otherwise)."""
        with _reachable():
            row = await self._pool.fetchrow(
                "INSERT INTO adapter.deliveries AS d (transaction_id, insurer_code, hospital_code,"
                " claim_ref, billed_amount_satang, envelope, envelope_sha256, submitted_at, expires_at,"
                " lease_owner, lease_until, attempts, traceparent)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9),"
                " $10, CASE WHEN $10::text IS NULL THEN NULL ELSE now() + make_interval(secs => $11) END,"
                " CASE WHEN $10::text IS NULL THEN 0 ELSE 1 END, $12)"
                f" ON CONFLICT (transaction_id) DO NOTHING RETURNING {_DELIVERY_COLUMNS}",
                d.transaction_id,
                d.insurer_code,
                d.hospital_code,
                d.claim_ref,
                d.billed_amount_satang,
                d.envelope,
                d.envelope_sha256,
                d.submitted_at,
                float(expiry_s),
                None if lease is None else lease.owner,
                0.0 if lease is None else float(lease.seconds),
                d.traceparent or None,
            )
            if row is not None:
                return Added.NEW, None if lease is None else Delivery(**dict(row))
            counted = await self._pool.fetchval(
                "UPDATE adapter.deliveries SET delivery_count = delivery_count + 1,"
                " last_delivered_at = now()"
                " WHERE transaction_id = $1 AND insurer_code = $2 AND hospital_code = $3"
                " AND claim_ref = $4 AND billed_amount_satang = $5 AND envelope_sha256 = $6"
                " RETURNING true",
                d.transaction_id,
                d.insurer_code,
                d.hospital_code,
                d.claim_ref,
                d.billed_amount_satang,
                d.envelope_sha256,
            )
        return (Added.DUPLICATE if counted else Added.CONFLICT), None

    # --- pushes ------------------------------------------------------------------
    async def lease_due(
        self, insurer_code: str, owner: str, limit: int, lease_s: float, *, any_time: bool = False
    ) -> list[Delivery]:
        """Up to `limit` waiting deliveries of one insurer, due now (or the
        earliest ones whatever their due time: a circuit's probe)."""
        rows = await self._pool.fetch(
            "WITH picked AS ("
            "  SELECT transaction_id FROM adapter.deliveries"
            "  WHERE insurer_code = $1 AND state = 'waiting' AND report_state <> 'pending'"
            "    AND expires_at > now() AND ($5 OR next_attempt_at <= now())"
            "    AND (lease_until IS NULL OR lease_until < now())"
            "  ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
            " UPDATE adapter.deliveries d SET lease_owner = $2,"
            "  lease_until = now() + make_interval(secs => $4), attempts = d.attempts + 1"
            f" FROM picked WHERE d.transaction_id = picked.transaction_id RETURNING {_DELIVERY_COLUMNS}",
            insurer_code,
            owner,
            limit,
            float(lease_s),
            any_time,
        )
        return [Delivery(**dict(r)) for r in rows]

    async def mark_taken(self, transaction_id: str, taken_at: datetime, *, reported: bool) -> bool:
        """The insurer took it: a fact whoever holds the lease (a push that
        another worker also has in flight only repeats a taken claim). With
        `reported` the router already knows; else the report waits in the outbox."""
        return bool(
            await self._pool.fetchval(
                "UPDATE adapter.deliveries SET state = 'taken', taken_at = $2, last_error = NULL,"
                " lease_owner = NULL, lease_until = NULL, envelope = '',"
                " report_state = CASE WHEN $3 THEN 'done' ELSE 'pending' END,"
                " report_kind = 'taken', report_next_at = now(),"
                " report_attempts = CASE WHEN $3 THEN 1 ELSE 0 END"
                " WHERE transaction_id = $1 AND state = 'waiting' RETURNING true",
                transaction_id,
                taken_at,
                reported,
            )
        )

    async def mark_taken_many(self, taken: Sequence[tuple[str, datetime, bool]]) -> None:
        """mark_taken for many deliveries, (transaction_id, taken_at, reported)
        each, in one statement."""
        await self._pool.execute(
            "UPDATE adapter.deliveries d SET state = 'taken', taken_at = t.taken_at, last_error = NULL,"
            " lease_owner = NULL, lease_until = NULL, envelope = '',"
            " report_state = CASE WHEN t.reported THEN 'done' ELSE 'pending' END,"
            " report_kind = 'taken', report_next_at = now(),"
            " report_attempts = CASE WHEN t.reported THEN 1 ELSE 0 END"
            " FROM unnest($1::text[], $2::timestamptz[], $3::bool[]) AS t(transaction_id, taken_at, reported)"
            " WHERE d.transaction_id = t.transaction_id AND d.state = 'waiting'",
            [txid for txid, _, _ in taken],
            [at for _, at, _ in taken],
            [reported for _, _, reported in taken],
        )

    async def add_taken_many(
        self, taken: Sequence[tuple[NewDelivery, datetime, bool]], expiry_s: float
    ) -> None:
        """Deliveries pushed before they were stored (the router's lease covered
        them) and taken: written once, as taken, in one statement; (delivery,
        taken_at, reported) each. A row stored meanwhile (the router handed the
        claim off again) is marked taken instead."""
        news = [d for d, _, _ in taken]
        await self._pool.execute(
            f"INSERT INTO adapter.deliveries AS d ({_NEW_COLUMNS}, expires_at, attempts, state, taken_at,"
            "  report_state, report_kind, report_attempts)"
            f" SELECT {_NEW_VALUES}, now() + make_interval(secs => $10), 1, 'taken', t.taken_at,"
            "  CASE WHEN t.reported THEN 'done' ELSE 'pending' END, 'taken',"
            "  CASE WHEN t.reported THEN 1 ELSE 0 END"
            f" FROM unnest({_NEW_ARRAYS}, $11::timestamptz[], $12::bool[])"
            f"  AS t({_NEW_COLUMNS}, taken_at, reported)"
            " ON CONFLICT (transaction_id) DO UPDATE SET state = 'taken', taken_at = EXCLUDED.taken_at,"
            "  last_error = NULL, lease_owner = NULL, lease_until = NULL, envelope = '',"
            "  report_state = EXCLUDED.report_state,"
            "  report_kind = 'taken', report_next_at = now(), report_attempts = EXCLUDED.report_attempts"
            " WHERE d.state = 'waiting'",
            *_new_arrays(news, envelope=False),
            float(expiry_s),
            [at for _, at, _ in taken],
            [reported for _, _, reported in taken],
        )

    async def add_failed_attempt(
        self, d: NewDelivery, error: str, delay_s: float, expiry_s: float
    ) -> str | None:
        """A delivery pushed before it was stored and not taken: stored waiting,
        its first attempt counted, due again after `delay_s`. None when a row
        was stored meanwhile (it keeps its own schedule)."""
        state: str | None = await self._pool.fetchval(
            f"INSERT INTO adapter.deliveries ({_NEW_COLUMNS},"
            "  expires_at, attempts, last_error, next_attempt_at)"
            f" SELECT {_NEW_VALUES}, now() + make_interval(secs => $10), 1, $11,"
            "  now() + make_interval(secs => $12)"
            f" FROM unnest({_NEW_ARRAYS}) AS t({_NEW_COLUMNS})"
            " ON CONFLICT (transaction_id) DO NOTHING RETURNING state",
            *_new_arrays([d]),
            float(expiry_s),
            error,
            float(delay_s),
        )
        return state

    async def mark_failed_attempt(
        self, transaction_id: str, owner: str, error: str, delay_s: float
    ) -> str | None:
        """Not taken: due again after `delay_s`, or failed (report expired) when
        past its expiry. Returns the new state, None when the lease was lost."""
        state: str | None = await self._pool.fetchval(
            "UPDATE adapter.deliveries SET lease_owner = NULL, lease_until = NULL, last_error = $3,"
            " next_attempt_at = now() + make_interval(secs => $4),"
            " state = CASE WHEN expires_at <= now() THEN 'failed' ELSE 'waiting' END,"
            " report_state = CASE WHEN expires_at <= now() THEN 'pending' ELSE report_state END,"
            " report_kind = CASE WHEN expires_at <= now() THEN 'expired' ELSE report_kind END,"
            " report_attempts = CASE WHEN expires_at <= now() THEN 0 ELSE report_attempts END,"
            " report_next_at = CASE WHEN expires_at <= now() THEN now() ELSE report_next_at END"
            " WHERE transaction_id = $1 AND lease_owner = $2 AND state = 'waiting' RETURNING state",
            transaction_id,
            owner,
            error,
            float(delay_s),
        )
        return state

    async def release(self, transaction_ids: Sequence[str], owner: str) -> None:
        """Attempts cut short (shutdown): due again at once."""
        await self._pool.execute(
            "UPDATE adapter.deliveries SET lease_owner = NULL, lease_until = NULL"
            " WHERE transaction_id = ANY($1::text[]) AND lease_owner = $2",
            list(transaction_ids),
            owner,
        )

    async def release_leases(self, owner: str) -> None:
        """On graceful stop, so another replica (or our restart) picks the work up at once."""
        await self._pool.execute(
            "UPDATE adapter.deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
            owner,
        )

    async def make_due(self, insurer_code: str) -> None:
        """An insurer's circuit closed: its waiting deliveries need not sit out their backoff."""
        await self._pool.execute(
            "UPDATE adapter.deliveries SET next_attempt_at = now()"
            " WHERE insurer_code = $1 AND state = 'waiting' AND next_attempt_at > now()",
            insurer_code,
        )

    async def expire_due(self) -> list[str]:
        """Waiting deliveries past their expiry and not in flight become failed
        with an expired report pending; returns their insurer codes (one per row)."""
        rows = await self._pool.fetch(
            "WITH picked AS ("
            "  SELECT transaction_id FROM adapter.deliveries"
            "  WHERE state = 'waiting' AND expires_at <= now()"
            "    AND (lease_until IS NULL OR lease_until < now())"
            "  ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " UPDATE adapter.deliveries d SET state = 'failed', lease_owner = NULL, lease_until = NULL,"
            "  report_state = 'pending', report_kind = 'expired', report_next_at = now(),"
            "  report_attempts = 0"
            " FROM picked WHERE d.transaction_id = picked.transaction_id RETURNING d.insurer_code",
            EXPIRE_BATCH,
        )
        return [r["insurer_code"] for r in rows]

    async def backlog(self) -> list[Backlog]:
        rows = await self._pool.fetch(
            "SELECT insurer_code, count(*) AS waiting, min(received_at) AS oldest"
            " FROM adapter.deliveries WHERE state = 'waiting' GROUP BY insurer_code"
        )
        return [Backlog(r["insurer_code"], r["waiting"], r["oldest"]) for r in rows]

    # --- reports to the router ---------------------------------------------------
    async def lease_reports(self, owner: str, limit: int, lease_s: float) -> list[PendingReport]:
        rows = await self._pool.fetch(
            "WITH picked AS ("
            "  SELECT transaction_id FROM adapter.deliveries"
            "  WHERE report_state = 'pending' AND report_next_at <= now()"
            "    AND (lease_until IS NULL OR lease_until < now())"
            "  ORDER BY report_next_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " UPDATE adapter.deliveries d SET lease_owner = $1,"
            "  lease_until = now() + make_interval(secs => $3), report_attempts = d.report_attempts + 1"
            " FROM picked WHERE d.transaction_id = picked.transaction_id"
            " RETURNING d.transaction_id, d.insurer_code, d.report_kind, d.taken_at, d.report_attempts",
            owner,
            limit,
            float(lease_s),
        )
        return [
            PendingReport(
                r["transaction_id"],
                r["insurer_code"],
                ReportKind(r["report_kind"]),
                r["taken_at"],
                r["report_attempts"],
            )
            for r in rows
        ]

    async def mark_reported(self, report: PendingReport, owner: str) -> bool:
        return bool(
            await self._pool.fetchval(
                "UPDATE adapter.deliveries SET report_state = 'done', lease_owner = NULL,"
                " lease_until = NULL"
                " WHERE transaction_id = $1 AND lease_owner = $2 AND report_state = 'pending'"
                " AND report_kind = $3 RETURNING true",
                report.transaction_id,
                owner,
                report.kind.value,
            )
        )

    async def retry_report(self, report: PendingReport, owner: str, delay_s: float) -> None:
        await self._pool.execute(
            "UPDATE adapter.deliveries SET report_next_at = now() + make_interval(secs => $3),"
            " lease_owner = NULL, lease_until = NULL"
            " WHERE transaction_id = $1 AND lease_owner = $2 AND report_state = 'pending'",
            report.transaction_id,
            owner,
            float(delay_s),
        )

    # --- operators -----------------------------------------------------------------
    async def redrive(self, transaction_ids: Sequence[str], expiry_s: float) -> list[str]:
        """Failed deliveries wait again (attempts reset, a new expiry); the router
        is told first (a redriven report pending holds pushes back)."""
        with _reachable():
            rows = await self._pool.fetch(
                "UPDATE adapter.deliveries SET state = 'waiting', attempts = 0, last_error = NULL,"
                " next_attempt_at = now(), expires_at = now() + make_interval(secs => $2),"
                " lease_owner = NULL, lease_until = NULL, report_state = 'pending',"
                " report_kind = 'redriven', report_next_at = now(), report_attempts = 0"
                " WHERE transaction_id = ANY($1::text[]) AND state = 'failed'"
                "   AND (lease_until IS NULL OR lease_until < now())"
                " RETURNING transaction_id",
                list(transaction_ids),
                float(expiry_s),
            )
        return sorted(r["transaction_id"] for r in rows)

    async def purge_finished(self, keep_s: float, limit: int) -> int:
        """Removes at most `limit` deliveries taken and reported that the router
        has not handed off again for `keep_s`. The row is only the memory that
        makes a late redelivery a duplicate, not a second push; failed ones stay
        (an operator may still redrive them)."""
        status = await self._pool.execute(
            "DELETE FROM adapter.deliveries WHERE transaction_id IN ("
            " SELECT transaction_id FROM adapter.deliveries"
            " WHERE state = 'taken' AND report_state = 'done'"
            "  AND last_delivered_at < now() - make_interval(secs => $1) LIMIT $2 FOR UPDATE SKIP LOCKED)",
            keep_s,
            limit,
        )
        return int(status.split()[-1])

    async def list_deliveries(
        self, insurer_code: str, states: Sequence[str], limit: int
    ) -> list[DeliveryView]:
        with _reachable():
            rows = await self._pool.fetch(
                "SELECT transaction_id, insurer_code, state, attempts,"
                "  coalesce(last_error, '') AS last_error,"
                "  CASE WHEN state = 'waiting' THEN next_attempt_at END AS next_attempt_at,"
                "  received_at, expires_at"
                " FROM adapter.deliveries"
                " WHERE state = ANY($1::text[]) AND ($2 = '' OR insurer_code = $2)"
                " ORDER BY received_at, transaction_id LIMIT $3",
                list(states),
                insurer_code,
                limit,
            )
        return [DeliveryView(**dict(r)) for r in rows]
