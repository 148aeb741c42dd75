"""Serve one or many insurers, each by its mode, from one process with one
inbox and one worker: a gRPC port for the gRPC-push insurers (picked by
endpoint key id), an HTTPS port for the webhook ones (`/insurers/<CODE>/claims`),
a pull loop for each pull one. Used by `iclaim insurer serve` and the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from iclaim.insurer.credentials import InsurerCredentials
from iclaim.insurer.grpc_endpoint import start_grpc
from iclaim.insurer.host import Handlers, InsurerHost
from iclaim.insurer.pull import run_pull
from iclaim.insurer.worker import InsurerGateway

STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class ServePlan:
    grpc: Sequence[InsurerCredentials] = ()
    grpc_addr: str = ""  # HOST:PORT (port 0: any free port)
    webhook: Sequence[InsurerCredentials] = ()
    webhook_addr: str = ""  # HOST:PORT
    pull: Sequence[InsurerCredentials] = ()

    @property
    def insurers(self) -> list[InsurerCredentials]:
        return [*self.grpc, *self.webhook, *self.pull]

    def check(self) -> None:
        if not self.insurers:
            raise ValueError("nothing to serve")
        if bool(self.grpc) != bool(self.grpc_addr) or bool(self.webhook) != bool(self.webhook_addr):
            raise ValueError("an address is needed exactly for the push modes served")


class Running:
    """A started plan. `grpc_port` / `webhook_port`: the bound ports (or None)."""

    def __init__(self, host: InsurerHost) -> None:
        self.host = host
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port: int | None = None
        self.webhook_runner: Any = None  # aiohttp.web.AppRunner, imported only when used
        self.webhook_port: int | None = None
        self._pull_stop = asyncio.Event()
        self._pulls: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int | None:
        return self.grpc_port if self.grpc_port is not None else self.webhook_port

    async def stop(self, grace: float | None = STOP_GRACE_S) -> None:
        """Stops taking claims, then the worker; open claims resume on the next start."""
        if self._stopped.is_set():
            return
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)
        if self.webhook_runner is not None:
            await self.webhook_runner.cleanup()
        self._pull_stop.set()
        if self._pulls:
            await asyncio.gather(*self._pulls, return_exceptions=True)
        await self.host.stop()
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


async def start(
    plan: ServePlan,
    handlers: Handlers,
    state_dir: Path,
    *,
    clients: Mapping[str, InsurerGateway] | None = None,
    host_options: Mapping[str, Any] | None = None,
) -> Running:
    plan.check()
    host = InsurerHost(plan.insurers, handlers, state_dir, clients=clients, **dict(host_options or {}))
    await host.start()
    running = Running(host)
    try:
        if plan.grpc:
            running.grpc_server, running.grpc_port = await start_grpc(host, plan.grpc, plan.grpc_addr)
        if plan.webhook:
            from iclaim.insurer.webhook import build_app, start_webhook

            app = build_app(host, plan.webhook)
            running.webhook_runner, running.webhook_port = await start_webhook(
                app, plan.webhook, plan.webhook_addr
            )
        for ins in plan.pull:
            running._pulls.append(asyncio.create_task(run_pull(host, ins.code, running._pull_stop)))
    except BaseException:
        await running.stop(0)
        raise
    return running


async def serve(
    plan: ServePlan,
    handlers: Handlers,
    state_dir: Path,
    stop: asyncio.Event,
    *,
    clients: Mapping[str, InsurerGateway] | None = None,
    on_ready: Callable[[Running], None] | None = None,
    host_options: Mapping[str, Any] | None = None,
) -> None:
    """Runs `plan` until `stop` is set."""
    running = await start(plan, handlers, state_dir, clients=clients, host_options=host_options)
    try:
        if on_ready is not None:
            on_ready(running)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await running.stop()


async def serve_grpc(
    insurers: Sequence[InsurerCredentials],
    handlers: Handlers,
    addr: str,
    state_dir: Path,
    *,
    clients: Mapping[str, InsurerGateway] | None = None,
) -> Running:
    """gRPC push for `insurers` on one TLS port; `.port`, `.stop()`,
    `.wait_for_termination()` as on a grpc.aio.Server."""
    return await start(ServePlan(grpc=insurers, grpc_addr=addr), handlers, state_dir, clients=clients)


async def pull_loop(
    insurer: InsurerCredentials,
    handler: Handlers,
    state_dir: Path,
    stop: asyncio.Event,
    *,
    clients: Mapping[str, InsurerGateway] | None = None,
) -> None:
    """Pulls and decides claims for one insurer until `stop` is set."""
    await serve(ServePlan(pull=(insurer,)), handler, state_dir, stop, clients=clients)
