"""FHIR ClaimResponse build/parse: each decision state reads back with exact amounts."""

from __future__ import annotations

import json

import pytest

from iclaim.fhir import (
    APPROVED,
    DENIED,
    PARTIALLY_APPROVED,
    PENDING_REVIEW,
    FhirError,
    build_claim_response,
    parse_claim_response,
)


def _response(state: str, billed: int, approved: int, reason: str = "") -> bytes:
    return build_claim_response(
        claim_ref="HN123-1",
        hospital_code="10670",
        insurer_code="MTL",
        state=state,
        billed_satang=billed,
        approved_satang=approved,
        reason_code=reason,
    )


@pytest.mark.parametrize(
    ("state", "billed", "approved", "reason", "outcome"),
    [
        (APPROVED, 5_000_001, 5_000_001, "", "complete"),
        (PARTIALLY_APPROVED, 5_000_001, 300_000, "COVERAGE_LIMIT_REACHED", "partial"),
        (DENIED, 5_000_001, 0, "POLICY_NOT_FOUND", "complete"),
        (DENIED, 5_000_001, 0, "INVALID_CLAIM_DOCUMENT", "error"),
        (PENDING_REVIEW, 5_000_001, 0, "", "queued"),
    ],
)
def test_round_trip(state: str, billed: int, approved: int, reason: str, outcome: str) -> None:
    doc = _response(state, billed, approved, reason)
    raw = json.loads(doc)
    assert raw["resourceType"] == "ClaimResponse"
    assert raw["outcome"] == outcome
    assert raw["request"]["identifier"]["value"] == "HN123-1"
    parsed = parse_claim_response(doc)
    assert parsed.state == state
    assert parsed.outcome == outcome
    assert parsed.billed_satang == billed
    assert parsed.approved_satang == approved
    assert parsed.reason_code == reason
    assert parsed.claim_ref == "HN123-1"
    assert (parsed.insurer_code, parsed.hospital_code) == ("MTL", "10670")
    if approved:
        assert raw["payment"]["amount"]["currency"] == "THB"
        assert parsed.approved_satang == approved
    else:
        assert "payment" not in raw


def test_state_is_inferred_for_responses_without_our_extension() -> None:
    raw = json.loads(_response(PARTIALLY_APPROVED, 1000, 999, "COVERAGE_LIMIT_REACHED"))
    raw.pop("extension")
    assert parse_claim_response(json.dumps(raw).encode()).state == PARTIALLY_APPROVED


@pytest.mark.parametrize(
    ("state", "billed", "approved"),
    [
        (APPROVED, 100, 99),
        (PARTIALLY_APPROVED, 100, 100),
        (DENIED, 100, 1),
        (PENDING_REVIEW, 100, 5),
        ("PAID", 100, 100),
    ],
)
def test_inconsistent_decisions_are_refused(state: str, billed: int, approved: int) -> None:
    with pytest.raises(FhirError):
        _response(state, billed, approved)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b"nope", "NOT_JSON"),
        (b'{"resourceType": "Claim"}', "NOT_A_CLAIM_RESPONSE"),
        (b'{"resourceType": "ClaimResponse"}', "FHIR_INVALID"),
    ],
)
def test_parse_refuses_bad_documents(doc: bytes, reason: str) -> None:
    with pytest.raises(FhirError) as err:
        parse_claim_response(doc)
    assert err.value.reason == reason


def test_fractional_satang_in_a_response_is_refused() -> None:
    doc = _response(APPROVED, 1001, 1001).replace(b'"value":10.01,', b'"value":10.011,')
    with pytest.raises(FhirError) as err:
        parse_claim_response(doc)
    assert err.value.reason == "AMOUNT_NOT_SATANG"
