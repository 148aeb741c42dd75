"""Writes deploy/k8s/components/monitoring/prometheusrule.yaml from the one
rules source, deploy/monitoring/rules.yaml (`python tools/monitoring_k8s.py`;
tests/unit/test_k8s_monitoring.py regenerates it and compares)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "monitoring" / "rules.yaml"
OUT = ROOT / "deploy" / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
HEADER = "# Generated from deploy/monitoring/rules.yaml by tools/monitoring_k8s.py; do not edit.\n"


def rendered() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "iclaim", "labels": {"app.kubernetes.io/part-of": "iclaim"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=1000)


def main() -> None:
    OUT.write_text(rendered())
    sys.stdout.write(f"wrote {OUT}\n")


if __name__ == "__main__":
    main()
