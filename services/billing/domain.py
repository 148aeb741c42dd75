"""Billing rules (PROTOCOL.md §9) as pure functions: validation, what each event
posts to the ledger, invoice status and statement arithmetic. No grpc, no SQL.

Ledger (per hospital–insurer pair; a line is + debit, - credit, in satang):
  approval   Dr receivable A            / Cr revenue A
  payment    Dr cash P, Dr adj_<group> J / Cr receivable (up to what is due),
                                          Cr overpayment (the excess)
  WO/FB      Dr overpayment R           / Cr cash R   (recovering an overpayment)
  L6/72      Dr cash -a                 / Cr plb_<code> -a
What the insurer owes the hospital = receivable + overpayment (overpayment is a
credit balance, so it counts against).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from iclaim.errors import FailedPrecondition, InvalidArgument, NotFound

BANGKOK = ZoneInfo("Asia/Bangkok")
MAX_SATANG = 10**15
MAX_LINES = 1000
# Decisions per RecordClaimDecisions call (the router's relay sends at most 200).
MAX_DECISIONS_PER_CALL = 500
DEFAULT_CREDIT_DAYS = 15
DEFAULT_PAGE = 50
MAX_PAGE = 500
MIN_DATE = date(2000, 1, 1)
MAX_DATE = date(2100, 12, 31)
CAS_GROUPS = frozenset({"CO", "PR", "OA", "PI", "CR"})
PLB_CODES = frozenset({"WO", "FB", "L6", "72"})
RECOVERY_CODES = frozenset({"WO", "FB"})
APPROVED_STATES = frozenset({"APPROVED", "PARTIALLY_APPROVED"})
FINAL_STATES = APPROVED_STATES | {"DENIED"}
OPEN_STATUSES = frozenset({"SUBMITTED", "ACKNOWLEDGED", "PARTIALLY_PAID"})

_HOSPITAL = re.compile(r"^[0-9]{5}$")
_INSURER = re.compile(r"^[A-Z0-9_]{2,16}$")
_REF = re.compile(r"^[A-Za-z0-9._/:-]{1,64}$")
_REASON = re.compile(r"^[A-Za-z0-9]{1,8}$")
_INVOICE_ID = re.compile(r"inv_[0-9a-f]{32}")
# A token this service issues is ~90 characters; far longer ones are not ours.
MAX_PAGE_TOKEN = 512


def offending(message: str, reason: str, problems: Mapping[str, str]) -> FailedPrecondition:
    """Precondition failure naming the offending transaction ids (and why) in
    ErrorInfo metadata: transaction_ids="a,b", and one key per id."""
    ids = sorted(problems)
    meta = {"transaction_ids": ",".join(ids)}
    for tx in ids[:50]:
        meta[f"tx_{_meta_key(tx)}"] = problems[tx]
    return FailedPrecondition(f"{message}: {', '.join(ids)}", reason=reason, metadata=meta)


def _meta_key(tx: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", tx)[:60]


# --- validation helpers ---------------------------------------------------------
def check_amount(value: int, what: str, *, allow_negative: bool = False) -> int:
    if not -MAX_SATANG <= value <= MAX_SATANG:
        raise InvalidArgument(f"{what} out of range (|amount| <= 10^15 satang)", reason="AMOUNT_OUT_OF_RANGE")
    if value < 0 and not allow_negative:
        raise InvalidArgument(f"{what} must not be negative", reason="NEGATIVE_AMOUNT")
    return value


def check_sum(values: Iterable[int], what: str) -> int:
    total = 0
    for v in values:
        total += v
        if not -MAX_SATANG <= total <= MAX_SATANG:
            raise InvalidArgument(f"{what} overflows (|sum| <= 10^15 satang)", reason="AMOUNT_OUT_OF_RANGE")
    return total


def check_hospital(code: str) -> str:
    if not _HOSPITAL.fullmatch(code):
        raise InvalidArgument("hospital code must be 5 digits", reason="INVALID_HOSPITAL_CODE")
    return code


def check_insurer(code: str) -> str:
    if not _INSURER.fullmatch(code):
        raise InvalidArgument("insurer code must be 2-16 of [A-Z0-9_]", reason="INVALID_INSURER_CODE")
    return code


def is_party_code(code: str, role: str) -> bool:
    """Whether `code` has the form of a `role`'s code ("hospital" or "insurer")."""
    return (_HOSPITAL if role == "hospital" else _INSURER).fullmatch(code) is not None


def check_ref(value: str, what: str, reason: str) -> str:
    if not _REF.fullmatch(value):
        raise InvalidArgument(f"{what} must be 1-64 of [A-Za-z0-9._/:-]", reason=reason)
    return value


def check_transaction_id(tx: str) -> str:
    if not tx or len(tx) > 128 or not tx.isprintable() or tx.strip() != tx:
        raise InvalidArgument(
            "transaction_id must be 1-128 printable characters", reason="INVALID_TRANSACTION_ID"
        )
    return tx


def check_timestamp(ts: datetime, what: str, now: datetime) -> datetime:
    if ts.tzinfo is None:
        raise InvalidArgument(f"{what} needs a time zone", reason="DATE_OUT_OF_RANGE")
    if not (datetime.combine(MIN_DATE, time(), BANGKOK) <= ts <= now + timedelta(days=1)):
        raise InvalidArgument(f"{what} out of range (2000-01-01 .. tomorrow)", reason="DATE_OUT_OF_RANGE")
    return ts


def check_period(start: date, end: date) -> None:
    if not (MIN_DATE <= start <= MAX_DATE and MIN_DATE <= end <= MAX_DATE):
        raise InvalidArgument(
            "period dates must be within 2000-01-01 .. 2100-12-31", reason="DATE_OUT_OF_RANGE"
        )
    if start > end:
        raise InvalidArgument("period_start is after period_end", reason="DATE_OUT_OF_RANGE")


def bangkok_date(ts: datetime) -> date:
    return ts.astimezone(BANGKOK).date()


def day_start(d: date) -> datetime:
    """00:00 Asia/Bangkok of d, as an aware datetime."""
    return datetime.combine(d, time(), BANGKOK)


def sha256_json(obj: object) -> str:
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


# --- ledger drafts ------------------------------------------------------------
@dataclass(frozen=True)
class LineDraft:
    account_kind: str
    amount: int  # + debit, - credit
    transaction_id: str | None = None


@dataclass(frozen=True)
class JournalDraft:
    idem_key: str
    kind: str  # APPROVAL | PAYMENT | ADJUSTMENT | REVERSAL
    hospital_code: str
    insurer_code: str
    reference: str
    description: str
    effective_at: datetime
    lines: tuple[LineDraft, ...]

    @property
    def content_sha256(self) -> str:
        return sha256_json(
            {
                "kind": self.kind,
                "pair": [self.hospital_code, self.insurer_code],
                "reference": self.reference,
                "effective_at": self.effective_at.isoformat(),
                "lines": [[ln.account_kind, ln.amount, ln.transaction_id] for ln in self.lines],
            }
        )

    def check_balanced(self) -> None:
        if sum(ln.amount for ln in self.lines) != 0 or len(self.lines) < 2:
            raise AssertionError(f"unbalanced journal draft {self.idem_key}")


# --- decisions ----------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    transaction_id: str
    hospital_code: str
    insurer_code: str
    state: str  # APPROVED | PARTIALLY_APPROVED | DENIED (others are ignored)
    approved_satang: int
    decided_at: datetime

    def same_as(self, other: Decision) -> bool:
        return (self.hospital_code, self.insurer_code, self.state, self.approved_satang) == (
            other.hospital_code,
            other.insurer_code,
            other.state,
            other.approved_satang,
        )


@dataclass(frozen=True)
class DecisionReport:
    """A claim decision as the claim router reports it, not yet validated."""

    transaction_id: str
    hospital_code: str
    insurer_code: str
    state: str | None  # the claim state's name; None: a state this build does not know
    approved_satang: int
    decided_at: datetime | None  # None: not given (it is decided when it arrives)
    decided_at_out_of_range: bool = False  # given, but no representable time


def decision_of(r: DecisionReport, now: datetime) -> Decision | None:
    """The decision to record, or None for a state billing ignores (pending
    review, paid echoes): redelivery and reordering are expected."""
    check_transaction_id(r.transaction_id)
    check_hospital(r.hospital_code)
    check_insurer(r.insurer_code)
    if r.state is None:
        raise InvalidArgument("unknown claim state", reason="INVALID_STATE")
    if r.state not in FINAL_STATES:
        return None
    amount = check_amount(r.approved_satang, "approved_satang")
    if r.decided_at_out_of_range:
        raise InvalidArgument("decided_at is out of range", reason="DATE_OUT_OF_RANGE")
    decided = check_timestamp(r.decided_at or now, "decided_at", now)
    return Decision(
        r.transaction_id,
        r.hospital_code,
        r.insurer_code,
        r.state,
        amount if r.state != "DENIED" else 0,
        decided,
    )


def approval_journal(d: Decision) -> JournalDraft | None:
    if d.state not in APPROVED_STATES or d.approved_satang == 0:
        return None
    a = d.approved_satang
    return JournalDraft(
        idem_key=f"approval:{d.transaction_id}",
        kind="APPROVAL",
        hospital_code=d.hospital_code,
        insurer_code=d.insurer_code,
        reference=d.transaction_id,
        description=f"claim {d.transaction_id} {d.state.lower().replace('_', ' ')}",
        effective_at=d.decided_at,
        lines=(
            LineDraft("receivable", a, d.transaction_id),
            LineDraft("revenue", -a, d.transaction_id),
        ),
    )


# --- claims and invoices ---------------------------------------------------------
@dataclass(frozen=True)
class ClaimDue:
    transaction_id: str
    hospital_code: str
    insurer_code: str
    state: str
    approved_satang: int
    settled_satang: int

    @property
    def remaining(self) -> int:
        return self.approved_satang - self.settled_satang


def plan_invoice(
    hospital: str,
    insurer: str,
    transaction_ids: Sequence[str],
    claims: Mapping[str, ClaimDue],
    open_invoice_of: Mapping[str, str],
) -> int:
    """Returns the invoice total, or refuses naming every offending claim."""
    problems: dict[str, str] = {}
    total = 0
    for tx in transaction_ids:
        c = claims.get(tx)
        if c is None or c.hospital_code != hospital or c.state not in APPROVED_STATES:
            problems[tx] = "NOT_APPROVED"  # also another hospital's claim: no enumeration
        elif c.insurer_code != insurer:
            problems[tx] = "OTHER_INSURER"
        elif tx in open_invoice_of:
            problems[tx] = "ON_OPEN_INVOICE"
        elif c.remaining <= 0:
            problems[tx] = "NOTHING_DUE"
        else:
            total += c.approved_satang
    if problems:
        raise offending("claims cannot be invoiced", "CLAIMS_NOT_INVOICEABLE", problems)
    return check_sum([total], "invoice total")


def check_invoice_request(ref: str, insurer: str, transaction_ids: Sequence[str]) -> None:
    check_ref(ref, "invoice_ref", "INVALID_INVOICE_REF")
    check_insurer(insurer)
    if not transaction_ids:
        raise InvalidArgument("transaction_ids is empty", reason="NO_TRANSACTION_IDS")
    if len(transaction_ids) > MAX_LINES:
        raise InvalidArgument(f"at most {MAX_LINES} claims per invoice", reason="TOO_MANY_LINES")
    for tx in transaction_ids:
        check_transaction_id(tx)
    if len(set(transaction_ids)) != len(transaction_ids):
        raise InvalidArgument("a transaction_id is listed twice", reason="DUPLICATE_TRANSACTION_ID")


MAX_VOID_REASON = 256


def check_void_reason(reason: str) -> str:
    """Free text kept with the invoice for the parties; never logged."""
    if len(reason) > MAX_VOID_REASON or not reason.isprintable():
        raise InvalidArgument(
            f"reason must be at most {MAX_VOID_REASON} printable characters", reason="INVALID_VOID_REASON"
        )
    return reason


def check_voidable(settled_on_claims: int) -> None:
    """§9: an invoice is voided only before any payment on it, i.e. while no
    payment has settled anything on its claims (Invoice.paid_satang is 0)."""
    if settled_on_claims > 0:
        raise FailedPrecondition(
            "payments have been applied to this invoice's claims: it cannot be voided",
            reason="INVOICE_HAS_PAYMENTS",
        )


def page_size_of(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", reason="INVALID_PAGE_SIZE")
    return min(requested or DEFAULT_PAGE, MAX_PAGE)


def page_token(submitted_at: datetime, invoice_id: str) -> str:
    """Where the next page of invoices starts (they are listed by submission)."""
    raw = json.dumps([submitted_at.isoformat(), invoice_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_start(token: str) -> tuple[datetime, str] | None:
    """The (submitted_at, invoice_id) a page_token names; None: the first page.
    Anything else, however made, is INVALID_PAGE_TOKEN: its parts reach SQL."""
    if not token:
        return None
    try:
        if len(token) > MAX_PAGE_TOKEN:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        ts, iid = json.loads(raw)
        at = datetime.fromisoformat(ts)
        if at.tzinfo is None or not isinstance(iid, str) or not is_invoice_id(iid):
            raise ValueError("not a cursor of ours")
        at.astimezone(UTC)  # OverflowError near the calendar's ends
        return at, iid
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidArgument(
            "page_token is not one this service issued", reason="INVALID_PAGE_TOKEN"
        ) from None


def is_invoice_id(value: str) -> bool:
    """The form of the ids this service issues (CreateInvoice)."""
    return _INVOICE_ID.fullmatch(value) is not None


def check_invoice_id(value: str) -> str:
    """An id not of that form names no invoice: as absent as a missing one."""
    if not is_invoice_id(value):
        raise NotFound("no such invoice", reason="INVOICE_NOT_FOUND")
    return value


def stored_status(total: int, paid: int, acknowledged: bool, voided: bool = False) -> str:
    if voided:
        return "VOID"
    if paid >= total:
        return "PAID"
    if paid > 0:
        return "PARTIALLY_PAID"
    return "ACKNOWLEDGED" if acknowledged else "SUBMITTED"


def shown_status(stored: str, due_date: date | None, today: date) -> str:
    """OVERDUE is derived: an open invoice past its due date."""
    if stored in OPEN_STATUSES and due_date is not None and today > due_date:
        return "OVERDUE"
    return stored


def due_date_for(acknowledged_at: datetime, credit_days: int) -> date:
    return bangkok_date(acknowledged_at) + timedelta(days=credit_days)


# --- payments -----------------------------------------------------------------
@dataclass(frozen=True)
class Adjustment:
    group: str
    reason_code: str
    amount: int


@dataclass(frozen=True)
class PaymentLine:
    transaction_id: str
    paid: int
    adjustments: tuple[Adjustment, ...] = ()

    @property
    def settles(self) -> int:
        return self.paid + sum(a.amount for a in self.adjustments)


@dataclass(frozen=True)
class ProviderAdjustment:
    code: str
    reference: str
    amount: int
    hospital_code: str = ""


@dataclass(frozen=True)
class PaymentInput:
    insurer_code: str
    trace_no: str
    paid_at: datetime
    total: int
    lines: tuple[PaymentLine, ...]
    provider_adjustments: tuple[ProviderAdjustment, ...] = ()

    def canonical(self) -> dict[str, object]:
        return {
            "trace_no": self.trace_no,
            "paid_at": self.paid_at.astimezone(BANGKOK).isoformat(),
            "total_satang": self.total,
            "lines": [
                {
                    "transaction_id": ln.transaction_id,
                    "paid_satang": ln.paid,
                    "adjustments": [
                        {"group": a.group, "reason_code": a.reason_code, "amount_satang": a.amount}
                        for a in ln.adjustments
                    ],
                }
                for ln in self.lines
            ],
            "provider_adjustments": [
                {
                    "code": p.code,
                    "reference": p.reference,
                    "amount_satang": p.amount,
                    "hospital_code": p.hospital_code,
                }
                for p in self.provider_adjustments
            ],
        }

    @property
    def content_sha256(self) -> str:
        return sha256_json(self.canonical())


def payment_from_canonical(insurer: str, body: Mapping[str, object]) -> PaymentInput:
    lines = body["lines"]
    plbs = body["provider_adjustments"]
    assert isinstance(lines, list) and isinstance(plbs, list)
    return PaymentInput(
        insurer_code=insurer,
        trace_no=str(body["trace_no"]),
        paid_at=datetime.fromisoformat(str(body["paid_at"])),
        total=int(str(body["total_satang"])),
        lines=tuple(
            PaymentLine(
                ln["transaction_id"],
                ln["paid_satang"],
                tuple(
                    Adjustment(a["group"], a["reason_code"], a["amount_satang"]) for a in ln["adjustments"]
                ),
            )
            for ln in lines
        ),
        provider_adjustments=tuple(
            ProviderAdjustment(p["code"], p["reference"], p["amount_satang"], p["hospital_code"])
            for p in plbs
        ),
    )


def validate_payment(p: PaymentInput, now: datetime) -> None:
    """Everything that can be checked without the ledger. Refuses; changes nothing."""
    check_ref(p.trace_no, "trace_no", "INVALID_TRACE_NO")
    check_timestamp(p.paid_at, "paid_at", now)
    check_amount(p.total, "total_satang")
    if not p.lines and not p.provider_adjustments:
        raise InvalidArgument("a payment needs lines or provider adjustments", reason="EMPTY_PAYMENT")
    if len(p.lines) > MAX_LINES or len(p.provider_adjustments) > MAX_LINES:
        raise InvalidArgument(f"at most {MAX_LINES} lines per payment", reason="TOO_MANY_LINES")
    seen: set[str] = set()
    for ln in p.lines:
        check_transaction_id(ln.transaction_id)
        if ln.transaction_id in seen:
            raise InvalidArgument(f"claim {ln.transaction_id} appears on two lines", reason="DUPLICATE_LINE")
        seen.add(ln.transaction_id)
        check_amount(ln.paid, "paid_satang")
        for a in ln.adjustments:
            if a.group not in CAS_GROUPS:
                raise InvalidArgument(
                    "adjustment group must be CO, PR, OA, PI or CR", reason="INVALID_ADJUSTMENT"
                )
            if not _REASON.fullmatch(a.reason_code):
                raise InvalidArgument(
                    "adjustment reason_code must be 1-8 alphanumerics", reason="INVALID_ADJUSTMENT"
                )
            check_amount(a.amount, "adjustment amount", allow_negative=True)
            if a.amount == 0:
                raise InvalidArgument("adjustment amount must not be zero", reason="INVALID_ADJUSTMENT")
        settles = check_sum([ln.paid, *(a.amount for a in ln.adjustments)], "line")
        if settles < 0:
            raise InvalidArgument(
                f"line for {ln.transaction_id} settles a negative amount", reason="NEGATIVE_AMOUNT"
            )
    for plb in p.provider_adjustments:
        if plb.code not in PLB_CODES:
            raise InvalidArgument(
                "provider adjustment code must be WO, FB, L6 or 72", reason="INVALID_PROVIDER_ADJUSTMENT"
            )
        if len(plb.reference) > 64 or not plb.reference.isprintable():
            raise InvalidArgument(
                "provider adjustment reference too long", reason="INVALID_PROVIDER_ADJUSTMENT"
            )
        check_amount(plb.amount, "provider adjustment amount", allow_negative=True)
        if plb.amount == 0:
            raise InvalidArgument(
                "provider adjustment amount must not be zero", reason="INVALID_PROVIDER_ADJUSTMENT"
            )
        if plb.code in RECOVERY_CODES and plb.amount < 0:
            raise InvalidArgument(
                f"{plb.code} recovers an overpayment: amount must be positive",
                reason="INVALID_PROVIDER_ADJUSTMENT",
            )
        if plb.hospital_code:
            check_hospital(plb.hospital_code)
    paid = check_sum([ln.paid for ln in p.lines], "lines")
    plb_sum = check_sum([a.amount for a in p.provider_adjustments], "provider adjustments")
    if check_sum([paid, -plb_sum], "payment") != p.total:
        raise InvalidArgument(
            f"total_satang {p.total} != lines {paid} - provider adjustments {plb_sum}",
            reason="PAYMENT_UNBALANCED",
        )


@dataclass
class PaymentPlan:
    journals: list[JournalDraft]
    settled: dict[str, int]  # transaction_id -> amount taken off what is due
    now_paid: list[str]  # claims with nothing left due after this payment
    hospitals: list[str]


def _payment_journal(
    p: PaymentInput, hospital: str, key: str, kind: str, description: str, lines: tuple[LineDraft, ...]
) -> JournalDraft:
    """One journal of payment `p` for one hospital, referenced by the payment's
    trace number; `key` tells the payment's journals apart (idempotency)."""
    return JournalDraft(
        idem_key=f"payment:{p.insurer_code}:{p.trace_no}:{key}",
        kind=kind,
        hospital_code=hospital,
        insurer_code=p.insurer_code,
        reference=p.trace_no,
        description=description,
        effective_at=p.paid_at,
        lines=lines,
    )


def plan_payment(
    p: PaymentInput,
    claims: Mapping[str, ClaimDue],
    overpayment_held: Mapping[str, int],
) -> PaymentPlan:
    """What a validated payment posts, given the current dues of its claims and
    the overpayment held per hospital (positive = owed back to the insurer)."""
    problems = {
        ln.transaction_id: "NOT_PAYABLE"
        for ln in p.lines
        if (c := claims.get(ln.transaction_id)) is None
        or c.insurer_code != p.insurer_code
        or c.state not in APPROVED_STATES
    }
    if problems:
        raise offending(
            "lines name claims that are not this insurer's approved claims", "CLAIMS_NOT_PAYABLE", problems
        )
    hospitals = sorted({claims[ln.transaction_id].hospital_code for ln in p.lines})
    by_hospital: dict[str, list[LineDraft]] = {}
    settled: dict[str, int] = {}
    now_paid: list[str] = []
    held = {h: overpayment_held.get(h, 0) for h in hospitals}
    for ln in p.lines:
        c = claims[ln.transaction_id]
        tx = c.transaction_id
        drafts = by_hospital.setdefault(c.hospital_code, [])
        if ln.paid:
            drafts.append(LineDraft("cash", ln.paid, tx))
        for a in ln.adjustments:
            drafts.append(LineDraft(f"adj_{a.group}", a.amount, tx))
        s = ln.settles
        applied = min(s, c.remaining)
        excess = s - applied
        if applied:
            drafts.append(LineDraft("receivable", -applied, tx))
            settled[tx] = applied
            if applied == c.remaining:
                now_paid.append(tx)
        if excess:
            drafts.append(LineDraft("overpayment", -excess, tx))
            held[c.hospital_code] = held.get(c.hospital_code, 0) + excess
    journals = [
        _payment_journal(p, h, h, "PAYMENT", f"payment {p.trace_no}", tuple(by_hospital[h]))
        for h in hospitals
        if by_hospital[h] and any(d.amount for d in by_hospital[h])
    ]
    # Lines that settle 0 (paid 0, no adjustments) post nothing.
    journals = [j for j in journals if len(j.lines) >= 2]
    all_hospitals = set(hospitals)
    for i, plb in enumerate(p.provider_adjustments):
        h = plb.hospital_code
        if not h:
            if len(hospitals) != 1:
                raise InvalidArgument(
                    "provider adjustment needs hospital_code unless the lines name one hospital",
                    reason="PROVIDER_ADJUSTMENT_HOSPITAL_REQUIRED",
                )
            h = hospitals[0]
        all_hospitals.add(h)
        if plb.code in RECOVERY_CODES:
            have = held.get(h, overpayment_held.get(h, 0))
            if plb.amount > have:
                raise FailedPrecondition(
                    f"{plb.code} recovers {plb.amount} but only {have} is held as overpayment "
                    f"for hospital {h}",
                    reason="NOTHING_TO_RECOVER",
                    metadata={"hospital_code": h, "held_satang": str(have)},
                )
            held[h] = have - plb.amount
            lines = (LineDraft("overpayment", plb.amount), LineDraft("cash", -plb.amount))
        else:
            lines = (LineDraft("cash", -plb.amount), LineDraft(f"plb_{plb.code}", plb.amount))
        description = f"{plb.code} {plb.reference}".strip()
        journals.append(_payment_journal(p, h, f"plb:{i}", "ADJUSTMENT", description, lines))
    for j in journals:
        j.check_balanced()
    return PaymentPlan(journals, settled, now_paid, sorted(all_hospitals))


# --- statements -----------------------------------------------------------------
@dataclass(frozen=True)
class Movement:
    """One statement line before running balances: amount is the change in what
    the insurer owes the hospital."""

    occurred_at: datetime
    kind: str
    reference: str
    description: str
    amount: int


@dataclass(frozen=True)
class JournalEffect:
    """A posted journal as a statement sees it: `effect` is its change in what
    the insurer owes, `adjustments` the claim adjustments (adj_*) it carries."""

    effective_at: datetime
    kind: str
    reference: str
    description: str
    effect: int
    adjustments: int


@dataclass(frozen=True)
class InvoiceIssued:
    """An invoice submitted, or (voided) withdrawn, at `at`."""

    at: datetime
    invoice_ref: str
    total_satang: int
    claims: int
    voided: bool = False


def movements_of(journals: Iterable[JournalEffect], invoices: Iterable[InvoiceIssued]) -> list[Movement]:
    """Statement lines: a payment with claim adjustments shows the adjustments
    on a line of their own; an invoice changes nothing (approval already did)."""
    out: list[Movement] = []
    for j in journals:
        kind = j.kind if j.kind in ("APPROVAL", "PAYMENT") else "ADJUSTMENT"
        if kind == "PAYMENT" and j.adjustments:
            out.append(
                Movement(j.effective_at, "PAYMENT", j.reference, j.description, j.effect + j.adjustments)
            )
            out.append(
                Movement(
                    j.effective_at,
                    "ADJUSTMENT",
                    j.reference,
                    f"claim adjustments on {j.description}",
                    -j.adjustments,
                )
            )
        else:
            out.append(Movement(j.effective_at, kind, j.reference, j.description, j.effect))
    for inv in invoices:
        amount = f"{inv.total_satang // 100:,}.{inv.total_satang % 100:02d} THB"
        if inv.voided:
            # Voiding changes nothing owed either: its claims stay owed, to be invoiced again.
            text = (
                f"invoice {inv.invoice_ref} voided: {inv.claims} claims, {amount} (still owed from approval)"
            )
        else:
            text = f"invoice {inv.invoice_ref}: {inv.claims} claims, {amount} (already owed from approval)"
        out.append(Movement(inv.at, "INVOICE", inv.invoice_ref, text, 0))
    return out


@dataclass(frozen=True)
class StatementLineOut:
    occurred_at: datetime
    kind: str
    reference: str
    description: str
    amount: int
    running_balance: int


@dataclass(frozen=True)
class AgingOut:
    current: int = 0
    d1_30: int = 0
    d31_60: int = 0
    d61_90: int = 0
    over_90: int = 0

    @property
    def total(self) -> int:
        return self.current + self.d1_30 + self.d31_60 + self.d61_90 + self.over_90


@dataclass(frozen=True)
class OutstandingItem:
    amount: int  # what remains due on a claim as of the statement's end
    due_date: date | None


@dataclass(frozen=True)
class StatementOut:
    hospital_code: str
    insurer_code: str
    period_start: date
    period_end: date
    opening: int
    closing: int
    lines: tuple[StatementLineOut, ...]
    aging: AgingOut
    closing_text_th: str


def aging_of(items: Iterable[OutstandingItem], overpayment: int, as_of: date) -> AgingOut:
    """Buckets by days past due as of `as_of`. An overpayment held (a negative
    amount here) is current: it is owed back now."""
    b = {"current": overpayment, "d1_30": 0, "d31_60": 0, "d61_90": 0, "over_90": 0}
    for it in items:
        days = (as_of - it.due_date).days if it.due_date is not None else 0
        key = (
            "current"
            if days <= 0
            else "d1_30"
            if days <= 30
            else "d31_60"
            if days <= 60
            else "d61_90"
            if days <= 90
            else "over_90"
        )
        b[key] += it.amount
    return AgingOut(**b)


def build_statement(
    hospital: str,
    insurer: str,
    start: date,
    end: date,
    opening: int,
    movements: Sequence[Movement],
    aging: AgingOut,
    text_th: str,
) -> StatementOut:
    running = opening
    out: list[StatementLineOut] = []
    for m in sorted(movements, key=lambda m: m.occurred_at):
        running += m.amount
        out.append(StatementLineOut(m.occurred_at, m.kind, m.reference, m.description, m.amount, running))
    return StatementOut(hospital, insurer, start, end, opening, running, tuple(out), aging, text_th)


# --- reconciliation ---------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    kind: str  # UNMATCHED_PAYMENT_LINE | APPROVED_UNPAID_PAST_DUE | OVERPAYMENT
    hospital_code: str
    insurer_code: str
    reference: str
    amount: int
    detail: str


@dataclass
class Reconciliation:
    month: str
    findings: list[Finding] = field(default_factory=list)


def month_bounds(month: str) -> tuple[date, date]:
    m = re.match(r"^(\d{4})-(\d{2})$", month)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise InvalidArgument("month must be YYYY-MM", reason="DATE_OUT_OF_RANGE")
    first = date(int(m.group(1)), int(m.group(2)), 1)
    nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    check_period(first, nxt - timedelta(days=1))
    return first, nxt - timedelta(days=1)
