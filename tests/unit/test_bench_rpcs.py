"""The bench's call count: ext_authz checks are counted once, from the authz's
decisions, whether Envoy sent them over HTTP or over the gRPC Check."""

from __future__ import annotations

from collections import Counter

from bench.rpcs import CHECK_SERVICE, calls_in, used


def _handled(service: str, method: str, n: int) -> str:
    labels = f'grpc_code="OK",grpc_method="{method}",grpc_service="{service}",grpc_type="UNARY"'
    return f"grpc_server_handled_total{{{labels}}} {n}.0\n"


HANDLED = "# TYPE grpc_server_handled counter\n"
AUTHZ = (
    "# TYPE iclaim_authz_decisions counter\n"
    'iclaim_authz_decisions_total{outcome="allow",reason="OK"} 9.0\n'
    'iclaim_authz_decisions_total{outcome="deny",reason="BAD_SIGNATURE"} 1.0\n'
    + HANDLED
    + _handled(CHECK_SERVICE, "Check", 4)
    + _handled("grpc.health.v1.Health", "Check", 2)
)
ROUTER = (
    HANDLED
    + _handled("iclaim.v1.ClaimService", "SubmitClaim", 10)
    + _handled("iclaim_hub.internal.v1.DeliveryReportService", "ReportTaken", 5)
)


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
