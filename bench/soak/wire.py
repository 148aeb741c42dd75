"""The soak's view of the wire: a client interceptor below the SDK's signing and
retrying one, so it sees every signed attempt as it was sent (each retry is a
new signature). It counts each attempt's outcome and hands accepted requests of
chosen methods to a capture (the replayer's material)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from iclaim.client.channel import GatewayClient
from iclaim.client.signer import _error_info, signing_interceptors
from iclaim.limits import CLIENT_OPTIONS

ICLAIM_PREFIX = "x-iclaim-"


@dataclass(frozen=True)
class Captured:
    """A signed request exactly as it went out: method, body bytes, auth metadata."""

    method: str
    body: bytes
    metadata: tuple[tuple[str, str], ...]
    at: float  # wall time of capture (the signature's timestamp, near enough)


def has_status_details(trailing: Any) -> bool:
    """Errors our services and gateway send carry ErrorInfo; a bare INTERNAL is a
    transport reset (an upstream killed mid-call), not a handler's crash."""
    return any(k == "grpc-status-details-bin" for k, _ in trailing or ())


class Tap(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(
        self,
        attempts: Counter[str],
        capture: Callable[[Captured], None] | None = None,
        methods: Collection[str] = (),
    ) -> None:
        self._attempts = attempts
        self._capture = capture
        self._methods = frozenset(methods)

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(details, request)
        code = await call.code()
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        name = method.rsplit("/", 1)[-1]
        if code == grpc.StatusCode.OK:
            self._attempts[f"{name} OK"] += 1
            if self._capture is not None and name in self._methods:
                md = tuple(
                    (k, v)
                    for k, v in details.metadata or ()
                    if k.startswith(ICLAIM_PREFIX) and isinstance(v, str)
                )
                self._capture(Captured(method, request.SerializeToString(), md, time.time()))
        else:
            trailing = await call.trailing_metadata()
            reason = _error_info(trailing)[0]
            bare = "" if has_status_details(trailing) else " (no status details)"
            self._attempts[f"{name} {code.name} {reason}{bare}".rstrip()] += 1
        return call


C = TypeVar("C", bound=GatewayClient)


async def tapped(client: C, tap: Tap) -> C:
    """The SDK client on a channel of its own signing interceptors plus `tap`."""
    creds = client.creds
    await client.channel.close()
    root = creds.ca_cert.read_bytes() if creds.ca_cert else None
    client.channel = grpc.aio.secure_channel(
        creds.gateway,
        grpc.ssl_channel_credentials(root_certificates=root),
        options=CLIENT_OPTIONS,
        interceptors=[*signing_interceptors(creds.code, creds.key_id, creds.secret), tap],
    )
    stub = client.stub  # type: ignore[attr-defined]
    client.stub = type(stub)(client.channel)  # type: ignore[attr-defined]
    return client
