"""Prometheus metrics shared by every server; /metrics on its own port."""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "iclaim_rpc_requests_total",
    "RPCs handled, by method and canonical status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "iclaim_rpc_duration_seconds",
    "RPC handling time.",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def start_metrics_server(port: int, host: str | None = None) -> int:
    """Serves /metrics; port 0 picks a free one, -1 disables. Returns the bound port.

    Loopback unless ICLAIM_METRICS_HOST says otherwise (0.0.0.0 in a pod)."""
    if port < 0:
        return -1
    addr = host or os.environ.get("ICLAIM_METRICS_HOST", "127.0.0.1")
    server, _thread = start_http_server(port, addr=addr)
    return int(server.server_port)
