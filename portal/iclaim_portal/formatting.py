"""How amounts and dates read on a page: ฿12,500.00; Thai pages count years in
the Buddhist era (พ.ศ. = CE + 543), English pages in CE. Pure."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from zoneinfo import ZoneInfo

from babel.dates import format_date
from iclaim.thai_baht_text import baht_text

BANGKOK = ZoneInfo("Asia/Bangkok")
BUDDHIST_ERA_OFFSET = 543


def csv_text(rows: Iterable[Sequence[object]]) -> str:
    """A download's CSV: one line per row, CRLF line ends."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


def baht(satang: int) -> str:
    """Exact: integer satang, never through float."""
    sign = "-" if satang < 0 else ""
    whole, st = divmod(abs(satang), 100)
    return f"{sign}฿{whole:,}.{st:02d}"


def parse_baht(text: str) -> int:
    """'12,500.50' or '฿12500' -> satang; ValueError for anything else (negative,
    more than two decimals, not a number)."""
    cleaned = text.strip().replace(",", "").removeprefix("฿").strip()
    whole, _, frac = cleaned.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 2:
        raise ValueError("not an amount in baht")
    return int(whole) * 100 + int(frac.ljust(2, "0") or "0")


def amount_in_words(satang: int) -> str:
    return baht_text(satang)


def local_date(value: date | datetime, locale: str) -> str:
    """'27 พ.ย. 2569' on Thai pages, '27 Nov 2026' on English ones."""
    if isinstance(value, datetime):
        value = value.astimezone(BANGKOK).date()
    if locale == "th":
        # Babel's Thai locale keeps the Gregorian year; the era is written out.
        month = format_date(value, "MMM", locale="th")
        return f"{value.day} {month} {value.year + BUDDHIST_ERA_OFFSET}"
    return format_date(value, "d MMM y", locale="en")


def local_month(month: str, locale: str) -> str:
    """'2026-11' -> 'พ.ย. 2569' on Thai pages, 'Nov 2026' on English ones."""
    first = date.fromisoformat(f"{month}-01")
    if locale == "th":
        return f"{format_date(first, 'MMM', locale='th')} {first.year + BUDDHIST_ERA_OFFSET}"
    return format_date(first, "MMM y", locale="en")


def local_datetime(value: datetime, locale: str) -> str:
    at = value.astimezone(BANGKOK)
    return f"{local_date(at, locale)} {at:%H:%M:%S}"
