"""Billing as the portal shows it (docs/protocol.md §9): invoice status names,
payment forms read into PaymentLines, statements as CSV. No I/O."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime

from iclaim.v1 import billing_service_pb2 as bpb

from iclaim_portal.claims import FormError
from iclaim_portal.formatting import BANGKOK, csv_text, parse_baht

STATUS_PREFIX = "INVOICE_STATUS_"
# X12 CAS claim adjustment groups (§9)
CAS_GROUPS = ("CO", "PR", "OA", "PI", "CR")
# X12 PLB provider adjustment codes (§9)
PLB_CODES = ("WO", "FB", "L6", "72")
MAX_STATEMENT_DAYS = 366
# The clearinghouse's statement periods (it refuses others, DATE_OUT_OF_RANGE).
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2100, 12, 31)
# A year typed after 2400 is a Buddhist-era year (as Thai staff write dates):
# read as the Common Era year 543 earlier. No CE date in range comes near it.
BUDDHIST_ERA_FROM = 2400
BUDDHIST_ERA_OFFSET = 543
_DAY = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
# Counterparty codes as the clearinghouse checks them (services/billing/domain.py):
# a hospital's counterparty is an insurer, an insurer's a hospital.
INSURER_CODE = re.compile(r"[A-Z0-9_]{2,16}")
HOSPITAL_CODE = re.compile(r"[0-9]{5}")
# StatementLine.kind values (§9); pages translate them.
STATEMENT_KINDS = ("INVOICE", "PAYMENT", "ADJUSTMENT", "APPROVAL")


def invoice_status(invoice: bpb.Invoice) -> str:
    return bpb.InvoiceStatus.Name(invoice.status).removeprefix(STATUS_PREFIX)


def new_ref(prefix: str) -> str:
    return f"{prefix}-{datetime.now(BANGKOK):%Y%m%d}-{secrets.token_hex(3).upper()}"


def pb_date(d: object) -> date | None:
    year, month, day = getattr(d, "year", 0), getattr(d, "month", 0), getattr(d, "day", 0)
    return date(year, month, day) if year else None


@dataclass(frozen=True)
class Period:
    start: date
    end: date


def period_from(start: str, end: str, today: date) -> Period:
    """Both inclusive; defaults: the current month up to today. A Buddhist-era
    year (after 2400) is read as its Common Era year."""
    try:
        first = _day(start) if start else today.replace(day=1)
        last = _day(end) if end else today
    except ValueError as exc:
        raise FormError("period", "Enter dates as YYYY-MM-DD.") from exc
    if not (FIRST_DAY <= first <= LAST_DAY and FIRST_DAY <= last <= LAST_DAY):
        raise FormError("period", "Statements cover 2000 to 2100 (B.E. 2543 to 2643).")
    if last < first or (last - first).days > MAX_STATEMENT_DAYS:
        raise FormError("period", "The period must end after it starts and span at most a year.")
    return Period(first, last)


def _day(text: str) -> date:
    """YYYY-MM-DD, the year in the Common or the Buddhist era (converted before
    the date is built: 2567-02-29 is 29 Feb 2024)."""
    found = _DAY.fullmatch(text.strip())
    if found is None:
        raise ValueError(text)
    year, month, day = (int(g) for g in found.groups())
    if year > BUDDHIST_ERA_FROM:
        year -= BUDDHIST_ERA_OFFSET
    return date(year, month, day)


def is_counterparty(code: str, hospital_side: bool) -> bool:
    """Whether `code` has the form the clearinghouse accepts for this side's counterparty."""
    return (INSURER_CODE if hospital_side else HOSPITAL_CODE).fullmatch(code) is not None


def payment_lines(form: dict[str, str], transaction_ids: list[str]) -> list[bpb.PaymentLine]:
    """One line per claim of the invoice: `paid_<tid>` in baht, and optionally one
    CAS adjustment `adj_group_<tid>`, `adj_reason_<tid>`, `adj_amount_<tid>`."""
    lines: list[bpb.PaymentLine] = []
    for tid in transaction_ids:
        paid_text = form.get(f"paid_{tid}", "").strip()
        adj_text = form.get(f"adj_amount_{tid}", "").strip()
        if not paid_text and not adj_text:
            continue
        try:
            paid = parse_baht(paid_text or "0")
            adj_amount = parse_baht(adj_text or "0")
        except ValueError as exc:
            raise FormError(f"paid_{tid}", "Enter the amounts in baht (not negative).") from exc
        line = bpb.PaymentLine(transaction_id=tid, paid_satang=paid)
        if adj_amount:
            group = form.get(f"adj_group_{tid}", "")
            reason = form.get(f"adj_reason_{tid}", "").strip().upper()
            if group not in CAS_GROUPS or not reason.isalnum() or len(reason) > 8:
                raise FormError(f"adj_group_{tid}", "An adjustment needs a CAS group and a reason code.")
            line.adjustments.append(bpb.Adjustment(group=group, reason_code=reason, amount_satang=adj_amount))
        lines.append(line)
    if not lines:
        raise FormError("lines", "Enter at least one amount paid.")
    return lines


def provider_adjustments(form: dict[str, str]) -> list[bpb.ProviderAdjustment]:
    """At most one PLB adjustment from the form (`plb_code`, `plb_reference`,
    `plb_amount` in baht; negative e.g. for interest paid to the hospital)."""
    text = form.get("plb_amount", "").strip()
    if not text:
        return []
    negative = text.startswith("-")
    try:
        amount = parse_baht(text.removeprefix("-"))
    except ValueError as exc:
        raise FormError("plb_amount", "Enter the adjustment in baht.") from exc
    code = form.get("plb_code", "")
    reference = form.get("plb_reference", "").strip()
    if code not in PLB_CODES or not reference or len(reference) > 64:
        raise FormError("plb_code", "A provider adjustment needs a PLB code and a reference.")
    return [
        bpb.ProviderAdjustment(code=code, reference=reference, amount_satang=-amount if negative else amount)
    ]


def statement_csv(statement: bpb.Statement) -> str:
    """Amounts in satang and in baht (exact), times in ISO 8601 with the Bangkok offset."""
    return csv_text(
        [
            [
                "occurred_at",
                "kind",
                "reference",
                "description",
                "amount_satang",
                "amount_thb",
                "running_balance_satang",
            ],
            ["", "OPENING", "", "", "", "", statement.opening_balance_satang],
            *(
                [
                    line.occurred_at.ToDatetime(tzinfo=UTC).astimezone(BANGKOK).isoformat(),
                    line.kind,
                    line.reference,
                    line.description,
                    line.amount_satang,
                    _thb(line.amount_satang),
                    line.running_balance_satang,
                ]
                for line in statement.lines
            ),
            ["", "CLOSING", "", "", "", "", statement.closing_balance_satang],
        ]
    )


def _thb(satang: int) -> str:
    sign = "-" if satang < 0 else ""
    whole, st = divmod(abs(satang), 100)
    return f"{sign}{whole}.{st:02d}"
