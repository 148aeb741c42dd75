"""Form input read into API requests: bad input is a FormError naming the field,
never a request the clearinghouse would have to refuse."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, tzinfo

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from iclaim.fhir.claim import parse_claim, synthetic_claim
from iclaim.v1 import billing_service_pb2 as bpb
from iclaim_portal import claims
from iclaim_portal.billing import (
    is_counterparty,
    payment_lines,
    period_from,
    provider_adjustments,
    statement_csv,
)
from iclaim_portal.claims import FormError, claim_from_form, claim_from_upload, new_claim_ref
from services.billing.domain import is_party_code
from iclaim_portal.insurer_queue import decision_from_form

INSURERS = {"AIA", "TESTPULL"}
GOOD = {
    "insurer_code": "AIA",
    "claim_ref": "P-1",
    "policy_number": "POL-1",
    "patient_name": "สมชาย ใจดี",
    "citizen_id": "1101700203451",
    "diagnosis": "J18.9, E11",
    "amount": "12,500.50",
}


def test_the_claim_form_builds_a_fhir_claim_the_insurer_can_read() -> None:
    claim = claim_from_form(GOOD, "H0001", INSURERS)
    parsed = parse_claim(claim.fhir)
    assert (claim.insurer_code, claim.claim_ref, claim.amount_satang) == ("AIA", "P-1", 1_250_050)
    assert parsed.total_satang == 1_250_050
    assert parsed.diagnoses == ("J18.9", "E11")
    assert parsed.hospital_code == "H0001" and parsed.insurer_code == "AIA"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"insurer_code": "NOPE"}, "insurer_code"),
        ({"amount": "-100"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "12.345"}, "amount"),
        ({"citizen_id": "12345"}, "citizen_id"),
        ({"diagnosis": ""}, "diagnosis"),
        ({"diagnosis": "pneumonia"}, "diagnosis"),
        ({"policy_number": ""}, "form"),
    ],
)
def test_bad_claim_form_input_names_its_field(change: dict[str, str], field: str) -> None:
    with pytest.raises(FormError) as err:
        claim_from_form(GOOD | change, "H0001", INSURERS)
    assert err.value.field == field


def test_uploaded_fhir_claims_are_checked() -> None:
    good = synthetic_claim("H0001", "AIA", "UP-1", "POL-1", 50_000)
    assert claim_from_upload(good, "H0001", INSURERS).amount_satang == 50_000
    refused = [
        b"x" * (1024 * 1024 + 1),
        b"{not json",
        json.dumps({"resourceType": "Patient"}).encode(),
        synthetic_claim("H0001", "UNKNOWN", "UP-2", "POL-1", 50_000),
        synthetic_claim("H0002", "AIA", "UP-3", "POL-1", 50_000),
    ]
    for data in refused:
        with pytest.raises(FormError):
            claim_from_upload(data, "H0001", INSURERS)


def test_decisions_from_the_review_form() -> None:
    assert decision_from_form({"outcome": "approve"}, 1000).approved_satang == 1000
    partial = decision_from_form(
        {"outcome": "partial", "approved_amount": "6", "partial_reason": "COVERAGE_LIMIT_REACHED"}, 1000
    )
    assert (partial.state, partial.approved_satang) == ("PARTIALLY_APPROVED", 600)
    deny = decision_from_form({"outcome": "deny", "deny_reason": "POLICY_LAPSED"}, 1000)
    assert (deny.state, deny.approved_satang, deny.reason_code) == ("DENIED", 0, "POLICY_LAPSED")
    for bad in (
        {},
        {"outcome": "partial", "approved_amount": "10", "partial_reason": "COVERAGE_LIMIT_REACHED"},
        {"outcome": "partial", "approved_amount": "-1", "partial_reason": "COVERAGE_LIMIT_REACHED"},
        {"outcome": "partial", "approved_amount": "5", "partial_reason": "MADE_UP"},
        {"outcome": "deny", "deny_reason": "<script>"},
    ):
        with pytest.raises(FormError):
            decision_from_form(bad, 1000)


def test_payment_form_lines_with_a_cas_adjustment() -> None:
    form = {
        "paid_t1": "500",
        "adj_group_t1": "CO",
        "adj_reason_t1": "45",
        "adj_amount_t1": "100",
        "paid_t2": "",
    }
    [line] = payment_lines(form, ["t1", "t2"])
    assert line.transaction_id == "t1" and line.paid_satang == 50_000
    assert [(a.group, a.reason_code, a.amount_satang) for a in line.adjustments] == [("CO", "45", 10_000)]
    for bad in ({}, {"paid_t1": "-5"}, {"paid_t1": "5", "adj_amount_t1": "1", "adj_group_t1": "XX"}):
        with pytest.raises(FormError):
            payment_lines(bad, ["t1"])


def test_statement_period_defaults_to_this_month_and_is_bounded() -> None:
    today = date(2026, 11, 27)
    assert period_from("", "", today).start == date(2026, 11, 1)
    for start, end in (("2026-11-30", "2026-11-01"), ("2024-01-01", "2026-01-01"), ("27/11/2569", "")):
        with pytest.raises(FormError):
            period_from(start, end, today)


def test_a_buddhist_era_year_in_the_period_is_read_as_the_common_era() -> None:
    today = date(2026, 11, 27)
    period = period_from("2569-01-01", "2569-01-31", today)
    assert (period.start, period.end) == (date(2026, 1, 1), date(2026, 1, 31))
    # converted before the date is built: 29 Feb 2567 B.E. is 29 Feb 2024
    assert period_from("2567-02-29", "2567-03-01", today).start == date(2024, 2, 29)
    assert period_from("2026-01-01", "2569-01-02", today).end == date(2026, 1, 2)


@pytest.mark.parametrize(("start", "end"), [("1999-12-01", "1999-12-31"), ("2100-12-01", "2101-01-01")])
def test_a_period_outside_what_the_clearinghouse_keeps_is_a_form_error(start: str, end: str) -> None:
    with pytest.raises(FormError) as refused:
        period_from(start, end, date(2026, 11, 27))
    assert refused.value.field == "period" and "2543" in refused.value.message


@pytest.mark.parametrize(
    "code",
    [
        "AIA",
        "TESTPULL",
        "abc",
        "Aia",
        "A",
        "X" * 16,
        "X" * 17,
        "A-1",
        "A_1",
        "10670",
        "1067",
        "106701",
        "",
        " AIA",
        "AIA\n",
        "๑๐๖๗๐",
    ],
)
def test_the_portals_counterparty_check_is_the_clearinghouses(code: str) -> None:
    assert is_counterparty(code, hospital_side=True) == is_party_code(code, "insurer")
    assert is_counterparty(code, hospital_side=False) == is_party_code(code, "hospital")


def test_a_new_claim_reference_carries_the_bangkok_date(monkeypatch: pytest.MonkeyPatch) -> None:
    at = datetime(2026, 11, 26, 18, 30, tzinfo=UTC)  # 01:30 on 27 November in Bangkok

    class Clock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Clock:
            return at.astimezone(tz)  # type: ignore[return-value]

    monkeypatch.setattr(claims, "datetime", Clock)
    assert new_claim_ref().startswith("P-20261127-")


def test_statement_csv_keeps_amounts_exact_and_times_in_bangkok() -> None:
    at = Timestamp()
    at.FromDatetime(datetime(2026, 11, 26, 17, 30, tzinfo=UTC))
    statement = bpb.Statement(
        opening_balance_satang=0,
        closing_balance_satang=-5,
        lines=[
            bpb.StatementLine(
                occurred_at=at, kind="PAYMENT", reference="TR-1", amount_satang=-5, running_balance_satang=-5
            )
        ],
    )
    rows = list(csv.reader(io.StringIO(statement_csv(statement))))
    assert rows[2] == ["2026-11-27T00:30:00+07:00", "PAYMENT", "TR-1", "", "-5", "-0.05", "-5"]
    assert rows[-1][1] == "CLOSING" and rows[-1][-1] == "-5"


def test_provider_adjustment_from_the_payment_form() -> None:
    assert provider_adjustments({}) == []
    [interest] = provider_adjustments({"plb_code": "L6", "plb_reference": "INT-1", "plb_amount": "-12.50"})
    assert (interest.code, interest.reference, interest.amount_satang) == ("L6", "INT-1", -1250)
    for bad in (
        {"plb_code": "ZZ", "plb_reference": "R", "plb_amount": "1"},
        {"plb_code": "WO", "plb_reference": "", "plb_amount": "1"},
        {"plb_code": "WO", "plb_reference": "R", "plb_amount": "1.234"},
    ):
        with pytest.raises(FormError):
            provider_adjustments(bad)
