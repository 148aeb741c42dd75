"""Hub-to-hub channels spread calls over every address a target resolves to
(iclaim_hub/common/channels.py; deploy/k8s makes the internal Services headless)."""

from __future__ import annotations

import collections

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from iclaim_hub.common.channels import INTERNAL_CLIENT_OPTIONS, internal_target
from iclaim_hub.common.server import server_options


def test_targets_use_the_dns_resolver() -> None:
    assert internal_target("claim-router.iclaim.svc:50051") == "dns:///claim-router.iclaim.svc:50051"
    assert internal_target("127.0.0.1:50051") == "dns:///127.0.0.1:50051"
    assert internal_target("dns:///x:1") == "dns:///x:1"
    assert internal_target("ipv4:127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"


class _Counting(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, name: str, seen: collections.Counter[str]) -> None:
        self.name, self.seen = name, seen

    async def Check(self, request: object, context: object) -> health_pb2.HealthCheckResponse:  # noqa: N802
        self.seen[self.name] += 1
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def test_calls_are_spread_over_every_address() -> None:
    """Two replicas behind one name (here: an address list, as a headless
    Service's DNS answer would give): round_robin sends to both, where gRPC's
    default (pick_first) would send every call to the first."""
    seen: collections.Counter[str] = collections.Counter()
    servers, ports = [], []
    for name in ("a", "b"):
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(_Counting(name, seen), server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    try:
        async with grpc.aio.insecure_channel(target, options=INTERNAL_CLIENT_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await channel.channel_ready()
            for _ in range(20):
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
    finally:
        for server in servers:
            await server.stop(0)
    assert seen["a"] >= 5 and seen["b"] >= 5, seen


def test_servers_end_connections_so_clients_re_resolve() -> None:
    """Without a maximum connection age a client keeps its first addresses for
    good and never reaches a replica added later."""
    options = dict(server_options())
    assert 0 < options["grpc.max_connection_age_ms"] <= 600_000
    assert options["grpc.max_connection_age_grace_ms"] > 0
