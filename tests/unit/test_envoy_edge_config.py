"""The gateway's edge hardening in the rendered Envoy bootstrap (gateway/envoy.py):
the Prometheus stats listener, grpc_stats, the overload manager, path
normalisation, DNS upstreams; and the real Envoy binary accepts the result
(`envoy --mode validate`). tests/integration/test_envoy_edge.py runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway import envoy
from gateway.authz import policy
from gateway.envoy import envoy_binary, render_config
from gateway.tls import ensure_dev_tls

HCM = "envoy.filters.network.http_connection_manager"


def _full(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Every optional part switched on, with real certificate files (validate reads them)."""
    tls = ensure_dev_tls(tmp_path / "state")
    sds = tmp_path / "state" / envoy.CERT_SDS_FILE
    sds.write_text(json.dumps(envoy.certificate_sds(tls)))
    args: dict[str, Any] = {
        "listen": "0.0.0.0:8443",
        "stats": "0.0.0.0:9902",
        "router": "claim-router.iclaim.svc:50051",
        "billing": "billing.iclaim.svc:50081",
        "audit": "audit-log.iclaim.svc:50071",
        "authz": "authz.iclaim.svc:50091",
        "certificate_sds": sds,
        "access_log": tmp_path / "access.log",
        "client_ca": tls.ca_cert,
        "memory_limit_bytes": 1 << 30,
        **overrides,
    }
    return render_config(**args)


def _validate(tmp_path: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(cfg))
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _listener(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    [listener] = [li for li in cfg["static_resources"]["listeners"] if li["name"] == name]
    return listener  # type: ignore[no-any-return]


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    [chain] = listener["filter_chains"]
    [f] = [f for f in chain["filters"] if f["name"] == HCM]
    return f["typed_config"]  # type: ignore[no-any-return]


def test_envoy_accepts_the_rendered_config(tmp_path: Path) -> None:
    proc = _validate(tmp_path, _full(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout
    # A deprecated field works today and breaks at the next Envoy upgrade.
    assert "deprecated" not in (proc.stdout + proc.stderr).lower()


def test_envoy_validate_refuses_a_broken_config(tmp_path: Path) -> None:
    """The check above can fail: Envoy rejects what it does not know."""
    cfg = _full(tmp_path)
    cfg["overload_manager"]["actions"][0]["name"] = "envoy.overload_actions.shrink_heaps"
    assert _validate(tmp_path, cfg).returncode != 0
    cfg = _full(tmp_path)
    _hcm(_listener(cfg, "public_grpc"))["normalise_path"] = True
    assert _validate(tmp_path, cfg).returncode != 0


def test_stats_listener_forwards_only_get_stats_prometheus(tmp_path: Path) -> None:
    cfg = _full(tmp_path)
    stats = _listener(cfg, "prometheus_stats")
    assert stats["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 9902}
    assert stats["ignore_global_conn_limit"] is True
    [vhost] = _hcm(stats)["route_config"]["virtual_hosts"]
    forwarded = [r for r in vhost["routes"] if "route" in r]
    assert forwarded == [
        {
            "name": "prometheus",
            "match": {
                "path": "/stats/prometheus",
                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
            },
            "route": {"cluster": "envoy_admin", "timeout": "10s"},
        }
    ]
    assert vhost["routes"][-1]["match"] == {"prefix": "/"}
    assert vhost["routes"][-1]["direct_response"]["status"] == 404
    # envoy_admin is the loopback admin itself; admin stays loopback-only.
    [admin] = [c for c in cfg["static_resources"]["clusters"] if c["name"] == "envoy_admin"]
    [ep] = admin["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert ep["endpoint"]["address"] == cfg["admin"]["address"]
    assert cfg["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_no_stats_listener_unless_asked(tmp_path: Path) -> None:
    cfg = _full(tmp_path, stats=None)
    assert [li["name"] for li in cfg["static_resources"]["listeners"]] == ["public_grpc"]
    assert "envoy_admin" not in {c["name"] for c in cfg["static_resources"]["clusters"]}
    with pytest.raises(ValueError, match="port of its own"):
        _full(tmp_path, stats="0.0.0.0:9901")


@pytest.mark.parametrize("name", ["public_grpc", "prometheus_stats"])
def test_paths_are_normalised_and_escaped_slashes_refused(tmp_path: Path, name: str) -> None:
    hcm = _hcm(_listener(_full(tmp_path), name))
    assert hcm["normalize_path"] is True
    assert hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"


def test_grpc_stats_per_method_only_for_public_methods(tmp_path: Path) -> None:
    filters = _hcm(_listener(_full(tmp_path), "public_grpc"))["http_filters"]
    names = [f["name"] for f in filters]
    # Before ext_authz: refused calls are counted too.
    assert names.index("envoy.filters.http.grpc_stats") < names.index("envoy.filters.http.ext_authz")
    config = filters[names.index("envoy.filters.http.grpc_stats")]["typed_config"]
    assert config["emit_filter_state"] is True
    assert "stats_for_all_methods" not in config  # a made-up path would mint new series
    listed = {
        f"/{s['name']}/{m}"
        for s in config["individual_method_stats_allowlist"]["services"]
        for m in s["method_names"]
    }
    assert listed == set(policy.ALLOWED_ROLES)


def test_overload_manager_is_sized_from_the_memory_limit(tmp_path: Path) -> None:
    om = _full(tmp_path, memory_limit_bytes=512 << 20)["overload_manager"]
    monitors = {m["name"]: m["typed_config"] for m in om["resource_monitors"]}
    heap = monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"]
    assert heap == int((512 << 20) * envoy.HEAP_SHARE_OF_LIMIT) < 512 << 20
    conns = monitors["envoy.resource_monitors.global_downstream_max_connections"]
    assert conns["max_active_downstream_connections"] == envoy.MAX_DOWNSTREAM_CONNECTIONS
    thresholds = {
        a["name"]: a["triggers"][0]["threshold"]["value"]
        for a in om["actions"]
        if a["triggers"][0]["name"] == "envoy.resource_monitors.fixed_heap"
    }
    shrink = thresholds["envoy.overload_actions.shrink_heap"]
    stop = thresholds["envoy.overload_actions.stop_accepting_requests"]
    assert 0.5 < shrink < stop < 1.0  # give memory back first, refuse requests only later


def test_memory_limit_from_env_then_cgroup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICLAIM_ENVOY_MEMORY_LIMIT_BYTES", str(384 << 20))
    assert envoy.memory_limit_bytes() == 384 << 20
    monkeypatch.delenv("ICLAIM_ENVOY_MEMORY_LIMIT_BYTES")
    cgroup = tmp_path / "memory.max"
    monkeypatch.setattr(envoy, "CGROUP_MEMORY_MAX", cgroup)
    cgroup.write_text("268435456\n")
    assert envoy.memory_limit_bytes() == 256 << 20
    cgroup.write_text("max\n")  # no limit
    assert envoy.memory_limit_bytes() == envoy.DEFAULT_MEMORY_LIMIT_BYTES
    cgroup.unlink()
    assert envoy.memory_limit_bytes() == envoy.DEFAULT_MEMORY_LIMIT_BYTES


def test_gateway_settings_read_the_stats_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ICLAIM_ENVOY_STATS_ADDR", raising=False)
    assert envoy.GatewaySettings.from_env().stats is None
    monkeypatch.setenv("ICLAIM_ENVOY_STATS_ADDR", "0.0.0.0:9902")
    assert envoy.GatewaySettings.from_env().stats == "0.0.0.0:9902"


def test_dns_upstreams_spread_over_every_address(tmp_path: Path) -> None:
    clusters = {c["name"]: c for c in _full(tmp_path)["static_resources"]["clusters"]}
    for name in ("router", "billing", "audit", "authz"):
        # Every A record of a headless Service becomes an endpoint, re-resolved.
        assert clusters[name]["type"] == "STRICT_DNS"
        assert clusters[name]["lb_policy"] == "ROUND_ROBIN"


def test_workers_follow_the_cgroup_cpu_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(envoy, "CGROUP_CPU_MAX", cpu_max)
    for text, workers in (("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", 0)):
        cpu_max.write_text(text + "\n")
        assert envoy.cpu_limit_workers() == workers, text
    cpu_max.unlink()
    assert envoy.cpu_limit_workers() == 0
    assert envoy.envoy_command(Path("/c.json"), concurrency=2)[-2:] == ["--concurrency", "2"]
    assert "--concurrency" not in envoy.envoy_command(Path("/c.json"), concurrency=0)
