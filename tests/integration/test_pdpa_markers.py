"""PDPA (issue 10, item 1), through the running stack: personal data a caller
puts into any field it controls — the path, every x-iclaim-* header, the user
agent, x-request-id, claim_ref, transaction_id, invoice_ref, trace_no — reaches
no audit row, no service log line, no line of Envoy's access log and no metric
label, whether the caller is unsigned, forged or properly signed.

Audit rows are kept at least 90 days and cannot be deleted, so the gateway
records only what it knows to be well-formed: a public route or
`unknown-route:h:<hash>`, `unverified:h:<hash>` for a claimed client, a
transaction id only in the hub's own form. Some of these calls fail with an
error whose message quotes the caller's value (CLAIM_REF_CONFLICT,
INVOICE_REF_REUSED, DUPLICATE_LINE): the client sees it; the logs must not.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_status import rpc_status

from iclaim.client.credentials import Credentials
from iclaim.client.hospital import HospitalClient
from iclaim.crypto import signing
from iclaim.crypto.signing import b64url_decode
from iclaim.errors import error_info_of
from iclaim.fhir.claim import PatientInfo, build_claim, thai_citizen_id_checksum_ok
from iclaim.v1 import (
    audit_trail_service_pb2,
    billing_service_pb2,
    claim_service_pb2,
    insurer_service_pb2,
)
from iclaim_hub.common.access_log import pseudonym, pseudonym_key
from tests.support.stack import RunningStack

pytestmark = pytest.mark.integration

GET_CLAIM = "/iclaim.v1.ClaimService/GetClaim"
SUBMIT = "/iclaim.v1.ClaimService/SubmitClaim"
LIST_AUDIT = "/iclaim.v1.AuditTrailService/ListAuditEntries"
CREATE_INVOICE = "/iclaim.v1.BillingService/CreateInvoice"
POST_PAYMENT = "/iclaim.v1.BillingService/PostPayment"
POST_DECISION = "/iclaim.v1.InsurerService/PostDecision"


def _citizen_id() -> str:
    """A random, well-formed Thai citizen id (mod-11 check digit)."""
    head = str(secrets.choice("12345678")) + "".join(secrets.choice(string.digits) for _ in range(11))
    total = sum(int(d) * (13 - i) for i, d in enumerate(head))
    cid = head + str((11 - total % 11) % 10)
    assert thai_citizen_id_checksum_ok(cid)
    return cid


@dataclass(frozen=True)
class Markers:
    """Personal data, random per run so nothing else in the stack can contain it."""

    cid: str
    name: str
    icd: str
    policy: str

    @classmethod
    def new(cls) -> Markers:
        suffix = "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))
        return cls(_citizen_id(), f"Somchai{suffix}", "K35.32", f"POL{secrets.randbelow(10**8):08d}")

    @property
    def dotted(self) -> str:
        # Fits claim_ref, invoice_ref, trace_no, key id ([A-Za-z0-9._:/-], <= 64).
        return f"{self.name}.{self.cid}.{self.icd}.{self.policy}"

    @property
    def text(self) -> str:
        return f"{self.name} Jaidee {self.cid} {self.icd} {self.policy}"

    def nonce(self, i: int) -> str:
        # A well-formed nonce ([A-Za-z0-9_-]{16,128}), so signed calls can carry one.
        return f"{self.name}_{self.cid}_{self.policy}_{self.icd.replace('.', '-')}_{i}"

    @property
    def path(self) -> str:
        return f"/{self.name}.{self.cid}/{self.icd.replace('.', '_')}"

    def forms(self) -> list[str]:
        """What to look for: each marker as sent in any field (case-insensitive)."""
        icd = self.icd
        return [self.cid, self.name, self.policy, icd, icd.replace(".", "_"), icd.replace(".", "-")]

    def headers(self) -> list[tuple[str, str]]:
        """Every other caller-controlled header, with markers in it."""
        return [
            ("x-iclaim-principal", self.name.upper()),
            ("x-iclaim-role", self.text),
            ("x-iclaim-transaction-id", self.dotted),
            ("x-iclaim-envelope-sha256", self.text),
            ("x-iclaim-request", self.text),
            ("x-iclaim-reason", self.policy),
            ("x-iclaim-server-time", self.cid),
            ("x-request-id", self.dotted),
        ]


@dataclass(frozen=True)
class Result:
    code: grpc.StatusCode
    details: str
    body: bytes | None
    reason: str = ""  # ErrorInfo.reason, when the error carries one


async def _send(
    creds: Credentials, user_agent: str, method: str, body: bytes, md: Sequence[tuple[str, str]]
) -> Result:
    """One unary call through the gateway with exactly these bytes and headers."""
    assert creds.ca_cert is not None
    tls = grpc.ssl_channel_credentials(creds.ca_cert.read_bytes())
    options = [("grpc.primary_user_agent", user_agent)]
    async with grpc.aio.secure_channel(creds.gateway, tls, options=options) as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            return Result(grpc.StatusCode.OK, "", await call(body, metadata=tuple(md), timeout=30))
        except grpc.aio.AioRpcError as err:
            status = rpc_status.from_call(err)
            info = error_info_of(status) if status is not None else None
            return Result(err.code(), err.details() or "", None, info.reason if info else "")


def _signed(creds: Credentials, method: str, body: bytes, nonce: str) -> list[tuple[str, str]]:
    ts = int(time.time())
    sig = signing.sign(creds.secret, creds.code, creds.key_id, method, ts, nonce, body)
    return [
        (signing.H_CLIENT, creds.code),
        (signing.H_KEY_ID, creds.key_id),
        (signing.H_TIMESTAMP, str(ts)),
        (signing.H_NONCE, nonce),
        (signing.H_SIGNATURE, sig),
    ]


class Caller:
    """Sends calls carrying the markers: in headers and user agent always, and
    signed with real credentials when `signed` is used."""

    def __init__(self, m: Markers) -> None:
        self.m = m
        self.user_agent = f"{m.name} Jaidee/{m.cid} ({m.icd}; {m.policy})"
        self._n = 0

    def _nonce(self) -> str:
        self._n += 1
        return self.m.nonce(self._n)

    async def unsigned(self, creds: Credentials, method: str, body: bytes = b"") -> Result:
        return await _send(creds, self.user_agent, method, body, self.m.headers())

    async def forged(self, creds: Credentials, method: str, body: bytes, claimed: str) -> Result:
        m = self.m
        auth = [
            (signing.H_CLIENT, claimed),
            (signing.H_KEY_ID, m.dotted),
            (signing.H_TIMESTAMP, str(int(time.time()))),
            (signing.H_NONCE, self._nonce()),
            (signing.H_SIGNATURE, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")),
        ]
        return await _send(creds, self.user_agent, method, body, auth + m.headers())

    async def malformed(self, creds: Credentials, method: str, body: bytes) -> Result:
        m = self.m
        auth = [
            (signing.H_CLIENT, m.text),
            (signing.H_KEY_ID, m.text),
            (signing.H_TIMESTAMP, m.cid),  # 13 digits: too many
            (signing.H_NONCE, m.text),
            (signing.H_SIGNATURE, m.dotted),
        ]
        return await _send(creds, self.user_agent, method, body, auth + m.headers())

    async def signed(self, creds: Credentials, method: str, body: bytes) -> Result:
        md = _signed(creds, method, body, self._nonce()) + self.m.headers()
        return await _send(creds, self.user_agent, method, body, md)


def _get(txn: str) -> bytes:
    return claim_service_pb2.GetClaimRequest(transaction_id=txn).SerializeToString()


async def _submit(
    caller: Caller, creds: Credentials, hospital: HospitalClient, ref: str, variant: int
) -> Result:
    m = caller.m
    body = build_claim(
        claim_ref=ref,
        hospital_code=creds.code,
        insurer_code="AIA",
        policy_number=m.policy,
        amount_satang=10_000 + variant,
        patient=PatientInfo(name=f"{m.name} Jaidee", citizen_id=m.cid),
        diagnoses=[m.icd],
    )
    envelope = await hospital.seal_claim(
        body, insurer_code="AIA", claim_ref=ref, amount_satang=10_000 + variant
    )
    wait = Duration()
    wait.FromSeconds(15)
    request = claim_service_pb2.SubmitClaimRequest(
        claim_ref=ref,
        insurer_code="AIA",
        billed_amount_satang=10_000 + variant,
        envelope=envelope,
        decision_timeout=wait,
    )
    return await caller.signed(creds, SUBMIT, request.SerializeToString())


async def _unauthenticated_calls(caller: Caller, creds: Credentials) -> None:
    m = caller.m
    body = _get(m.dotted)
    r = await caller.unsigned(creds, GET_CLAIM, body)
    assert (r.code, r.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MALFORMED_METADATA"), r
    for method in (
        m.path,
        f"/iclaim.v1.ClaimService/{m.name}{m.cid}",
        f"{GET_CLAIM}?patient={m.name}&cid={m.cid}&dx={m.icd}",
    ):
        # Refused by the auth service (which hashes the path), with ErrorInfo.
        r = await caller.unsigned(creds, method, body)
        assert (r.code, r.reason) == (grpc.StatusCode.UNIMPLEMENTED, "UNKNOWN_METHOD"), (method, r)
    # Under an open (unauthenticated) service: the router answers.
    r = await caller.unsigned(creds, f"/grpc.health.v1.Health/{m.name}.{m.cid}", body)
    assert r.code == grpc.StatusCode.UNIMPLEMENTED, r
    # Well-formed claimed clients (the old audit row was `unverified:<claimed>`).
    for claimed in (m.cid, m.name.upper(), m.policy):
        r = await caller.forged(creds, GET_CLAIM, body, claimed)
        assert r.code == grpc.StatusCode.UNAUTHENTICATED, r
    r = await caller.forged(creds, m.path, body, m.cid)
    assert r.code == grpc.StatusCode.UNIMPLEMENTED, r
    r = await caller.malformed(creds, GET_CLAIM, body)
    assert r.code == grpc.StatusCode.UNAUTHENTICATED, r


async def _signed_calls(caller: Caller, stack: RunningStack) -> None:
    m = caller.m
    hospital_creds, insurer_creds = stack.creds("10670"), stack.creds("TESTPULL")
    r = await caller.signed(hospital_creds, m.path, b"")
    assert r.code == grpc.StatusCode.UNIMPLEMENTED, r
    for txn in (m.dotted, m.text, m.cid):
        r = await caller.signed(hospital_creds, GET_CLAIM, _get(txn))
        assert r.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), r
    for txn in (m.dotted, m.text):  # well-formed (none found) and not (refused)
        listing = audit_trail_service_pb2.ListAuditEntriesRequest(transaction_id=txn)
        r = await caller.signed(hospital_creds, LIST_AUDIT, listing.SerializeToString())
        assert r.code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), r

    # claim_ref: a second envelope under the same reference is refused with a
    # message that names the reference (the old interceptor logged it).
    async with HospitalClient(hospital_creds) as hospital:
        first = await _submit(caller, hospital_creds, hospital, m.dotted, 0)
        assert first.code == grpc.StatusCode.OK and first.body is not None, first
        approved = claim_service_pb2.SubmitClaimResponse.FromString(first.body).claim
        conflict = await _submit(caller, hospital_creds, hospital, m.dotted, 1)
        assert conflict.code == grpc.StatusCode.ALREADY_EXISTS, conflict
        assert m.dotted in conflict.details  # the client sees its own value; no log may
        other = await _submit(caller, hospital_creds, hospital, f"PDPA-{secrets.token_hex(6)}", 2)
        assert other.code == grpc.StatusCode.OK and other.body is not None, other
        second = claim_service_pb2.SubmitClaimResponse.FromString(other.body).claim
    assert approved.state == second.state == claim_service_pb2.CLAIM_STATE_APPROVED

    # invoice_ref: the same reference for another set of claims is refused, by name.
    def invoice(ref: str, txns: list[str]) -> bytes:
        return billing_service_pb2.CreateInvoiceRequest(
            invoice_ref=ref, insurer_code="AIA", transaction_ids=txns
        ).SerializeToString()

    for _ in range(100):  # approvals reach billing through the router's outbox
        r = await caller.signed(hospital_creds, CREATE_INVOICE, invoice(m.dotted, [approved.transaction_id]))
        if r.code != grpc.StatusCode.FAILED_PRECONDITION:
            break
        await asyncio.sleep(0.1)
    assert r.code == grpc.StatusCode.OK, r
    r = await caller.signed(hospital_creds, CREATE_INVOICE, invoice(m.dotted, [second.transaction_id]))
    assert r.code == grpc.StatusCode.ALREADY_EXISTS and m.dotted in r.details, r
    r = await caller.signed(hospital_creds, CREATE_INVOICE, invoice(m.policy, [m.text]))
    assert r.code != grpc.StatusCode.OK and r.code != grpc.StatusCode.INTERNAL, r

    # trace_no and line transaction ids: a duplicate line is refused, by name.
    paid_at = Timestamp()
    paid_at.FromSeconds(int(time.time()) - 60)
    line = billing_service_pb2.PaymentLine(transaction_id=m.text, paid_satang=1)
    payment = billing_service_pb2.PostPaymentRequest(
        trace_no=m.dotted, paid_at=paid_at, total_satang=2, lines=[line, line]
    )
    r = await caller.signed(insurer_creds, POST_PAYMENT, payment.SerializeToString())
    assert r.code == grpc.StatusCode.INVALID_ARGUMENT and m.text in r.details, r
    decision = insurer_service_pb2.PostDecisionRequest(
        transaction_id=m.dotted, state=claim_service_pb2.CLAIM_STATE_DENIED, reason_code=m.policy
    )
    r = await caller.signed(insurer_creds, POST_DECISION, decision.SerializeToString())
    assert r.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), r


async def _audit_rows(stack: RunningStack) -> list[str]:
    conn = await stack.db()
    try:
        rows = await conn.fetch(
            "SELECT row_to_json(t)::text AS j FROM audit.entry_data t ORDER BY leaf_index"
        )
    finally:
        await conn.close()
    return [r["j"] for r in rows]


async def _http_get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    text = (await reader.read()).decode(errors="replace")
    writer.close()
    return text


async def test_caller_text_reaches_no_audit_row_log_line_or_metric(running_stack: RunningStack) -> None:
    m = Markers.new()
    caller = Caller(m)
    hospital = running_stack.creds("10670")
    await _unauthenticated_calls(caller, hospital)
    await _signed_calls(caller, running_stack)

    # The calls are in the audit log, with keyed hashes where caller text was.
    key = pseudonym_key(b64url_decode(running_stack.stack.master_key))
    expected = [
        f'"route":"unknown-route:{pseudonym(key, m.path)}"',
        f'"route":"unknown-route:{pseudonym(key, f"{GET_CLAIM}?patient={m.name}&cid={m.cid}&dx={m.icd}")}"',
        f'"origin_principal":"unverified:{pseudonym(key, m.cid)}"',
        f'"origin_principal":"unverified:{pseudonym(key, m.name.upper())}"',
        f'"origin_principal":"unverified:{pseudonym(key, m.text)}"',
        '"route":"/grpc.health.v1.Health/*"',
        '"outcome_reason":"CLAIM_REF_CONFLICT"',
        '"outcome_reason":"INVOICE_REF_REUSED"',
        '"outcome_reason":"DUPLICATE_LINE"',
    ]
    for _ in range(150):  # Envoy flushes its log every second; audit_log tails it
        audit = "\n".join(await _audit_rows(running_stack))
        missing = [e for e in expected if e not in audit]
        if not missing:
            break
        await asyncio.sleep(0.2)
    assert not missing, missing

    stack = running_stack.stack
    places = {
        "audit table": audit,
        "access log": stack.access_log.read_text(errors="replace"),
        **{p.name: p.read_text(errors="replace") for p in sorted(stack.logs_dir.glob("*.log"))},
    }
    ports = stack.ports
    for name, port in (
        ("router", ports.router_metrics),
        ("adapter", ports.adapter_metrics),
        ("audit", ports.audit_metrics),
        ("billing", ports.billing_metrics),
        ("authz", ports.authz_metrics),
    ):
        places[f"{name} /metrics"] = await _http_get(port, "/metrics")
    places["envoy stats"] = await _http_get(ports.envoy_admin, "/stats/prometheus")
    # The service logs did record the refusals (by code and reason).
    assert '"reason": "CLAIM_REF_CONFLICT"' in places["claim_router.log"]
    assert '"reason": "DUPLICATE_LINE"' in places["billing.log"]
    for where, text in places.items():
        for form in m.forms():
            assert form.lower() not in text.lower(), f"{form!r} found in {where}"
