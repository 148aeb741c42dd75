"""Read models the use cases return (plain data; the servicers turn them into protos)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from services.billing.domain import PaymentInput


@dataclass(frozen=True)
class InvoiceBasics:
    """What every account of an invoice starts with: who bills whom, for which
    claims, and the total."""

    invoice_id: str
    invoice_ref: str
    hospital_code: str
    insurer_code: str
    transaction_ids: tuple[str, ...]
    total_satang: int


@dataclass(frozen=True)
class InvoiceClaimAmounts:
    """One claim of an invoice: approved, the money paid on it, and what
    payments took off what is due (paid plus adjustments)."""

    transaction_id: str
    approved_satang: int
    paid_satang: int
    settled_satang: int


@dataclass(frozen=True)
class InvoiceView(InvoiceBasics):
    claims: tuple[InvoiceClaimAmounts, ...]
    paid_satang: int
    status: str
    submitted_at: datetime
    acknowledged_at: datetime | None
    due_date: date | None


@dataclass(frozen=True)
class PaymentView:
    payment_id: str
    payment: PaymentInput
    hospital_codes: tuple[str, ...]
    recorded_at: datetime


@dataclass(frozen=True)
class MetricsSnapshot:
    invoices_by_status: dict[str, int]
    outstanding_by_insurer: dict[str, int]
    overdue_by_insurer: dict[str, int]
