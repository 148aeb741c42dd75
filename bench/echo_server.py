"""A bare grpc.aio unary echo server: the ceiling a Python gRPC hop reaches here.

`python -m bench.echo_server PORT` is the unit `make bench` measures against.
`python -m bench.echo_server PORT hub` serves the same echo the way every hub
service serves (iclaim_hub.common.server.new_server: guarded handlers, options
and limits) on uvloop, to see what a hub server call costs before any work:
drive it with `python -m bench.load echo PORT SECONDS 64` and compare the
server process's CPU per request with the bare one's."""

from __future__ import annotations

import asyncio
import sys

import grpc

METHOD = "/bench.Echo/Echo"


async def serve(port: int, hub: bool = False) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    if hub:
        from iclaim_hub.common.server import new_server

        server = new_server()
    else:
        server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["hub"]):
        sys.exit("usage: python -m bench.echo_server PORT [hub]")
    if sys.argv[2:] == ["hub"]:
        from iclaim_hub.common import event_loop

        event_loop.run(serve(int(sys.argv[1]), hub=True))
    else:
        asyncio.run(serve(int(sys.argv[1])))
