"""Runs the sandbox insurers on the insurer kit: one TLS gRPC server for the
gRPC-push insurers (the kit picks the insurer by the push's endpoint key id),
one HTTPS webhook server (`/insurers/<CODE>/claims`), one pull loop per pull
insurer, one inbox and worker for all (under the state dir). A plaintext
`grpc.health.v1` port says SERVING once every listener is up (the dev stack
and Kubernetes probes check it; probes cannot speak TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from iclaim.insurer.runner import ServePlan, start
from sandbox.config import SandboxInsurers
from sandbox.policies import SandboxPolicies, Timing

log = logging.getLogger("sandbox")


@dataclass(frozen=True)
class Listen:
    grpc: str = ""  # HOST:PORT; needed when there are gRPC-push insurers
    webhook: str = ""  # HOST:PORT; needed when there are webhook insurers
    health: str = ""  # HOST:PORT; optional


def plan_for(insurers: SandboxInsurers, listen: Listen) -> ServePlan:
    """Only the listeners that have insurers to serve; ValueError when one is
    missing its address."""
    plan = ServePlan(
        grpc=insurers.grpc,
        grpc_addr=listen.grpc if insurers.grpc else "",
        webhook=insurers.webhook,
        webhook_addr=listen.webhook if insurers.webhook else "",
        pull=insurers.pull,
    )
    plan.check()
    return plan


async def _start_health(addr: str) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if server.add_insecure_port(addr) == 0:
        raise OSError(f"cannot listen on {addr}")
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    return server, servicer


async def run(
    insurers: SandboxInsurers,
    listen: Listen,
    state_dir: Path,
    timing: Timing,
    stop: asyncio.Event,
    *,
    answer_in_push: bool = True,
) -> None:
    """Serves until `stop` is set, then drains: not serving first, then the kit
    (undecided claims stay in the inbox for the next start). `answer_in_push`:
    push insurers answer a push with a decision they make at once (§10.6)."""
    plan = plan_for(insurers, listen)
    health_server = servicer = None
    if listen.health:
        health_server, servicer = await _start_health(listen.health)
    try:
        options = {"worker_options": {"answer_in_push": answer_in_push}}
        running = await start(plan, SandboxPolicies(timing), state_dir, host_options=options)
        try:
            if servicer is not None:
                await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            counts = insurers.counts()
            log.info(
                "sandbox insurers ready: %d grpc on %s, %d webhook on %s, %d pull",
                counts["grpc"],
                listen.grpc if counts["grpc"] else "-",
                counts["webhook"],
                listen.webhook if counts["webhook"] else "-",
                counts["pull"],
            )
            await stop.wait()
        finally:
            if servicer is not None:
                await servicer.enter_graceful_shutdown()
            await running.stop()
    finally:
        if health_server is not None:
            with contextlib.suppress(Exception):
                await health_server.stop(1.0)
