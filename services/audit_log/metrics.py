"""Audit log metrics (served on the service's /metrics port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ENTRIES_APPENDED = Counter("iclaim_audit_entries_appended_total", "Entries appended to the log.", ["source"])
DUPLICATES_DROPPED = Counter(
    "iclaim_audit_duplicates_dropped_total", "Redelivered events dropped by event id.", ["source"]
)
APPEND_LATENCY = Histogram(
    "iclaim_audit_append_seconds",
    "Time to durably append one batch (lock, insert, commit).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TREE_SIZE = Gauge("iclaim_audit_tree_size", "Entries in the log (Merkle tree size).")
CHECKPOINT_AGE = Gauge(
    "iclaim_audit_checkpoint_age_seconds", "Seconds since the latest checkpoint was signed."
)
CHECKPOINT_SIZE = Gauge("iclaim_audit_checkpoint_tree_size", "Tree size of the latest checkpoint.")
INGEST_MALFORMED = Counter(
    "iclaim_audit_ingest_malformed_lines_total", "Access-log lines skipped as malformed."
)
ENTRIES_EXPIRED = Counter("iclaim_audit_entries_expired_total", "Entries whose data expired.")
