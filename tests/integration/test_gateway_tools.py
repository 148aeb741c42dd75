"""grpcurl (a stock gRPC tool) sees exactly the public surface through Envoy."""
from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import RunningStack

pytestmark = pytest.mark.integration


def grpcurl() -> str:
    path = Path(sys.executable).parent / "grpcurl"
    return str(path) if path.exists() else (shutil.which("grpcurl") or "grpcurl")


async def run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        grpcurl(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


async def test_reflection_lists_public_services_and_health_answers(
    running_stack: RunningStack,
) -> None:
    creds = running_stack.creds()
    tls = ["-cacert", str(creds.ca_cert)]
    code, out = await run(*tls, creds.gateway, "list")
    assert code == 0, out
    services = set(out.split())
    assert {
        "iclaim.v1.ClaimService",
        "iclaim.v1.InsurerService",
        "iclaim.v1.BillingService",
        "grpc.health.v1.Health",
    } <= services
    assert not any("internal" in s for s in services), services

    code, out = await run(*tls, creds.gateway, "describe", "iclaim.v1.ClaimService")
    assert code == 0 and "rpc SubmitClaim ( .iclaim.v1.SubmitClaimRequest )" in out, out

    code, out = await run(*tls, creds.gateway, "grpc.health.v1.Health/Check")
    assert code == 0 and "SERVING" in out, out

    # Reflection does not make an unsigned call possible.
    code, out = await run(*tls, "-d", "{}", creds.gateway, "iclaim.v1.ClaimService/ListInsurers")
    assert code != 0 and "Unauthenticated" in out, out
