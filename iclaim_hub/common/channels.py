"""Channels from one hub service to another (plaintext inside the cluster).

gRPC keeps one HTTP/2 connection per backend address for hours. Behind a
ClusterIP Service that is one pod per client process, however many replicas
there are. In Kubernetes the internal Services are headless (deploy/k8s), so
their DNS name resolves to every ready pod; with the `dns:///` resolver and
`round_robin` the client connects to each address and spreads calls over them.
A target that is an IP address (tests, the dev stack) works the same way.
"""

from __future__ import annotations

from typing import Any

from iclaim.limits import CLIENT_OPTIONS

LB_POLICY = "round_robin"

INTERNAL_CLIENT_OPTIONS: list[tuple[str, Any]] = [
    *CLIENT_OPTIONS,
    ("grpc.lb_policy_name", LB_POLICY),
]


def internal_target(target: str) -> str:
    """host:port -> dns:///host:port (gRPC's DNS resolver, which returns every
    address); a target that already names a resolver is kept."""
    if "://" in target or target.startswith(("dns:", "unix:", "ipv4:", "ipv6:")):
        return target
    return f"dns:///{target}"
