"""Thai by default, English switchable: amounts, Buddhist-era dates, amounts in
words, and every message the pages use has a Thai translation."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from jinja2.ext import babel_extract

from iclaim.v1 import billing_service_pb2 as bpb

from iclaim_portal import billing, claims, formatting, reports, staff
from iclaim_portal.i18n import CATALOGUES, environments, translations

TEMPLATES = Path(claims.__file__).parent / "templates"


@pytest.mark.parametrize(
    ("satang", "text"),
    [
        (1_250_000, "฿12,500.00"),
        (5, "฿0.05"),
        (0, "฿0.00"),
        (123_456_789_01, "฿123,456,789.01"),
        (-150, "-฿1.50"),
    ],
)
def test_amounts_read_in_baht_with_satang(satang: int, text: str) -> None:
    assert formatting.baht(satang) == text


@pytest.mark.parametrize(
    ("text", "satang"), [("12,500.00", 1_250_000), ("฿12500", 1_250_000), ("0.5", 50), (" 7.05 ", 705)]
)
def test_amounts_typed_in_baht_are_read_exactly(text: str, satang: int) -> None:
    assert formatting.parse_baht(text) == satang


@pytest.mark.parametrize("text", ["-100", "1.005", "abc", "", "1e3", "12.5.0"])
def test_amounts_that_are_not_baht_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        formatting.parse_baht(text)


def test_thai_pages_count_years_in_the_buddhist_era() -> None:
    assert formatting.local_date(date(2026, 11, 27), "th") == "27 พ.ย. 2569"
    assert formatting.local_date(date(2026, 11, 27), "en") == "27 Nov 2026"
    # 23:30 UTC on 31 Dec is already 1 Jan in Bangkok, and a new BE year
    late = datetime(2025, 12, 31, 23, 30, tzinfo=UTC)
    assert formatting.local_datetime(late, "th") == "1 ม.ค. 2569 06:30:00"


def test_amount_in_words_reuses_the_sdk_baht_text() -> None:
    assert formatting.amount_in_words(1_250_050) == "หนึ่งหมื่นสองพันห้าร้อยบาทห้าสิบสตางค์"
    assert formatting.amount_in_words(100) == "หนึ่งบาทถ้วน"


def test_templates_render_thai_by_default_and_english_on_request() -> None:
    envs = environments()
    source = '{{ _("Claims") }} {{ 1250000 | baht }} {{ d | date }}'
    day = date(2026, 1, 5)
    assert envs["th"].from_string(source).render(d=day) == "เคลม ฿12,500.00 5 ม.ค. 2569"
    assert envs["en"].from_string(source).render(d=day) == "Claims ฿12,500.00 5 Jan 2026"


def _template_messages() -> set[str]:
    found: set[str] = set()
    for path in TEMPLATES.glob("*.html"):
        with path.open("rb") as f:
            for _, _, message, _ in babel_extract(f, ["_", "gettext"], [], {"trimmed": "true"}):
                if isinstance(message, str):
                    found.add(message)
    return found


def _python_messages() -> set[str]:
    """The messages FormError carries (shown through _() on the page)."""
    found = set(claims.FHIR_MESSAGES.values())
    for module in TEMPLATES.parent.glob("*.py"):
        source = module.read_text()
        found |= set(re.findall(r'FormError\(\s*f?"[a-z_{}]+",\s*"([^"]+)"', source))
        found |= set(re.findall(r'_staff_form\(request, values, "([^"]+)"', source))
    return found


def _codes() -> set[str]:
    """Codes the pages translate: claim states, invoice statuses, statement line kinds."""
    statuses = {
        name.replace("INVOICE_STATUS_", "INVOICE_")
        for name in bpb.InvoiceStatus.DESCRIPTOR.values_by_name
        if not name.endswith("UNSPECIFIED")
    }
    roles = {f"ROLE_{role}" for role in staff.ROLES}
    return set(claims.FILTER_STATES) | statuses | set(billing.STATEMENT_KINDS) | set(reports.OUTCOMES) | roles


def test_every_message_on_the_pages_has_a_thai_translation() -> None:
    with (CATALOGUES / "th" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f)
    translated = {m.id for m in catalog if m.id and m.string}
    needed = _template_messages() | _python_messages() | _codes()
    assert len(needed) > 170
    assert needed - translated == set()
    assert translations("th").gettext("PENDING_REVIEW") == "รอพิจารณา"


def test_report_months_read_in_the_page_language() -> None:
    assert formatting.local_month("2026-11", "th") == "พ.ย. 2569"
    assert formatting.local_month("2026-01", "en") == "Jan 2026"
