"""FHIR ClaimResponse build/parse: each decision state reads back with exact amounts."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from unittest import mock

import pytest
from fhir.resources.R4B.claimresponse import ClaimResponse

from iclaim.fhir import (
    APPROVED,
    DENIED,
    INVALID_CLAIM_DOCUMENT,
    PARTIALLY_APPROVED,
    PENDING_REVIEW,
    FhirError,
    build_claim_response,
    parse_claim_response,
)
from iclaim.fhir import claim_response
from iclaim.fhir.jsonio import loads
from iclaim.fhir.money import MAX_SATANG
from iclaim.fhir.resource import validated


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


# --- the fast path: documents valid by construction are not run through pydantic ---

_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_AWKWARD = [" ", "\t", "\n", "\x0b", "é", "ก", "\x00", "\u2028", "  x", "x ", "a  b", "a b"]


def _text(rng: random.Random, *, plain: bool) -> str:
    if plain:
        return "".join(rng.choice(_PRINTABLE) for _ in range(rng.choice((1, 2, 5, 13, 64, 256))))
    core = "".join(rng.choice(_PRINTABLE) for _ in range(rng.randint(0, 8)))
    at = rng.randint(0, len(core))
    return core[:at] + rng.choice(_AWKWARD) + core[at:]


def _amounts(rng: random.Random, state: str) -> tuple[int, int]:
    billed = rng.choice((0, 1, 99, 100, 12_345, 5_000_001, rng.randint(0, MAX_SATANG), MAX_SATANG))
    if state == APPROVED:
        return billed, billed
    if state == PARTIALLY_APPROVED:
        billed = max(billed, 1)
        return billed, rng.choice((0, min(1, billed - 1), billed - 1, rng.randint(0, billed - 1)))
    return billed, 0


def _slow(**kw: object) -> bytes | str:
    """What the builder gives with the models always run (as before the fast path)."""
    with mock.patch.object(claim_response, "_valid_by_construction", return_value=False):
        try:
            return build_claim_response(**kw)  # type: ignore[arg-type]
        except FhirError as exc:
            return exc.reason


def _fast(**kw: object) -> bytes | str:
    try:
        return build_claim_response(**kw)  # type: ignore[arg-type]
    except FhirError as exc:
        return exc.reason


def test_fast_documents_are_valid_fhir_and_the_same_bytes_over_many_inputs() -> None:
    rng = random.Random(20261127)
    fast_seen = 0
    for i in range(1500):
        state = rng.choice(sorted(claim_response.STATES))
        billed, approved = _amounts(rng, state)
        plain = i % 4 != 0  # mostly the fast path; every fourth input has an awkward value somewhere
        texts = [_text(rng, plain=True) for _ in range(3)]
        reason = rng.choice(("", INVALID_CLAIM_DOCUMENT, "COVERAGE_LIMIT_REACHED", _text(rng, plain=True)))
        cid = rng.choice((None, None, "1101700203451", _text(rng, plain=True)))
        if not plain:
            which = rng.randrange(5)
            if which < 3:
                texts[which] = _text(rng, plain=False)
            elif which == 3:
                reason = _text(rng, plain=False)
            else:
                cid = _text(rng, plain=False)
        tz = rng.choice((UTC, UTC, timezone(timedelta(hours=7)), timezone(timedelta(minutes=-330))))
        created = datetime(
            rng.randint(1900, 9999), rng.randint(1, 12), rng.randint(1, 28),
            rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59), rng.randint(0, 999_999), tz,
        )  # fmt: skip
        kw = dict(
            claim_ref=texts[0],
            hospital_code=texts[1],
            insurer_code=texts[2],
            state=state,
            billed_satang=billed,
            approved_satang=approved,
            reason_code=reason,
            patient_citizen_id=cid,
            created=created,
        )
        fast = _fast(**kw)
        assert fast == _slow(**kw), kw  # the same document, or the same refusal
        if claim_response._valid_by_construction((*texts, reason, cid), created):
            fast_seen += 1
            assert isinstance(fast, bytes)
            validated(loads(fast), ClaimResponse)  # valid R4 without relying on the builder
        if plain and created.utcoffset() == timedelta(0):
            assert isinstance(fast, bytes)
        # The default `created` (now, UTC) is on the fast path too.
        kw.pop("created")
        if plain:
            now = _fast(**kw)
            assert isinstance(now, bytes)
            validated(loads(now), ClaimResponse)
    assert fast_seen > 450


@pytest.mark.parametrize(
    "kw",
    [
        {"reason_code": "NOT A CODE  "},
        {"reason_code": " LEADING"},
        {"claim_ref": "   "},
        {"hospital_code": "\n"},
        {"created": datetime(2026, 1, 1, 12, 0, 0)},  # naive: FHIR wants a zone with a time
    ],
)
def test_what_the_models_refuse_is_still_refused(kw: dict[str, object]) -> None:
    args: dict[str, object] = dict(
        claim_ref="HN123-1",
        hospital_code="10670",
        insurer_code="MTL",
        state=DENIED,
        billed_satang=100,
        approved_satang=0,
        reason_code="POLICY_NOT_FOUND",
    )
    args.update(kw)
    assert _fast(**args) == _slow(**args)
