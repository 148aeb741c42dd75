"""deploy/monitoring: rules and alerts check and pass their promtool tests, the
dashboards are what tools/dashboards.py generates, every query parses, and every
metric they name is one our services export."""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from iclaim import errors
from iclaim_hub.common.db import database_unavailable

from tests.support.promql import metric_names as _metric_names

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
# Every module that defines metrics; importing registers them in the default registry.
METRIC_MODULES = (
    "iclaim_hub.common.metrics",
    "services.claim_router.metrics",
    "services.insurer_adapter.metrics",
    "services.audit_log.metrics",
    "services.audit_log.shipping",
    "services.billing.metrics",
    "gateway.authz.metrics",
)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install the OS package `prometheus` (.ci/run does)")
    return path


def _rules() -> list[dict[str, object]]:
    doc = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_queries() -> list[str]:
    out = []
    for path in sorted((MONITORING / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            out += [t["expr"] for t in panel.get("targets", [])]
    return out


def _our_metrics() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 - the registry's own index
        describe = getattr(collector, "describe", None)
        for metric in (describe() if describe else None) or collector.collect():
            names.add(metric.name)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(
                metric.type, ()
            )
            names.update(metric.name + s for s in suffixes)
    return names


def test_rules_check() -> None:
    run = subprocess.run(
        [promtool(), "check", "rules", str(MONITORING / "rules.yaml")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


TEST_FILES = ("tests.yaml",)


def test_rule_unit_tests_pass() -> None:
    run = subprocess.run(
        [promtool(), "test", "rules", *TEST_FILES], cwd=MONITORING, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_test_that_fires_and_one_that_does_not() -> None:
    tests = [t for f in TEST_FILES for t in yaml.safe_load((MONITORING / f).read_text())["tests"]]
    fired, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts - fired == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a quiet test"


def test_every_alert_is_documented_with_a_runbook() -> None:
    runbooks = (REPO / "docs" / "runbooks.md").read_text()
    anchors = {m.lower() for m in re.findall(r"^## (\S+)$", runbooks, re.M)}
    for rule in (r for r in _rules() if "alert" in r):
        name = str(rule["alert"])
        labels, notes = rule["labels"], rule["annotations"]
        assert isinstance(labels, dict) and labels.get("severity") in ("page", "ticket"), name
        assert isinstance(notes, dict) and notes.get("summary") and notes.get("description"), name
        assert str(notes["runbook_url"]).endswith(f"docs/runbooks.md#{name.lower()}"), name
        assert name.lower() in anchors, f"docs/runbooks.md has no section {name}"
        section = runbooks.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Means.**", "**Check.**", "**Do.**"):
            assert part in section, f"{name}: runbook lacks {part}"


def test_dashboards_are_generated_from_code() -> None:
    from tools.dashboards import rendered

    files = {p.name: p.read_text() for p in (MONITORING / "dashboards").glob("*.json")}
    assert files == rendered(), "run `python tools/dashboards.py` and commit the result"


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    run = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_metric_named_exists_in_our_registries() -> None:
    recorded = {str(r["record"]) for r in _rules() if "record" in r}
    named: set[str] = set()
    for rule in _rules():
        named |= _metric_names(str(rule["expr"]))
    for query in _dashboard_queries():
        named |= _metric_names(query)
    ours = _our_metrics()
    # Envoy's own stats are checked against a running Envoy (tests/integration/test_envoy_metrics.py).
    missing = {n for n in named - recorded - {"up"} if not n.startswith("envoy_")} - ours
    assert missing == set()


def test_the_name_check_catches_a_misspelt_metric() -> None:
    assert _metric_names('sum by (x) (rate(iclaim_claimz_total{state="A"}[5m])) / 100') == {
        "iclaim_claimz_total"
    }
    assert "iclaim_claimz_total" not in _our_metrics()


# --- the availability SLO sees the gateway's own refusals ------------------------------

WINDOWS = ("5m", "30m", "1h", "6h", "3d")


def _record(name: str) -> str:
    [expr] = [str(r["expr"]) for r in _rules() if r.get("record") == name]
    return expr


def _authz_denial_codes() -> dict[str, str]:
    """Every reason the gateway's authz may deny with, and its gRPC code: the
    errors gateway/authz raises with a literal reason, and the database outage
    its checker turns into a refusal."""
    classes = {
        n: c for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.IclaimError)
    }
    out = {database_unavailable().reason: database_unavailable().code.name}
    for path in sorted((REPO / "gateway" / "authz").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            for kw in node.keywords:
                if name in classes and kw.arg == "reason" and isinstance(kw.value, ast.Constant):
                    out[str(kw.value.value)] = classes[name].code.name
    return out


def test_authz_denials_count_as_server_errors_exactly_when_their_code_is_one() -> None:
    # A refusal at the gateway burns the budget iff a backend's answer with the
    # same code would: the rule's reason list must follow the authz's reasons.
    errors_expr = _record("iclaim:api_server_errors:rate5m")
    [codes] = re.findall(r'grpc_code=~"([^"]+)"', errors_expr)
    [reasons] = re.findall(r'iclaim_authz_decisions_total\{outcome="deny",reason=~"([^"]+)"\}', errors_expr)
    calls_expr = _record("iclaim:api_calls:rate5m")
    # Every denial is a call no backend counted; a check Envoy could not make fails the call.
    assert 'iclaim_authz_decisions_total{outcome="deny"}' in calls_expr
    assert "envoy_http_ext_authz_error" in calls_expr and "envoy_http_ext_authz_error" in errors_expr
    denials = _authz_denial_codes()
    assert {
        "NONCE_STORE_UNAVAILABLE",
        "REGISTRY_UNAVAILABLE",
        "DATABASE_UNAVAILABLE",
        "BAD_SIGNATURE",
    } <= set(denials)
    for reason, code in denials.items():
        server_side = re.fullmatch(codes, code) is not None
        assert (re.fullmatch(reasons, reason) is not None) == server_side, (reason, code)


def test_every_availability_window_counts_the_same_calls() -> None:
    for name in ("iclaim:api_calls", "iclaim:api_server_errors", "iclaim:api_error_ratio"):
        first = _record(f"{name}:rate5m")
        for window in WINDOWS[1:]:
            assert _record(f"{name}:rate{window}") == first.replace("5m", window), (name, window)
    for window in WINDOWS[1:]:
        assert _record(f"iclaim:submit_slow_ratio:rate{window}") == _record(
            "iclaim:submit_slow_ratio:rate5m"
        ).replace("[5m]", f"[{window}]")


# --- gauges every replica publishes alike ----------------------------------------------

# Read from the shared database: each replica publishes the same whole total.
DATABASE_WIDE_GAUGES = frozenset(
    {
        "iclaim_delivery_backlog",
        "iclaim_delivery_backlog_oldest_seconds",
        "iclaim_billing_invoices",
        "iclaim_billing_outstanding_satang",
        "iclaim_billing_overdue_satang",
        "iclaim_audit_tree_size",
        "iclaim_audit_checkpoint_tree_size",
        "iclaim_participants_hospitals_registered",
        "iclaim_participants_hospitals_live",
        "iclaim_participants_insurers_connected",
    }
)


def test_database_wide_gauges_are_never_summed_over_replicas() -> None:
    assert DATABASE_WIDE_GAUGES - _our_metrics() == set()
    exprs = [str(r["expr"]) for r in _rules()] + _dashboard_queries()
    named = [e for e in exprs if _metric_names(e) & DATABASE_WIDE_GAUGES]
    assert len(named) >= 10
    for expr in named:
        assert not re.search(r"\bsum\b", expr), f"summed over replicas: {expr}"
