"""deploy/k8s/components/monitoring: the PrometheusRule is the rules file,
regenerated; the monitors select every hub service; the custom resources are
valid against the prometheus-operator CRD schemas (tests/vectors)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import yaml

from tests.support.crd import custom_resource_errors
from tools.monitoring_k8s import OUT, RULES, rendered

REPO = Path(__file__).resolve().parents[2]
PROD = REPO / "deploy" / "k8s" / "overlays" / "prod"
JOBS = {"claim-router", "insurer-adapter", "audit-log", "billing", "authz", "gateway"}


def _prod() -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(PROD)],
        check=True,
        capture_output=True,
        text=True,
        env={"KUBECONFIG": "/dev/null", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    assert OUT.read_text() == rendered(), "run `python tools/monitoring_k8s.py` and commit the result"
    rule = yaml.safe_load(OUT.read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_prod_carries_valid_monitors_and_rules() -> None:
    objs = _prod()
    custom = [o for o in objs if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {o["kind"] for o in custom} == {"ServiceMonitor", "PrometheusRule"}
    assert all(o["metadata"].get("namespace") == "iclaim" for o in custom)
    for obj in custom:
        assert custom_resource_errors(obj) == [], obj["metadata"]["name"]


def test_every_job_the_rules_name_is_scraped_by_its_port() -> None:
    objs = _prod()
    services = [o for o in objs if o["kind"] == "Service"]
    monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
    scraped = set()
    for mon in monitors:
        assert mon["spec"]["jobLabel"] == "app.kubernetes.io/name"
        want = mon["spec"]["selector"]["matchLabels"]
        ports = {e["port"] for e in mon["spec"]["endpoints"]}
        for svc in services:
            labels = svc["metadata"].get("labels", {})
            if all(labels.get(k) == v for k, v in want.items()) and ports & {
                p["name"] for p in svc["spec"]["ports"]
            }:
                scraped.add(labels["app.kubernetes.io/name"])
    assert scraped == JOBS


def test_the_crd_check_refuses_an_unknown_field() -> None:
    (mon,) = [o for o in _prod() if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == "billing"]
    bad = copy.deepcopy(mon)
    bad["spec"]["endpoints"][0]["scrapeIntervall"] = "30s"
    assert custom_resource_errors(bad) != []
    wrong_type = copy.deepcopy(mon)
    wrong_type["spec"]["endpoints"] = "metrics"
    assert custom_resource_errors(wrong_type) != []


def test_envoy_stats_are_scraped_from_the_stats_listener() -> None:
    """Prometheus reaches Envoy's series through the stats listener (never the
    loopback admin): the gateway monitor's envoy-metrics endpoint is the port
    Envoy's ICLAIM_ENVOY_STATS_ADDR listens on, on the cluster-internal Service."""
    objs = _prod()
    (mon,) = [o for o in objs if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == "gateway"]
    endpoints = {e["port"]: e for e in mon["spec"]["endpoints"]}
    assert endpoints["envoy-metrics"]["path"] == "/stats/prometheus"
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    assert "envoy-metrics" not in {p["name"] for p in services["gateway"]["spec"]["ports"]}  # public
    (port,) = [p for p in services["gateway-metrics"]["spec"]["ports"] if p["name"] == "envoy-metrics"]
    (dep,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "gateway"]
    envoy = dep["spec"]["template"]["spec"]["containers"][0]
    (container_port,) = [p for p in envoy["ports"] if p["name"] == port["targetPort"]]
    (stats_addr,) = [e["value"] for e in envoy["env"] if e["name"] == "ICLAIM_ENVOY_STATS_ADDR"]
    assert stats_addr == f"0.0.0.0:{container_port['containerPort']}"
