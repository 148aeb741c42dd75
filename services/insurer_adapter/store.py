"""PostgreSQL storage of the adapter (schema `adapter`). The use cases see it
through the protocols in usecases.py."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from iclaim_hub.common.db import apply_migrations
from iclaim_hub.crypto.secretbox import SecretBox
from services.insurer_adapter.model import (
    Added,
    Delivery,
    InsurerKey,
    NewDelivery,
    PendingDecision,
    SealedDecision,
    StorageUnavailable,
)

SCHEMA = "adapter"
MIGRATIONS = Path(__file__).parent / "migrations"
_ENROL_LOCK = int.from_bytes(hashlib.sha256(b"adapter-enrolment").digest()[:8], "big", signed=True)
# The driver's ways of saying "no database", as opposed to a failed statement.
_UNREACHABLE = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, TimeoutError)


def key_context(insurer_code: str, kid: str) -> str:
    return f"adapter-insurer-key:{insurer_code}:{kid}"


@contextmanager
def _reachable() -> Iterator[None]:
    try:
        yield
    except _UNREACHABLE as exc:
        raise StorageUnavailable(type(exc).__name__) from exc


class PgAdapterStore:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox) -> None:
        self._pool = pool
        self._box = box

    async def migrate(self) -> None:
        await apply_migrations(self._pool, SCHEMA, MIGRATIONS)

    # --- keys --------------------------------------------------------------------
    async def current_keys(self) -> dict[str, InsurerKey]:
        with _reachable():
            rows = await self._pool.fetch(
                "SELECT DISTINCT ON (insurer_code) insurer_code, kid, public_jwk"
                " FROM adapter.insurer_keys ORDER BY insurer_code, created_at DESC, kid DESC"
            )
        return {
            r["insurer_code"]: InsurerKey(r["insurer_code"], r["kid"], json.loads(r["public_jwk"]))
            for r in rows
        }

    async def add_key(
        self, insurer_code: str, kid: str, private_jwk: dict[str, Any], public_jwk: dict[str, Any]
    ) -> None:
        sealed = self._box.seal(json.dumps(private_jwk).encode(), key_context(insurer_code, kid))
        await self._pool.execute(
            "INSERT INTO adapter.insurer_keys (insurer_code, kid, private_jwk_sealed, public_jwk)"
            " VALUES ($1, $2, $3, $4::jsonb)",
            insurer_code,
            kid,
            sealed,
            json.dumps(public_jwk),
        )

    async def private_jwk(self, insurer_code: str, kid: str) -> dict[str, Any] | None:
        row = await self._pool.fetchrow(
            "SELECT private_jwk_sealed FROM adapter.insurer_keys WHERE insurer_code = $1 AND kid = $2",
            insurer_code,
            kid,
        )
        if row is None:
            return None
        # A SecretBoxError (wrong master key, row copied elsewhere) propagates: it is
        # an operator problem, not a bad claim.
        data: dict[str, Any] = json.loads(
            self._box.open(row["private_jwk_sealed"], key_context(insurer_code, kid))
        )
        return data

    @asynccontextmanager
    async def enrolment_lock(self) -> AsyncIterator[None]:
        """Replicas starting together enrol each insurer once."""
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _ENROL_LOCK)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _ENROL_LOCK)

    # --- deliveries ----------------------------------------------------------------
    async def add_delivery(self, d: NewDelivery) -> Added:
        """Committed before returning. A redelivery of the same content only
        counts; one with other content changes nothing."""
        with _reachable():
            inserted = await self._pool.fetchval(
                "INSERT INTO adapter.deliveries (transaction_id, insurer_code, hospital_code,"
                " claim_ref, billed_amount_satang, envelope, envelope_sha256, submitted_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (transaction_id) DO NOTHING RETURNING true",
                d.transaction_id,
                d.insurer_code,
                d.hospital_code,
                d.claim_ref,
                d.billed_amount_satang,
                d.envelope,
                d.envelope_sha256,
                d.submitted_at,
            )
            if inserted:
                return Added.NEW
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
        return Added.DUPLICATE if counted else Added.CONFLICT

    async def lease_due_deliveries(self, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        rows = await self._pool.fetch(
            "WITH picked AS ("
            "  SELECT transaction_id FROM adapter.deliveries"
            "  WHERE status = 'received' AND due_at <= now()"
            "    AND (lease_until IS NULL OR lease_until < now())"
            "  ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " UPDATE adapter.deliveries d SET lease_owner = $1,"
            "  lease_until = now() + make_interval(secs => $3),"
            "  process_attempts = d.process_attempts + 1"
            " FROM picked WHERE d.transaction_id = picked.transaction_id"
            " RETURNING d.transaction_id, d.insurer_code, d.hospital_code, d.claim_ref,"
            "  d.billed_amount_satang, d.envelope, d.received_at, d.process_attempts",
            owner,
            limit,
            float(lease_s),
        )
        return [Delivery(**dict(r)) for r in rows]

    async def record_decisions(
        self, transaction_id: str, owner: str, decisions: Sequence[SealedDecision]
    ) -> bool:
        """Stores the decisions (the outbox) and closes the delivery, atomically and
        only while this owner holds the lease: a claim is decided at most once."""
        final = decisions[-1]
        async with self._pool.acquire() as conn, conn.transaction():
            received_at = await conn.fetchval(
                "UPDATE adapter.deliveries SET status = 'decided', decision_state = $3,"
                " approved_amount_satang = $4, reason_code = $5, decision_envelope = $6,"
                " decided_at = now(), lease_owner = NULL, lease_until = NULL, last_error = NULL"
                " WHERE transaction_id = $1 AND lease_owner = $2 AND status = 'received'"
                " RETURNING received_at",
                transaction_id,
                owner,
                final.state,
                final.approved_satang,
                final.reason_code,
                final.envelope,
            )
            if received_at is None:
                return False
            await conn.executemany(
                "INSERT INTO adapter.decisions (transaction_id, seq, state, approved_amount_satang,"
                " reason_code, decision_envelope, final, due_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::timestamptz + make_interval(secs => $9))",
                [
                    (
                        transaction_id,
                        d.seq,
                        d.state,
                        d.approved_satang,
                        d.reason_code,
                        d.envelope,
                        d.final,
                        received_at,
                        float(d.delay_s),
                    )
                    for d in decisions
                ],
            )
            return True

    async def postpone_delivery(self, transaction_id: str, owner: str, delay_s: float, error: str) -> None:
        await self._pool.execute(
            "UPDATE adapter.deliveries SET due_at = now() + make_interval(secs => $3),"
            " lease_owner = NULL, lease_until = NULL, last_error = $4"
            " WHERE transaction_id = $1 AND lease_owner = $2 AND status = 'received'",
            transaction_id,
            owner,
            float(delay_s),
            error,
        )

    # --- decision outbox -------------------------------------------------------------
    async def lease_due_decisions(self, owner: str, limit: int, lease_s: float) -> list[PendingDecision]:
        # A later decision (APPROVED after PENDING_REVIEW) waits for the earlier one.
        rows = await self._pool.fetch(
            "WITH picked AS ("
            "  SELECT x.transaction_id, x.seq FROM adapter.decisions x"
            "  WHERE x.status = 'pending' AND x.due_at <= now()"
            "    AND (x.lease_until IS NULL OR x.lease_until < now())"
            "    AND NOT EXISTS (SELECT 1 FROM adapter.decisions e"
            "      WHERE e.transaction_id = x.transaction_id AND e.seq < x.seq"
            "        AND e.status = 'pending')"
            "  ORDER BY x.due_at LIMIT $2 FOR UPDATE SKIP LOCKED),"
            " upd AS ("
            "  UPDATE adapter.decisions d SET lease_owner = $1,"
            "   lease_until = now() + make_interval(secs => $3), attempts = d.attempts + 1"
            "  FROM picked WHERE d.transaction_id = picked.transaction_id AND d.seq = picked.seq"
            "  RETURNING d.*)"
            " SELECT upd.transaction_id, upd.seq, dl.insurer_code, upd.state,"
            "  upd.approved_amount_satang AS approved_satang, upd.reason_code,"
            "  upd.decision_envelope AS envelope, upd.final, upd.attempts, dl.received_at"
            " FROM upd JOIN adapter.deliveries dl ON dl.transaction_id = upd.transaction_id",
            owner,
            limit,
            float(lease_s),
        )
        return [PendingDecision(**dict(r)) for r in rows]

    async def mark_sent(self, d: PendingDecision) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE adapter.decisions SET status = 'sent', sent_at = now(),"
                " lease_owner = NULL, lease_until = NULL, last_error = NULL"
                " WHERE transaction_id = $1 AND seq = $2 AND status = 'pending'",
                d.transaction_id,
                d.seq,
            )
            if d.final:
                await conn.execute(
                    "UPDATE adapter.deliveries SET status = 'notified'"
                    " WHERE transaction_id = $1 AND status = 'decided'",
                    d.transaction_id,
                )

    async def mark_retry(self, d: PendingDecision, owner: str, delay_s: float, error: str) -> None:
        await self._pool.execute(
            "UPDATE adapter.decisions SET due_at = now() + make_interval(secs => $4),"
            " lease_owner = NULL, lease_until = NULL, last_error = $5"
            " WHERE transaction_id = $1 AND seq = $2 AND lease_owner = $3 AND status = 'pending'",
            d.transaction_id,
            d.seq,
            owner,
            float(delay_s),
            error,
        )

    async def mark_failed(self, d: PendingDecision, error: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE adapter.decisions SET status = 'failed', lease_owner = NULL,"
                " lease_until = NULL, last_error = $3"
                " WHERE transaction_id = $1 AND seq = $2 AND status = 'pending'",
                d.transaction_id,
                d.seq,
                error,
            )
            if d.final:
                await conn.execute(
                    "UPDATE adapter.deliveries SET status = 'failed', last_error = $2"
                    " WHERE transaction_id = $1 AND status = 'decided'",
                    d.transaction_id,
                    error,
                )

    async def release_leases(self, owner: str) -> None:
        """On graceful stop, so another replica (or our restart) picks the work up at once."""
        await self._pool.execute(
            "UPDATE adapter.deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
            owner,
        )
        await self._pool.execute(
            "UPDATE adapter.decisions SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
            owner,
        )
