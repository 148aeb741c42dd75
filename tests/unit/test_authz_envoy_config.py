"""The rendered Envoy bootstrap (gateway/envoy.py); Envoy itself runs in
tests/service/test_gateway_envoy.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.authz import policy
from gateway.envoy import MAX_REQUEST_BYTES, TRUSTED_HEADERS, envoy_binary, render_config
from iclaim_hub.common.access_log import ENVOY_JSON_FORMAT

SDS = Path("/s/gateway-certificate-sds.json")


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    [listener] = cfg["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    return chain["filters"][0]["typed_config"]  # type: ignore[no-any-return]


@pytest.fixture
def cfg() -> dict[str, Any]:
    return render_config(certificate_sds=SDS, access_log=Path("/s/access.log"))


def test_routes_cover_exactly_the_public_methods_then_unimplemented(cfg: dict[str, Any]) -> None:
    [vhost] = _hcm(cfg)["route_config"]["virtual_hosts"]
    routes = vhost["routes"]
    exact = {r["match"]["path"]: r for r in routes if "path" in r["match"]}
    assert set(exact) == set(policy.ALLOWED_ROLES)
    for path, r in exact.items():
        want = (
            "billing"
            if "/iclaim.v1.BillingService/" in path
            else "audit"
            if "/iclaim.v1.AuditTrailService/" in path
            else "router"
        )
        assert r["route"]["cluster"] == want
        assert "typed_per_filter_config" not in r  # ext_authz applies
    last = routes[-1]
    assert last["match"] == {"prefix": "/"} and last["direct_response"]["status"] == 404
    assert "typed_per_filter_config" not in last  # the authz hashes unknown paths


def test_health_and_reflection_skip_ext_authz(cfg: dict[str, Any]) -> None:
    [vhost] = _hcm(cfg)["route_config"]["virtual_hosts"]
    open_routes = {r["match"].get("prefix"): r for r in vhost["routes"]}
    for service in (
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    ):
        r = open_routes[f"/{service}/"]
        assert r["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"]


def test_long_calls_and_watch_get_long_timeouts(cfg: dict[str, Any]) -> None:
    [vhost] = _hcm(cfg)["route_config"]["virtual_hosts"]
    by_path = {r["match"].get("path"): r["route"] for r in vhost["routes"] if "route" in r}
    assert by_path["/iclaim.v1.ClaimService/SubmitClaim"]["timeout"] == "40s"
    assert by_path["/iclaim.v1.InsurerService/PullClaims"]["timeout"] == "40s"
    watch = by_path["/iclaim.v1.ClaimService/WatchClaim"]
    assert watch["timeout"] == "0s" and watch["idle_timeout"] == "300s"


def test_trusted_headers_are_stripped_before_ext_authz(cfg: dict[str, Any]) -> None:
    filters = _hcm(cfg)["http_filters"]
    names = [f["name"] for f in filters]
    assert names == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.grpc_stats",  # counts only (tests/unit/test_envoy_edge_config.py)
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",
    ]
    removed = {m["remove"] for m in filters[0]["typed_config"]["mutations"]["request_mutations"]}
    assert removed == {*TRUSTED_HEADERS, "x-envoy-auth-partial-body"}


def test_ext_authz_fails_closed_and_sees_the_body(cfg: dict[str, Any]) -> None:
    [authz] = [
        f["typed_config"] for f in _hcm(cfg)["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"
    ]
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"]["code"] == "ServiceUnavailable"
    assert authz["with_request_body"]["max_request_bytes"] == MAX_REQUEST_BYTES
    assert authz["with_request_body"]["pack_as_bytes"] is True


def test_tls_and_admin(cfg: dict[str, Any]) -> None:
    [listener] = cfg["static_resources"]["listeners"]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2"
    assert all(
        c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c) for c in tls["tls_params"]["cipher_suites"]
    )
    assert tls["alpn_protocols"] == ["h2"]
    assert cfg["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    with pytest.raises(ValueError):
        render_config(certificate_sds=SDS, access_log=Path("/a"), admin="0.0.0.0:9901")


def test_access_log_is_the_shared_contract(cfg: dict[str, Any]) -> None:
    [log] = _hcm(cfg)["access_log"]
    assert log["typed_config"]["log_format"]["json_format"] == ENVOY_JSON_FORMAT
    assert log["typed_config"]["path"] == "/s/access.log"


def test_hostname_upstreams_use_dns() -> None:
    cfg = render_config(certificate_sds=SDS, access_log=Path("/a"), router="claim-router:50051")
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    assert clusters["router"]["type"] == "STRICT_DNS"
    assert clusters["billing"]["type"] == "STATIC"


def test_envoy_binary_is_found() -> None:
    path = envoy_binary()
    assert path.name == "envoy" and path.parent.name == "_bin"


def test_mutual_tls_is_off_unless_a_client_ca_is_given(cfg: dict[str, Any]) -> None:
    [listener] = cfg["static_resources"]["listeners"]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert "validation_context" not in tls["common_tls_context"]
    with_ca = render_config(certificate_sds=SDS, access_log=Path("/s/a.log"), client_ca=Path("/s/cca.pem"))
    [listener] = with_ca["static_resources"]["listeners"]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["validation_context"] == {"trusted_ca": {"filename": "/s/cca.pem"}}
    # Optional at the TLS layer; the authz requires it per principal (require_mtls).
    assert tls["require_client_certificate"] is False
    # The verified certificate reaches ext_authz in a header only Envoy sets,
    # and goes no further.
    hcm = _hcm(with_ca)
    assert hcm["forward_client_cert_details"] == "SANITIZE_SET"
    assert hcm["set_current_client_cert_details"] == {"cert": True}
    assert {"exact": "x-forwarded-client-cert"} in _authz(with_ca)["allowed_headers"]["patterns"]
    [vhost] = hcm["route_config"]["virtual_hosts"]
    assert vhost["request_headers_to_remove"] == ["x-forwarded-client-cert"]
    # ext_authz's gRPC form is handed the certificate itself.
    grpc_form = render_config(
        certificate_sds=SDS, access_log=Path("/s/a.log"), client_ca=Path("/s/cca.pem"), authz_protocol="grpc"
    )
    assert _authz(grpc_form)["include_peer_certificate"] is True


def _authz(cfg: dict[str, Any]) -> dict[str, Any]:
    [f] = [f for f in _hcm(cfg)["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    return f["typed_config"]  # type: ignore[no-any-return]


def test_authz_sees_only_the_signature_trace_and_body_headers(cfg: dict[str, Any]) -> None:
    allowed = {p["exact"] for p in _authz(cfg)["allowed_headers"]["patterns"]}
    assert allowed == {
        "x-iclaim-client",
        "x-iclaim-key-id",
        "x-iclaim-timestamp",
        "x-iclaim-nonce",
        "x-iclaim-signature",
        "traceparent",
        "tracestate",
        "x-request-id",
        "x-envoy-auth-partial-body",
        "x-forwarded-client-cert",
    }
    response = _authz(cfg)["http_service"]["authorization_response"]
    # An allowed call gets the trusted headers upstream; nothing else the authz says.
    assert {p["exact"] for p in response["allowed_upstream_headers"]["patterns"]} == set(TRUSTED_HEADERS)
    # A refused one: the gRPC status and the hints, and the hashes for the access log.
    assert {p["exact"] for p in response["allowed_client_headers"]["patterns"]} == {
        "content-type",
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "x-iclaim-reason",
        "x-iclaim-server-time",
    }
    assert {p["exact"] for p in response["dynamic_metadata_from_headers"]["patterns"]} == {
        "claimed_client",
        "route_hash",
    }
    # HTTP/1.1 to the authz (its HTTP check); the services' clusters stay HTTP/2.
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    assert clusters["authz"]["typed_extension_protocol_options"][options]["explicit_http_config"] == {
        "http_protocol_options": {}
    }
    assert (
        "http2_protocol_options"
        in clusters["router"]["typed_extension_protocol_options"][options]["explicit_http_config"]
    )
    with pytest.raises(ValueError):
        render_config(certificate_sds=SDS, access_log=Path("/a"), authz_protocol="thrift")


def test_every_hop_has_a_deadline(cfg: dict[str, Any]) -> None:
    hcm = _hcm(cfg)
    assert _authz(cfg)["http_service"]["server_uri"]["timeout"] == "5s"
    grpc_form = render_config(certificate_sds=SDS, access_log=Path("/a"), authz_protocol="grpc")
    assert _authz(grpc_form)["grpc_service"]["timeout"] == "5s"
    [vhost] = hcm["route_config"]["virtual_hosts"]
    for r in vhost["routes"]:
        if "route" not in r:
            continue
        if r["route"]["timeout"] == "0s":  # streams: bounded by idle timeouts instead
            assert r["route"]["idle_timeout"]
        else:
            assert r["route"]["max_stream_duration"]["grpc_timeout_header_max"]
    for c in cfg["static_resources"]["clusters"]:
        assert c["connect_timeout"]
    assert hcm["request_headers_timeout"] and hcm["stream_idle_timeout"]
