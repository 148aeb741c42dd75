"""Helpers for talking to the gateway as a hand-rolled (possibly hostile) client."""

from __future__ import annotations

import secrets
import time
from typing import Any

import grpc
from grpc_status import rpc_status

from iclaim.client.credentials import Credentials
from iclaim.errors import error_info_of
from iclaim.crypto import signing


def tls_channel(creds: Credentials) -> grpc.aio.Channel:
    assert creds.ca_cert is not None
    return grpc.aio.secure_channel(creds.gateway, grpc.ssl_channel_credentials(creds.ca_cert.read_bytes()))


async def raw_call(
    creds: Credentials,
    method: str,
    request: Any,
    response_type: Any,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
    secret: bytes | None = None,
    client: str | None = None,
    extra_md: tuple[tuple[str, str], ...] = (),
) -> Any:
    body = request.SerializeToString()
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or secrets.token_urlsafe(18)
    code = client or creds.code
    sig = signing.sign(secret or creds.secret, code, creds.key_id, method, ts, nonce, body)
    md = (
        (signing.H_CLIENT, code),
        (signing.H_KEY_ID, creds.key_id),
        (signing.H_TIMESTAMP, str(ts)),
        (signing.H_NONCE, nonce),
        (signing.H_SIGNATURE, sig),
        *extra_md,
    )
    async with tls_channel(creds) as channel:
        call = channel.unary_unary(
            method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        return await call(request, metadata=md, timeout=10)


def reason_of(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, f"no status details on {err.code()}: {err.details()}"
    info = error_info_of(status)
    assert info is not None and info.domain == "iclaim.v1"
    return info.reason


async def metric_value(port: int, name: str, labels: dict[str, str]) -> float:
    """Reads one sample from a service's /metrics (0 when absent)."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    text = (await reader.read()).decode()
    writer.close()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        label_part = line[len(name) + 1 : line.index("}")]
        got = ",".join(sorted(label_part.split(",")))
        if got == want:
            total += float(line.rsplit(" ", 1)[1])
    return total
