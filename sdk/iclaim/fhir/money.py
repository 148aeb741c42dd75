"""THB amounts: integer satang on our side, exact decimals in FHIR (never floats)."""

from __future__ import annotations

from decimal import Decimal, DecimalException
from typing import Any

from iclaim.fhir.errors import FhirError

CURRENCY = "THB"
MAX_SATANG = 2**63 - 1
MAX_SATANG_DIGITS = len(str(MAX_SATANG))


def satang_to_thb(satang: int) -> Decimal:
    if isinstance(satang, bool) or not isinstance(satang, int):
        raise FhirError("AMOUNT_INVALID", "amount must be an integer number of satang")
    if not 0 <= satang <= MAX_SATANG:
        raise FhirError("AMOUNT_INVALID", "amount out of range")
    # scaleb keeps the two decimal places exact: 123456 -> Decimal('1234.56').
    return Decimal(satang).scaleb(-2)


def thb_to_satang(value: Decimal | int, *, what: str) -> int:
    """Exact conversion; a value with a fraction of a satang is an error, not rounded.

    Worked on the digits, never through the decimal context: a JSON number
    such as 1E+999998 overflows the context when scaled (decimal.Overflow, not
    a FhirError), a tiny one rounds to 0, and more than 28 digits are rounded.
    """
    try:
        amount = Decimal(value)
    except (DecimalException, TypeError, ValueError) as exc:
        raise FhirError("AMOUNT_INVALID", f"{what} is not a number") from exc
    negative, digits, exponent = amount.as_tuple()
    if not isinstance(exponent, int):  # NaN, sNaN, Infinity
        raise FhirError("AMOUNT_INVALID", f"{what} is not a number")
    significant = len(digits)
    while significant and digits[significant - 1] == 0:  # 1234.5600 is 123456 * 10**-2
        significant -= 1
    if significant == 0:
        return 0  # 0, -0.00, 0E+999999
    exponent += len(digits) - significant + 2  # now the exponent of satang
    if exponent < 0:
        raise FhirError("AMOUNT_NOT_SATANG", f"{what} is not a whole number of satang")
    # Checked before the digits are expanded: MAX_SATANG has 19 digits.
    if negative or significant + exponent > MAX_SATANG_DIGITS:
        raise FhirError("AMOUNT_INVALID", f"{what} out of range")
    satang = int("".join(map(str, digits[:significant])) + "0" * exponent)
    if satang > MAX_SATANG:
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
