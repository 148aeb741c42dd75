"""What the use cases hand the store besides rows: an invoice to insert, a
page of invoices to read (plain data, no SQL)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from services.billing.views import InvoiceBasics


@dataclass(frozen=True)
class InvoiceQuery:
    """A page of one party's invoices with one counterparty, in submission order."""

    role: str  # hospital | insurer: whose invoices `code` names
    code: str
    counterparty: str
    status: str | None  # the shown status (OVERDUE is derived); None: any
    today: date  # what OVERDUE is judged against
    after: tuple[datetime, str] | None  # (submitted_at, invoice_id) of the previous page's last
    limit: int


@dataclass(frozen=True)
class NewInvoice(InvoiceBasics):
    """An invoice as issued, before any payment: what the store inserts."""

    request_sha256: str
    status: str  # as stored
    submitted_at: datetime
