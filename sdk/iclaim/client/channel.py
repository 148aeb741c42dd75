"""TLS channel to the gateway with signing interceptors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Self

import grpc

from iclaim.client.credentials import Credentials
from iclaim.client.signer import Clock, signing_interceptors
from iclaim.limits import CLIENT_OPTIONS


def gateway_channel(creds: Credentials, clock: Clock | None = None) -> grpc.aio.Channel:
    root = creds.ca_cert.read_bytes() if creds.ca_cert else None
    return grpc.aio.secure_channel(
        creds.gateway,
        grpc.ssl_channel_credentials(root_certificates=root),
        options=CLIENT_OPTIONS,
        interceptors=signing_interceptors(creds.code, creds.key_id, creds.secret, clock),
    )


class GatewayClient:
    """What every client shares: its credentials and one signed channel to the
    gateway, closed when the client is (`async with` or `close()`)."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        # The server's clock as the channel's calls learn it: streams re-opened
        # by hand (watch) retry by the same rules as the interceptor's calls.
        self.clock = Clock()
        self.channel = gateway_channel(creds, self.clock)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()


@contextlib.contextmanager
def envelope_on_failure(envelope: str) -> Iterator[None]:
    """Whatever the call inside raises (AioRpcError, CancelledError, ...) carries
    the envelope it sent as `.envelope`. After an ambiguous failure
    (DEADLINE_EXCEEDED, a lost connection) resend exactly that (`envelope=`),
    never a new seal: a new seal is new bytes, which the hub refuses as a
    different claim (ALREADY_EXISTS) or decision (DECISION_CONFLICT)."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(AttributeError, TypeError):  # an exception with __slots__
            exc.envelope = envelope  # type: ignore[attr-defined]
        raise


class RepeatedPageToken(RuntimeError):
    """The server answered a page token it had answered before: following it
    would list the same pages for ever."""


def next_page(seen: set[str], token: str) -> str:
    """`token` if it is new (remembered in `seen`); "" ends the listing."""
    if token in seen:
        raise RepeatedPageToken("the server repeated a page token; listing stopped")
    if token:
        seen.add(token)
    return token
