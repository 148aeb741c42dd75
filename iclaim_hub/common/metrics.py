"""Prometheus metrics shared by every server; /metrics on its own port."""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram, start_http_server

# RPC metrics under the grpc-ecosystem names, so that community dashboards and
# alerts work as they are. Handling time is for unary calls only: a stream's
# lifetime (WatchClaim, long polls) is not latency.
RPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by canonical status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
RPC_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Handling time of unary RPCs until the response is sent.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RPC_MSG_SENT = Counter(
    "grpc_server_msg_sent_total",
    "Stream messages sent by the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
# Housekeeping (iclaim_hub.common.purge); `table` is one of our fixed names.
ROWS_PURGED = Counter(
    "iclaim_rows_purged_total", "Rows removed by housekeeping once past their kept window.", ["table"]
)
PURGE_FAILURES = Counter(
    "iclaim_purge_failures_total", "Housekeeping passes that failed (retried at the next).", ["table"]
)
BACKFILL_ROWS = Counter(
    "iclaim_backfill_rows_total",
    "Rows stored before a release that housekeeping rewrote after it (iclaim_hub/common/backfill.py).",
    ["backfill"],
)
BACKFILL_FAILURES = Counter(
    "iclaim_backfill_failures_total", "Backfill batches that failed (retried 30 s later).", ["backfill"]
)


def start_metrics_server(port: int, host: str | None = None) -> int:
    """Serves /metrics; port 0 picks a free one, -1 disables. Returns the bound port.

    Loopback unless ICLAIM_METRICS_HOST says otherwise (0.0.0.0 in a pod)."""
    if port < 0:
        return -1
    addr = host or os.environ.get("ICLAIM_METRICS_HOST", "127.0.0.1")
    server, _thread = start_http_server(port, addr=addr)
    return int(server.server_port)
