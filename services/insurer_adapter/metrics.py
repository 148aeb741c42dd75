"""Domain metrics of the adapter (RPC metrics come from the shared interceptor)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DELIVERIES = Counter(
    "iclaim_adapter_deliveries_total",
    "DeliverClaim calls accepted, new or duplicate.",
    ["result"],
)
DECISIONS = Counter(
    "iclaim_adapter_decisions_total",
    "Decisions reported to the router, by state and outcome (recorded | failed).",
    ["state", "result"],
)
DECISION_SEND_RETRIES = Counter(
    "iclaim_adapter_decision_send_retries_total",
    "RecordDecision attempts that will be retried, by gRPC code.",
    ["code"],
)
DECISION_LATENCY = Histogram(
    "iclaim_adapter_decision_latency_seconds",
    "From receipt of a claim to the router acknowledging its final decision.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 30, 60, 120, 300),
)
