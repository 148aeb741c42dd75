"""PostgreSQL store for billing (schema `billing`): the ledger, claims, invoices,
payments and the PAID outbox. Every write runs in one transaction; a refusal
raised inside rolls everything back, so bad input never changes the ledger."""
from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

import asyncpg

from iclaim_hub.common.db import apply_migrations
from iclaim.thai_baht_text import baht_text
from services.billing.domain import (
    DEFAULT_CREDIT_DAYS,
    OPEN_STATUSES,
    ClaimDue,
    Conflict,
    Decision,
    Finding,
    Invalid,
    JournalDraft,
    LineDraft,
    Movement,
    NotFoundErr,
    OutstandingItem,
    PaymentInput,
    Precondition,
    Reconciliation,
    StatementOut,
    aging_of,
    approval_journal,
    bangkok_date,
    build_statement,
    check_period,
    day_start,
    due_date_for,
    month_bounds,
    payment_from_canonical,
    plan_invoice,
    plan_payment,
    sha256_json,
    shown_status,
    stored_status,
    validate_payment,
)
from services.billing.views import InvoiceView, MetricsSnapshot, PaymentResult, PaymentView

SCHEMA = "billing"
MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")
_RETRYABLE = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.UniqueViolationError,
)


class BillingStore(Protocol):
    async def record_decision(self, d: Decision) -> None: ...
    async def create_invoice(
        self, hospital: str, insurer: str, ref: str, tx_ids: Sequence[str], now: datetime
    ) -> InvoiceView: ...
    async def get_invoice(self, invoice_id: str, role: str, code: str, today: date) -> InvoiceView: ...
    async def list_invoices(
        self, role: str, code: str, counterparty: str, status: str | None,
        page_size: int, page_token: str, today: date,
    ) -> tuple[list[InvoiceView], str]: ...
    async def acknowledge_invoice(self, invoice_id: str, insurer: str, now: datetime) -> InvoiceView: ...
    async def post_payment(self, p: PaymentInput, now: datetime) -> PaymentResult: ...
    async def statement(self, hospital: str, insurer: str, start: date, end: date) -> StatementOut: ...


def _page_token(submitted_at: datetime, invoice_id: str) -> str:
    raw = json.dumps([submitted_at.isoformat(), invoice_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        ts, iid = json.loads(raw)
        return datetime.fromisoformat(ts), str(iid)
    except (ValueError, TypeError):
        raise Invalid("page_token is not one this service issued", "INVALID_PAGE_TOKEN") from None


class PgBillingStore:
    def __init__(self, pool: asyncpg.Pool, *, default_credit_days: int = DEFAULT_CREDIT_DAYS):
        self._pool = pool
        self._default_days = default_credit_days

    async def migrate(self) -> None:
        await apply_migrations(self._pool, SCHEMA, MIGRATIONS)

    async def _tx(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Runs fn in a transaction, retrying lost races (deadlock, unique key
        taken by a concurrent twin); the retry sees the twin's committed result."""
        for attempt in range(5):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    return await fn(conn)
            except _RETRYABLE:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    # --- ledger ------------------------------------------------------------------
    async def _accounts(
        self, conn: asyncpg.Connection, hospital: str, insurer: str, kinds: Sequence[str]
    ) -> dict[str, int]:
        kinds = sorted(set(kinds))
        await conn.execute(
            "INSERT INTO billing.accounts (hospital_code, insurer_code, kind)"
            " SELECT $1, $2, k FROM unnest($3::text[]) k ORDER BY k ON CONFLICT DO NOTHING",
            hospital, insurer, kinds,
        )
        rows = await conn.fetch(
            "SELECT id, kind FROM billing.accounts"
            " WHERE hospital_code = $1 AND insurer_code = $2 AND kind = ANY($3::text[])",
            hospital, insurer, kinds,
        )
        return {r["kind"]: r["id"] for r in rows}

    async def _post(self, conn: asyncpg.Connection, j: JournalDraft, reverses: int | None = None
                    ) -> int:
        """Posts a balanced journal once per idempotency key; the same key with
        different content is a Conflict."""
        j.check_balanced()
        digest = j.content_sha256
        jid = await conn.fetchval(
            "INSERT INTO billing.journals (idem_key, content_sha256, kind, hospital_code,"
            " insurer_code, reference, description, effective_at, reverses)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT (idem_key) DO NOTHING RETURNING id",
            j.idem_key, digest, j.kind, j.hospital_code, j.insurer_code, j.reference,
            j.description, j.effective_at, reverses,
        )
        if jid is None:
            row = await conn.fetchrow(
                "SELECT id, content_sha256 FROM billing.journals WHERE idem_key = $1", j.idem_key
            )
            assert row is not None
            if row["content_sha256"] != digest:
                raise Conflict(f"journal {j.idem_key} already posted with different content",
                               "JOURNAL_CONFLICT")
            return int(row["id"])
        ids = await self._accounts(conn, j.hospital_code, j.insurer_code,
                                   [ln.account_kind for ln in j.lines])
        lines = sorted(j.lines, key=lambda ln: ids[ln.account_kind])
        await conn.execute(
            "INSERT INTO billing.journal_lines (journal_id, account_id, transaction_id,"
            " amount_satang) SELECT $1, a, t, m FROM unnest($2::bigint[], $3::text[],"
            " $4::bigint[]) AS u(a, t, m)",
            jid,
            [ids[ln.account_kind] for ln in lines],
            [ln.transaction_id for ln in lines],
            [ln.amount for ln in lines],
        )
        return int(jid)

    async def reverse_journal(self, journal_id: int, idem_key: str, effective_at: datetime) -> int:
        """Corrects a posted journal by posting its mirror image (never by editing it)."""

        async def run(conn: asyncpg.Connection) -> int:
            j = await conn.fetchrow("SELECT * FROM billing.journals WHERE id = $1", journal_id)
            if j is None:
                raise NotFoundErr("no such journal", "JOURNAL_NOT_FOUND")
            rows = await conn.fetch(
                "SELECT a.kind, l.transaction_id, l.amount_satang FROM billing.journal_lines l"
                " JOIN billing.accounts a ON a.id = l.account_id WHERE l.journal_id = $1"
                " ORDER BY l.id",
                journal_id,
            )
            draft = JournalDraft(
                idem_key=idem_key, kind="REVERSAL", hospital_code=j["hospital_code"],
                insurer_code=j["insurer_code"], reference=j["reference"],
                description=f"reversal of journal {journal_id}", effective_at=effective_at,
                lines=tuple(LineDraft(r["kind"], -r["amount_satang"], r["transaction_id"])
                            for r in rows),
            )
            new_id = await self._post(conn, draft, reverses=journal_id)
            # Keep the claims' cached dues in step with the receivable lines.
            deltas: dict[str, int] = {}
            for r in rows:
                if r["kind"] == "receivable" and r["transaction_id"]:
                    deltas[r["transaction_id"]] = (deltas.get(r["transaction_id"], 0)
                                                   - r["amount_satang"])
            column = "approved_satang" if j["kind"] == "APPROVAL" else "settled_satang"
            sign = 1 if j["kind"] == "APPROVAL" else -1
            try:
                await conn.execute(
                    f"UPDATE billing.claims c SET {column} = c.{column} + $3 * u.d"
                    " FROM unnest($1::text[], $2::bigint[]) AS u(t, d)"
                    " WHERE c.transaction_id = u.t",
                    list(deltas), list(deltas.values()), sign,
                )
            except asyncpg.exceptions.CheckViolationError:
                raise Precondition("reversal would leave a claim settled beyond approval",
                                   "REVERSAL_NOT_ALLOWED") from None
            return new_id

        return await self._tx(run)

    # --- decisions -----------------------------------------------------------------
    async def record_decision(self, d: Decision) -> None:
        async def run(conn: asyncpg.Connection) -> None:
            inserted = await conn.fetchval(
                "INSERT INTO billing.claims (transaction_id, hospital_code, insurer_code, state,"
                " approved_satang, decided_at) VALUES ($1,$2,$3,$4,$5,$6)"
                " ON CONFLICT (transaction_id) DO NOTHING RETURNING transaction_id",
                d.transaction_id, d.hospital_code, d.insurer_code, d.state,
                d.approved_satang, d.decided_at,
            )
            if inserted is None:
                row = await conn.fetchrow(
                    "SELECT * FROM billing.claims WHERE transaction_id = $1", d.transaction_id
                )
                assert row is not None
                have = Decision(row["transaction_id"], row["hospital_code"], row["insurer_code"],
                                row["state"], row["approved_satang"], row["decided_at"])
                if not have.same_as(d):
                    raise Precondition(
                        f"claim {d.transaction_id} was already decided differently",
                        "DECISION_CONFLICT",
                        {"transaction_id": d.transaction_id},
                    )
                return
            journal = approval_journal(d)
            if journal is not None:
                await self._post(conn, journal)

        await self._tx(run)

    # --- claims helpers ---------------------------------------------------------------
    async def _lock_claims(self, conn: asyncpg.Connection, tx_ids: Sequence[str]
                           ) -> dict[str, ClaimDue]:
        rows = await conn.fetch(
            "SELECT * FROM billing.claims WHERE transaction_id = ANY($1::text[])"
            " ORDER BY transaction_id FOR UPDATE",
            sorted(set(tx_ids)),
        )
        return {
            r["transaction_id"]: ClaimDue(r["transaction_id"], r["hospital_code"],
                                          r["insurer_code"], r["state"], r["approved_satang"],
                                          r["settled_satang"])
            for r in rows
        }

    # --- invoices --------------------------------------------------------------------
    async def _invoice_view(self, conn: asyncpg.Connection, invoice_id: str, today: date
                            ) -> InvoiceView:
        row = await conn.fetchrow(
            "SELECT i.*, coalesce(sum(c.settled_satang), 0)::bigint AS paid,"
            " array_agg(ic.transaction_id ORDER BY ic.position) AS txs"
            " FROM billing.invoices i JOIN billing.invoice_claims ic USING (invoice_id)"
            " JOIN billing.claims c ON c.transaction_id = ic.transaction_id"
            " WHERE i.invoice_id = $1 GROUP BY i.invoice_id",
            invoice_id,
        )
        assert row is not None
        return self._to_view(row, today)

    @staticmethod
    def _to_view(row: asyncpg.Record, today: date) -> InvoiceView:
        return InvoiceView(
            invoice_id=row["invoice_id"],
            invoice_ref=row["invoice_ref"],
            hospital_code=row["hospital_code"],
            insurer_code=row["insurer_code"],
            transaction_ids=tuple(row["txs"]),
            total_satang=row["total_satang"],
            paid_satang=min(int(row["paid"]), row["total_satang"]),
            status=shown_status(row["status"], row["due_date"], today),
            submitted_at=row["submitted_at"],
            acknowledged_at=row["acknowledged_at"],
            due_date=row["due_date"],
        )

    async def create_invoice(
        self, hospital: str, insurer: str, ref: str, tx_ids: Sequence[str], now: datetime
    ) -> InvoiceView:
        digest = sha256_json({"insurer": insurer, "transaction_ids": sorted(tx_ids)})
        today = bangkok_date(now)

        async def run(conn: asyncpg.Connection) -> InvoiceView:
            have = await conn.fetchrow(
                "SELECT invoice_id, request_sha256 FROM billing.invoices"
                " WHERE hospital_code = $1 AND invoice_ref = $2",
                hospital, ref,
            )
            if have is not None:
                if have["request_sha256"] != digest:
                    raise Conflict(f"invoice_ref {ref} was used for a different invoice",
                                   "INVOICE_REF_REUSED", {"invoice_id": have["invoice_id"]})
                return await self._invoice_view(conn, have["invoice_id"], today)
            claims = await self._lock_claims(conn, tx_ids)
            open_rows = await conn.fetch(
                "SELECT transaction_id, invoice_id FROM billing.invoice_claims"
                " WHERE open AND transaction_id = ANY($1::text[])",
                list(tx_ids),
            )
            total = plan_invoice(hospital, insurer, tx_ids, claims,
                                 {r["transaction_id"]: r["invoice_id"] for r in open_rows})
            paid = sum(claims[t].settled_satang for t in tx_ids)
            invoice_id = "inv_" + uuid.uuid4().hex
            await conn.execute(
                "INSERT INTO billing.invoices (invoice_id, invoice_ref, hospital_code,"
                " insurer_code, request_sha256, total_satang, status, submitted_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                invoice_id, ref, hospital, insurer, digest, total,
                stored_status(total, paid, False), now,
            )
            await conn.execute(
                "INSERT INTO billing.invoice_claims (invoice_id, transaction_id, position)"
                " SELECT $1, t, o FROM unnest($2::text[]) WITH ORDINALITY AS u(t, o)",
                invoice_id, list(tx_ids),
            )
            return await self._invoice_view(conn, invoice_id, today)

        return await self._tx(run)

    async def get_invoice(self, invoice_id: str, role: str, code: str, today: date
                          ) -> InvoiceView:
        async with self._pool.acquire() as conn:
            owner = await conn.fetchrow(
                "SELECT hospital_code, insurer_code FROM billing.invoices WHERE invoice_id = $1",
                invoice_id,
            )
            if owner is None or owner[f"{role}_code"] != code:
                raise NotFoundErr("no such invoice", "INVOICE_NOT_FOUND")
            return await self._invoice_view(conn, invoice_id, today)

    async def list_invoices(
        self, role: str, code: str, counterparty: str, status: str | None,
        page_size: int, page_token: str, today: date,
    ) -> tuple[list[InvoiceView], str]:
        after = _parse_token(page_token)
        other = "insurer" if role == "hospital" else "hospital"
        # OVERDUE is derived from the due date; the other statuses exclude it.
        rows = await self._pool.fetch(
            f"SELECT i.*, coalesce(sum(c.settled_satang), 0)::bigint AS paid,"
            f" array_agg(ic.transaction_id ORDER BY ic.position) AS txs"
            f" FROM billing.invoices i JOIN billing.invoice_claims ic USING (invoice_id)"
            f" JOIN billing.claims c ON c.transaction_id = ic.transaction_id"
            f" WHERE i.{role}_code = $1 AND ($2 = '' OR i.{other}_code = $2)"
            f"  AND ($3::text IS NULL"
            f"   OR ($3 = 'OVERDUE' AND i.status = ANY($7::text[])"
            f"       AND coalesce(i.due_date < $4, false))"
            f"   OR (i.status = $3 AND NOT (i.status = ANY($7::text[])"
            f"       AND coalesce(i.due_date < $4, false))))"
            f"  AND ($5::timestamptz IS NULL OR (i.submitted_at, i.invoice_id) > ($5, $6))"
            f" GROUP BY i.invoice_id ORDER BY i.submitted_at, i.invoice_id LIMIT $8",
            code, counterparty, status, today,
            after[0] if after else None, after[1] if after else "",
            sorted(OPEN_STATUSES), page_size + 1,
        )
        views = [self._to_view(r, today) for r in rows[:page_size]]
        token = ""
        if len(rows) > page_size:
            last = rows[page_size - 1]
            token = _page_token(last["submitted_at"], last["invoice_id"])
        return views, token

    async def credit_days(self, conn: asyncpg.Connection, hospital: str, insurer: str) -> int:
        days = await conn.fetchval(
            "SELECT days FROM billing.credit_terms WHERE hospital_code = $1 AND insurer_code = $2",
            hospital, insurer,
        )
        return self._default_days if days is None else int(days)

    async def set_credit_term(self, hospital: str, insurer: str, days: int) -> None:
        await self._pool.execute(
            "INSERT INTO billing.credit_terms VALUES ($1, $2, $3)"
            " ON CONFLICT (hospital_code, insurer_code) DO UPDATE SET days = EXCLUDED.days",
            hospital, insurer, days,
        )

    async def acknowledge_invoice(self, invoice_id: str, insurer: str, now: datetime
                                  ) -> InvoiceView:
        async def run(conn: asyncpg.Connection) -> InvoiceView:
            row = await conn.fetchrow(
                "SELECT * FROM billing.invoices WHERE invoice_id = $1 FOR UPDATE", invoice_id
            )
            if row is None or row["insurer_code"] != insurer:
                raise NotFoundErr("no such invoice", "INVOICE_NOT_FOUND")
            if row["status"] == "VOID":
                raise Precondition("invoice is void", "INVOICE_VOID")
            if row["acknowledged_at"] is None:
                days = await self.credit_days(conn, row["hospital_code"], insurer)
                status = "ACKNOWLEDGED" if row["status"] == "SUBMITTED" else row["status"]
                await conn.execute(
                    "UPDATE billing.invoices SET acknowledged_at = $2, due_date = $3, status = $4"
                    " WHERE invoice_id = $1",
                    invoice_id, now, due_date_for(now, days), status,
                )
            return await self._invoice_view(conn, invoice_id, bangkok_date(now))

        return await self._tx(run)

    # --- payments ----------------------------------------------------------------------
    async def _payment_view(self, row: asyncpg.Record) -> PaymentView:
        body = json.loads(row["body"]) if isinstance(row["body"], str) else row["body"]
        return PaymentView(
            payment_id=row["payment_id"],
            payment=payment_from_canonical(row["insurer_code"], body),
            hospital_codes=tuple(row["hospital_codes"]),
            recorded_at=row["recorded_at"],
        )

    async def _existing_payment(self, conn: asyncpg.Connection, p: PaymentInput
                                ) -> PaymentResult | None:
        row = await conn.fetchrow(
            "SELECT * FROM billing.payments WHERE insurer_code = $1 AND trace_no = $2",
            p.insurer_code, p.trace_no,
        )
        if row is None:
            return None
        if row["request_sha256"] != p.content_sha256:
            raise Conflict(f"trace_no {p.trace_no} was used for a different payment",
                           "TRACE_NO_REUSED", {"payment_id": row["payment_id"]})
        return PaymentResult(await self._payment_view(row), replay=True)

    async def post_payment(self, p: PaymentInput, now: datetime) -> PaymentResult:
        validate_payment(p, now)

        async def run(conn: asyncpg.Connection) -> PaymentResult:
            existing = await self._existing_payment(conn, p)
            if existing is not None:
                return existing
            claims = await self._lock_claims(conn, [ln.transaction_id for ln in p.lines])
            plb_hospitals = {a.hospital_code for a in p.provider_adjustments if a.hospital_code}
            hospitals = sorted({c.hospital_code for c in claims.values()} | plb_hospitals)
            held_rows = await conn.fetch(
                "SELECT hospital_code, balance_satang FROM billing.accounts"
                " WHERE insurer_code = $1 AND kind = 'overpayment'"
                " AND hospital_code = ANY($2::text[]) ORDER BY id FOR UPDATE",
                p.insurer_code, hospitals,
            )
            held = {r["hospital_code"]: -int(r["balance_satang"]) for r in held_rows}
            plan = plan_payment(p, claims, held)
            payment_id = "pay_" + uuid.uuid4().hex
            inserted = await conn.fetchval(
                "INSERT INTO billing.payments (payment_id, insurer_code, trace_no, request_sha256,"
                " paid_at, total_satang, body, hospital_codes, recorded_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7::jsonb,$8,$9)"
                " ON CONFLICT (insurer_code, trace_no) DO NOTHING RETURNING payment_id",
                payment_id, p.insurer_code, p.trace_no, p.content_sha256, p.paid_at, p.total,
                json.dumps(p.canonical(), ensure_ascii=False), plan.hospitals, now,
            )
            if inserted is None:  # a concurrent twin committed first
                again = await self._existing_payment(conn, p)
                assert again is not None
                return again
            for j in plan.journals:
                await self._post(conn, j)
            if plan.settled:
                await conn.execute(
                    "UPDATE billing.claims c SET settled_satang = c.settled_satang + u.s"
                    " FROM unnest($1::text[], $2::bigint[]) AS u(t, s)"
                    " WHERE c.transaction_id = u.t",
                    list(plan.settled), list(plan.settled.values()),
                )
            if plan.now_paid:
                await conn.execute(
                    "INSERT INTO billing.paid_outbox (transaction_id)"
                    " SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                    plan.now_paid,
                )
            paid_invoices = await self._refresh_invoices(conn, list(plan.settled), p.paid_at)
            row = await conn.fetchrow(
                "SELECT * FROM billing.payments WHERE payment_id = $1", payment_id
            )
            return PaymentResult(await self._payment_view(row), invoices_paid=paid_invoices)

        return await self._tx(run)

    async def _refresh_invoices(
        self, conn: asyncpg.Connection, tx_ids: Sequence[str], paid_at: datetime
    ) -> tuple[tuple[str, float], ...]:
        """Moves the open invoices holding these claims to PARTIALLY_PAID / PAID."""
        if not tx_ids:
            return ()
        rows = await conn.fetch(
            "SELECT i.invoice_id, i.insurer_code, i.total_satang, i.status, i.submitted_at,"
            " i.acknowledged_at IS NOT NULL AS acked,"
            " (SELECT coalesce(sum(c.settled_satang), 0) FROM billing.invoice_claims x"
            "   JOIN billing.claims c USING (transaction_id) WHERE x.invoice_id = i.invoice_id)"
            "   ::bigint AS paid"
            " FROM billing.invoices i WHERE i.invoice_id IN (SELECT invoice_id"
            "   FROM billing.invoice_claims WHERE open AND transaction_id = ANY($1::text[]))"
            " ORDER BY i.invoice_id FOR UPDATE OF i",
            list(tx_ids),
        )
        done: list[tuple[str, float]] = []
        for r in rows:
            status = stored_status(r["total_satang"], r["paid"], r["acked"])
            if status == r["status"]:
                continue
            if status == "PAID":
                await conn.execute(
                    "UPDATE billing.invoices SET status = 'PAID', paid_at = $2"
                    " WHERE invoice_id = $1", r["invoice_id"], paid_at,
                )
                await conn.execute(
                    "UPDATE billing.invoice_claims SET open = false WHERE invoice_id = $1",
                    r["invoice_id"],
                )
                days = max(0.0, (paid_at - r["submitted_at"]).total_seconds() / 86400)
                done.append((r["insurer_code"], days))
            else:
                await conn.execute(
                    "UPDATE billing.invoices SET status = $2 WHERE invoice_id = $1",
                    r["invoice_id"], status,
                )
        return tuple(done)

    # --- statements ------------------------------------------------------------------
    async def statement(self, hospital: str, insurer: str, start: date, end: date
                        ) -> StatementOut:
        check_period(start, end)
        s, e = day_start(start), day_start(end + timedelta(days=1))
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            owed = (
                "SELECT coalesce(sum(l.amount_satang), 0)::numeric FROM billing.journal_lines l"
                " JOIN billing.journals j ON j.id = l.journal_id"
                " JOIN billing.accounts a ON a.id = l.account_id"
                " WHERE j.hospital_code = $1 AND j.insurer_code = $2"
                " AND a.kind IN ('receivable', 'overpayment') AND j.effective_at < $3"
            )
            opening = int(await conn.fetchval(owed, hospital, insurer, s))
            journals = await conn.fetch(
                "SELECT j.id, j.kind, j.reference, j.description, j.effective_at,"
                " coalesce(sum(l.amount_satang) FILTER (WHERE a.kind IN"
                "   ('receivable', 'overpayment')), 0)::bigint AS effect,"
                " coalesce(-sum(l.amount_satang) FILTER (WHERE a.kind LIKE 'adj\\_%'), 0)::bigint"
                "   AS adj"
                " FROM billing.journals j JOIN billing.journal_lines l ON l.journal_id = j.id"
                " JOIN billing.accounts a ON a.id = l.account_id"
                " WHERE j.hospital_code = $1 AND j.insurer_code = $2"
                " AND j.effective_at >= $3 AND j.effective_at < $4"
                " GROUP BY j.id ORDER BY j.effective_at, j.id",
                hospital, insurer, s, e,
            )
            invoices = await conn.fetch(
                "SELECT invoice_ref, total_satang, submitted_at,"
                " (SELECT count(*) FROM billing.invoice_claims x"
                "   WHERE x.invoice_id = i.invoice_id) AS n"
                " FROM billing.invoices i WHERE hospital_code = $1 AND insurer_code = $2"
                " AND submitted_at >= $3 AND submitted_at < $4 ORDER BY submitted_at, invoice_id",
                hospital, insurer, s, e,
            )
            claim_rows = await conn.fetch(
                "SELECT l.transaction_id, sum(l.amount_satang)::bigint AS due,"
                " (SELECT i.due_date FROM billing.invoice_claims x"
                "   JOIN billing.invoices i USING (invoice_id)"
                "   WHERE x.transaction_id = l.transaction_id AND i.submitted_at < $3"
                "   AND i.acknowledged_at < $3 ORDER BY i.submitted_at DESC LIMIT 1) AS due_date"
                " FROM billing.journal_lines l JOIN billing.journals j ON j.id = l.journal_id"
                " JOIN billing.accounts a ON a.id = l.account_id"
                " WHERE j.hospital_code = $1 AND j.insurer_code = $2 AND a.kind = 'receivable'"
                " AND j.effective_at < $3 GROUP BY l.transaction_id"
                " HAVING sum(l.amount_satang) <> 0",
                hospital, insurer, e,
            )
            overpayment = int(await conn.fetchval(
                owed.replace("('receivable', 'overpayment')", "('overpayment')"),
                hospital, insurer, e,
            ))
        movements: list[Movement] = []
        for j in journals:
            kind = {"APPROVAL": "APPROVAL", "PAYMENT": "PAYMENT"}.get(j["kind"], "ADJUSTMENT")
            effect, adj = int(j["effect"]), int(j["adj"])
            if kind == "PAYMENT" and adj:
                movements.append(Movement(j["effective_at"], "PAYMENT", j["reference"],
                                          j["description"], effect + adj))
                movements.append(Movement(j["effective_at"], "ADJUSTMENT", j["reference"],
                                          f"claim adjustments on {j['description']}", -adj))
            else:
                movements.append(Movement(j["effective_at"], kind, j["reference"],
                                          j["description"], effect))
        for inv in invoices:
            movements.append(Movement(
                inv["submitted_at"], "INVOICE", inv["invoice_ref"],
                f"invoice {inv['invoice_ref']}: {inv['n']} claims,"
                f" {inv['total_satang'] // 100:,}.{inv['total_satang'] % 100:02d} THB"
                " (already owed from approval)",
                0,
            ))
        items = [OutstandingItem(int(r["due"]), r["due_date"]) for r in claim_rows]
        aging = aging_of(items, overpayment, end)
        out = build_statement(hospital, insurer, start, end, opening, movements, aging, "")
        return StatementOut(out.hospital_code, out.insurer_code, start, end, out.opening,
                            out.closing, out.lines, out.aging, baht_text(out.closing))

    # --- PAID outbox ----------------------------------------------------------------
    async def due_outbox(self, limit: int = 50) -> list[tuple[str, int]]:
        """Claims whose PAID notice is due now, claimed for a short lease."""
        rows = await self._pool.fetch(
            "UPDATE billing.paid_outbox o SET next_attempt_at = now() + interval '30 seconds'"
            " WHERE transaction_id IN (SELECT transaction_id FROM billing.paid_outbox"
            "  WHERE delivered_at IS NULL AND next_attempt_at <= now()"
            "  ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " RETURNING transaction_id, attempts",
            limit,
        )
        return [(r["transaction_id"], r["attempts"]) for r in rows]

    async def outbox_delivered(self, transaction_id: str) -> None:
        await self._pool.execute(
            "UPDATE billing.paid_outbox SET delivered_at = now(), attempts = attempts + 1,"
            " last_error = NULL WHERE transaction_id = $1", transaction_id,
        )

    async def outbox_failed(self, transaction_id: str, error: str, retry_in_s: float) -> None:
        await self._pool.execute(
            "UPDATE billing.paid_outbox SET attempts = attempts + 1, last_error = $2,"
            " next_attempt_at = now() + make_interval(secs => $3) WHERE transaction_id = $1",
            transaction_id, error[:500], retry_in_s,
        )

    # --- metrics and reconciliation ------------------------------------------------------
    async def metrics_snapshot(self, today: date) -> MetricsSnapshot:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT status, due_date, insurer_code, total_satang,"
                " (SELECT coalesce(sum(c.settled_satang), 0) FROM billing.invoice_claims x"
                "   JOIN billing.claims c USING (transaction_id) WHERE x.invoice_id = i.invoice_id)"
                "   ::bigint AS paid FROM billing.invoices i"
            )
            owed = await conn.fetch(
                "SELECT insurer_code, sum(balance_satang)::bigint AS owed FROM billing.accounts"
                " WHERE kind IN ('receivable', 'overpayment') GROUP BY insurer_code"
            )
        by_status: dict[str, int] = {}
        overdue: dict[str, int] = {}
        for r in rows:
            st = shown_status(r["status"], r["due_date"], today)
            by_status[st] = by_status.get(st, 0) + 1
            if st == "OVERDUE":
                overdue[r["insurer_code"]] = (overdue.get(r["insurer_code"], 0)
                                              + r["total_satang"] - r["paid"])
        return MetricsSnapshot(by_status, {r["insurer_code"]: int(r["owed"]) for r in owed},
                               overdue)

    async def reconcile(self, month: str) -> Reconciliation:
        first, last = month_bounds(month)
        s, e = day_start(first), day_start(last + timedelta(days=1))
        rec = Reconciliation(month)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            unmatched = await conn.fetch(
                "SELECT j.hospital_code, j.insurer_code, j.reference, l.transaction_id,"
                " -l.amount_satang AS amount FROM billing.journal_lines l"
                " JOIN billing.journals j ON j.id = l.journal_id"
                " JOIN billing.accounts a ON a.id = l.account_id"
                " WHERE j.kind = 'PAYMENT' AND a.kind = 'overpayment'"
                " AND j.effective_at >= $1 AND j.effective_at < $2 ORDER BY j.id, l.id",
                s, e,
            )
            for r in unmatched:
                rec.findings.append(Finding(
                    "UNMATCHED_PAYMENT_LINE", r["hospital_code"], r["insurer_code"],
                    r["reference"], int(r["amount"]),
                    f"line for {r['transaction_id']} exceeds what was due on it",
                ))
            uninvoiced = await conn.fetch(
                "SELECT DISTINCT j.hospital_code, j.insurer_code, j.reference, l.transaction_id"
                " FROM billing.journal_lines l JOIN billing.journals j ON j.id = l.journal_id"
                " WHERE j.kind = 'PAYMENT' AND l.transaction_id IS NOT NULL"
                " AND j.effective_at >= $1 AND j.effective_at < $2 AND NOT EXISTS (SELECT 1"
                "  FROM billing.invoice_claims x JOIN billing.invoices i USING (invoice_id)"
                "  WHERE x.transaction_id = l.transaction_id AND i.submitted_at <= j.recorded_at)"
                " ORDER BY 1, 2, 3, 4",
                s, e,
            )
            for r in uninvoiced:
                rec.findings.append(Finding(
                    "UNMATCHED_PAYMENT_LINE", r["hospital_code"], r["insurer_code"],
                    r["reference"], 0, f"line for {r['transaction_id']} names no invoiced claim",
                ))
            past_due = await conn.fetch(
                "SELECT c.hospital_code, c.insurer_code, c.transaction_id, i.invoice_ref,"
                " i.due_date, c.approved_satang - c.settled_satang AS due"
                " FROM billing.claims c JOIN billing.invoice_claims x USING (transaction_id)"
                " JOIN billing.invoices i USING (invoice_id)"
                " WHERE x.open AND i.due_date < $1 AND c.approved_satang > c.settled_satang"
                " ORDER BY i.due_date, c.transaction_id",
                last + timedelta(days=1),
            )
            for r in past_due:
                rec.findings.append(Finding(
                    "APPROVED_UNPAID_PAST_DUE", r["hospital_code"], r["insurer_code"],
                    r["transaction_id"], int(r["due"]),
                    f"invoice {r['invoice_ref']} was due {r['due_date'].isoformat()}",
                ))
            over = await conn.fetch(
                "SELECT hospital_code, insurer_code, -balance_satang::bigint AS held"
                " FROM billing.accounts WHERE kind = 'overpayment' AND balance_satang <> 0"
                " ORDER BY 1, 2"
            )
            for r in over:
                rec.findings.append(Finding(
                    "OVERPAYMENT", r["hospital_code"], r["insurer_code"], "", int(r["held"]),
                    "held as a liability, owed back to the insurer (recover with WO)",
                ))
        return rec
