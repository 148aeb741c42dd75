"""Billing's checks of what callers send: codes and references whole (a
trailing newline is not a code), invoice ids and page tokens only of the forms
this service issues, whatever a caller makes of them (their parts reach SQL)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from iclaim.errors import InvalidArgument, NotFound
from services.billing.domain import (
    check_hospital,
    check_insurer,
    check_invoice_id,
    check_ref,
    check_void_reason,
    is_party_code,
    page_start,
    page_token,
)

INVOICE = "inv_" + "0123456789abcdef" * 2


@pytest.mark.parametrize(
    "check, good",
    [
        (check_hospital, "10670"),
        (check_insurer, "AIA"),
        (lambda v: check_ref(v, "invoice_ref", "INVALID_INVOICE_REF"), "INV-1"),
        (check_void_reason, "DUP"),
    ],
)
def test_a_trailing_newline_is_not_part_of_a_valid_value(check, good) -> None:  # type: ignore[no-untyped-def]
    assert check(good) == good
    with pytest.raises(InvalidArgument):
        check(good + "\n")


def test_party_codes_by_role() -> None:
    assert is_party_code("10670", "hospital") and is_party_code("AIA", "insurer")
    assert not is_party_code("AIA", "hospital") and not is_party_code("10670\n", "hospital")
    assert not is_party_code("AIA\x00", "insurer")


def test_an_invoice_id_not_of_our_form_names_no_invoice() -> None:
    assert check_invoice_id(INVOICE) == INVOICE
    for bad in ("\x00", "inv_unknown", INVOICE + "\n", INVOICE.upper(), ""):
        with pytest.raises(NotFound):
            check_invoice_id(bad)


def _token(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def test_page_tokens_round_trip_and_nothing_else_gets_through() -> None:
    at = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert page_start(page_token(at, INVOICE)) == (at, INVOICE)
    assert page_start("") is None
    bad = [
        "%%%",
        base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode(),  # nested: RecursionError
        "A" * 10_000,  # far longer than any we issue
        _token([at.isoformat(), "\x00"]),
        _token([at.isoformat(), "inv_unknown"]),
        _token(["2026-11-28T12:00:00", INVOICE]),  # no time zone
        _token(["0001-01-01T00:00:00+01:00", INVOICE]),  # before the calendar in UTC
        _token([at.isoformat(), 5]),
        _token({"at": at.isoformat()}),
    ]
    for token in bad:
        with pytest.raises(InvalidArgument) as e:
            page_start(token)
        assert e.value.reason == "INVALID_PAGE_TOKEN", token[:40]
