"""Pure billing rules: payment validation, what a payment posts, invoice status,
aging and statements."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from iclaim.errors import FailedPrecondition, InvalidArgument
from services.billing.domain import (
    Adjustment,
    ClaimDue,
    Decision,
    Movement,
    OutstandingItem,
    PaymentInput,
    PaymentLine,
    ProviderAdjustment,
    aging_of,
    approval_journal,
    build_statement,
    due_date_for,
    month_bounds,
    plan_invoice,
    plan_payment,
    shown_status,
    stored_status,
    validate_payment,
)

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def claim(
    tx: str,
    approved: int,
    settled: int = 0,
    *,
    hospital: str = "10670",
    insurer: str = "AIA",
    state: str = "APPROVED",
) -> ClaimDue:
    return ClaimDue(tx, hospital, insurer, state, approved, settled)


def payment(
    *lines: PaymentLine, plbs: tuple[ProviderAdjustment, ...] = (), total: int | None = None
) -> PaymentInput:
    if total is None:
        total = sum(ln.paid for ln in lines) - sum(p.amount for p in plbs)
    return PaymentInput("AIA", "TRC1", NOW, total, tuple(lines), plbs)


def test_unbalanced_payment_is_refused() -> None:
    with pytest.raises(InvalidArgument) as e:
        validate_payment(payment(PaymentLine("t1", 100), total=99), NOW)
    assert e.value.reason == "PAYMENT_UNBALANCED"


def test_negative_interest_balances_against_total() -> None:
    p = payment(PaymentLine("t1", 100), plbs=(ProviderAdjustment("L6", "int", -5),))
    assert p.total == 105
    validate_payment(p, NOW)


@pytest.mark.parametrize(
    ("p", "reason"),
    [
        (payment(PaymentLine("t1", -1)), "NEGATIVE_AMOUNT"),
        (payment(PaymentLine("t1", 10**15 + 1)), "AMOUNT_OUT_OF_RANGE"),
        (
            payment(PaymentLine("t1", 6 * 10**14), PaymentLine("t2", 6 * 10**14), total=0),
            "AMOUNT_OUT_OF_RANGE",
        ),
        (payment(PaymentLine("t1", 1), PaymentLine("t1", 1)), "DUPLICATE_LINE"),
        (payment(PaymentLine("t1", 1, (Adjustment("ZZ", "1", 1),))), "INVALID_ADJUSTMENT"),
        (payment(PaymentLine("t1", 1, (Adjustment("CO", "1", -5),))), "NEGATIVE_AMOUNT"),
        (
            payment(PaymentLine("t1", 10), plbs=(ProviderAdjustment("WO", "x", -1),)),
            "INVALID_PROVIDER_ADJUSTMENT",
        ),
        (
            payment(PaymentLine("t1", 10), plbs=(ProviderAdjustment("ZZ", "x", 1),)),
            "INVALID_PROVIDER_ADJUSTMENT",
        ),
        (payment(), "EMPTY_PAYMENT"),
    ],
)
def test_bad_payment_content_is_refused(p: PaymentInput, reason: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        validate_payment(p, NOW)
    assert e.value.reason == reason


def test_payment_dates_out_of_range() -> None:
    for when in (datetime(1999, 12, 31, tzinfo=UTC), NOW + timedelta(days=2)):
        p = PaymentInput("AIA", "T", when, 1, (PaymentLine("t1", 1),))
        with pytest.raises(InvalidArgument) as e:
            validate_payment(p, NOW)
        assert e.value.reason == "DATE_OUT_OF_RANGE"


def test_payment_settles_due_and_holds_the_excess_as_overpayment() -> None:
    p = payment(PaymentLine("t1", 900, (Adjustment("CO", "45", 100),)), PaymentLine("t2", 700))
    plan = plan_payment(p, {"t1": claim("t1", 1_000), "t2": claim("t2", 500, 100)}, {})
    assert plan.settled == {"t1": 1_000, "t2": 400}
    assert sorted(plan.now_paid) == ["t1", "t2"]
    (j,) = plan.journals
    by_kind: dict[str, int] = {}
    for ln in j.lines:
        by_kind[ln.account_kind] = by_kind.get(ln.account_kind, 0) + ln.amount
    assert by_kind == {"cash": 1_600, "adj_CO": 100, "receivable": -1_400, "overpayment": -300}


def test_payment_lines_must_name_the_insurers_approved_claims() -> None:
    claims = {
        "mine": claim("mine", 100),
        "other": claim("other", 100, insurer="MTL"),
        "denied": claim("denied", 0, state="DENIED"),
    }
    p = payment(
        PaymentLine("mine", 1), PaymentLine("other", 1), PaymentLine("denied", 1), PaymentLine("ghost", 1)
    )
    with pytest.raises(FailedPrecondition) as e:
        plan_payment(p, claims, {})
    assert e.value.metadata["transaction_ids"] == "denied,ghost,other"


def test_wo_recovers_at_most_what_is_held() -> None:
    wo = (ProviderAdjustment("WO", "t0", 300),)
    plan = plan_payment(payment(PaymentLine("t1", 100), plbs=wo), {"t1": claim("t1", 100)}, {"10670": 300})
    assert [j.kind for j in plan.journals] == ["PAYMENT", "ADJUSTMENT"]
    with pytest.raises(FailedPrecondition) as e:
        plan_payment(payment(PaymentLine("t1", 100), plbs=wo), {"t1": claim("t1", 100)}, {"10670": 299})
    assert e.value.reason == "NOTHING_TO_RECOVER"
    # The overpayment made by the same payment's lines may be recovered at once.
    plan_payment(payment(PaymentLine("t1", 400), plbs=wo), {"t1": claim("t1", 100)}, {})


def test_provider_adjustment_needs_a_hospital_when_lines_name_several() -> None:
    claims = {"a": claim("a", 100), "b": claim("b", 100, hospital="10671")}
    p = payment(PaymentLine("a", 100), PaymentLine("b", 100), plbs=(ProviderAdjustment("L6", "int", -10),))
    with pytest.raises(InvalidArgument):
        plan_payment(p, claims, {})
    p = payment(
        PaymentLine("a", 100), PaymentLine("b", 100), plbs=(ProviderAdjustment("L6", "int", -10, "10671"),)
    )
    plan = plan_payment(p, claims, {})
    assert plan.hospitals == ["10670", "10671"]


def test_every_planned_journal_balances() -> None:
    p = payment(
        PaymentLine("a", 150, (Adjustment("PR", "1", 20), Adjustment("CR", "2", -10))),
        plbs=(ProviderAdjustment("L6", "i", -7), ProviderAdjustment("WO", "r", 3)),
    )
    plan = plan_payment(p, {"a": claim("a", 100)}, {"10670": 0})
    for j in plan.journals:
        assert sum(ln.amount for ln in j.lines) == 0


def test_approval_journal_and_zero_approvals() -> None:
    d = Decision("t1", "10670", "AIA", "APPROVED", 1_234, NOW)
    j = approval_journal(d)
    assert j is not None and [(ln.account_kind, ln.amount) for ln in j.lines] == [
        ("receivable", 1_234),
        ("revenue", -1_234),
    ]
    assert approval_journal(Decision("t1", "10670", "AIA", "DENIED", 0, NOW)) is None


def test_invoice_refusal_names_every_offender() -> None:
    claims = {
        "ok": claim("ok", 100),
        "paid": claim("paid", 100, 100),
        "other": claim("other", 100, insurer="MTL"),
        "theirs": claim("theirs", 100, hospital="10671"),
    }
    assert plan_invoice("10670", "AIA", ["ok"], claims, {}) == 100
    with pytest.raises(FailedPrecondition) as e:
        plan_invoice("10670", "AIA", ["ok", "paid", "other", "theirs", "ghost"], claims, {"ok": "inv_1"})
    meta = e.value.metadata
    assert meta["transaction_ids"] == "ghost,ok,other,paid,theirs"
    assert meta["tx_ok"] == "ON_OPEN_INVOICE" and meta["tx_paid"] == "NOTHING_DUE"
    assert meta["tx_theirs"] == "NOT_APPROVED"


def test_invoice_status_follows_money_and_due_date() -> None:
    assert stored_status(100, 0, False) == "SUBMITTED"
    assert stored_status(100, 0, True) == "ACKNOWLEDGED"
    assert stored_status(100, 40, True) == "PARTIALLY_PAID"
    assert stored_status(100, 100, True) == "PAID"
    due = date(2026, 11, 30)
    assert shown_status("ACKNOWLEDGED", due, date(2026, 11, 30)) == "ACKNOWLEDGED"
    assert shown_status("PARTIALLY_PAID", due, date(2026, 12, 1)) == "OVERDUE"
    assert shown_status("PAID", due, date(2027, 1, 1)) == "PAID"


def test_due_date_uses_the_bangkok_day_of_acknowledgement() -> None:
    # 2026-11-25 20:00 UTC is already 26 Nov in Bangkok.
    assert due_date_for(datetime(2026, 11, 25, 20, tzinfo=UTC), 15) == date(2026, 12, 11)


def test_aging_buckets_sum_to_outstanding() -> None:
    as_of = date(2026, 6, 30)
    items = [
        OutstandingItem(100, None),
        OutstandingItem(200, date(2026, 6, 30)),
        OutstandingItem(300, date(2026, 6, 29)),
        OutstandingItem(400, date(2026, 5, 1)),
        OutstandingItem(500, date(2026, 4, 1)),
        OutstandingItem(600, date(2026, 1, 1)),
    ]
    a = aging_of(items, -50, as_of)
    assert (a.current, a.d1_30, a.d31_60, a.d61_90, a.over_90) == (250, 300, 400, 500, 600)
    assert a.total == sum(i.amount for i in items) - 50


def test_statement_running_balance() -> None:
    t = NOW
    s = build_statement(
        "10670",
        "AIA",
        date(2026, 1, 1),
        date(2026, 1, 31),
        1_000,
        [Movement(t + timedelta(hours=2), "PAYMENT", "T", "p", -300), Movement(t, "APPROVAL", "c", "a", 500)],
        aging_of([], 0, date(2026, 1, 31)),
        "",
    )
    assert [ln.running_balance for ln in s.lines] == [1_500, 1_200]
    assert s.closing == 1_200


def test_month_bounds() -> None:
    assert month_bounds("2026-02") == (date(2026, 2, 1), date(2026, 2, 28))
    assert month_bounds("2026-12") == (date(2026, 12, 1), date(2026, 12, 31))
    with pytest.raises(InvalidArgument):
        month_bounds("2026-13")
