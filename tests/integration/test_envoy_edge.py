"""The gateway's edge hardening through the real Envoy (python -m gateway.envoy):

- the stats listener (ICLAIM_ENVOY_STATS_ADDR) answers GET /stats/prometheus
  with Envoy's series, the grpc_stats per-method ones and every Envoy series a
  dashboard charts, and refuses every other admin path and method;
- a path with an escaped slash is refused by Envoy itself: neither ext_authz
  nor the upstream ever sees it.

The ext_authz service here is a recording fake that allows everything, over
ext_authz's gRPC protocol (ICLAIM_AUTHZ_PROTOCOL=grpc; the real one, over HTTP,
is exercised in tests/service/test_gateway_*envoy.py): what matters is whether
a request reached it."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2
from prometheus_client.parser import text_string_to_metric_families

from iclaim.v1 import claim_service_pb2
from iclaim_ops.devstack.stack import free_port
from tests.support.gateway import Gateway, call, recording_gateway
from tests.support.promql import metric_names

pytestmark = pytest.mark.integration

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "dashboards"
GET_CLAIM = "/iclaim.v1.ClaimService/GetClaim"


@dataclass
class AuthzRecorder(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    paths: list[str] = field(default_factory=list)

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        self.paths.append(request.attributes.request.http.path)
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0))


@dataclass
class Edge:
    gw: Gateway
    stats_port: int
    authz: AuthzRecorder
    channel: grpc.aio.Channel


@pytest.fixture(scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    stats_port = free_port()
    # The fake speaks ext_authz's gRPC form: Envoy's other protocol, kept working.
    env = {"ICLAIM_ENVOY_STATS_ADDR": f"127.0.0.1:{stats_port}", "ICLAIM_AUTHZ_PROTOCOL": "grpc"}
    async with recording_gateway(tmp_path_factory.mktemp("edge"), env) as gw:
        recorder = AuthzRecorder()
        server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(recorder, server)
        server.add_insecure_port(f"127.0.0.1:{gw.authz_port}")
        await server.start()
        creds = grpc.ssl_channel_credentials(root_certificates=gw.ca_pem)
        channel = grpc.aio.secure_channel(f"127.0.0.1:{gw.port}", creds)
        try:
            yield Edge(gw, stats_port, recorder, channel)
        finally:
            await channel.close()
            await server.stop(0)


async def _http(port: int, method: str, path: str) -> tuple[int, str]:
    """One HTTP/1.1 request with the path exactly as given (no client-side
    normalisation, unlike URL-parsing clients); returns status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode().lower()
        status = int(head.split(" ", 2)[1])
        length = re.search(r"content-length: *(\d+)", head)
        if length is not None:
            body = await asyncio.wait_for(reader.readexactly(int(length[1])), 10)
        elif "transfer-encoding: chunked" in head:
            body = b""
            while size := int((await asyncio.wait_for(reader.readline(), 10)).split(b";")[0], 16):
                body += await asyncio.wait_for(reader.readexactly(size + 2), 10)
                body = body[:-2]
        else:
            body = b""
    finally:
        writer.close()
    return status, body.decode(errors="replace")


async def _series(port: int) -> dict[str, list[dict[str, str]]]:
    status, body = await _http(port, "GET", "/stats/prometheus")
    assert status == 200, body[:200]
    series: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(sample.labels)
    return series


def _value(body: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name in (name, name + "_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not exposed")


async def test_stats_listener_serves_envoy_and_grpc_stats(edge: Edge) -> None:
    body = claim_service_pb2.GetClaimRequest(transaction_id="T-1").SerializeToString()
    done = await call(edge.channel, GET_CLAIM, body, [])
    assert await done.code() == grpc.StatusCode.OK  # through the fake authz to the recorder
    series = await _series(edge.stats_port)
    assert any(n.startswith("envoy_http_downstream_rq") for n in series)
    # grpc_stats: one metric per stat, the public method in two labels (our stats_tags).
    calls = series.get("envoy_cluster_grpc_total", [])
    want = {
        "envoy_cluster_name": "router",
        "grpc_service": "iclaim.v1.ClaimService",
        "grpc_method": "GetClaim",
    }
    assert any(want.items() <= ls.items() for ls in calls), calls
    for stat in ("success", "request_message_count", "response_message_count"):
        # (the parser names counter samples *_total)
        assert {f"envoy_cluster_grpc_{stat}", f"envoy_cluster_grpc_{stat}_total"} & set(series), stat
    # Bounded: no metric name carries a service or method (they are labels only).
    assert not [n for n in series if "ClaimService" in n or "GetClaim" in n]


async def test_every_envoy_series_a_dashboard_names_is_scrapable(edge: Edge) -> None:
    body = claim_service_pb2.GetClaimRequest(transaction_id="T-2").SerializeToString()
    await call(edge.channel, GET_CLAIM, body, [])  # so the request histograms have samples
    series = await _series(edge.stats_port)
    queries = [
        t["expr"]
        for path in sorted(DASHBOARDS.glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        for t in panel.get("targets", [])
        if "envoy_" in t["expr"]
    ]
    assert queries, "the gateway dashboard charts Envoy"
    for query in queries:
        for name in (n for n in metric_names(query) if n.startswith("envoy_")):
            wanted = {name, name + "_bucket", name + "_total"}
            assert wanted & set(series), f"{name}: not on the stats listener"
            for label, value in re.findall(r'(envoy_[a-z_]+)="([^"]+)"', query):
                found = [ls for n in wanted & set(series) for ls in series[n]]
                assert any(ls.get(label) == value for ls in found), f"{name}{{{label}={value!r}}}"


REFUSED = [
    ("GET", "/"),
    ("GET", "/stats"),
    ("GET", "/stats?format=prometheus"),
    ("GET", "/stats/prometheus/"),
    ("GET", "/stats/prometheusx"),
    ("GET", "/config_dump"),
    ("GET", "/clusters"),
    ("GET", "/server_info"),
    ("GET", "/ready"),
    ("GET", "/certs"),
    ("POST", "/quitquitquit"),
    ("POST", "/healthcheck/fail"),
    ("POST", "/drain_listeners"),
    ("POST", "/runtime_modify?x=1"),
    ("POST", "/logging?level=trace"),
    ("POST", "/stats/prometheus"),
    ("GET", "/stats/prometheus/../config_dump"),
    ("GET", "/stats/prometheus/%2E%2E/config_dump"),
]


async def test_stats_listener_refuses_the_rest_of_admin(edge: Edge) -> None:
    for method, path in REFUSED:
        status, body = await _http(edge.stats_port, method, path)
        assert status in (400, 404), f"{method} {path}: {status} {body[:120]}"
        assert "envoy_" not in body and "cluster" not in body.lower(), f"{method} {path}: {body[:120]}"
    escaped = await _http(edge.stats_port, "GET", "/stats%2Fprometheus")
    assert escaped[0] == 400, escaped  # escaped slashes are refused outright
    # Nothing above reached admin: Envoy is still up and healthy (no quit, no
    # failed health check), and the one allowed path still answers.
    assert await _series(edge.stats_port)
    status, _ = await _http(edge.stats_port, "GET", "/stats/prometheus?usedonly")
    assert status == 200


async def test_escaped_slash_is_refused_before_authz(edge: Edge) -> None:
    body = claim_service_pb2.GetClaimRequest(transaction_id="T-3").SerializeToString()
    before = (await _http(edge.stats_port, "GET", "/stats/prometheus"))[1]
    edge.authz.paths.clear()
    edge.gw.recorder.calls.clear()

    refused = await call(edge.channel, "/iclaim.v1.ClaimService%2FGetClaim", body, [])
    # Envoy's own 400, as a gRPC caller sees a local reply: INTERNAL.
    assert await refused.code() == grpc.StatusCode.INTERNAL
    assert edge.authz.paths == [] and edge.gw.recorder.calls == []
    after = (await _http(edge.stats_port, "GET", "/stats/prometheus"))[1]
    failed = "envoy_http_downstream_rq_failed_path_normalization"
    labels = {"envoy_http_conn_manager_prefix": "ingress"}
    assert _value(after, failed, **labels) == _value(before, failed, **labels) + 1
    # The same call with a plain slash does reach the authz (the fake records).
    ok = await call(edge.channel, GET_CLAIM, body, [])
    assert await ok.code() == grpc.StatusCode.OK
    assert edge.authz.paths == [GET_CLAIM]
