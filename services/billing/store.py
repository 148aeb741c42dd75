"""PostgreSQL for billing (schema `billing`): the ledger, claims, invoices,
payments and the PAID outbox. SQL only: the use cases decide, in one
transaction per write (`atomically`), so a refusal leaves the ledger as it was."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from iclaim_hub.common.db import apply_migrations
from iclaim_hub.common.fields import copy_columns
from services.billing.domain import (
    OPEN_STATUSES,
    ClaimDue,
    Decision,
    InvoiceIssued,
    JournalDraft,
    JournalEffect,
    LineDraft,
    OutstandingItem,
    PaymentInput,
    payment_from_canonical,
)
from services.billing.queries import InvoiceQuery, NewInvoice
from services.billing.records import (
    HeldOverpayment,
    InvoiceBalance,
    InvoiceHead,
    InvoiceRecord,
    JournalRecord,
    MetricsRows,
    OpenInvoice,
    PastDueClaim,
    PaymentLineEntry,
    PaymentRecord,
    ReconciliationRows,
    StatementRows,
)
from services.billing.views import InvoiceClaimAmounts

SCHEMA = "billing"
MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")
# Lost races a retry resolves: the retry sees the concurrent twin's committed result.
_RETRYABLE = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.UniqueViolationError,
)
_ATTEMPTS = 5

# --- ledger --------------------------------------------------------------------------
_ENSURE_ACCOUNTS = (
    "INSERT INTO billing.accounts (hospital_code, insurer_code, kind)"
    " SELECT $1, $2, k FROM unnest($3::text[]) k ORDER BY k ON CONFLICT DO NOTHING"
)
_ACCOUNT_IDS = (
    "SELECT id, kind FROM billing.accounts"
    " WHERE hospital_code = $1 AND insurer_code = $2 AND kind = ANY($3::text[])"
)
_INSERT_JOURNAL = (
    "INSERT INTO billing.journals (idem_key, content_sha256, kind, hospital_code,"
    " insurer_code, reference, description, effective_at, reverses)"
    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT (idem_key) DO NOTHING RETURNING id"
)
_JOURNAL_BY_KEY = "SELECT id, content_sha256 FROM billing.journals WHERE idem_key = $1"
_INSERT_LINES = (
    "INSERT INTO billing.journal_lines (journal_id, account_id, transaction_id,"
    " amount_satang) SELECT $1, a, t, m FROM unnest($2::bigint[], $3::text[],"
    " $4::bigint[]) AS u(a, t, m)"
)
# A batch of journals (reverses none): the ones inserted now, by idem_key.
_INSERT_JOURNALS = (
    "INSERT INTO billing.journals (idem_key, content_sha256, kind, hospital_code,"
    " insurer_code, reference, description, effective_at)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
    " $6::text[], $7::text[], $8::timestamptz[])"
    " ON CONFLICT (idem_key) DO NOTHING RETURNING id, idem_key"
)
_JOURNALS_BY_KEY = (
    "SELECT idem_key, id, content_sha256 FROM billing.journals WHERE idem_key = ANY($1::text[])"
)
_ENSURE_ACCOUNTS_OF = (
    "INSERT INTO billing.accounts (hospital_code, insurer_code, kind)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS u(h, i, k) ORDER BY h, i, k"
    " ON CONFLICT DO NOTHING"
)
_ACCOUNT_IDS_OF = (
    "SELECT a.id, a.hospital_code, a.insurer_code, a.kind FROM billing.accounts a"
    " JOIN unnest($1::text[], $2::text[], $3::text[]) AS u(h, i, k)"
    " ON a.hospital_code = u.h AND a.insurer_code = u.i AND a.kind = u.k"
)
_INSERT_LINES_OF = (
    "INSERT INTO billing.journal_lines (journal_id, account_id, transaction_id, amount_satang)"
    " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[])"
)
_JOURNAL = "SELECT * FROM billing.journals WHERE id = $1"
_JOURNAL_LINES = (
    "SELECT a.kind, l.transaction_id, l.amount_satang FROM billing.journal_lines l"
    " JOIN billing.accounts a ON a.id = l.account_id WHERE l.journal_id = $1"
    " ORDER BY l.id"
)

# --- claims --------------------------------------------------------------------------
_INSERT_CLAIMS = (
    "INSERT INTO billing.claims (transaction_id, hospital_code, insurer_code, state,"
    " approved_satang, decided_at) SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
    " $4::text[], $5::bigint[], $6::timestamptz[])"
    " ON CONFLICT (transaction_id) DO NOTHING RETURNING transaction_id"
)
_CLAIM = "SELECT * FROM billing.claims WHERE transaction_id = $1"
_KNOWN_CLAIMS = "SELECT transaction_id FROM billing.claims WHERE transaction_id = ANY($1::text[])"
_LOCK_CLAIMS = (
    "SELECT * FROM billing.claims WHERE transaction_id = ANY($1::text[]) ORDER BY transaction_id FOR UPDATE"
)
_ADD_APPROVED = (
    "UPDATE billing.claims c SET approved_satang = c.approved_satang + u.d"
    " FROM unnest($1::text[], $2::bigint[]) AS u(t, d) WHERE c.transaction_id = u.t"
)
_ADD_SETTLED = (
    "UPDATE billing.claims c SET settled_satang = c.settled_satang + u.d"
    " FROM unnest($1::text[], $2::bigint[]) AS u(t, d) WHERE c.transaction_id = u.t"
)
_QUEUE_PAID = (
    "INSERT INTO billing.paid_outbox (transaction_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
)

# --- invoices ------------------------------------------------------------------------
# Per claim: approved, settled and the money paid on it (its cash lines, which
# reversals net out), in invoice order.
_INVOICE_SELECT = (
    "SELECT i.*, coalesce(sum(c.settled_satang), 0)::bigint AS paid,"
    " array_agg(ic.transaction_id ORDER BY ic.position) AS txs,"
    " array_agg(c.approved_satang ORDER BY ic.position) AS approved_each,"
    " array_agg(c.settled_satang ORDER BY ic.position) AS settled_each,"
    " array_agg(cash.paid ORDER BY ic.position) AS paid_each"
    " FROM billing.invoices i JOIN billing.invoice_claims ic USING (invoice_id)"
    " JOIN billing.claims c ON c.transaction_id = ic.transaction_id"
    " CROSS JOIN LATERAL (SELECT coalesce(sum(l.amount_satang), 0)::bigint AS paid"
    "   FROM billing.journal_lines l JOIN billing.accounts a ON a.id = l.account_id"
    "   WHERE l.transaction_id = c.transaction_id AND a.kind = 'cash') cash"
)
_INVOICE = _INVOICE_SELECT + " WHERE i.invoice_id = $1 GROUP BY i.invoice_id"
# A page of one party's invoices. $3 filters by shown status: OVERDUE is derived
# (an open status, $7, past its due date $4); the stored statuses exclude it.
_PAGE_FILTER = (
    " AND ($3::text IS NULL"
    "   OR ($3 = 'OVERDUE' AND i.status = ANY($7::text[])"
    "       AND coalesce(i.due_date < $4, false))"
    "   OR (i.status = $3 AND NOT (i.status = ANY($7::text[])"
    "       AND coalesce(i.due_date < $4, false))))"
    "  AND ($5::timestamptz IS NULL OR (i.submitted_at, i.invoice_id) > ($5, $6))"
    " GROUP BY i.invoice_id ORDER BY i.submitted_at, i.invoice_id LIMIT $8"
)
_HOSPITAL_INVOICES = (
    _INVOICE_SELECT + " WHERE i.hospital_code = $1 AND ($2 = '' OR i.insurer_code = $2)" + _PAGE_FILTER
)
_INSURER_INVOICES = (
    _INVOICE_SELECT + " WHERE i.insurer_code = $1 AND ($2 = '' OR i.hospital_code = $2)" + _PAGE_FILTER
)
_INVOICE_BY_REF = (
    "SELECT invoice_id, request_sha256 FROM billing.invoices WHERE hospital_code = $1 AND invoice_ref = $2"
)
_OPEN_INVOICE_OF = (
    "SELECT transaction_id, invoice_id FROM billing.invoice_claims"
    " WHERE open AND transaction_id = ANY($1::text[])"
)
_INSERT_INVOICE = (
    "INSERT INTO billing.invoices (invoice_id, invoice_ref, hospital_code,"
    " insurer_code, request_sha256, total_satang, status, submitted_at)"
    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"
)
_INSERT_INVOICE_CLAIMS = (
    "INSERT INTO billing.invoice_claims (invoice_id, transaction_id, position)"
    " SELECT $1, t, o FROM unnest($2::text[]) WITH ORDINALITY AS u(t, o)"
)
_LOCK_INVOICE = "SELECT * FROM billing.invoices WHERE invoice_id = $1 FOR UPDATE"
_CREDIT_TERM = "SELECT days FROM billing.credit_terms WHERE hospital_code = $1 AND insurer_code = $2"
_SET_CREDIT_TERM = (
    "INSERT INTO billing.credit_terms VALUES ($1, $2, $3)"
    " ON CONFLICT (hospital_code, insurer_code) DO UPDATE SET days = EXCLUDED.days"
)
_ACKNOWLEDGE = (
    "UPDATE billing.invoices SET acknowledged_at = $2, due_date = $3, status = $4 WHERE invoice_id = $1"
)
_LOCK_OPEN_INVOICES_OF = (
    "SELECT i.invoice_id, i.insurer_code, i.total_satang, i.status, i.submitted_at,"
    " i.acknowledged_at IS NOT NULL AS acked,"
    " (SELECT coalesce(sum(c.settled_satang), 0) FROM billing.invoice_claims x"
    "   JOIN billing.claims c USING (transaction_id) WHERE x.invoice_id = i.invoice_id)"
    "   ::bigint AS paid"
    " FROM billing.invoices i WHERE i.invoice_id IN (SELECT invoice_id"
    "   FROM billing.invoice_claims WHERE open AND transaction_id = ANY($1::text[]))"
    " ORDER BY i.invoice_id FOR UPDATE OF i"
)
_SET_INVOICE_STATUS = "UPDATE billing.invoices SET status = $2 WHERE invoice_id = $1"
_SET_INVOICE_PAID = "UPDATE billing.invoices SET status = 'PAID', paid_at = $2 WHERE invoice_id = $1"
# A claim is on at most one open invoice: a paid or void invoice lets its claims go.
_CLOSE_INVOICE_CLAIMS = "UPDATE billing.invoice_claims SET open = false WHERE invoice_id = $1"
_SET_INVOICE_VOID = (
    "UPDATE billing.invoices SET status = 'VOID', voided_at = $2, void_reason = $3 WHERE invoice_id = $1"
)

# --- payments ------------------------------------------------------------------------
_PAYMENT_BY_TRACE = "SELECT * FROM billing.payments WHERE insurer_code = $1 AND trace_no = $2"
_PAYMENT = "SELECT * FROM billing.payments WHERE payment_id = $1"
_LOCK_OVERPAYMENTS = (
    "SELECT hospital_code, balance_satang FROM billing.accounts"
    " WHERE insurer_code = $1 AND kind = 'overpayment'"
    " AND hospital_code = ANY($2::text[]) ORDER BY id FOR UPDATE"
)
_INSERT_PAYMENT = (
    "INSERT INTO billing.payments (payment_id, insurer_code, trace_no, request_sha256,"
    " paid_at, total_satang, body, hospital_codes, recorded_at)"
    " VALUES ($1,$2,$3,$4,$5,$6,$7::jsonb,$8,$9)"
    " ON CONFLICT (insurer_code, trace_no) DO NOTHING RETURNING payment_id"
)

# --- statements ----------------------------------------------------------------------
# What the insurer owes the hospital: the receivable and overpayment accounts.
_OWED_BEFORE = (
    "SELECT coalesce(sum(l.amount_satang), 0)::numeric FROM billing.journal_lines l"
    " JOIN billing.journals j ON j.id = l.journal_id"
    " JOIN billing.accounts a ON a.id = l.account_id"
    " WHERE j.hospital_code = $1 AND j.insurer_code = $2"
    " AND a.kind IN ('receivable', 'overpayment') AND j.effective_at < $3"
)
_OVERPAYMENT_BEFORE = (
    "SELECT coalesce(sum(l.amount_satang), 0)::numeric FROM billing.journal_lines l"
    " JOIN billing.journals j ON j.id = l.journal_id"
    " JOIN billing.accounts a ON a.id = l.account_id"
    " WHERE j.hospital_code = $1 AND j.insurer_code = $2"
    " AND a.kind = 'overpayment' AND j.effective_at < $3"
)
_JOURNAL_EFFECTS = (
    "SELECT j.id, j.kind, j.reference, j.description, j.effective_at,"
    " coalesce(sum(l.amount_satang) FILTER (WHERE a.kind IN"
    "   ('receivable', 'overpayment')), 0)::bigint AS effect,"
    # Claim adjustments are debits (adj_* lines positive): what they took off what is owed.
    " coalesce(sum(l.amount_satang) FILTER (WHERE a.kind LIKE 'adj\\_%'), 0)::bigint"
    "   AS adj"
    " FROM billing.journals j JOIN billing.journal_lines l ON l.journal_id = j.id"
    " JOIN billing.accounts a ON a.id = l.account_id"
    " WHERE j.hospital_code = $1 AND j.insurer_code = $2"
    " AND j.effective_at >= $3 AND j.effective_at < $4"
    " GROUP BY j.id ORDER BY j.effective_at, j.id"
)
_INVOICES_SUBMITTED = (
    "SELECT invoice_ref, total_satang, submitted_at,"
    " (SELECT count(*) FROM billing.invoice_claims x"
    "   WHERE x.invoice_id = i.invoice_id) AS n"
    " FROM billing.invoices i WHERE hospital_code = $1 AND insurer_code = $2"
    " AND submitted_at >= $3 AND submitted_at < $4 ORDER BY submitted_at, invoice_id"
)
_INVOICES_VOIDED = (
    "SELECT invoice_ref, total_satang, voided_at,"
    " (SELECT count(*) FROM billing.invoice_claims x"
    "   WHERE x.invoice_id = i.invoice_id) AS n"
    " FROM billing.invoices i WHERE hospital_code = $1 AND insurer_code = $2"
    " AND voided_at >= $3 AND voided_at < $4 ORDER BY voided_at, invoice_id"
)
# Per claim still due at $3, with the due date of the latest invoice holding it
# that was submitted and acknowledged by then (and not voided by then).
_OUTSTANDING = (
    "SELECT l.transaction_id, sum(l.amount_satang)::bigint AS due,"
    " (SELECT i.due_date FROM billing.invoice_claims x"
    "   JOIN billing.invoices i USING (invoice_id)"
    "   WHERE x.transaction_id = l.transaction_id AND i.submitted_at < $3"
    "   AND i.acknowledged_at < $3 AND NOT coalesce(i.voided_at < $3, false)"
    "   ORDER BY i.submitted_at DESC LIMIT 1) AS due_date"
    " FROM billing.journal_lines l JOIN billing.journals j ON j.id = l.journal_id"
    " JOIN billing.accounts a ON a.id = l.account_id"
    " WHERE j.hospital_code = $1 AND j.insurer_code = $2 AND a.kind = 'receivable'"
    " AND j.effective_at < $3 GROUP BY l.transaction_id"
    " HAVING sum(l.amount_satang) <> 0"
)

# --- reconciliation ------------------------------------------------------------------
_OVERPAID_LINES = (
    "SELECT j.hospital_code, j.insurer_code, j.reference, l.transaction_id,"
    " -l.amount_satang AS amount FROM billing.journal_lines l"
    " JOIN billing.journals j ON j.id = l.journal_id"
    " JOIN billing.accounts a ON a.id = l.account_id"
    " WHERE j.kind = 'PAYMENT' AND a.kind = 'overpayment'"
    " AND j.effective_at >= $1 AND j.effective_at < $2 ORDER BY j.id, l.id"
)
_UNINVOICED_LINES = (
    "SELECT DISTINCT j.hospital_code, j.insurer_code, j.reference, l.transaction_id"
    " FROM billing.journal_lines l JOIN billing.journals j ON j.id = l.journal_id"
    " WHERE j.kind = 'PAYMENT' AND l.transaction_id IS NOT NULL"
    " AND j.effective_at >= $1 AND j.effective_at < $2 AND NOT EXISTS (SELECT 1"
    "  FROM billing.invoice_claims x JOIN billing.invoices i USING (invoice_id)"
    "  WHERE x.transaction_id = l.transaction_id AND i.submitted_at <= j.recorded_at"
    "  AND NOT coalesce(i.voided_at <= j.recorded_at, false))"
    " ORDER BY 1, 2, 3, 4"
)
_PAST_DUE = (
    "SELECT c.hospital_code, c.insurer_code, c.transaction_id, i.invoice_ref,"
    " i.due_date, c.approved_satang - c.settled_satang AS due"
    " FROM billing.claims c JOIN billing.invoice_claims x USING (transaction_id)"
    " JOIN billing.invoices i USING (invoice_id)"
    " WHERE x.open AND i.due_date < $1 AND c.approved_satang > c.settled_satang"
    " ORDER BY i.due_date, c.transaction_id"
)
_OVERPAYMENTS_HELD = (
    "SELECT hospital_code, insurer_code, -balance_satang::bigint AS held"
    " FROM billing.accounts WHERE kind = 'overpayment' AND balance_satang <> 0"
    " ORDER BY 1, 2"
)

# --- metrics -------------------------------------------------------------------------
_INVOICE_BALANCES = (
    "SELECT status, due_date, insurer_code, total_satang,"
    " (SELECT coalesce(sum(c.settled_satang), 0) FROM billing.invoice_claims x"
    "   JOIN billing.claims c USING (transaction_id) WHERE x.invoice_id = i.invoice_id)"
    "   ::bigint AS paid FROM billing.invoices i"
)
_OWED_BY_INSURER = (
    "SELECT insurer_code, sum(balance_satang)::bigint AS owed FROM billing.accounts"
    " WHERE kind IN ('receivable', 'overpayment') GROUP BY insurer_code"
)

# --- PAID outbox ---------------------------------------------------------------------
# Claims what is due for a short lease, so that replicas do not send it twice.
_DUE_OUTBOX = (
    "UPDATE billing.paid_outbox o SET next_attempt_at = now() + interval '30 seconds'"
    " WHERE transaction_id IN (SELECT transaction_id FROM billing.paid_outbox"
    "  WHERE delivered_at IS NULL AND next_attempt_at <= now()"
    "  ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
    " RETURNING transaction_id, attempts"
)
_OUTBOX_DELIVERED = (
    "UPDATE billing.paid_outbox SET delivered_at = now(), attempts = attempts + 1,"
    " last_error = NULL WHERE transaction_id = $1"
)
_OUTBOX_FAILED = (
    "UPDATE billing.paid_outbox SET attempts = attempts + 1, last_error = $2,"
    " next_attempt_at = now() + make_interval(secs => $3) WHERE transaction_id = $1"
)


def _invoice_record(row: asyncpg.Record) -> InvoiceRecord:
    claims = tuple(
        InvoiceClaimAmounts(t, int(a), int(p), int(s))
        for t, a, p, s in zip(
            row["txs"], row["approved_each"], row["paid_each"], row["settled_each"], strict=True
        )
    )
    return copy_columns(
        InvoiceRecord,
        row,
        transaction_ids=tuple(row["txs"]),
        settled_satang=int(row["paid"]),
        claims=claims,
    )


def _payment_record(row: asyncpg.Record) -> PaymentRecord:
    body = json.loads(row["body"]) if isinstance(row["body"], str) else row["body"]
    return PaymentRecord(
        payment_id=row["payment_id"],
        request_sha256=row["request_sha256"],
        payment=payment_from_canonical(row["insurer_code"], body),
        hospital_codes=tuple(row["hospital_codes"]),
        recorded_at=row["recorded_at"],
    )


async def _invoice(db: Any, invoice_id: str) -> InvoiceRecord | None:
    """On a pool or a connection alike."""
    row = await db.fetchrow(_INVOICE, invoice_id)
    return None if row is None else _invoice_record(row)


async def _amounts_added(conn: asyncpg.Connection, sql: str, amounts: Mapping[str, int]) -> bool:
    try:
        await conn.execute(sql, list(amounts), list(amounts.values()))
    except asyncpg.exceptions.CheckViolationError:
        return False
    return True


class PgBillingTx:
    """The SQL of one transaction (see PgBillingStore.atomically)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    # --- ledger ----------------------------------------------------------------------
    async def post_journal(self, j: JournalDraft, reverses: int | None) -> tuple[int, str | None]:
        """Inserts the journal and its lines unless its idempotency key is taken:
        (new id, None), or (the posted id, the posted content's digest)."""
        conn = self._conn
        jid = await conn.fetchval(
            _INSERT_JOURNAL,
            j.idem_key,
            j.content_sha256,
            j.kind,
            j.hospital_code,
            j.insurer_code,
            j.reference,
            j.description,
            j.effective_at,
            reverses,
        )
        if jid is None:
            row = await conn.fetchrow(_JOURNAL_BY_KEY, j.idem_key)
            assert row is not None
            return int(row["id"]), str(row["content_sha256"])
        kinds = sorted({ln.account_kind for ln in j.lines})
        await conn.execute(_ENSURE_ACCOUNTS, j.hospital_code, j.insurer_code, kinds)
        ids = {
            r["kind"]: r["id"] for r in await conn.fetch(_ACCOUNT_IDS, j.hospital_code, j.insurer_code, kinds)
        }
        # In account order, as every writer: the balance trigger locks accounts.
        lines = sorted(j.lines, key=lambda ln: ids[ln.account_kind])
        await conn.execute(
            _INSERT_LINES,
            jid,
            [ids[ln.account_kind] for ln in lines],
            [ln.transaction_id for ln in lines],
            [ln.amount for ln in lines],
        )
        return int(jid), None

    async def post_journals(self, journals: Sequence[JournalDraft]) -> dict[str, tuple[int, str | None]]:
        """post_journal for many (none reversing another), in five statements
        whatever their number: by idem_key, (new id, None) or (the posted id,
        the posted content's digest). Their lines go in one insert, in
        account order (the balance trigger then moves each account once)."""
        conn = self._conn
        if not journals:
            return {}
        new = {
            r["idem_key"]: int(r["id"])
            for r in await conn.fetch(
                _INSERT_JOURNALS,
                [j.idem_key for j in journals],
                [j.content_sha256 for j in journals],
                [j.kind for j in journals],
                [j.hospital_code for j in journals],
                [j.insurer_code for j in journals],
                [j.reference for j in journals],
                [j.description for j in journals],
                [j.effective_at for j in journals],
            )
        }
        out: dict[str, tuple[int, str | None]] = {key: (jid, None) for key, jid in new.items()}
        posted = [j.idem_key for j in journals if j.idem_key not in new]
        if posted:
            for r in await conn.fetch(_JOURNALS_BY_KEY, posted):
                out[r["idem_key"]] = (int(r["id"]), str(r["content_sha256"]))
        # Inserted now: these get their lines (a key given twice, only its first).
        fresh = [j for j in journals if new.pop(j.idem_key, None) is not None]
        if not fresh:
            return out
        keys = sorted({(j.hospital_code, j.insurer_code, ln.account_kind) for j in fresh for ln in j.lines})
        columns = [list(c) for c in zip(*keys, strict=True)]
        await conn.execute(_ENSURE_ACCOUNTS_OF, *columns)
        ids = {
            (r["hospital_code"], r["insurer_code"], r["kind"]): int(r["id"])
            for r in await conn.fetch(_ACCOUNT_IDS_OF, *columns)
        }
        # In account order, as every writer: the balance trigger locks accounts.
        lines = sorted(
            (
                (ids[(j.hospital_code, j.insurer_code, ln.account_kind)], out[j.idem_key][0], ln)
                for j in fresh
                for ln in j.lines
            ),
            key=lambda x: (x[0], x[1]),
        )
        await conn.execute(
            _INSERT_LINES_OF,
            [jid for _, jid, _ in lines],
            [account for account, _, _ in lines],
            [ln.transaction_id for _, _, ln in lines],
            [ln.amount for _, _, ln in lines],
        )
        return out

    async def journal(self, journal_id: int) -> JournalRecord | None:
        j = await self._conn.fetchrow(_JOURNAL, journal_id)
        if j is None:
            return None
        rows = await self._conn.fetch(_JOURNAL_LINES, journal_id)
        return JournalRecord(
            journal_id,
            j["kind"],
            j["hospital_code"],
            j["insurer_code"],
            j["reference"],
            tuple(LineDraft(r["kind"], r["amount_satang"], r["transaction_id"]) for r in rows),
        )

    # --- claims ----------------------------------------------------------------------
    async def insert_claims(self, decisions: Sequence[Decision]) -> set[str]:
        """Stores the decisions of claims not decided before, in one statement:
        the transaction_ids inserted now."""
        rows = await self._conn.fetch(
            _INSERT_CLAIMS,
            [d.transaction_id for d in decisions],
            [d.hospital_code for d in decisions],
            [d.insurer_code for d in decisions],
            [d.state for d in decisions],
            [d.approved_satang for d in decisions],
            [d.decided_at for d in decisions],
        )
        return {r["transaction_id"] for r in rows}

    async def decision(self, transaction_id: str) -> Decision | None:
        row = await self._conn.fetchrow(_CLAIM, transaction_id)
        return None if row is None else copy_columns(Decision, row)

    async def lock_claims(self, transaction_ids: Sequence[str]) -> dict[str, ClaimDue]:
        rows = await self._conn.fetch(_LOCK_CLAIMS, sorted(set(transaction_ids)))
        return {r["transaction_id"]: copy_columns(ClaimDue, r) for r in rows}

    async def add_approved(self, amounts: Mapping[str, int]) -> bool:
        """False when the claims' CHECK refuses (the transaction is then spent)."""
        return await _amounts_added(self._conn, _ADD_APPROVED, amounts)

    async def add_settled(self, amounts: Mapping[str, int]) -> bool:
        """False when the claims' CHECK refuses (the transaction is then spent)."""
        return await _amounts_added(self._conn, _ADD_SETTLED, amounts)

    async def queue_paid(self, transaction_ids: Sequence[str]) -> None:
        await self._conn.execute(_QUEUE_PAID, list(transaction_ids))

    # --- invoices --------------------------------------------------------------------
    async def invoice(self, invoice_id: str) -> InvoiceRecord | None:
        return await _invoice(self._conn, invoice_id)

    async def invoice_by_ref(self, hospital: str, ref: str) -> tuple[str, str] | None:
        """(invoice_id, request digest) of the hospital's invoice_ref, if used."""
        row = await self._conn.fetchrow(_INVOICE_BY_REF, hospital, ref)
        return None if row is None else (row["invoice_id"], row["request_sha256"])

    async def open_invoice_of(self, transaction_ids: Sequence[str]) -> dict[str, str]:
        rows = await self._conn.fetch(_OPEN_INVOICE_OF, list(transaction_ids))
        return {r["transaction_id"]: r["invoice_id"] for r in rows}

    async def insert_invoice(self, invoice: NewInvoice) -> None:
        i = invoice
        await self._conn.execute(
            _INSERT_INVOICE,
            i.invoice_id,
            i.invoice_ref,
            i.hospital_code,
            i.insurer_code,
            i.request_sha256,
            i.total_satang,
            i.status,
            i.submitted_at,
        )
        await self._conn.execute(_INSERT_INVOICE_CLAIMS, i.invoice_id, list(i.transaction_ids))

    async def lock_invoice(self, invoice_id: str) -> InvoiceHead | None:
        row = await self._conn.fetchrow(_LOCK_INVOICE, invoice_id)
        return None if row is None else copy_columns(InvoiceHead, row)

    async def credit_term(self, hospital: str, insurer: str) -> int | None:
        days = await self._conn.fetchval(_CREDIT_TERM, hospital, insurer)
        return None if days is None else int(days)

    async def acknowledge_invoice(self, invoice_id: str, at: datetime, due: date, status: str) -> None:
        await self._conn.execute(_ACKNOWLEDGE, invoice_id, at, due, status)

    async def lock_open_invoices_of(self, transaction_ids: Sequence[str]) -> list[OpenInvoice]:
        rows = await self._conn.fetch(_LOCK_OPEN_INVOICES_OF, list(transaction_ids))
        return [
            copy_columns(OpenInvoice, r, settled_satang=int(r["paid"]), acknowledged=r["acked"]) for r in rows
        ]

    async def set_invoice_status(self, invoice_id: str, status: str) -> None:
        await self._conn.execute(_SET_INVOICE_STATUS, invoice_id, status)

    async def set_invoice_paid(self, invoice_id: str, paid_at: datetime) -> None:
        await self._conn.execute(_SET_INVOICE_PAID, invoice_id, paid_at)
        await self._conn.execute(_CLOSE_INVOICE_CLAIMS, invoice_id)

    async def set_invoice_void(self, invoice_id: str, at: datetime, reason: str) -> None:
        await self._conn.execute(_SET_INVOICE_VOID, invoice_id, at, reason)
        await self._conn.execute(_CLOSE_INVOICE_CLAIMS, invoice_id)

    # --- payments --------------------------------------------------------------------
    async def payment_by_trace(self, insurer: str, trace_no: str) -> PaymentRecord | None:
        row = await self._conn.fetchrow(_PAYMENT_BY_TRACE, insurer, trace_no)
        return None if row is None else _payment_record(row)

    async def payment(self, payment_id: str) -> PaymentRecord:
        row = await self._conn.fetchrow(_PAYMENT, payment_id)
        assert row is not None
        return _payment_record(row)

    async def lock_overpayment_balances(self, insurer: str, hospitals: Sequence[str]) -> dict[str, int]:
        """The insurer's overpayment account balance per hospital (credit: <= 0)."""
        rows = await self._conn.fetch(_LOCK_OVERPAYMENTS, insurer, list(hospitals))
        return {r["hospital_code"]: int(r["balance_satang"]) for r in rows}

    async def insert_payment(
        self, payment_id: str, p: PaymentInput, hospitals: Sequence[str], recorded_at: datetime
    ) -> bool:
        """False: the trace number was taken meanwhile (see `payment_by_trace`)."""
        inserted = await self._conn.fetchval(
            _INSERT_PAYMENT,
            payment_id,
            p.insurer_code,
            p.trace_no,
            p.content_sha256,
            p.paid_at,
            p.total,
            json.dumps(p.canonical(), ensure_ascii=False),
            list(hospitals),
            recorded_at,
        )
        return inserted is not None


class PgBillingStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def migrate(self) -> None:
        await apply_migrations(self._pool, SCHEMA, MIGRATIONS)

    async def set_credit_term(self, hospital: str, insurer: str, days: int) -> None:
        await self._pool.execute(_SET_CREDIT_TERM, hospital, insurer, days)

    async def atomically(self, work: Callable[[PgBillingTx], Awaitable[T]]) -> T:
        """Runs work in one transaction, retrying lost races (deadlock, unique
        key taken by a concurrent twin); the retry sees the twin's result."""
        for attempt in range(_ATTEMPTS):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    return await work(PgBillingTx(conn))
            except _RETRYABLE:
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    # --- reads -----------------------------------------------------------------------
    async def invoice(self, invoice_id: str) -> InvoiceRecord | None:
        return await _invoice(self._pool, invoice_id)

    async def known_claims(self, transaction_ids: Sequence[str]) -> set[str]:
        """Those of the ids whose decision billing has recorded."""
        rows = await self._pool.fetch(_KNOWN_CLAIMS, list(transaction_ids))
        return {r["transaction_id"] for r in rows}

    async def list_invoices(self, q: InvoiceQuery) -> list[InvoiceRecord]:
        sql = _HOSPITAL_INVOICES if q.role == "hospital" else _INSURER_INVOICES
        rows = await self._pool.fetch(
            sql,
            q.code,
            q.counterparty,
            q.status,
            q.today,
            q.after[0] if q.after else None,
            q.after[1] if q.after else "",
            sorted(OPEN_STATUSES),
            q.limit,
        )
        return [_invoice_record(r) for r in rows]

    async def statement_rows(
        self, hospital: str, insurer: str, start: datetime, end: datetime
    ) -> StatementRows:
        """The pair's ledger in [start, end), from one snapshot."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            opening = await conn.fetchval(_OWED_BEFORE, hospital, insurer, start)
            journals = await conn.fetch(_JOURNAL_EFFECTS, hospital, insurer, start, end)
            invoices = await conn.fetch(_INVOICES_SUBMITTED, hospital, insurer, start, end)
            voided = await conn.fetch(_INVOICES_VOIDED, hospital, insurer, start, end)
            outstanding = await conn.fetch(_OUTSTANDING, hospital, insurer, end)
            overpayment = await conn.fetchval(_OVERPAYMENT_BEFORE, hospital, insurer, end)
        return StatementRows(
            opening=int(opening),
            journals=tuple(
                JournalEffect(
                    j["effective_at"],
                    j["kind"],
                    j["reference"],
                    j["description"],
                    int(j["effect"]),
                    int(j["adj"]),
                )
                for j in journals
            ),
            invoices=tuple(
                InvoiceIssued(i["submitted_at"], i["invoice_ref"], i["total_satang"], int(i["n"]))
                for i in invoices
            )
            + tuple(
                InvoiceIssued(i["voided_at"], i["invoice_ref"], i["total_satang"], int(i["n"]), voided=True)
                for i in voided
            ),
            outstanding=tuple(OutstandingItem(int(r["due"]), r["due_date"]) for r in outstanding),
            overpayment=int(overpayment),
        )

    async def reconciliation_rows(
        self, start: datetime, end: datetime, due_before: date
    ) -> ReconciliationRows:
        """Payment lines in [start, end), claims due before `due_before` and
        overpayments held now, from one snapshot."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            overpaid = await conn.fetch(_OVERPAID_LINES, start, end)
            uninvoiced = await conn.fetch(_UNINVOICED_LINES, start, end)
            past_due = await conn.fetch(_PAST_DUE, due_before)
            held = await conn.fetch(_OVERPAYMENTS_HELD)
        return ReconciliationRows(
            overpaid_lines=tuple(
                copy_columns(PaymentLineEntry, r, amount=int(r["amount"])) for r in overpaid
            ),
            uninvoiced_lines=tuple(copy_columns(PaymentLineEntry, r, amount=0) for r in uninvoiced),
            past_due=tuple(copy_columns(PastDueClaim, r, due=int(r["due"])) for r in past_due),
            overpayments=tuple(copy_columns(HeldOverpayment, r, held=int(r["held"])) for r in held),
        )

    async def metrics_rows(self) -> MetricsRows:
        async with self._pool.acquire() as conn:
            invoices = await conn.fetch(_INVOICE_BALANCES)
            owed = await conn.fetch(_OWED_BY_INSURER)
        return MetricsRows(
            invoices=tuple(copy_columns(InvoiceBalance, r, settled_satang=int(r["paid"])) for r in invoices),
            owed_by_insurer={r["insurer_code"]: int(r["owed"]) for r in owed},
        )

    # --- PAID outbox -----------------------------------------------------------------
    async def due_outbox(self, limit: int = 50) -> list[tuple[str, int]]:
        """(transaction_id, attempts so far) of PAID notices due now."""
        rows = await self._pool.fetch(_DUE_OUTBOX, limit)
        return [(r["transaction_id"], r["attempts"]) for r in rows]

    async def outbox_delivered(self, transaction_id: str) -> None:
        await self._pool.execute(_OUTBOX_DELIVERED, transaction_id)

    async def outbox_failed(self, transaction_id: str, error: str, retry_in_s: float) -> None:
        await self._pool.execute(_OUTBOX_FAILED, transaction_id, error[:500], retry_in_s)
