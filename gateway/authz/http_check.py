"""Envoy's ext_authz over plain HTTP/1.1: the same check as the gRPC Check
(service.py), a fraction of its CPU. A Python gRPC server call costs several
hundred microseconds in thread hand-offs at a few hundred calls a second; an
HTTP request on the event loop's own socket about a quarter of that (README,
Benchmarks: the scratch measurement and the bench pairs).

Envoy sends the client's request line, the headers its config allows
(gateway.envoy AUTHZ_REQUEST_HEADERS) and the buffered body; a 200 allows, with
the trusted headers for the upstream; 403 refuses, with the client's whole gRPC
answer as headers and the access log's keyed hashes as headers Envoy turns into
dynamic metadata. A verified client certificate arrives in the
x-forwarded-client-cert header Envoy sets itself (a client's own is removed).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway.authz import clientcert, frame
from gateway.authz.authorizer import Allow, CheckInput
from gateway.authz.checker import Checker, denial_headers, is_partial_body
from iclaim_hub.common.grpc_tracing import request_id

CLIENT_CERT_HEADER = "x-forwarded-client-cert"
# Envoy's own body limit plus headroom; a larger body is refused before it is read.
MAX_BODY_BYTES = frame.MAX_CHECK_REQUEST_BYTES
# The Cert element of the one XFCC entry Envoy sets (URL-encoded PEM, quoted).
_XFCC_CERT = re.compile(r'(?:^|;)Cert="([^"]*)"')
MAX_HEADER_BYTES = 64 * 1024  # one header line or the request line
MAX_HEADERS = 256
DENIED = 403  # never 5xx: Envoy takes those as the authz failing (UNAVAILABLE)


def client_cert_pem(xfcc: str) -> str:
    """The URL-encoded PEM from the x-forwarded-client-cert Envoy set, or ""."""
    match = _XFCC_CERT.search(xfcc)
    return match[1] if match else ""


def check_input(path: str, headers: dict[str, str], body: bytes) -> CheckInput:
    pem = client_cert_pem(headers.get(CLIENT_CERT_HEADER, ""))
    return CheckInput(
        cert_principals=clientcert.principals_of(pem) if pem else None,
        method=path,
        headers=headers,
        raw_body=body,
        partial_body=is_partial_body(headers),
    )


def _headers(request: web.BaseRequest) -> dict[str, str]:
    # Repeated names joined as Envoy's gRPC CheckRequest joins them.
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


@dataclass(frozen=True)
class HttpCheck:
    checker: Checker

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = _headers(request)
        decision = await self.checker.check(
            check_input(request.raw_path, headers, body), request_id(headers.get("x-request-id"))
        )
        if isinstance(decision, Allow):
            return web.Response(status=200, headers=decision.headers)
        # The hashes ride as headers; Envoy files them as dynamic metadata.
        return web.Response(status=DENIED, headers={**denial_headers(decision), **decision.log_fields})


def _request(
    message: RawRequestMessage,
    payload: StreamReader,
    protocol: RequestHandler,
    writer: AbstractStreamWriter,
    task: asyncio.Task[None],
) -> web.BaseRequest:
    return web.BaseRequest(
        message, payload, protocol, writer, task, asyncio.get_running_loop(), client_max_size=MAX_BODY_BYTES
    )


def http_server(checker: Checker) -> web.Server:
    """aiohttp's low-level server: no router or middlewares to pay for. Its
    parser's limits sit above Envoy's own (32 KiB of headers, 100 of them), so
    anything Envoy forwards is parsed rather than refused with a 400, which a
    gRPC client would see as INTERNAL."""
    return web.Server(
        HttpCheck(checker),
        request_factory=_request,
        access_log=None,
        auto_decompress=False,
        max_line_size=MAX_HEADER_BYTES,
        max_field_size=MAX_HEADER_BYTES,
        max_headers=MAX_HEADERS,
    )
