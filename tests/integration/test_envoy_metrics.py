"""The Envoy series the dashboards chart (deploy/monitoring/dashboards) and
the rules read (deploy/monitoring/rules.yaml) exist in a running gateway's own
Prometheus stats, with the labels they select on (tests/unit/test_monitoring.py
checks our services' series the same way)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from iclaim.client.hospital import HospitalClient
from tests.support.stack import RunningStack
from tests.support.promql import metric_names as _metric_names

pytestmark = pytest.mark.integration

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
DASHBOARDS = MONITORING / "dashboards"


async def _envoy_stats(port: int) -> str:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/stats/prometheus") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


async def test_every_envoy_series_a_dashboard_names_exists(running_stack: RunningStack) -> None:
    async with HospitalClient(running_stack.creds()) as client:
        await client.list_insurers()  # so that request histograms have samples
    body = await _envoy_stats(running_stack.stack.ports.envoy_admin)
    series: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(sample.labels)
    queries = [
        t["expr"]
        for path in sorted(DASHBOARDS.glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        for t in panel.get("targets", [])
    ]
    # The availability SLO counts the checks Envoy could not make (envoy_http_ext_authz_error).
    queries += [
        str(rule["expr"])
        for group in yaml.safe_load((MONITORING / "rules.yaml").read_text())["groups"]
        for rule in group["rules"]
    ]
    envoy_queries = [q for q in queries if "envoy_" in q]
    assert envoy_queries, "the gateway dashboard charts Envoy"
    for query in envoy_queries:
        for name in (n for n in _metric_names(query) if n.startswith("envoy_")):
            # The parser names counter samples *_total; Envoy exposes them as the query names them.
            wanted = {name, name + "_bucket", name + "_total"}
            assert wanted & set(series), f"{name}: not in Envoy's stats"
            for label, value in re.findall(r'(envoy_[a-z_]+)="([^"]+)"', query):
                found = [ls for n in wanted & set(series) for ls in series[n]]
                assert any(ls.get(label) == value for ls in found), (
                    f"{name}{{{label}={value!r}}} not in Envoy's stats"
                )
