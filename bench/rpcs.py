"""Calls the hub's services handled during a bench phase, read from their own
/metrics: public calls (iclaim.v1.*, through Envoy) apart from internal ones
(hub to hub, and Envoy's ext_authz checks). gRPC calls from
grpc_server_handled_total; the ext_authz checks from the authz's own decision
count, whichever protocol carried them (HTTP, or the gRPC Check)."""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

PUBLIC_PREFIX = "iclaim.v1."
CHECK_SERVICE = "envoy.service.auth.v3.Authorization"
CHECKS = "iclaim_authz_decisions"


def scrape(metrics_ports: Mapping[str, int]) -> Counter[tuple[str, str]]:
    """(service name, gRPC service) -> calls handled so far."""
    counts: Counter[tuple[str, str]] = Counter()
    for name, port in metrics_ports.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        counts.update(calls_in(name, text))
    return counts


def calls_in(name: str, text: str) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == CHECKS + "_total":
                counts[(name, CHECK_SERVICE)] += int(sample.value)
            elif sample.name == "grpc_server_handled_total":
                service = sample.labels.get("grpc_service", "")
                if service != CHECK_SERVICE:  # counted by its decisions above
                    counts[(name, service)] += int(sample.value)
    return counts


def used(before: Counter[tuple[str, str]], after: Counter[tuple[str, str]], claims: int) -> dict[str, object]:
    spent = after - before
    public = sum(n for (_, svc), n in spent.items() if svc.startswith(PUBLIC_PREFIX))
    internal = sum(n for (_, svc), n in spent.items() if not svc.startswith(PUBLIC_PREFIX))
    by_service: Counter[str] = Counter()
    for (name, _), n in spent.items():
        by_service[name] += n
    per = max(claims, 1)
    return {
        "public_per_claim": round(public / per, 2),
        "internal_per_claim": round(internal / per, 2),
        "by_process_per_claim": {name: round(n / per, 2) for name, n in sorted(by_service.items())},
    }
