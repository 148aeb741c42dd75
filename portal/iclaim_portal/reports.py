"""Reports per month and counterparty: claims by outcome, approval rate, time to
decision (median, p90), amounts billed / approved / paid / outstanding; charts
as server-rendered SVG; CSV. Pure: the views gather the facts.

"Paid" is the money paid on the claims (per claim, from their invoices);
outstanding is what they still owe: approved − settled, where settled is paid
plus what adjustments took off (so a claim paid 9,500 with a 500 contractual
adjustment is paid 9,500 and owes nothing)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from xml.sax.saxutils import escape

from iclaim_portal.formatting import BANGKOK, csv_text

OUTCOMES = ("APPROVED", "PARTIALLY_APPROVED", "DENIED", "PENDING", "WITHDRAWN")
OUTCOME_COLOURS = {
    "APPROVED": "#2e7d32",
    "PARTIALLY_APPROVED": "#f9a825",
    "DENIED": "#c62828",
    "PENDING": "#757575",
    "WITHDRAWN": "#90a4ae",
}
AMOUNT_COLOURS = {"billed": "#1565c0", "approved": "#2e7d32", "paid": "#6a1b9a"}


@dataclass(frozen=True)
class ClaimFact:
    counterparty: str
    state: str  # a ClaimState name without prefix
    billed_satang: int
    approved_satang: int
    submitted_at: datetime
    decided_at: datetime | None
    paid_satang: int = 0
    settled_satang: int = 0


def outcome(fact: ClaimFact) -> str:
    if fact.state in ("CANCELLED", "FAILED"):
        return "WITHDRAWN"
    if fact.state == "DENIED":
        return "DENIED"
    if fact.state in ("APPROVED", "PARTIALLY_APPROVED", "PAID"):
        return "APPROVED" if fact.approved_satang >= fact.billed_satang else "PARTIALLY_APPROVED"
    return "PENDING"


def month_of(at: datetime) -> str:
    return at.astimezone(BANGKOK).strftime("%Y-%m")


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Row:
    month: str
    counterparty: str  # "" for the month's total
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    decision_s: list[float] = field(default_factory=list)
    billed: int = 0
    approved: int = 0
    paid: int = 0
    settled: int = 0

    @property
    def claims(self) -> int:
        return sum(self.outcomes.values())

    @property
    def approval_rate(self) -> float | None:
        decided = self.outcomes["APPROVED"] + self.outcomes["PARTIALLY_APPROVED"] + self.outcomes["DENIED"]
        return None if decided == 0 else (decided - self.outcomes["DENIED"]) / decided

    @property
    def median_s(self) -> float | None:
        return percentile(self.decision_s, 50)

    @property
    def p90_s(self) -> float | None:
        return percentile(self.decision_s, 90)

    @property
    def outstanding(self) -> int:
        return self.approved - self.settled

    def add(self, fact: ClaimFact) -> None:
        self.outcomes[outcome(fact)] += 1
        self.billed += fact.billed_satang
        self.approved += fact.approved_satang
        self.paid += fact.paid_satang
        self.settled += min(fact.settled_satang, fact.approved_satang)
        if fact.decided_at is not None and outcome(fact) in ("APPROVED", "PARTIALLY_APPROVED", "DENIED"):
            self.decision_s.append(max(0.0, (fact.decided_at - fact.submitted_at).total_seconds()))


def summarise(facts: Iterable[ClaimFact]) -> list[Row]:
    """Newest month first; in each month its total ("" counterparty), then each counterparty."""
    rows: dict[tuple[str, str], Row] = {}
    for fact in facts:
        month = month_of(fact.submitted_at)
        for key in ((month, ""), (month, fact.counterparty)):
            rows.setdefault(key, Row(*key)).add(fact)
    return [rows[k] for k in sorted(rows, key=lambda k: (_desc(k[0]), k[1]))]


def _desc(month: str) -> str:
    return "".join(chr(ord("9") - ord(c) + ord("0")) if c.isdigit() else c for c in month)


def to_csv(rows: Sequence[Row]) -> str:
    return csv_text(
        [
            [
                "month",
                "counterparty",
                "claims",
                *(o.lower() for o in OUTCOMES),
                "approval_rate",
                "median_decision_s",
                "p90_decision_s",
                "billed_satang",
                "approved_satang",
                "paid_satang",
                "outstanding_satang",
            ],
            *(
                [
                    r.month,
                    r.counterparty or "ALL",
                    r.claims,
                    *(r.outcomes[o] for o in OUTCOMES),
                    "" if r.approval_rate is None else f"{r.approval_rate:.4f}",
                    _num(r.median_s),
                    _num(r.p90_s),
                    r.billed,
                    r.approved,
                    r.paid,
                    r.outstanding,
                ]
                for r in rows
            ),
        ]
    )


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    ident = f"chart-{zlib.crc32(title.encode()):08x}"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-labelledby="{ident}">'
        f'<title id="{ident}">{escape(title)}</title>' + "".join(body) + "</svg>"
    )


MonthLabel = Callable[[str], str]
# One month's bars: (row, its slot's left edge, the slot's width, a value's bar height).
MonthBars = Callable[[Row, float, float, Callable[[int], float]], list[str]]

_WIDTH, _HEIGHT, _PAD, _LEGEND = 640, 260, 36, 24


def _monthly_chart(
    rows: Sequence[Row],
    title: str,
    month: MonthLabel,
    peak_of: Callable[[Row], int],
    bars: MonthBars,
    legend: list[tuple[str, str]],
) -> str:
    """Per month (oldest left), in a slot of its own: its bars over its label; a legend on top."""
    totals = [r for r in reversed(rows) if not r.counterparty]
    peak = max((peak_of(r) for r in totals), default=0) or 1
    slot = (_WIDTH - 2 * _PAD) / max(1, len(totals))

    def bar_height(value: int) -> float:
        return (_HEIGHT - 2 * _PAD - _LEGEND) * value / peak

    body: list[str] = []
    for i, r in enumerate(totals):
        body += bars(r, _PAD + i * slot, slot, bar_height)
        body.append(
            f'<text x="{_PAD + (i + 0.5) * slot:.1f}" y="{_HEIGHT - _PAD + 16}" text-anchor="middle" '
            f'font-size="12">{escape(month(r.month))}</text>'
        )
    body += _legend(legend, _WIDTH)
    return _svg(_WIDTH, _HEIGHT, title, body)


def outcomes_chart(rows: Sequence[Row], title: str, labels: dict[str, str], month: MonthLabel = str) -> str:
    """Stacked bars: per month (oldest left), claims by outcome."""

    def bars(r: Row, left: float, slot: float, bar_height: Callable[[int], float]) -> list[str]:
        out: list[str] = []
        y: float = _HEIGHT - _PAD
        for o in OUTCOMES:
            h = bar_height(r.outcomes[o])
            if h:
                y -= h
                out.append(
                    f'<rect x="{left + slot * 0.15:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" '
                    f'height="{h:.1f}" fill="{OUTCOME_COLOURS[o]}"><title>{escape(month(r.month))} '
                    f"{escape(labels.get(o, o))}: {r.outcomes[o]}</title></rect>"
                )
        return out

    legend = [(labels.get(o, o), OUTCOME_COLOURS[o]) for o in OUTCOMES]
    return _monthly_chart(rows, title, month, lambda r: r.claims, bars, legend)


def amounts_chart(rows: Sequence[Row], title: str, labels: dict[str, str], month: MonthLabel = str) -> str:
    """Grouped bars: per month, billed / approved / paid."""

    def bars(r: Row, left: float, slot: float, bar_height: Callable[[int], float]) -> list[str]:
        out: list[str] = []
        for j, (name, value) in enumerate((("billed", r.billed), ("approved", r.approved), ("paid", r.paid))):
            h = bar_height(value)
            x = left + slot * (0.1 + 0.27 * j)
            tip = f"{month(r.month)} {labels.get(name, name)}: ฿{value // 100:,}.{value % 100:02d}"
            out.append(
                f'<rect x="{x:.1f}" y="{_HEIGHT - _PAD - h:.1f}" width="{slot * 0.25:.1f}" height="{h:.1f}" '
                f'fill="{AMOUNT_COLOURS[name]}"><title>{escape(tip)}</title></rect>'
            )
        return out

    legend = [(labels.get(n, n), c) for n, c in AMOUNT_COLOURS.items()]
    return _monthly_chart(rows, title, month, lambda r: r.billed, bars, legend)


def _legend(items: list[tuple[str, str]], width: int) -> list[str]:
    step = width / len(items)
    out = []
    for i, (label, colour) in enumerate(items):
        x = 8 + i * step
        out.append(f'<rect x="{x:.1f}" y="6" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 16:.1f}" y="16" font-size="12">{escape(label)}</text>')
    return out
