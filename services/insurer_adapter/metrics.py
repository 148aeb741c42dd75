"""Domain metrics of the adapter (RPC metrics come from the shared interceptor).
Labels are insurer codes from the registry and fixed names only."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "iclaim_adapter_deliveries_total",
    "DeliverClaim calls accepted, new or duplicate.",
    ["result"],
)
PUSHES = Counter(
    "iclaim_delivery_pushes_total",
    "Push outcomes per insurer: taken, failed (one attempt not taken), expired (gave up).",
    ["insurer", "outcome"],
)
ATTEMPT_LATENCY = Histogram(
    "iclaim_delivery_attempt_seconds",
    "Duration of one push attempt, whatever its outcome.",
    ["insurer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
BACKLOG = Gauge(
    "iclaim_delivery_backlog",
    "Deliveries waiting to be taken, per insurer.",
    ["insurer"],
)
BACKLOG_OLDEST = Gauge(
    "iclaim_delivery_backlog_oldest_seconds",
    "Age of the oldest waiting delivery, per insurer (0 when none waits).",
    ["insurer"],
)
CIRCUIT = Gauge(
    "iclaim_delivery_circuit_state",
    "Push circuit per insurer on this replica: 0 unknown, 1 healthy, 2 degraded, 3 down.",
    ["insurer"],
)
REPORTS = Counter(
    "iclaim_delivery_reports_total",
    "Reports to the router by kind (taken, expired, redriven) and outcome (acked, retry).",
    ["kind", "outcome"],
)
PUSH_ANSWERS = Counter(
    "iclaim_delivery_push_answers_total",
    "Decisions insurers answered pushes with (§10.6), by what became of them: recorded,"
    " conflict (an earlier decision stands), refused, unrecorded or malformed (the push is not taken).",
    ["insurer", "outcome"],
)
