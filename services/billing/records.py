"""Rows as the store reads them: plain data, no SQL. The use cases turn them
into decisions and views."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from services.billing.views import InvoiceBasics, InvoiceClaimAmounts, PaymentView
from services.billing.domain import (
    InvoiceIssued,
    JournalEffect,
    LineDraft,
    OutstandingItem,
)


@dataclass(frozen=True)
class JournalRecord:
    journal_id: int
    kind: str
    hospital_code: str
    insurer_code: str
    reference: str
    lines: tuple[LineDraft, ...]


@dataclass(frozen=True)
class InvoiceRecord(InvoiceBasics):
    """An invoice with its claims and what payments settled on them (which may
    exceed the total when claims were invoiced after partial payment)."""

    settled_satang: int
    claims: tuple[InvoiceClaimAmounts, ...]
    status: str  # as stored: never OVERDUE
    submitted_at: datetime
    acknowledged_at: datetime | None
    due_date: date | None


@dataclass(frozen=True)
class InvoiceHead:
    """An invoice row locked for an update."""

    invoice_id: str
    hospital_code: str
    insurer_code: str
    status: str
    acknowledged_at: datetime | None


@dataclass(frozen=True)
class OpenInvoice:
    """An open invoice locked while a payment settles its claims."""

    invoice_id: str
    insurer_code: str
    total_satang: int
    settled_satang: int
    status: str
    acknowledged: bool
    submitted_at: datetime


@dataclass(frozen=True)
class PaymentRecord(PaymentView):
    """What a payer sees of a payment, and the digest of the request that
    posted it (a replay must carry the same)."""

    request_sha256: str


@dataclass(frozen=True)
class StatementRows:
    """Everything a statement of one pair reads, from one snapshot."""

    opening: int  # what the insurer owed before the period
    journals: tuple[JournalEffect, ...]
    invoices: tuple[InvoiceIssued, ...]
    outstanding: tuple[OutstandingItem, ...]  # per claim, as of the period's end
    overpayment: int  # overpayment balance at the period's end (a credit: <= 0)


@dataclass(frozen=True)
class PaymentLineEntry:
    """A payment journal line on one claim (overpaid, or naming no invoiced claim)."""

    hospital_code: str
    insurer_code: str
    reference: str
    transaction_id: str
    amount: int


@dataclass(frozen=True)
class PastDueClaim:
    hospital_code: str
    insurer_code: str
    transaction_id: str
    invoice_ref: str
    due_date: date
    due: int


@dataclass(frozen=True)
class HeldOverpayment:
    hospital_code: str
    insurer_code: str
    held: int


@dataclass(frozen=True)
class ReconciliationRows:
    """Everything a month's reconciliation reads, from one snapshot."""

    overpaid_lines: tuple[PaymentLineEntry, ...]
    uninvoiced_lines: tuple[PaymentLineEntry, ...]
    past_due: tuple[PastDueClaim, ...]
    overpayments: tuple[HeldOverpayment, ...]


@dataclass(frozen=True)
class InvoiceBalance:
    status: str  # as stored
    due_date: date | None
    insurer_code: str
    total_satang: int
    settled_satang: int


@dataclass(frozen=True)
class MetricsRows:
    invoices: tuple[InvoiceBalance, ...]
    owed_by_insurer: dict[str, int]
