"""FHIR Claim build/parse: exact money, and typed errors for unusable documents."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iclaim.fhir import (
    ClaimItem,
    FhirError,
    PatientInfo,
    build_claim,
    parse_claim,
    satang_to_thb,
    thai_citizen_id_checksum_ok,
    thb_to_satang,
)
from iclaim.fhir.jsonio import dumps

PATIENT = PatientInfo(name="สมชาย ใจดี", citizen_id="1101700203450", birth_date="1980-02-29", gender="male")


def _claim(**overrides: object) -> bytes:
    kwargs: dict[str, object] = {
        "claim_ref": "HN123-2026-0001",
        "hospital_code": "10670",
        "insurer_code": "AIA",
        "policy_number": "POL-778899",
        "amount_satang": 123456,
        "patient": PATIENT,
        "diagnoses": ["J18.9", "e11.9"],
    }
    kwargs.update(overrides)
    return build_claim(**kwargs)  # type: ignore[arg-type]


def test_build_then_parse_round_trips_the_fields_insurers_need() -> None:
    doc = _claim()
    raw = json.loads(doc)
    assert raw["resourceType"] == "Claim"
    assert raw["total"] == {"value": 1234.56, "currency": "THB"}
    assert raw["insurance"][0]["coverage"]["identifier"]["value"] == "POL-778899"
    assert raw["contained"][0]["name"][0]["text"] == "สมชาย ใจดี"
    assert b'"value":1234.56,' in doc  # a JSON number, written exactly

    parsed = parse_claim(doc)
    assert parsed.claim_ref == "HN123-2026-0001"
    assert parsed.policy_number == "POL-778899"
    assert parsed.total_satang == 123456
    assert parsed.hospital_code == "10670"
    assert parsed.insurer_code == "AIA"
    assert parsed.patient_citizen_id == "1101700203450"
    assert parsed.diagnoses == ("J18.9", "E11.9")
    assert parsed.item_count == 1


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_money_is_exact_for_every_int64_satang(satang: int) -> None:
    assert thb_to_satang(satang_to_thb(satang), what="x") == satang
    assert parse_claim(_claim(amount_satang=satang)).total_satang == satang


def test_large_amount_survives_without_float_rounding() -> None:
    satang = 9_007_199_254_740_993  # 2**53 + 1: not representable as a float
    doc = _claim(amount_satang=satang)
    assert b'"total":{"value":90071992547409.93,"currency":"THB"}' in doc
    assert parse_claim(doc).total_satang == satang


def test_items_must_add_up_and_are_carried() -> None:
    items = [ClaimItem("LAB01", "CBC", 35000), ClaimItem("DRUG7", "Paracetamol", 1001, quantity=3)]
    doc = _claim(amount_satang=36001, items=items)
    raw = json.loads(doc, parse_float=Decimal)
    assert [i["net"]["value"] for i in raw["item"]] == [Decimal("350.00"), Decimal("10.01")]
    assert "unitPrice" not in raw["item"][1]  # 10.01/3 is not a whole satang
    assert parse_claim(doc).item_count == 2
    with pytest.raises(FhirError) as err:
        _claim(amount_satang=36000, items=items)
    assert err.value.reason == "ITEMS_TOTAL_MISMATCH"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"patient": PatientInfo("A", "12345")}, "CITIZEN_ID_INVALID"),
        ({"diagnoses": []}, "DIAGNOSIS_MISSING"),
        ({"diagnoses": ["not-icd"]}, "DIAGNOSIS_INVALID"),
        ({"policy_number": " "}, "FIELD_MISSING"),
        ({"amount_satang": -1}, "AMOUNT_INVALID"),
    ],
)
def test_build_refuses_bad_input(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(FhirError) as err:
        _claim(**overrides)
    assert err.value.reason == reason


def _mutated(mutate: object) -> bytes:
    raw = json.loads(_claim(), parse_float=Decimal)
    mutate(raw)  # type: ignore[operator]
    return dumps(raw)


def _set_total(value: object) -> object:
    return lambda d: d.__setitem__("total", value)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b"\xff\xfe not json", "NOT_JSON"),
        (b"[1, 2]", "NOT_A_CLAIM"),
        (b'{"value": NaN}', "NOT_JSON"),
        (b"[" * 100000, "NOT_JSON"),
        (b'{"resourceType": "Patient"}', "NOT_A_CLAIM"),
        (b'{"resourceType": "Claim"}', "FHIR_INVALID"),
        (_mutated(lambda d: d.pop("total")), "AMOUNT_MISSING"),
        (_mutated(lambda d: d.pop("insurance")), "FHIR_INVALID"),
        (
            _mutated(
                lambda d: (
                    d["insurance"][0]["coverage"].pop("identifier")
                    or d["insurance"][0]["coverage"].__setitem__("display", "x")
                )
            ),
            "POLICY_MISSING",
        ),
        (_mutated(lambda d: d["total"].__setitem__("currency", "USD")), "CURRENCY_NOT_THB"),
        (_mutated(lambda d: d["total"].pop("currency")), "CURRENCY_NOT_THB"),
        (json.dumps({}).encode(), "NOT_A_CLAIM"),
        (_mutated(lambda d: d.pop("identifier")), "CLAIM_REF_MISSING"),
    ],
)
def test_parse_refuses_unusable_documents_with_a_reason(doc: bytes, reason: str) -> None:
    with pytest.raises(FhirError) as err:
        parse_claim(doc)
    assert err.value.reason == reason


def test_fractional_satang_and_string_amounts_are_refused() -> None:
    doc = _claim().replace(b'"total":{"value":1234.56,', b'"total":{"value":1234.567,')
    with pytest.raises(FhirError) as err:
        parse_claim(doc)
    assert err.value.reason == "AMOUNT_NOT_SATANG"
    doc = _claim().replace(b'"total":{"value":1234.56,', b'"total":{"value":"1234.56",')
    with pytest.raises(FhirError) as err:
        parse_claim(doc)
    assert err.value.reason == "AMOUNT_MISSING"
    doc = _claim().replace(b'"total":{"value":1234.56,', b'"total":{"value":-1.00,')
    with pytest.raises(FhirError) as err:
        parse_claim(doc)
    assert err.value.reason in ("AMOUNT_INVALID", "FHIR_INVALID")


def test_trailing_zeros_and_integers_are_whole_satang() -> None:
    for literal, satang in ((b"1234.5600", 123456), (b"1234", 123400), (b"1E+2", 10000)):
        doc = _claim().replace(b'"total":{"value":1234.56,', b'"total":{"value":' + literal + b",")
        assert parse_claim(doc).total_satang == satang


def test_documents_over_one_mib_are_refused() -> None:
    with pytest.raises(FhirError) as err:
        parse_claim(b" " * (1024 * 1024 + 1))
    assert err.value.reason == "DOCUMENT_TOO_LARGE"


def test_thai_citizen_id_checksum() -> None:
    assert thai_citizen_id_checksum_ok("1101700203450")
    assert not thai_citizen_id_checksum_ok("1101700203451")
    assert not thai_citizen_id_checksum_ok("110170020345")


def test_read_claim_gives_the_document_as_sent_with_the_parsed_fields() -> None:
    from iclaim.fhir.claim import read_claim
    from iclaim.fhir.jsonio import loads

    data = build_claim(
        claim_ref="HN-9",
        hospital_code="10670",
        insurer_code="AIA",
        policy_number="POL-1",
        amount_satang=30_001,
        patient=PatientInfo(name="A Patient", citizen_id="1101700203451", gender="female"),
        diagnoses=["J18.9", "E11"],
        items=[ClaimItem("X1", "Room", 10_000, 2), ClaimItem("X2", "Drugs", 20_001, 3)],
    )
    parsed, doc = read_claim(data)
    assert parsed == parse_claim(data)
    assert doc == loads(data)  # validation leaves the document as it was


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (Decimal("1E+999998"), "AMOUNT_INVALID"),  # scaleb(2) overflowed the decimal context
        (Decimal("1E+999999999"), "AMOUNT_INVALID"),
        (Decimal("-1E+999999999"), "AMOUNT_INVALID"),
        (Decimal("92233720368547758.08"), "AMOUNT_INVALID"),  # int64 satang + 1
        (Decimal("1E-999999"), "AMOUNT_NOT_SATANG"),
        (Decimal("1E-999999999"), "AMOUNT_NOT_SATANG"),  # once rounded to 0
        (Decimal("1.00000000000000000000000000001"), "AMOUNT_NOT_SATANG"),  # once rounded to 28 digits
        (Decimal("NaN"), "AMOUNT_INVALID"),
        (Decimal("sNaN"), "AMOUNT_INVALID"),
        (Decimal("Infinity"), "AMOUNT_INVALID"),
        (Decimal("-Infinity"), "AMOUNT_INVALID"),
    ],
)
def test_thb_to_satang_refuses_extreme_exponents_and_non_numbers_with_a_fhir_error(
    value: Decimal, reason: str
) -> None:
    with pytest.raises(FhirError) as err:
        thb_to_satang(value, what="Claim.total")
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("value", "satang"),
    [
        (Decimal("0E+999999"), 0),
        (Decimal("-0.00"), 0),
        (Decimal("0E-999999"), 0),
        (Decimal("92233720368547758.07"), 2**63 - 1),
        (Decimal("1" + "0" * 5000 + "E-5000"), 100),  # more digits than the context keeps
        (Decimal("12.5E+1"), 12500),
        (7, 700),
    ],
)
def test_thb_to_satang_is_exact_at_the_edges(value: Decimal | int, satang: int) -> None:
    assert thb_to_satang(value, what="Claim.total") == satang


def test_a_claim_total_beyond_the_decimal_range_is_a_fhir_error() -> None:
    doc = _claim().replace(b'"total":{"value":1234.56,', b'"total":{"value":1E+999998,')
    with pytest.raises(FhirError) as err:
        parse_claim(doc)
    assert err.value.reason == "AMOUNT_INVALID"
