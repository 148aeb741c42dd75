"""The HTTPS webhook receiver (docs/protocol.md §10.3), on aiohttp.

Routes: `POST /insurers/{code}/claims` for every served insurer, and
`POST /iclaim/claims` when exactly one insurer is served. The body is read up
to a fixed limit (1 MiB envelope + 64 KiB; 413 beyond, without reading the
rest), the signature is checked over the raw bytes with the method line
`POST <path>` (the path as sent, without the query; a signature that includes
the query is accepted too), and only then is the JSON parsed.

Answers (JSON bodies `{"result": ...}` or `{"reason": ...}`):
200 new, 409 duplicate (both mean "taken", §10.3); 401 bad signature (reason
as in iclaim.insurer.verify); 400 not a ClaimDelivery (DELIVERY_INVALID);
404 unknown insurer; 413 too large; 415 not application/json; 503 the inbox
cannot take it now (INBOX_FULL, NONCE_CACHE_FULL, INBOX_UNAVAILABLE).
No access log: request lines and headers are the sender's text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from iclaim.errors import Code, IclaimError, InvalidArgument
from iclaim.insurer.credentials import InsurerCredentials
from iclaim.insurer.host import Handlers, InsurerHost
from iclaim.insurer.inbox import PutResult
from iclaim.insurer.intake import ACCEPTS_DECISION_HEADER, DELIVERY_INVALID, Intake
from iclaim.insurer.tls import server_tls, ssl_server_context
from iclaim.insurer.worker import InsurerGateway
from iclaim.limits import MAX_REQUEST_BYTES
from iclaim.v1 import insurer_service_pb2 as ipb

log = logging.getLogger("iclaim.insurer")

MAX_BODY_BYTES = MAX_REQUEST_BYTES
CLAIMS_PATH = "/insurers/{code}/claims"
SINGLE_PATH = "/iclaim/claims"
_CHUNK = 64 * 1024
LINGER_S = 2.0
_HTTP_STATUS = {
    Code.UNAUTHENTICATED: 401,
    Code.INVALID_ARGUMENT: 400,
    Code.RESOURCE_EXHAUSTED: 503,
    Code.UNAVAILABLE: 503,
}
HOST_KEY = web.AppKey("iclaim_insurer_host", InsurerHost)


class _TooLarge(Exception):
    pass


def _answer(status: int, *, close: bool = False, **body: str) -> web.Response:
    response = web.json_response(body, status=status)
    if close:
        response.force_close()
    return response


async def _read_body(request: web.Request) -> bytes:
    """At most MAX_BODY_BYTES, whatever Content-Length says (or if absent)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge
        chunks.append(chunk)


def _is_json(request: web.Request) -> bool:
    return request.content_type == "application/json"


def _parse(body: bytes) -> ipb.ClaimDelivery:
    delivery = ipb.ClaimDelivery()
    try:
        # Unknown fields are ignored: ClaimDelivery may grow (additive, §10).
        json_format.Parse(body.decode("utf-8"), delivery, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError, RecursionError):
        raise InvalidArgument("body is not a ClaimDelivery", reason=DELIVERY_INVALID) from None
    return delivery


class _Receiver:
    def __init__(self, intake: Intake, codes: Sequence[str]) -> None:
        self._intake = intake
        self._codes = frozenset(codes)
        self._single = next(iter(codes)) if len(codes) == 1 else None

    async def by_code(self, request: web.Request) -> web.Response:
        code = request.match_info["code"]
        if code not in self._codes:
            return _answer(404, reason="UNKNOWN_INSURER")
        return await self._take(request, code)

    async def single(self, request: web.Request) -> web.Response:
        assert self._single is not None
        return await self._take(request, self._single)

    async def _take(self, request: web.Request, code: str) -> web.Response:
        if not _is_json(request):
            return _answer(415, reason="CONTENT_TYPE_UNSUPPORTED")
        try:
            body = await _read_body(request)
        except _TooLarge:
            # Close the connection: the rest of an endless body is never read.
            return _answer(413, close=True, reason="BODY_TOO_LARGE")
        path = request.rel_url.raw_path
        lines = [f"POST {path}"]
        if request.rel_url.raw_query_string:
            lines.append(f"POST {path}?{request.rel_url.raw_query_string}")
        try:
            self._intake.verify(lines, body, request.headers.items(), insurer_code=code)
            accepts = request.headers.get(ACCEPTS_DECISION_HEADER, "").strip().lower() == "true"
            result, decision = await self._intake.take(code, _parse(body), accepts_decision=accepts)
        except IclaimError as err:
            return _answer(_HTTP_STATUS.get(err.code, 503), reason=err.reason)
        except Exception as exc:  # noqa: BLE001 (a bug is a retryable refusal, not a 500 page)
            log.warning("insurer kit: webhook failed (%s)", type(exc).__name__)
            return _answer(503, reason="RECEIVER_ERROR")
        if result is not PutResult.NEW:  # a duplicate; one answered before is reopened
            return _answer(409, result="duplicate")
        if decision is not None:  # §10.6: the decision in the answer
            return web.json_response({"result": "taken", "decision": json_format.MessageToDict(decision)})
        return _answer(200, result="taken")


def build_app(host: InsurerHost, insurers: Sequence[InsurerCredentials]) -> web.Application:
    """The receiver's routes for `insurers` (all served by `host`); the caller
    starts and stops `host`."""
    codes = [i.code for i in insurers]
    receiver = _Receiver(host.intake(insurers), codes)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[HOST_KEY] = host
    app.router.add_post(CLAIMS_PATH, receiver.by_code)
    if len(codes) == 1:
        app.router.add_post(SINGLE_PATH, receiver.single)
    return app


def webhook_app(
    insurers: Sequence[InsurerCredentials],
    handlers: Handlers,
    state_dir: Path,
    *,
    clients: Mapping[str, InsurerGateway] | None = None,
    host_options: Mapping[str, Any] | None = None,
) -> web.Application:
    """A self-contained receiver app: its inbox and worker start and stop with
    the app (run it with aiohttp's AppRunner and `ssl_server_context`)."""
    host = InsurerHost(insurers, handlers, state_dir, clients=clients, **dict(host_options or {}))
    app = build_app(host, insurers)

    async def lifetime(_: web.Application) -> Any:
        await host.start()
        yield
        await host.stop()

    app.cleanup_ctx.append(lifetime)
    return app


async def start_webhook(
    app: web.Application, insurers: Sequence[InsurerCredentials], addr: str
) -> tuple[web.AppRunner, int]:
    """Serves `app` over TLS on `addr` (HOST:PORT; port 0 picks one)."""
    host_part, _, port_part = addr.rpartition(":")
    if not host_part or not port_part.isdigit():
        raise ValueError("webhook address must be HOST:PORT")
    ssl_context = ssl_server_context(server_tls(insurers))
    # No access log (request lines are the sender's text); an unread body
    # (413/415/404) is discarded for at most LINGER_S, then the connection closes.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=5.0, lingering_time=LINGER_S
    )
    await runner.setup()
    site = web.TCPSite(runner, host_part.strip("[]"), int(port_part), ssl_context=ssl_context)
    await site.start()
    port = int(runner.addresses[0][1])
    return runner, port
