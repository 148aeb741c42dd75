"""Report arithmetic (outcomes, approval rate, nearest-rank percentiles, amounts)
and the server-rendered charts."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from iclaim_portal.reports import ClaimFact, amounts_chart, outcomes_chart, percentile, summarise, to_csv

T0 = datetime(2026, 10, 31, 18, 0, tzinfo=UTC)  # already 1 Nov in Bangkok


def fact(
    cp: str, state: str, billed: int, approved: int, decided_s: float | None, paid: int = 0, settled: int = 0
) -> ClaimFact:
    decided = None if decided_s is None else T0 + timedelta(seconds=decided_s)
    return ClaimFact(cp, state, billed, approved, T0, decided, paid, settled)


FACTS = [
    fact("AIA", "APPROVED", 1000, 1000, 10, paid=400, settled=400),  # paid in part
    # approved in part; paid 1,400 with a 100 contractual adjustment: settled
    fact("AIA", "PAID", 2000, 1500, 20, paid=1400, settled=1500),
    fact("AIA", "DENIED", 500, 0, 30),
    fact("MTL", "PENDING_REVIEW", 700, 0, None),
    fact("MTL", "CANCELLED", 300, 0, None),
    fact("MTL", "APPROVED", 100, 100, 3600),
]


def test_rows_per_month_and_counterparty_with_a_total_first() -> None:
    rows = summarise(FACTS)
    assert [(r.month, r.counterparty) for r in rows] == [
        ("2026-11", ""),
        ("2026-11", "AIA"),
        ("2026-11", "MTL"),
    ]
    total, aia, mtl = rows
    assert total.claims == 6
    assert aia.outcomes == {"APPROVED": 1, "PARTIALLY_APPROVED": 1, "DENIED": 1, "PENDING": 0, "WITHDRAWN": 0}
    assert aia.approval_rate == 2 / 3
    assert mtl.outcomes["PENDING"] == 1 and mtl.outcomes["WITHDRAWN"] == 1
    # Paid is money received (not the approval of settled claims); outstanding is what is still due.
    assert (aia.billed, aia.approved, aia.paid, aia.outstanding) == (3500, 2500, 1800, 600)
    assert (mtl.paid, mtl.outstanding) == (0, 100)
    assert (total.paid, total.outstanding) == (1800, 700)
    assert total.median_s == 20 and total.p90_s == 3600


def test_nearest_rank_percentiles() -> None:
    assert percentile([], 50) is None
    assert percentile([5], 90) == 5
    assert percentile(list(range(1, 11)), 50) == 5
    assert percentile(list(range(1, 11)), 90) == 9
    assert percentile(list(range(1, 101)), 90) == 90


def test_csv_has_one_line_per_row() -> None:
    rows = list(csv.DictReader(io.StringIO(to_csv(summarise(FACTS)))))
    assert [r["counterparty"] for r in rows] == ["ALL", "AIA", "MTL"]
    assert rows[1]["approval_rate"] == "0.6667" and rows[1]["outstanding_satang"] == "600"
    assert rows[1]["paid_satang"] == "1800"


def test_charts_are_valid_svg_with_a_title_and_escaped_text() -> None:
    rows = summarise(FACTS)
    labels = {"APPROVED": "<อนุมัติ>"}
    for svg in (outcomes_chart(rows, "Claims & outcomes", labels), amounts_chart(rows, "Amounts", {})):
        root = ET.fromstring(svg)  # well-formed: labels are escaped
        ns = "{http://www.w3.org/2000/svg}"
        assert root.get("role") == "img"
        assert root.find(f"{ns}title") is not None
        assert len(root.findall(f"{ns}rect")) >= 4
    assert "&lt;อนุมัติ&gt;" in outcomes_chart(rows, "t", labels)


def test_chart_months_use_the_given_labels() -> None:
    svg = outcomes_chart(summarise(FACTS), "t", {}, month=lambda m: f"<{m}>")
    assert "&lt;2026-11&gt;" in svg
