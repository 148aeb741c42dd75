"""Series names in PromQL expressions (dashboards and rules name metrics that
must exist: tests/unit/test_monitoring.py, tests/integration/test_envoy_metrics.py)."""

from __future__ import annotations

import re

PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "increase",
    "delta",
    "deriv",
    "by",
    "without",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "absent",
    "bool",
    "offset",
    "le",
    "time",
    "vector",
    "scalar",
    "topk",
    "bottomk",
    "abs",
    "humanize",
}


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression (not functions, labels or keywords)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_matchers)
    without_windows = re.sub(r"\[[^\]]*\]", "[]", without_groupings)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_windows))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"e\d*", n)}
