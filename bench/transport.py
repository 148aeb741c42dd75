"""What one unary call between two Python hub processes costs each side: over
grpc.aio (the server as every hub service serves, bench.echo_server's `hub`
echo; the client with the internal channel options) and over HTTP/1.1 with
aiohttp (its low-level server, as the authz serves Envoy, and a keep-alive
ClientSession), paced at a hub process's own rate.

    python -m bench.transport [RATE] [SECONDS] [ROUNDS]     (300, 10, 2)

Each round runs both transports in turn, the server in a process of its own,
and prints the server's and the client's CPU µs a call. The client's figure
includes its pacing loop, the same for both. It answers whether a hop between
two Python services gets cheaper on another transport (README, Benchmarks)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import ClientSession, TCPConnector, web

from bench.cpu import cpu_seconds
from bench.echo_server import METHOD
from bench.echo_server import serve as serve_grpc
from bench.load import paced
from iclaim_hub.common import event_loop
from iclaim_hub.common.channels import INTERNAL_CLIENT_OPTIONS
from iclaim_ops.devstack.stack import free_port

TRANSPORTS = ("grpc", "http")
PAYLOAD = b"x" * 600  # about a DeliverClaim's size
CONTENT_TYPE = "application/x-protobuf"


async def serve_http(port: int) -> None:
    async def echo(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=await request.read(), content_type=CONTENT_TYPE)

    server = web.Server(echo, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _client_calls(
    transport: str, port: int, rate: float, seconds: float, server_pid: int
) -> dict[str, Any]:
    """Paced calls after a warm-up; both sides' CPU a call, and how many were answered."""
    total = max(1, int(rate * seconds))
    answered = 0
    if transport == "grpc":
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=INTERNAL_CLIENT_OPTIONS)
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)

        async def send() -> None:
            await call(PAYLOAD, timeout=5)

        close: Callable[[], Awaitable[None]] = channel.close
    else:
        session = ClientSession(connector=TCPConnector(limit=64), auto_decompress=False)
        url = f"http://127.0.0.1:{port}{METHOD}"

        async def send() -> None:
            async with session.post(url, data=PAYLOAD, headers={"content-type": CONTENT_TYPE}) as r:
                r.raise_for_status()
                await r.read()

        close = session.close

    async def one(n: int, scheduled: float) -> None:
        nonlocal answered
        await send()
        answered += 1

    try:
        for _ in range(20):  # connected and warm before either side is measured
            await send()
        server_before, client_before = cpu_seconds(server_pid), time.process_time()
        await paced(rate, total, one)
        server_cpu, client_cpu = cpu_seconds(server_pid) - server_before, time.process_time() - client_before
    finally:
        await close()
    return {
        "transport": transport,
        "calls": total,
        "answered": answered,
        "server_us_per_call": round(server_cpu / total * 1e6, 1),
        "client_us_per_call": round(client_cpu / total * 1e6, 1),
    }


def measure(transport: str, rate: float, seconds: float) -> dict[str, Any]:
    """One transport: its server started in a process of its own, driven from here."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.transport", "serve", transport, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {transport} echo server did not start")
        return event_loop.run(_client_calls(transport, port, rate, seconds, server.pid))
    finally:
        server.terminate()
        server.wait(timeout=10)


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"]:
        transport, port = argv[1], int(argv[2])
        event_loop.run(serve_grpc(port, hub=True) if transport == "grpc" else serve_http(port))
        return
    rate = float(argv[0]) if argv else 300.0
    seconds = float(argv[1]) if len(argv) > 1 else 10.0
    rounds = int(argv[2]) if len(argv) > 2 else 2
    for _ in range(rounds):
        for transport in TRANSPORTS:
            print(json.dumps(measure(transport, rate, seconds)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
