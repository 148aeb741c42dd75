"""The bench's call count: ext_authz checks are counted once, from the authz's
decisions, whether Envoy sent them over HTTP or over the gRPC Check."""

from __future__ import annotations

from collections import Counter

from bench.rpcs import CHECK_SERVICE, calls_in, used

AUTHZ = """\
# TYPE iclaim_authz_decisions counter
iclaim_authz_decisions_total{outcome="allow",reason="OK"} 9.0
iclaim_authz_decisions_total{outcome="deny",reason="BAD_SIGNATURE"} 1.0
# TYPE grpc_server_handled counter
grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="envoy.service.auth.v3.Authorization",grpc_type="UNARY"} 4.0
grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="UNARY"} 2.0
"""
ROUTER = """\
# TYPE grpc_server_handled counter
grpc_server_handled_total{grpc_code="OK",grpc_method="SubmitClaim",grpc_service="iclaim.v1.ClaimService",grpc_type="UNARY"} 10.0
grpc_server_handled_total{grpc_code="OK",grpc_method="ReportTaken",grpc_service="iclaim_hub.internal.v1.DeliveryReportService",grpc_type="UNARY"} 5.0
"""


def test_checks_are_counted_from_decisions_once() -> None:
    authz = calls_in("authz", AUTHZ)
    assert authz[("authz", CHECK_SERVICE)] == 10  # not 10 + the 4 gRPC Checks
    assert authz[("authz", "grpc.health.v1.Health")] == 2


def test_public_and_internal_per_claim() -> None:
    after = calls_in("authz", AUTHZ) + calls_in("claim_router", ROUTER)
    out = used(Counter(), after, claims=10)
    assert out["public_per_claim"] == 1.0
    assert out["internal_per_claim"] == 1.7  # 10 checks, 2 health, 5 reports
    assert out["by_process_per_claim"] == {"authz": 1.2, "claim_router": 1.5}
