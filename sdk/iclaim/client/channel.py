"""TLS channel to the gateway with signing interceptors."""

from __future__ import annotations

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
        self.channel = gateway_channel(creds)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()
