"""Server TLS for the push receivers (§10.1: TLS 1.2+; mTLS when the insurer
registered it, then the hub presents a client certificate)."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from iclaim.insurer.credentials import CredentialsError, InsurerCredentials


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    client_ca: Path | None  # set: a client certificate signed by it is required


def server_tls(insurers: Sequence[InsurerCredentials]) -> ServerTls:
    """The one certificate a listener serves for all its insurers."""
    choices = {(i.tls_cert, i.tls_key, i.tls_client_ca) for i in insurers}
    if len(choices) != 1:
        raise CredentialsError("insurers served on one port must share tls_cert, tls_key and tls_client_ca")
    cert, key, client_ca = choices.pop()
    if cert is None or key is None:
        raise CredentialsError("tls_cert and tls_key are needed to receive pushes (TLS is required)")
    return ServerTls(cert, key, client_ca)


def grpc_server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    try:
        pair = (tls.key.read_bytes(), tls.cert.read_bytes())
        roots = tls.client_ca.read_bytes() if tls.client_ca else None
    except OSError as exc:
        raise CredentialsError(f"cannot read TLS material: {exc.strerror}") from None
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)


def ssl_server_context(tls: ServerTls) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca:
            ctx.load_verify_locations(cafile=str(tls.client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise CredentialsError(f"cannot load TLS material: {type(exc).__name__}") from None
    return ctx
