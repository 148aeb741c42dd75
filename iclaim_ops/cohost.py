"""The claim router and the insurer adapter in one process, each calling the
other through an in-process channel (iclaim_hub.common.local_channel) instead
of a loopback gRPC hop: the hand-offs, the taken reports and the push answers
cost no serialisation, no HTTP/2 and no second process's wakeups.

Each keeps its own listener, so nothing outside changes: Envoy and the other
services reach the router at ICLAIM_ROUTER_ADDR, operators the AdminService at
ICLAIM_ADAPTER_ADDR; one /metrics (ICLAIM_ROUTER_METRICS_PORT) carries both.
The durability rules are unchanged: a claim stays due at the router until the
adapter has stored its delivery, and a delivery stays leased in PostgreSQL
until its push is reported, so killing this process loses nothing that
killing either alone would not.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from iclaim_hub.common.local_channel import Handlers, LocalChannel
from iclaim_hub.common.server import GrpcApp, HubServer, ServeConfig, run_service
from services.claim_router import server as router_server
from services.insurer_adapter import server as adapter_server

log = structlog.get_logger("iclaim.cohost")


@dataclass(frozen=True)
class Config:
    router: router_server.Config
    adapter: adapter_server.Config

    @property
    def serve(self) -> ServeConfig:
        # The router's: its listener is the one Envoy health-checks, its /metrics the one scraped.
        return self.router.serve

    @classmethod
    def from_env(cls) -> Config:
        return cls(router=router_server.Config.from_env(), adapter=adapter_server.Config.from_env())


def _handlers(app: GrpcApp) -> Handlers:
    server = app.server
    if not isinstance(server, HubServer):
        raise TypeError("a hosted service must be built on HubServer")
    return server.handlers


@dataclass
class CohostApp:
    router: GrpcApp
    adapter: adapter_server.AdapterApp
    to_router: LocalChannel
    to_adapter: LocalChannel

    @property
    def port(self) -> int:
        return self.router.port

    async def start(self) -> None:
        self.to_router.serve(_handlers(self.router))
        self.to_adapter.serve(_handlers(self.adapter))
        # The adapter first: the router hands claims off from its first moment.
        await self.adapter.start()
        await self.router.start()

    async def stop(self, grace: float) -> None:
        # The router first: no new claims, its hand-offs drained; then the
        # adapter, whose reports to a stopped router wait in PostgreSQL for the
        # next start (its report outbox), as they would across processes. Both
        # within the one grace the process was given: what the router leaves of it.
        loop = asyncio.get_running_loop()
        until = loop.time() + grace
        try:
            await self.router.stop(grace)
        finally:
            self.to_router.stop()
            try:
                await self.adapter.stop(max(0.0, until - loop.time()))
            finally:
                self.to_adapter.stop()


async def build_server(config: Config) -> CohostApp:
    to_router, to_adapter = LocalChannel(), LocalChannel()
    adapter = await adapter_server.build_server(config.adapter, router_channel=to_router)  # type: ignore[arg-type]
    try:
        router = await router_server.build_server(config.router, adapter_channel=to_adapter)  # type: ignore[arg-type]
    except BaseException:
        if adapter.cleanup is not None:  # built, never started: its connections only
            await adapter.cleanup()
        raise
    log.info("cohost_built", router_port=router.port, adapter_port=adapter.port)
    return CohostApp(router, adapter, to_router, to_adapter)


def main() -> None:
    run_service(Config.from_env, build_server)


if __name__ == "__main__":
    main()
