"""The recording-gateway harness the gateway tests share: real Envoy (python -m
gateway.envoy, TLS with the dev CA) in front of one recording fake of every
public service, plus a signing helper and raw-bytes calls through it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from iclaim_ops.devstack.stack import free_ports
from gateway.authz.server import Config
from iclaim.crypto import signing
from iclaim.errors import error_info_of
from iclaim.public_api import public_services
from iclaim_hub.common.server import ServeConfig
from iclaim_ops.devstack import tied

ROOT = Path(__file__).resolve().parents[2]


def authz_config(
    http_addr: str, database_url: str, redis_url: str, master_key: bytes, **overrides: Any
) -> Config:
    """The authz service's config for a test: its HTTP check (what the gateway's
    Envoy calls) on `http_addr`, gRPC on any free port (app.port), no /metrics,
    the given stores."""
    return Config(
        serve=ServeConfig("127.0.0.1:0", -1),
        http_addr=http_addr,
        database_url=database_url,
        redis_url=redis_url,
        master_key=master_key,
        **overrides,
    )


# --- recording fake of the upstream services ---------------------------------------
@dataclass
class Seen:
    method: str
    metadata: dict[str, str]
    request: Any


@dataclass
class Recorder:
    calls: list[Seen] = field(default_factory=list)

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]


def _recording_handlers(recorder: Recorder) -> list[grpc.GenericRpcHandler]:
    handlers = []
    for service in public_services():
        table: dict[str, grpc.RpcMethodHandler] = {}
        for m in service.methods:
            req_cls = message_factory.GetMessageClass(m.input_type)
            resp_cls = message_factory.GetMessageClass(m.output_type)
            path = f"/{service.full_name}/{m.name}"

            def record(request: Any, context: Any, path: str = path) -> None:
                md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
                recorder.calls.append(Seen(path, md, request))

            if m.server_streaming:

                async def stream(request, context, record=record, resp_cls=resp_cls):
                    record(request, context)
                    yield resp_cls()

                table[m.name] = grpc.unary_stream_rpc_method_handler(
                    stream, req_cls.FromString, resp_cls.SerializeToString
                )
            else:

                async def unary(request, context, record=record, resp_cls=resp_cls):
                    record(request, context)
                    return resp_cls()

                table[m.name] = grpc.unary_unary_rpc_method_handler(
                    unary, req_cls.FromString, resp_cls.SerializeToString
                )
        handlers.append(grpc.method_handlers_generic_handler(service.full_name, table))
    return handlers


# --- upstream + Envoy ---------------------------------------------------------------------
@dataclass
class Gateway:
    port: int
    authz_port: int
    ca_pem: bytes
    access_log: Path
    recorder: Recorder
    state: Path
    admin_port: int = 0  # Envoy's admin (loopback)


async def _wait_ready(admin_port: int, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"gateway runner exited with {proc.returncode}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
            writer.write(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("envoy did not become ready")


@contextlib.asynccontextmanager
async def recording_gateway(state: Path, extra_env: dict[str, str] | None = None) -> AsyncIterator[Gateway]:
    """Real Envoy (our runner) in front of one recording upstream that serves
    every public service; the authz port is reserved for the test to bind."""
    recorder = Recorder()
    upstream = grpc.aio.server()
    upstream.add_generic_rpc_handlers(_recording_handlers(recorder))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, upstream)
    upstream_port = upstream.add_insecure_port("127.0.0.1:0")
    await upstream.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    port, admin_port, authz_port = free_ports(3)
    access_log = state / "access.log"
    env = {
        **os.environ,
        "ICLAIM_STATE_DIR": str(state),
        "ICLAIM_GATEWAY_ADDR": f"127.0.0.1:{port}",
        "ICLAIM_ENVOY_ADMIN_ADDR": f"127.0.0.1:{admin_port}",
        "ICLAIM_ROUTER_TARGET": f"127.0.0.1:{upstream_port}",
        "ICLAIM_BILLING_TARGET": f"127.0.0.1:{upstream_port}",
        "ICLAIM_AUDIT_TARGET": f"127.0.0.1:{upstream_port}",
        "ICLAIM_AUTHZ_TARGET": f"127.0.0.1:{authz_port}",
        "ICLAIM_ENVOY_ACCESS_LOG": str(access_log),
        "ICLAIM_ENVOY_LOG_FLUSH_MS": "50",
        **(extra_env or {}),
    }
    proc = await asyncio.create_subprocess_exec(
        *tied.command(os.getpid(), "gateway.envoy"), cwd=ROOT, env=env
    )
    try:
        await _wait_ready(admin_port, proc)
        ca_pem = (state / "tls" / "ca.pem").read_bytes()
        yield Gateway(port, authz_port, ca_pem, access_log, recorder, state, admin_port)
    finally:
        proc.terminate()  # the runner forwards SIGTERM to Envoy
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await upstream.stop(0)


# --- signing client helper (tests only; the public SDK lives in iclaim/client) --------
@dataclass
class Cred:
    code: str
    key_id: str
    secret: bytes


def signed(
    cred: Cred,
    method: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
    secret: bytes | None = None,
    key_id: str | None = None,
) -> list[tuple[str, str]]:
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or secrets.token_urlsafe(18)
    kid = key_id or cred.key_id
    sig = signing.sign(secret or cred.secret, cred.code, kid, method, ts, nonce, body)
    return [
        (signing.H_CLIENT, cred.code),
        (signing.H_KEY_ID, kid),
        (signing.H_TIMESTAMP, str(ts)),
        (signing.H_NONCE, nonce),
        (signing.H_SIGNATURE, sig),
    ]


def identity(b: bytes) -> bytes:
    """A (de)serializer that sends and returns the exact bytes given."""
    return b


async def call(
    channel: grpc.aio.Channel,
    method: str,
    body: bytes,
    metadata: list[tuple[str, str]] | None,
) -> grpc.aio.Call:
    """Unary call with the exact bytes given; returns the finished call."""
    multi = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)
    c = multi(body, metadata=metadata, timeout=10)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await c
    return c


@dataclass
class Outcome:
    code: grpc.StatusCode
    message: str
    reason: str | None
    trailers: dict[str, str]


async def outcome(c: grpc.aio.Call) -> Outcome:
    code = await c.code()
    trailing = await c.trailing_metadata() or ()
    md = {k: v for k, v in trailing if isinstance(v, str)}
    details = await c.details()
    reason = None
    raw = [v for k, v in trailing if k == "grpc-status-details-bin"]
    if raw:
        from google.rpc import status_pb2

        st = status_pb2.Status.FromString(raw[0])
        assert st.code == code.value[0]
        info = error_info_of(st)
        if info is not None:
            assert info.domain == "iclaim.v1"
            reason = info.reason
    return Outcome(code, details or "", reason, md)
