"""THB amounts: integer satang on our side, exact decimals in FHIR (never floats)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from iclaim.fhir.errors import FhirError

CURRENCY = "THB"
MAX_SATANG = 2**63 - 1


def satang_to_thb(satang: int) -> Decimal:
    if isinstance(satang, bool) or not isinstance(satang, int):
        raise FhirError("AMOUNT_INVALID", "amount must be an integer number of satang")
    if not 0 <= satang <= MAX_SATANG:
        raise FhirError("AMOUNT_INVALID", "amount out of range")
    # scaleb keeps the two decimal places exact: 123456 -> Decimal('1234.56').
    return Decimal(satang).scaleb(-2)


def thb_to_satang(value: Decimal | int, *, what: str) -> int:
    """Exact conversion; a value with a fraction of a satang is an error, not rounded."""
    try:
        scaled = Decimal(value).scaleb(2)
        if not scaled.is_finite() or scaled != scaled.to_integral_value():
            raise FhirError("AMOUNT_NOT_SATANG", f"{what} is not a whole number of satang")
        satang = int(scaled)
    except InvalidOperation as exc:
        raise FhirError("AMOUNT_INVALID", f"{what} is not a number") from exc
    if not 0 <= satang <= MAX_SATANG:
        raise FhirError("AMOUNT_INVALID", f"{what} out of range")
    return satang


def money(satang: int) -> dict[str, Any]:
    return {"value": satang_to_thb(satang), "currency": CURRENCY}


def money_satang(raw: Any, *, what: str) -> int:
    """Reads a raw (json-decoded with Decimal floats) FHIR Money object as satang."""
    if not isinstance(raw, dict):
        raise FhirError("AMOUNT_MISSING", f"{what} is missing")
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise FhirError("AMOUNT_MISSING", f"{what}.value is missing or not a number")
    if raw.get("currency") != CURRENCY:
        raise FhirError("CURRENCY_NOT_THB", f"{what}.currency must be {CURRENCY}")
    return thb_to_satang(value, what=what)
