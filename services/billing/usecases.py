"""Billing's use cases (PROTOCOL.md §9): record decisions, invoice, acknowledge,
post payments, statements, reconciliation and corrections. They decide with the
pure rules of `domain` and read and write through the `BillingStore` seam; no
proto, no SQL."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Protocol, TypeVar

from iclaim.errors import AlreadyExists, Code, FailedPrecondition, IclaimError, InvalidArgument, NotFound
from iclaim.thai_baht_text import baht_text
from iclaim_hub.common.fields import copy_fields
from services.billing import metrics
from services.billing.domain import (
    MAX_DECISIONS_PER_CALL,
    DEFAULT_CREDIT_DAYS,
    ClaimDue,
    Decision,
    DecisionReport,
    Finding,
    JournalDraft,
    LineDraft,
    PaymentInput,
    Reconciliation,
    StatementOut,
    aging_of,
    approval_journal,
    bangkok_date,
    build_statement,
    check_hospital,
    check_insurer,
    check_invoice_id,
    check_invoice_request,
    check_period,
    check_void_reason,
    check_voidable,
    day_start,
    decision_of,
    due_date_for,
    month_bounds,
    movements_of,
    is_party_code,
    page_start,
    page_token,
    plan_invoice,
    plan_payment,
    sha256_json,
    shown_status,
    stored_status,
    validate_payment,
)
from services.billing.queries import InvoiceQuery, NewInvoice
from services.billing.records import (
    InvoiceHead,
    InvoiceRecord,
    JournalRecord,
    MetricsRows,
    OpenInvoice,
    PaymentRecord,
    ReconciliationRows,
    StatementRows,
)
from services.billing.views import InvoiceView, MetricsSnapshot, PaymentView

T = TypeVar("T")


class BillingTx(Protocol):
    """What the use cases read and write inside one transaction."""

    async def post_journal(self, j: JournalDraft, reverses: int | None) -> tuple[int, str | None]: ...
    async def post_journals(self, journals: Sequence[JournalDraft]) -> dict[str, tuple[int, str | None]]: ...
    async def journal(self, journal_id: int) -> JournalRecord | None: ...
    async def insert_claims(self, decisions: Sequence[Decision]) -> set[str]: ...
    async def decision(self, transaction_id: str) -> Decision | None: ...
    async def lock_claims(self, transaction_ids: Sequence[str]) -> dict[str, ClaimDue]: ...
    async def add_approved(self, amounts: Mapping[str, int]) -> bool: ...
    async def add_settled(self, amounts: Mapping[str, int]) -> bool: ...
    async def queue_paid(self, transaction_ids: Sequence[str]) -> None: ...
    async def invoice(self, invoice_id: str) -> InvoiceRecord | None: ...
    async def invoice_by_ref(self, hospital: str, ref: str) -> tuple[str, str] | None: ...
    async def open_invoice_of(self, transaction_ids: Sequence[str]) -> dict[str, str]: ...
    async def insert_invoice(self, invoice: NewInvoice) -> None: ...
    async def lock_invoice(self, invoice_id: str) -> InvoiceHead | None: ...
    async def credit_term(self, hospital: str, insurer: str) -> int | None: ...
    async def acknowledge_invoice(self, invoice_id: str, at: datetime, due: date, status: str) -> None: ...
    async def lock_open_invoices_of(self, transaction_ids: Sequence[str]) -> list[OpenInvoice]: ...
    async def set_invoice_status(self, invoice_id: str, status: str) -> None: ...
    async def set_invoice_paid(self, invoice_id: str, paid_at: datetime) -> None: ...
    async def set_invoice_void(self, invoice_id: str, at: datetime, reason: str) -> None: ...
    async def payment_by_trace(self, insurer: str, trace_no: str) -> PaymentRecord | None: ...
    async def payment(self, payment_id: str) -> PaymentRecord: ...
    async def lock_overpayment_balances(self, insurer: str, hospitals: Sequence[str]) -> dict[str, int]: ...
    async def insert_payment(
        self, payment_id: str, p: PaymentInput, hospitals: Sequence[str], recorded_at: datetime
    ) -> bool: ...


class BillingStore(Protocol):
    """Transactions for writes; snapshot reads for invoices and reports."""

    async def atomically(self, work: Callable[[BillingTx], Awaitable[T]]) -> T: ...
    async def invoice(self, invoice_id: str) -> InvoiceRecord | None: ...
    async def known_claims(self, transaction_ids: Sequence[str]) -> set[str]: ...
    async def list_invoices(self, q: InvoiceQuery) -> list[InvoiceRecord]: ...
    async def statement_rows(
        self, hospital: str, insurer: str, start: datetime, end: datetime
    ) -> StatementRows: ...
    async def reconciliation_rows(
        self, start: datetime, end: datetime, due_before: date
    ) -> ReconciliationRows: ...
    async def metrics_rows(self) -> MetricsRows: ...


class DecisionSource(Protocol):
    """The claim router, asked for decisions its outbox has not delivered yet."""

    async def decisions(self, transaction_ids: Sequence[str]) -> list[DecisionReport]: ...


def _now() -> datetime:
    return datetime.now(UTC)


def invoice_view(r: InvoiceRecord, today: date) -> InvoiceView:
    return copy_fields(
        InvoiceView,
        r,
        # A void invoice was voided before any payment on it; what its claims
        # were paid afterwards belongs to the invoices that billed them again.
        paid_satang=0 if r.status == "VOID" else min(r.settled_satang, r.total_satang),
        claims=tuple(
            replace(c, paid_satang=0, settled_satang=0) if r.status == "VOID" else c for c in r.claims
        ),
        status=shown_status(r.status, r.due_date, today),
    )


async def _record_all(tx: BillingTx, decisions: Sequence[Decision]) -> None:
    """Each decision once: the same again changes nothing, a different one is
    refused. A fixed number of statements however many: the claims in one
    insert, the approvals' journals in one posting."""
    inserted = await tx.insert_claims(decisions)
    journals: list[JournalDraft] = []
    for d in decisions:
        if d.transaction_id in inserted:
            inserted.discard(d.transaction_id)  # a repeat later in the batch is checked
            journal = approval_journal(d)
            if journal is not None:
                journals.append(journal)
        else:
            await _check_same(tx, d)
    for j in journals:
        j.check_balanced()
    posted = await tx.post_journals(journals)
    for j in journals:
        _, digest = posted[j.idem_key]
        _check_journal_content(j, digest)


async def _check_same(tx: BillingTx, d: Decision) -> None:
    """The claim was decided before: the same decision is a no-op, another is refused."""
    have = await tx.decision(d.transaction_id)
    assert have is not None
    if not have.same_as(d):
        raise FailedPrecondition(
            f"claim {d.transaction_id} was already decided differently",
            reason="DECISION_CONFLICT",
            metadata={"transaction_id": d.transaction_id},
        )


def _check_journal_content(j: JournalDraft, posted_digest: str | None) -> None:
    """A journal posted before under this idempotency key must be this one."""
    if posted_digest is not None and posted_digest != j.content_sha256:
        raise AlreadyExists(
            f"journal {j.idem_key} already posted with different content", reason="JOURNAL_CONFLICT"
        )


async def post_journal(tx: BillingTx, j: JournalDraft, reverses: int | None = None) -> int:
    """Posts a balanced journal once per idempotency key; the same key with
    different content is refused."""
    j.check_balanced()
    jid, posted_digest = await tx.post_journal(j, reverses)
    _check_journal_content(j, posted_digest)
    return jid


@dataclass(frozen=True)
class _Posted:
    view: PaymentView
    # Invoices this payment completed: (insurer_code, days from submission to payment).
    invoices_paid: tuple[tuple[str, float], ...] = ()
    replay: bool = False


@dataclass(frozen=True, eq=False)
class Billing:
    """The use cases, over one store. `on_paid` is called after each newly
    recorded payment (it wakes the PAID notifier). `decisions` (the claim
    router) is asked for claims an invoice or a payment names that billing has
    not heard of; None: billing knows only what its intake delivered."""

    store: BillingStore
    _: KW_ONLY
    default_credit_days: int = DEFAULT_CREDIT_DAYS
    on_paid: Callable[[], None] = lambda: None
    clock: Callable[[], datetime] = _now
    decisions: DecisionSource | None = None

    # --- decisions -------------------------------------------------------------------
    async def receive_decision(self, report: DecisionReport) -> None:
        """A decision from the claim router's outbox: the same decision twice is a
        no-op; non-final states change nothing."""
        decision = decision_of(report, self.clock())
        if decision is not None:
            await self.record_decision(decision)

    async def record_decision(self, d: Decision) -> None:
        await self.store.atomically(lambda tx: _record_all(tx, [d]))

    async def receive_decisions(self, reports: Sequence[DecisionReport]) -> list[tuple[int, str]]:
        """Many decisions from the outbox in one transaction. Returns those
        refused for good as (index, reason); the others are recorded. An outage
        is raised (the relay sends them all again: each is idempotent)."""
        if len(reports) > MAX_DECISIONS_PER_CALL:
            raise InvalidArgument(
                f"at most {MAX_DECISIONS_PER_CALL} decisions per call", reason="TOO_MANY_DECISIONS"
            )
        refused: list[tuple[int, str]] = []
        decisions: list[tuple[int, Decision]] = []
        now = self.clock()
        for i, report in enumerate(reports):
            try:
                decision = decision_of(report, now)
            except IclaimError as exc:
                refused.append((i, exc.reason))
                continue
            if decision is not None:
                decisions.append((i, decision))

        async def run(tx: BillingTx) -> None:
            await _record_all(tx, [d for _, d in decisions])

        try:
            await self.store.atomically(run)
        except IclaimError as exc:
            if exc.code is Code.UNAVAILABLE:
                raise
            # One of them is refused (rare: a conflicting redelivery); find which,
            # each in its own transaction.
            for i, d in decisions:
                try:
                    await self.record_decision(d)
                except IclaimError as one:
                    if one.code is Code.UNAVAILABLE:
                        raise
                    refused.append((i, one.reason))
        return sorted(refused)

    async def _read_through(self, transaction_ids: Sequence[str], mine: Callable[[Decision], bool]) -> None:
        """What a client sees must agree across services: a claim GetClaim shows
        as approved may be invoiced or paid at once, though its approval reaches
        billing through the router's outbox a moment later. Decisions of claims
        billing has not heard of are read from the router and recorded exactly as
        the intake records them (the outbox delivery then changes nothing). Only
        the caller's own claims are recorded: the refusal of another party's
        claim stays what it was."""
        if self.decisions is None:
            return
        known = await self.store.known_claims(transaction_ids)
        unknown = [t for t in dict.fromkeys(transaction_ids) if t not in known]
        if not unknown:
            return
        asked = set(unknown)
        recorded = 0
        for report in await self.decisions.decisions(unknown):
            decision = decision_of(report, self.clock()) if report.transaction_id in asked else None
            if decision is not None and mine(decision):
                await self.record_decision(decision)
                recorded += 1
        metrics.DECISIONS_READ_THROUGH.inc(recorded)

    # --- invoices --------------------------------------------------------------------
    async def create_invoice(
        self, hospital: str, insurer: str, ref: str, transaction_ids: Sequence[str]
    ) -> InvoiceView:
        check_invoice_request(ref, insurer, transaction_ids)
        await self._read_through(transaction_ids, lambda d: d.hospital_code == hospital)
        now = self.clock()
        digest = sha256_json({"insurer": insurer, "transaction_ids": sorted(transaction_ids)})

        async def run(tx: BillingTx) -> InvoiceRecord | None:
            have = await tx.invoice_by_ref(hospital, ref)
            if have is not None:
                invoice_id, have_digest = have
                if have_digest != digest:
                    raise AlreadyExists(
                        f"invoice_ref {ref} was used for a different invoice",
                        reason="INVOICE_REF_REUSED",
                        metadata={"invoice_id": invoice_id},
                    )
                return await tx.invoice(invoice_id)
            claims = await tx.lock_claims(transaction_ids)
            on_open = await tx.open_invoice_of(transaction_ids)
            total = plan_invoice(hospital, insurer, transaction_ids, claims, on_open)
            settled = sum(claims[t].settled_satang for t in transaction_ids)
            invoice_id = "inv_" + uuid.uuid4().hex
            await tx.insert_invoice(
                NewInvoice(
                    invoice_id=invoice_id,
                    invoice_ref=ref,
                    hospital_code=hospital,
                    insurer_code=insurer,
                    request_sha256=digest,
                    total_satang=total,
                    status=stored_status(total, settled, False),
                    submitted_at=now,
                    transaction_ids=tuple(transaction_ids),
                )
            )
            return await tx.invoice(invoice_id)

        record = await self.store.atomically(run)
        assert record is not None
        return invoice_view(record, bangkok_date(now))

    async def void_invoice(self, invoice_id: str, hospital: str, reason: str) -> InvoiceView:
        """§9 VoidInvoice: the hospital withdraws its invoice before any payment
        on it; its claims may be invoiced again. Voiding a void invoice returns
        it. No journal: issuing the invoice posted none (the approval did)."""
        check_invoice_id(invoice_id)
        check_void_reason(reason)
        now = self.clock()

        async def run(tx: BillingTx) -> InvoiceRecord | None:
            record = await tx.invoice(invoice_id)
            if record is None or record.hospital_code != hospital:
                raise NotFound("no such invoice", reason="INVOICE_NOT_FOUND")
            if record.status == "VOID":
                return record
            # Its claims before the invoice, the order PostPayment locks them in:
            # no payment can settle them while this decides.
            claims = await tx.lock_claims(record.transaction_ids)
            head = await tx.lock_invoice(invoice_id)
            assert head is not None  # invoices are never deleted
            if head.status == "VOID":  # a concurrent twin voided it first
                return await tx.invoice(invoice_id)
            check_voidable(sum(c.settled_satang for c in claims.values()))
            await tx.set_invoice_void(invoice_id, now, reason)
            return await tx.invoice(invoice_id)

        record = await self.store.atomically(run)
        assert record is not None
        return invoice_view(record, bangkok_date(now))

    async def get_invoice(self, invoice_id: str, role: str, code: str) -> InvoiceView:
        record = await self.store.invoice(check_invoice_id(invoice_id))
        party = (
            None if record is None else (record.hospital_code if role == "hospital" else record.insurer_code)
        )
        if record is None or party != code:
            # Another party's invoice is as absent as a missing one: no enumeration.
            raise NotFound("no such invoice", reason="INVOICE_NOT_FOUND")
        return invoice_view(record, bangkok_date(self.clock()))

    async def list_invoices(
        self, role: str, code: str, counterparty: str, status: str | None, page_size: int, token: str
    ) -> tuple[list[InvoiceView], str]:
        """One page (page_size already bounded) and the token of the next ('' at the end).
        A counterparty code not of its form is no one's: an empty page, as for
        a well-formed code with no invoices (its text never reaches SQL)."""
        after = page_start(token)
        if counterparty and not is_party_code(counterparty, "insurer" if role == "hospital" else "hospital"):
            return [], ""
        today = bangkok_date(self.clock())
        records = await self.store.list_invoices(
            InvoiceQuery(role, code, counterparty, status, today, after, page_size + 1)
        )
        views = [invoice_view(r, today) for r in records[:page_size]]
        if len(records) <= page_size:
            return views, ""
        last = records[page_size - 1]
        return views, page_token(last.submitted_at, last.invoice_id)

    async def acknowledge_invoice(self, invoice_id: str, insurer: str) -> InvoiceView:
        check_invoice_id(invoice_id)
        now = self.clock()

        async def run(tx: BillingTx) -> InvoiceRecord | None:
            head = await tx.lock_invoice(invoice_id)
            if head is None or head.insurer_code != insurer:
                raise NotFound("no such invoice", reason="INVOICE_NOT_FOUND")
            if head.status == "VOID":
                raise FailedPrecondition("invoice is void", reason="INVOICE_VOID")
            if head.acknowledged_at is None:
                days = await tx.credit_term(head.hospital_code, insurer)
                due = due_date_for(now, self.default_credit_days if days is None else days)
                status = "ACKNOWLEDGED" if head.status == "SUBMITTED" else head.status
                await tx.acknowledge_invoice(invoice_id, now, due, status)
            return await tx.invoice(invoice_id)

        record = await self.store.atomically(run)
        assert record is not None
        return invoice_view(record, bangkok_date(now))

    # --- payments --------------------------------------------------------------------
    async def post_payment(self, p: PaymentInput) -> PaymentView:
        """Records a payment once per (insurer, trace_no); the same content again
        returns the recorded payment, other content under it is refused."""
        now = self.clock()
        validate_payment(p, now)
        await self._read_through(
            [ln.transaction_id for ln in p.lines], lambda d: d.insurer_code == p.insurer_code
        )
        posted = await self.store.atomically(lambda tx: self._post_payment(tx, p, now))
        if not posted.replay:
            metrics.PAYMENTS.labels(p.insurer_code).inc()
            metrics.PAYMENT_LINES.labels(p.insurer_code).inc(len(p.lines))
            for insurer, days in posted.invoices_paid:
                metrics.DAYS_TO_PAY.labels(insurer).observe(days)
            self.on_paid()
        return posted.view

    @staticmethod
    async def _recorded(tx: BillingTx, p: PaymentInput) -> _Posted | None:
        have = await tx.payment_by_trace(p.insurer_code, p.trace_no)
        if have is None:
            return None
        if have.request_sha256 != p.content_sha256:
            raise AlreadyExists(
                f"trace_no {p.trace_no} was used for a different payment",
                reason="TRACE_NO_REUSED",
                metadata={"payment_id": have.payment_id},
            )
        return _Posted(have, replay=True)

    async def _post_payment(self, tx: BillingTx, p: PaymentInput, now: datetime) -> _Posted:
        recorded = await self._recorded(tx, p)
        if recorded is not None:
            return recorded
        claims = await tx.lock_claims([ln.transaction_id for ln in p.lines])
        plb_hospitals = {a.hospital_code for a in p.provider_adjustments if a.hospital_code}
        hospitals = sorted({c.hospital_code for c in claims.values()} | plb_hospitals)
        balances = await tx.lock_overpayment_balances(p.insurer_code, hospitals)
        # The overpayment account is a credit: what is held is its negated balance.
        plan = plan_payment(p, claims, {h: -b for h, b in balances.items()})
        payment_id = "pay_" + uuid.uuid4().hex
        if not await tx.insert_payment(payment_id, p, plan.hospitals, now):
            again = await self._recorded(tx, p)  # a concurrent twin committed first
            assert again is not None
            return again
        for j in plan.journals:
            await post_journal(tx, j)
        if plan.settled and not await tx.add_settled(plan.settled):
            # plan_payment settles at most what is due: a refusal is a bug (INTERNAL).
            raise AssertionError("payment settled a claim beyond its approval")
        if plan.now_paid:
            await tx.queue_paid(plan.now_paid)
        paid = await self._settle_invoices(tx, list(plan.settled), p.paid_at)
        return _Posted(await tx.payment(payment_id), invoices_paid=paid)

    @staticmethod
    async def _settle_invoices(
        tx: BillingTx, transaction_ids: Sequence[str], paid_at: datetime
    ) -> tuple[tuple[str, float], ...]:
        """Moves the open invoices holding these claims to PARTIALLY_PAID / PAID;
        returns (insurer, days to pay) of those now PAID."""
        if not transaction_ids:
            return ()
        done: list[tuple[str, float]] = []
        for inv in await tx.lock_open_invoices_of(transaction_ids):
            status = stored_status(inv.total_satang, inv.settled_satang, inv.acknowledged)
            if status == inv.status:
                continue
            if status == "PAID":
                await tx.set_invoice_paid(inv.invoice_id, paid_at)
                days = max(0.0, (paid_at - inv.submitted_at).total_seconds() / 86400)
                done.append((inv.insurer_code, days))
            else:
                await tx.set_invoice_status(inv.invoice_id, status)
        return tuple(done)

    # --- statements ------------------------------------------------------------------
    async def statement(
        self, role: str, code: str, counterparty: str, start: date, end: date
    ) -> StatementOut:
        """The caller's statement with a counterparty (an insurer for a hospital,
        a hospital for an insurer), Bangkok days start..end inclusive."""
        if role == "hospital":
            hospital, insurer = code, check_insurer(counterparty)
        else:
            hospital, insurer = check_hospital(counterparty), code
        check_period(start, end)
        rows = await self.store.statement_rows(
            hospital, insurer, day_start(start), day_start(end + timedelta(days=1))
        )
        aging = aging_of(rows.outstanding, rows.overpayment, end)
        out = build_statement(
            hospital, insurer, start, end, rows.opening, movements_of(rows.journals, rows.invoices), aging, ""
        )
        return replace(out, closing_text_th=baht_text(out.closing))

    # --- corrections -----------------------------------------------------------------
    async def reverse_journal(self, journal_id: int, idem_key: str, effective_at: datetime) -> int:
        """Corrects a posted journal by posting its mirror image (never by editing it)."""

        async def run(tx: BillingTx) -> int:
            j = await tx.journal(journal_id)
            if j is None:
                raise NotFound("no such journal", reason="JOURNAL_NOT_FOUND")
            new_id = await post_journal(tx, _mirror(j, idem_key, effective_at), journal_id)
            # Keep the claims' cached dues in step with the receivable lines.
            deltas: dict[str, int] = {}
            for ln in j.lines:
                if ln.account_kind == "receivable" and ln.transaction_id:
                    deltas[ln.transaction_id] = deltas.get(ln.transaction_id, 0) - ln.amount
            kept = (
                await tx.add_approved(deltas)
                if j.kind == "APPROVAL"
                else await tx.add_settled({t: -d for t, d in deltas.items()})
            )
            if not kept:
                raise FailedPrecondition(
                    "reversal would leave a claim settled beyond approval", reason="REVERSAL_NOT_ALLOWED"
                )
            return new_id

        return await self.store.atomically(run)

    # --- reports ---------------------------------------------------------------------
    async def reconcile(self, month: str) -> Reconciliation:
        """Finance's monthly findings: overpaid or uninvoiced payment lines, claims
        past due at the month's end and overpayments held."""
        first, last = month_bounds(month)
        rows = await self.store.reconciliation_rows(
            day_start(first), day_start(last + timedelta(days=1)), last + timedelta(days=1)
        )
        return Reconciliation(month, _findings(rows))

    async def metrics_snapshot(self, today: date) -> MetricsSnapshot:
        rows = await self.store.metrics_rows()
        by_status: dict[str, int] = {}
        overdue: dict[str, int] = {}
        for inv in rows.invoices:
            st = shown_status(inv.status, inv.due_date, today)
            by_status[st] = by_status.get(st, 0) + 1
            if st == "OVERDUE":
                overdue[inv.insurer_code] = (
                    overdue.get(inv.insurer_code, 0) + inv.total_satang - inv.settled_satang
                )
        return MetricsSnapshot(by_status, dict(rows.owed_by_insurer), overdue)


def _mirror(j: JournalRecord, idem_key: str, effective_at: datetime) -> JournalDraft:
    return JournalDraft(
        idem_key=idem_key,
        kind="REVERSAL",
        hospital_code=j.hospital_code,
        insurer_code=j.insurer_code,
        reference=j.reference,
        description=f"reversal of journal {j.journal_id}",
        effective_at=effective_at,
        lines=tuple(LineDraft(ln.account_kind, -ln.amount, ln.transaction_id) for ln in j.lines),
    )


def _findings(rows: ReconciliationRows) -> list[Finding]:
    found = [
        Finding(
            "UNMATCHED_PAYMENT_LINE",
            r.hospital_code,
            r.insurer_code,
            r.reference,
            r.amount,
            f"line for {r.transaction_id} exceeds what was due on it",
        )
        for r in rows.overpaid_lines
    ]
    found += [
        Finding(
            "UNMATCHED_PAYMENT_LINE",
            r.hospital_code,
            r.insurer_code,
            r.reference,
            0,
            f"line for {r.transaction_id} names no invoiced claim",
        )
        for r in rows.uninvoiced_lines
    ]
    found += [
        Finding(
            "APPROVED_UNPAID_PAST_DUE",
            r.hospital_code,
            r.insurer_code,
            r.transaction_id,
            r.due,
            f"invoice {r.invoice_ref} was due {r.due_date.isoformat()}",
        )
        for r in rows.past_due
    ]
    found += [
        Finding(
            "OVERPAYMENT",
            r.hospital_code,
            r.insurer_code,
            "",
            r.held,
            "held as a liability, owed back to the insurer (recover with WO)",
        )
        for r in rows.overpayments
    ]
    return found
