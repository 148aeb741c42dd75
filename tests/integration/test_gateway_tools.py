"""grpcurl (a stock gRPC tool) sees exactly the public surface through Envoy."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.stack import RunningStack

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


@pytest.mark.parametrize("package", ["grpc.reflection.v1", "grpc.reflection.v1alpha"])
async def test_reflection_v1_and_v1alpha_through_the_gateway(
    running_stack: RunningStack, package: str
) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    from tests.support.wire import tls_channel

    async with tls_channel(running_stack.creds()) as channel:
        call = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        stream = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        responses = [r async for r in stream]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {
        "iclaim.v1.ClaimService",
        "iclaim.v1.InsurerService",
        "iclaim.v1.BillingService",
        "iclaim.v1.AuditTrailService",
    } <= names
    assert not any("internal" in n for n in names)
