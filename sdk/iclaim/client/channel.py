"""TLS channel to the gateway with signing interceptors."""

from __future__ import annotations

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
