"""Authz decision metrics (served with the common /metrics endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DECISIONS = Counter(
    "iclaim_authz_decisions_total",
    "ext_authz decisions, by outcome (allow|deny) and reason (OK or the UPPER_SNAKE reason).",
    ["outcome", "reason"],
)
CHECK_LATENCY = Histogram(
    "iclaim_authz_check_duration_seconds",
    "Time to decide one ext_authz check.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
