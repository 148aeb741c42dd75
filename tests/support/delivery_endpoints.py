"""Insurer endpoints written from docs/protocol.md §10 alone (not the insurer
kit), for the delivery layer's tests: a gRPC InsurerEndpoint and an HTTPS
webhook over real TLS from a throwaway CA, each checking the §10.1 signature
of every push (and able to answer one with a decision, §10.6); a server that
accepts TCP and never answers; fakes of the router's DeliveryReportService and
DecisionIntakeService; and a harness running insurer_adapter in-process
against real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import itertools
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_status import rpc_status
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iclaim_ops.devstack.stack import free_port
from iclaim.crypto import signing
from iclaim.errors import Code, build_status
from iclaim.limits import CLIENT_OPTIONS
from iclaim.v1 import claim_service_pb2, insurer_endpoint_pb2, insurer_service_pb2
from iclaim_hub.common.server import ServeConfig
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.internal.v1 import (
    decision_intake_pb2,
    decision_intake_pb2_grpc,
    delivery_report_pb2,
    delivery_report_pb2_grpc,
    insurer_adapter_pb2,
    insurer_adapter_pb2_grpc,
)
from iclaim_hub.registry.model import Principal
from iclaim_hub.registry.store import RegistryStore
from iclaim.crypto.signing import b64url_decode
from services.insurer_adapter.domain import Backoff, DeliverySettings
from services.insurer_adapter.server import AdapterApp, Config, build_server

GRPC_METHOD = "/iclaim.v1.InsurerEndpoint/ReceiveClaim"
HOSPITAL = "10670"
ADMIN_TOKEN = "test-admin-token-" + "x" * 32
WINDOW = (-300, 60)

# §10.6: how an endpoint answers a push with a decision. Given the pushed
# ClaimDelivery, a PostDecisionRequest (or, for a webhook, any JSON value: the
# `decision` member as is), or None to answer without one.
Decide = Callable[[insurer_service_pb2.ClaimDelivery], Any]


def approve(
    amount: int | None = None, *, transaction_id: str | None = None, envelope: str = "dec.env.a.b.c"
) -> Decide:
    """A Decide approving every pushed claim: its billed amount unless
    `amount`; the pushed claim's transaction id unless `transaction_id`."""

    def decide(delivery: insurer_service_pb2.ClaimDelivery) -> insurer_service_pb2.PostDecisionRequest:
        return insurer_service_pb2.PostDecisionRequest(
            transaction_id=delivery.transaction_id if transaction_id is None else transaction_id,
            state=claim_service_pb2.CLAIM_STATE_APPROVED,
            approved_amount_satang=delivery.billed_amount_satang if amount is None else amount,
            decision_envelope=envelope,
        )

    return decide


# --- TLS from a throwaway CA ---------------------------------------------------------
@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path


class TestCA:
    """A CA made for one test, issuing server and client certificates."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: Path, name: str = "test-ca") -> None:
        self.folder = folder
        self.name = name
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.pem = self._cert.public_bytes(serialization.Encoding.PEM).decode()
        self.path = folder / f"{name}.pem"
        self.path.write_text(self.pem)
        self._serial = itertools.count(1)

    def issue(
        self, cn: str, *, server: bool = True, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        n = next(self._serial)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        cert_path, key_path = self.folder / f"{self.name}-{n}.pem", self.folder / f"{self.name}-{n}-key.pem"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        return Issued(cert_pem, key_pem, cert_path, key_path)


# --- §10.1 verification, as an insurer would do it ----------------------------------
@dataclass
class Received:
    transaction_id: str
    client: str
    key_id: str
    verified: bool
    body: bytes
    headers: dict[str, str]
    at: float
    answered: bool = True
    decision: Any = None  # what the answer carried (§10.6), None when nothing


class PushVerifier:
    """Checks the five x-iclaim-* names: client ICLAIM, a known endpoint key,
    the HMAC over the method line and the raw body, the window, each nonce once."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self.keys = dict(keys)
        self._nonces: set[str] = set()

    def verify(self, method_line: str, body: bytes, headers: dict[str, str]) -> tuple[bool, str, str]:
        try:
            meta = signing.parse_auth_metadata(headers)
        except signing.MalformedMetadata:
            return False, "", ""
        secret = self.keys.get(meta.key_id)
        skew = meta.timestamp - int(time.time())
        ok = (
            meta.client == "ICLAIM"
            and secret is not None
            and WINDOW[0] <= skew <= WINDOW[1]
            and meta.nonce not in self._nonces
            and signing.verify(secret, meta, method_line, body)
        )
        if ok:
            self._nonces.add(meta.nonce)
        return ok, meta.client, meta.key_id


# --- a gRPC InsurerEndpoint -----------------------------------------------------------
class GrpcEndpoint:
    """ReceiveClaim over TLS (mTLS when `client_ca` is given). `answer` decides
    the status per push; `hold` lists transaction ids whose FIRST push is
    recorded and never answered (the hub times out and sends again); `decide`,
    when set, gives each OK answer's decision (§10.6)."""

    def __init__(
        self,
        cert: Issued,
        verifier: PushVerifier,
        *,
        client_ca: str | None = None,
    ) -> None:
        self.cert = cert
        self.verifier = verifier
        self.client_ca = client_ca
        self.received: list[Received] = []
        self.answer = grpc.StatusCode.OK
        self.hold: set[str] = set()
        self.refuse_unverified = True
        self.decide: Decide | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, port: int = 0) -> int:
        server = grpc.aio.server()

        async def receive(body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            headers = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            ok, client, key_id = self.verifier.verify(GRPC_METHOD, body, headers)
            request = insurer_endpoint_pb2.ReceiveClaimRequest.FromString(body)
            txid = request.delivery.transaction_id
            record = Received(txid, client, key_id, ok, body, headers, time.monotonic())
            self.received.append(record)
            if not ok and self.refuse_unverified:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad signature")
            if txid in self.hold:
                self.hold.discard(txid)
                record.answered = False
                await asyncio.sleep(3600)
            if self.answer not in (grpc.StatusCode.OK,):
                await context.abort(self.answer, "endpoint says no")
            decision = self.decide(request.delivery) if self.decide is not None else None
            if decision is None:
                return insurer_endpoint_pb2.ReceiveClaimResponse().SerializeToString()
            record.decision = decision
            return insurer_endpoint_pb2.ReceiveClaimResponse(decision=decision).SerializeToString()

        handler = grpc.method_handlers_generic_handler(
            "iclaim.v1.InsurerEndpoint",
            {"ReceiveClaim": grpc.unary_unary_rpc_method_handler(receive)},  # raw bytes in and out
        )
        server.add_generic_rpc_handlers((handler,))
        credentials = grpc.ssl_server_credentials(
            [(self.cert.key_pem, self.cert.cert_pem)],
            root_certificates=self.client_ca.encode() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )
        self.port = server.add_secure_port(f"127.0.0.1:{port}", credentials)
        await server.start()
        self._server = server
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    def taken_ids(self) -> list[str]:
        return [r.transaction_id for r in self.received if r.verified]


# --- an HTTPS webhook -------------------------------------------------------------------
class WebhookEndpoint:
    """POST <path> over TLS (mTLS when `client_ca` is given). `mode` picks the
    answer: ok (200 JSON), text (200 text/plain), empty (204), conflict (409),
    error (500 HTML), html (200 HTML page), huge (200, 20 MiB with a length),
    endless (200 chunked, never ends), redirect (302), decision (200 JSON with
    the `decision` member `decide` gives, in the proto3 JSON mapping, §10.6;
    as "ok" when it gives None), json (200 JSON: `document`, whatever it is)."""

    def __init__(
        self,
        cert: Issued,
        verifier: PushVerifier,
        *,
        path: str = "/iclaim/claims",
        client_ca: str | None = None,
    ) -> None:
        self.cert = cert
        self.verifier = verifier
        self.path = path
        self.client_ca = client_ca
        self.mode = "ok"
        self.decide: Decide | None = None
        self.document: Any = None
        self.received: list[Received] = []
        self.streamed = 0  # bytes an endless answer managed to write
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        ok, client, key_id = self.verifier.verify(f"POST {request.path}", body, headers)
        txid = ""
        with contextlib.suppress(Exception):
            txid = str(json.loads(body).get("transactionId", ""))
        record = Received(txid, client, key_id, ok, body, headers, time.monotonic())
        self.received.append(record)
        if not ok:
            return web.Response(status=401, text="bad signature")
        mode = self.mode
        if mode == "decision":
            delivery = json_format.Parse(
                body, insurer_service_pb2.ClaimDelivery(), ignore_unknown_fields=True
            )
            decision = self.decide(delivery) if self.decide is not None else None
            if decision is None:
                return web.json_response({"accepted": True})
            if isinstance(decision, Message):
                decision = json_format.MessageToDict(decision)
            record.decision = decision
            return web.json_response({"decision": decision})
        if mode == "ok":
            return web.json_response({"accepted": True})
        if mode == "json":
            return web.json_response(self.document)
        if mode == "text":
            return web.Response(status=200, text="ok")
        if mode == "empty":
            return web.Response(status=204)
        if mode == "conflict":
            return web.json_response({"duplicate": True}, status=409)
        if mode == "error":
            return web.Response(status=500, text="<html>oops</html>", content_type="text/html")
        if mode == "html":
            return web.Response(
                status=200, text="<html><body>Welcome</body></html>", content_type="text/html"
            )
        if mode == "huge":
            return web.Response(
                status=200, body=b"{" + b" " * (20 * 1024 * 1024) + b"}", content_type="application/json"
            )
        if mode == "redirect":
            raise web.HTTPFound(location="https://127.0.0.1:1/elsewhere")
        if mode == "endless":
            response = web.StreamResponse(status=200, headers={"content-type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            chunk = b" " * 65536
            with contextlib.suppress(Exception):
                while True:
                    await response.write(chunk)
                    self.streamed += len(chunk)
            return response
        raise AssertionError(mode)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert.cert_path, self.cert.key_path)
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=self.client_ca)
        return context

    async def start(self, port: int = 0) -> int:
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_post(self.path, self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=self.ssl_context())
        await site.start()
        self._runner = runner
        server = site._server
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{self.path}"

    def taken_ids(self) -> list[str]:
        return [r.transaction_id for r in self.received if r.verified]


class SilentServer:
    """Accepts TCP connections, reads, never answers (not even a TLS handshake)."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._writers.append(writer)
            with contextlib.suppress(Exception):
                while await reader.read(65536):
                    pass

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


# --- the router's side of reports --------------------------------------------------------
@dataclass
class ReportCall:
    kind: str
    transaction_id: str
    insurer_code: str
    code: grpc.StatusCode
    at: float


class FakeReports(delivery_report_pb2_grpc.DeliveryReportServiceServicer):
    """Records every report; `fail_next` refuses that many with `fail_code`."""

    def __init__(self) -> None:
        self.calls: list[ReportCall] = []
        self.fail_next = 0
        self.fail_code = grpc.StatusCode.UNAVAILABLE
        self.refuse: set[str] = set()
        self.batches: list[list[str]] = []

    async def _record(self, kind: str, request: Any, context: Any) -> None:
        code = grpc.StatusCode.OK
        if self.fail_next:
            self.fail_next -= 1
            code = self.fail_code
        self.calls.append(
            ReportCall(kind, request.transaction_id, request.insurer_code, code, time.monotonic())
        )
        if code != grpc.StatusCode.OK:
            await context.abort(code, "fake router says no")

    async def ReportTaken(self, request: Any, context: Any) -> Any:
        await self._record("taken", request, context)
        return delivery_report_pb2.ReportTakenResponse()

    async def ReportTakenBatch(self, request: Any, context: Any) -> Any:
        """Each report recorded as its own "taken" call; `fail_next` refuses the
        whole batch (one failure used), `refuse` names ids refused singly."""
        if self.fail_next:
            self.fail_next -= 1
            now = time.monotonic()
            self.calls += [
                ReportCall("taken", r.transaction_id, r.insurer_code, self.fail_code, now)
                for r in request.reports
            ]
            await context.abort(self.fail_code, "fake router says no")
        self.batches.append([r.transaction_id for r in request.reports])
        refused = []
        for i, r in enumerate(request.reports):
            code = grpc.StatusCode.NOT_FOUND if r.transaction_id in self.refuse else grpc.StatusCode.OK
            self.calls.append(ReportCall("taken", r.transaction_id, r.insurer_code, code, time.monotonic()))
            if code != grpc.StatusCode.OK:
                refused.append(delivery_report_pb2.RefusedReport(index=i, reason="CLAIM_NOT_FOUND"))
        return delivery_report_pb2.ReportTakenBatchResponse(refused=refused)

    async def ReportExpired(self, request: Any, context: Any) -> Any:
        await self._record("expired", request, context)
        return delivery_report_pb2.ReportExpiredResponse()

    async def ReportRedriven(self, request: Any, context: Any) -> Any:
        await self._record("redriven", request, context)
        return delivery_report_pb2.ReportRedrivenResponse()

    def acked(self, kind: str | None = None) -> list[str]:
        return [
            c.transaction_id
            for c in self.calls
            if c.code == grpc.StatusCode.OK and (kind is None or c.kind == kind)
        ]


# --- the router's side of decisions answered to a push (§10.6) ------------------------------
class FakeDecisions(decision_intake_pb2_grpc.DecisionIntakeServiceServicer):
    """Records every RecordDecision request; answers `code` (OK by default)
    and, when not OK, a rich status as the hub's interceptor builds it: an
    ErrorInfo with `reason` (the code's name when "") in grpc-status-details-bin
    (a bare status, no details, when `details` is False)."""

    def __init__(self) -> None:
        self.requests: list[decision_intake_pb2.RecordDecisionRequest] = []
        self.batches: list[int] = []  # answers per RecordPushAnswers call
        self.batch_unimplemented = False
        self.code = grpc.StatusCode.OK
        self.reason = ""
        self.details = True

    def refuse(self, code: grpc.StatusCode, reason: str = "", *, details: bool = True) -> None:
        """Answers every later call so (OK: records them again)."""
        self.code, self.reason, self.details = code, reason, details

    async def RecordDecision(self, request: Any, context: Any) -> Any:
        copy = decision_intake_pb2.RecordDecisionRequest()
        copy.CopyFrom(request)
        self.requests.append(copy)
        code, reason = self.code, self.reason
        if code != grpc.StatusCode.OK and not self.details:
            await context.abort(code, "fake router says no")
        if code != grpc.StatusCode.OK:
            status = rpc_status.to_status(
                build_status(Code[code.name], "fake router says no", reason or code.name)
            )
            await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
        return decision_intake_pb2.RecordDecisionResponse()

    async def RecordPushAnswers(self, request: Any, context: Any) -> Any:
        """Each answer recorded as a RecordDecision; a refusal by `refuse` is
        per answer (listed with its reason) for the codes the router refuses
        an answer with, and fails the whole call for any other (an outage)."""
        if self.batch_unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "a router of the previous release")
        code, reason = self.code, self.reason
        self.batches.append(len(request.answers))
        per_answer = code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.OUT_OF_RANGE,
        )
        for answer in request.answers:
            copy = decision_intake_pb2.RecordDecisionRequest()
            copy.CopyFrom(answer)
            self.requests.append(copy)
        if code != grpc.StatusCode.OK and not per_answer:
            await context.abort(code, "fake router says no")
        refused = [
            decision_intake_pb2.RefusedAnswer(index=i, reason=reason if self.details else "")
            for i in range(len(request.answers) if per_answer else 0)
        ]
        return decision_intake_pb2.RecordPushAnswersResponse(refused=refused)

    def of(self, transaction_id: str) -> list[decision_intake_pb2.RecordDecisionRequest]:
        return [r for r in self.requests if r.transaction_id == transaction_id]


# --- the harness -----------------------------------------------------------------------
FAST = DeliverySettings(
    max_inflight=16,
    probe_s=0.3,
    backoff=Backoff(base_s=0.05, max_s=0.2),
    expiry_s=3600.0,
    timeout_s=2.0,
    lease_s=6.0,  # > timeout + 1 + report deadline
    poll_s=0.05,
    report_deadline_s=2.0,
)


@dataclass
class Harness:
    database_url: str
    pool: asyncpg.Pool
    registry: RegistryStore
    reports: FakeReports
    reports_port: int
    master_key: bytes
    folder: Path
    ca: TestCA
    decisions: FakeDecisions = field(default_factory=FakeDecisions)
    apps: list[AdapterApp] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    endpoints: list[GrpcEndpoint | WebhookEndpoint | SilentServer] = field(default_factory=list)
    _txn: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def config(self, **overrides: Any) -> Config:
        delivery = overrides.pop("delivery", FAST)
        values: dict[str, Any] = {
            "serve": ServeConfig("127.0.0.1:0", -1),
            "database_url": self.database_url,
            "master_key": self.master_key,
            "admin_token_sha256": hashlib.sha256(ADMIN_TOKEN.encode()).digest(),
            "router_target": f"127.0.0.1:{self.reports_port}",
            "delivery": delivery,
            "endpoint_ttl_s": 0.5,
        }
        values.update(overrides)
        return Config(**values)

    async def start_adapter(self, **overrides: Any) -> insurer_adapter_pb2_grpc.InsurerAdapterServiceStub:
        app = await build_server(self.config(**overrides))
        await app.start()
        self.apps.append(app)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=CLIENT_OPTIONS)
        self.channels.append(channel)
        return insurer_adapter_pb2_grpc.InsurerAdapterServiceStub(channel)

    async def stop_adapter(self, index: int = -1) -> None:
        await self.apps.pop(index).stop(grace=0.1)

    @property
    def app(self) -> AdapterApp:
        return self.apps[-1]

    async def add_insurer(
        self, code: str, mode: str, target: str, *, ca_pem: str | None = None, mtls: bool = False
    ) -> tuple[str, bytes]:
        """Registers a push insurer and issues its endpoint key (id, secret)."""
        await self.registry.upsert_principal(
            Principal(
                code,
                "insurer",
                f"Test insurer {code}",
                line=2,
                delivery_mode=mode,
                endpoint=target,
                endpoint_ca_pem=self.ca.pem if ca_pem is None else ca_pem,
                endpoint_mtls=mtls,
            )
        )
        key = await self.registry.issue_endpoint_key(code)
        return key.key_id, key.secret

    async def grpc_endpoint(
        self, code: str, *, port: int = 0, start: bool = True, mtls: bool = False, cert: Issued | None = None
    ) -> GrpcEndpoint:
        """An insurer `code` served by a gRPC endpoint of the harness CA."""
        port = port or free_port()
        key_id, secret = await self.add_insurer(code, "grpc", f"127.0.0.1:{port}", mtls=mtls)
        endpoint = GrpcEndpoint(
            cert or self.ca.issue(f"{code}.insurer"),
            PushVerifier({key_id: secret}),
            client_ca=self.ca.pem if mtls else None,
        )
        self.endpoints.append(endpoint)
        if start:
            await endpoint.start(port)
        else:
            endpoint.port = port
        return endpoint

    async def webhook_endpoint(
        self, code: str, *, mtls: bool = False, cert: Issued | None = None
    ) -> WebhookEndpoint:
        endpoint = WebhookEndpoint(
            cert or self.ca.issue(f"{code}.insurer"),
            PushVerifier({}),
            path=f"/insurers/{code}/claims",
            client_ca=self.ca.pem if mtls else None,
        )
        self.endpoints.append(endpoint)
        await endpoint.start()
        key_id, secret = await self.add_insurer(code, "webhook", endpoint.url, mtls=mtls)
        endpoint.verifier.keys[key_id] = secret
        return endpoint

    def request(
        self, insurer: str, txid: str | None = None, amount: int = 150_000
    ) -> insurer_adapter_pb2.DeliverClaimRequest:
        txid = txid or f"txn_{next(self._txn):028x}"
        request = insurer_adapter_pb2.DeliverClaimRequest(
            transaction_id=txid,
            hospital_code=HOSPITAL,
            insurer_code=insurer,
            claim_ref=f"HN-{txid[-6:]}",
            billed_amount_satang=amount,
            envelope="eyJhbGciOiJFQ0RILUVTK0EyNTZLVyJ9.a.b.c.d",
        )
        request.submitted_at.FromDatetime(dt.datetime(2026, 11, 25, 8, 30, tzinfo=dt.UTC))
        return request

    async def deliver(
        self, stub: insurer_adapter_pb2_grpc.InsurerAdapterServiceStub, insurer: str, n: int = 1
    ) -> list[str]:
        ids = []
        for _ in range(n):
            request = self.request(insurer)
            await stub.DeliverClaim(request, timeout=5)
            ids.append(request.transaction_id)
        return ids

    async def row(self, txid: str) -> asyncpg.Record:
        row = await self.pool.fetchrow("SELECT * FROM adapter.deliveries WHERE transaction_id = $1", txid)
        assert row is not None
        return row

    async def taken_row(self, txid: str) -> asyncpg.Record:
        """The row once it says taken: a push the router acknowledged is
        written taken a moment later, in a batch (taken_marks.py)."""

        async def taken() -> bool:
            return (await self.row(txid))["state"] == "taken"

        await wait_for(taken, what="the row written taken")
        return await self.row(txid)

    async def states(self, txids: list[str]) -> dict[str, str]:
        rows = await self.pool.fetch(
            "SELECT transaction_id, state FROM adapter.deliveries WHERE transaction_id = ANY($1::text[])",
            txids,
        )
        return {r["transaction_id"]: r["state"] for r in rows}


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Polls until true; the timeout only bounds a broken run, it measures nothing."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def delivery_harness(database_url: str, folder: Path) -> AsyncIterator[Harness]:
    reports = FakeReports()
    decisions = FakeDecisions()
    server = grpc.aio.server()
    delivery_report_pb2_grpc.add_DeliveryReportServiceServicer_to_server(reports, server)
    decision_intake_pb2_grpc.add_DecisionIntakeServiceServicer_to_server(decisions, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    master_key = b64url_decode(SecretBox.new_master_key())
    registry = RegistryStore(pool, SecretBox(master_key))
    await registry.migrate()
    await registry.upsert_principal(Principal(HOSPITAL, "hospital", "Test hospital"))
    h = Harness(
        database_url, pool, registry, reports, port, master_key, folder, TestCA(folder / "ca"), decisions
    )
    try:
        yield h
    finally:
        for app in h.apps:
            with contextlib.suppress(Exception):
                await app.stop(grace=0.1)
        for channel in h.channels:
            await channel.close()
        for endpoint in h.endpoints:
            with contextlib.suppress(Exception):
                await endpoint.stop()
        await server.stop(0)
        await pool.close()
