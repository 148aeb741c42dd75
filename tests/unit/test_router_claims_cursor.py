"""ListClaims' page token: what the router issues comes back as it was, and a
token a caller made up is PAGE_TOKEN_INVALID whatever it holds, never a value
PostgreSQL or the driver would refuse (INTERNAL) on its way to SQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from iclaim.errors import InvalidArgument
from services.claim_router.domain import decode_claims_cursor, encode_claims_cursor, encode_page_token

TID = "txn_" + "0" * 28


def test_a_token_we_issued_round_trips() -> None:
    at = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert decode_claims_cursor(encode_claims_cursor(at, TID)) == (at, TID)
    assert decode_claims_cursor("") is None


@pytest.mark.parametrize(
    "fields",
    [
        {"at": "2026-11-28T12:00:00+00:00", "tid": "\x00"},
        {"at": "2026-11-28T12:00:00+00:00", "tid": "\ud800"},
        {"at": "2026-11-28T12:00:00+00:00", "tid": TID + "\n"},
        {"at": "2026-11-28T12:00:00", "tid": TID},  # no time zone
        {"at": "0001-01-01T00:00:00+01:00", "tid": TID},  # before the calendar in UTC
        {"at": "yesterday", "tid": TID},
    ],
    ids=["nul", "lone-surrogate", "newline", "naive", "year-one", "not-a-time"],
)
def test_a_made_up_token_is_invalid(fields: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument) as e:
        decode_claims_cursor(encode_page_token(fields))
    assert e.value.reason == "PAGE_TOKEN_INVALID"
