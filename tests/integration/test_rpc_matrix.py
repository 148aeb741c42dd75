"""Every public RPC through the real gateway with a wrong principal or bad input:
the right code and reason, never UNKNOWN/INTERNAL, and no side effect (no claim
row, no delivery, no state change), and the refused call is in the audit log."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.type.date_pb2 import Date

from iclaim.client.credentials import Credentials
from iclaim.client.hospital import HospitalClient
from iclaim.crypto import signing
from iclaim.crypto.signing import b64url_decode
from iclaim_hub.common.access_log import pseudonym, pseudonym_key
from iclaim.fhir.claim import PatientInfo, build_claim
from iclaim_hub.internal.v1 import audit_log_pb2, audit_log_pb2_grpc
from iclaim.public_api import public_methods
from iclaim.v1 import audit_trail_service_pb2 as apb
from iclaim.v1 import billing_service_pb2 as bpb
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb
from tests.support.stack import RunningStack
from tests.support.wire import raw_call, reason_of, tls_channel

pytestmark = pytest.mark.integration
S = pb.ClaimState
H1, H2, INS = "10670", "10671", "TESTPULL"
C, INSR, B = "/iclaim.v1.ClaimService/", "/iclaim.v1.InsurerService/", "/iclaim.v1.BillingService/"
A = "/iclaim.v1.AuditTrailService/"
IA = grpc.StatusCode.INVALID_ARGUMENT
NF = grpc.StatusCode.NOT_FOUND
RE = grpc.StatusCode.RESOURCE_EXHAUSTED
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.OK}
UNKNOWN_TID = "txn_" + "0" * 28
MIB = 1024 * 1024


@dataclass
class World:
    stack: RunningStack
    creds: dict[str, Credentials]
    approved: pb.Claim  # H1 -> AIA, decided
    open_pull: pb.Claim  # H1 -> TESTPULL, undecided
    invoice_id: str  # H1's invoice for `approved` ("" if billing refused to make one)
    audit: audit_log_pb2_grpc.AuditLogServiceStub
    audit_channel: grpc.aio.Channel
    # Refused calls to find in the audit log: (who, method, code, reason).
    refused: list[tuple[str, str, grpc.StatusCode, str]] = field(default_factory=list)
    audit_start: int = 0
    since: datetime | None = None  # after the world's own claims were submitted


def _fhir(hospital: str, insurer: str, claim_ref: str, amount: int) -> bytes:
    return build_claim(
        claim_ref=claim_ref,
        hospital_code=hospital,
        insurer_code=insurer,
        policy_number="POL-OK-1",
        amount_satang=amount,
        patient=PatientInfo(name="Test Patient", citizen_id="1101700203451"),
        diagnoses=["K35.8"],
    )


async def _submit(client: HospitalClient, insurer: str, amount: int, wait_s: float) -> pb.Claim:
    r = f"MATRIX-{secrets.token_hex(5)}"
    return await client.submit_claim(
        _fhir(client.creds.code, insurer, r, amount),
        insurer_code=insurer,
        claim_ref=r,
        amount_satang=amount,
        decision_timeout_s=wait_s,
    )


@pytest.fixture(scope="module")
async def world(running_stack: RunningStack) -> Any:
    creds = {c: running_stack.creds(c) for c in (H1, H2, INS)}
    async with HospitalClient(creds[H1]) as h1:
        approved = await _submit(h1, "AIA", 7_700, wait_s=20)
        assert approved.state == S.CLAIM_STATE_APPROVED
        open_pull = await _submit(h1, INS, 8_800, wait_s=0)
    invoice_id = ""
    invoice_ref = f"INV-{secrets.token_hex(4)}"
    for _ in range(40):  # billing learns of decisions asynchronously (router outbox)
        try:
            invoice = await raw_call(
                creds[H1],
                B + "CreateInvoice",
                bpb.CreateInvoiceRequest(
                    invoice_ref=invoice_ref, insurer_code="AIA", transaction_ids=[approved.transaction_id]
                ),
                bpb.Invoice,
            )
            invoice_id = invoice.invoice_id
            break
        except grpc.aio.AioRpcError as err:
            assert err.code() not in NEVER, err
            await asyncio.sleep(0.25)
    # Without an invoice the cross-principal invoice cases would prove nothing.
    assert invoice_id, "billing did not invoice an approved claim"
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running_stack.stack.ports.audit}")
    w = World(
        running_stack,
        creds,
        approved,
        open_pull,
        invoice_id,
        audit_log_pb2_grpc.AuditLogServiceStub(channel),  # type: ignore[no-untyped-call]
        channel,
    )
    w.audit_start = await audit_size(w)
    conn = await running_stack.db()
    try:
        w.since = await conn.fetchval("SELECT clock_timestamp()")
    finally:
        await conn.close()
    yield w
    await channel.close()


# --- calls ------------------------------------------------------------------------


async def raw_stream(creds: Credentials, method: str, request: Any, response_type: Any) -> list[Any]:
    body = request.SerializeToString()
    ts, nonce = int(time.time()), secrets.token_urlsafe(18)
    sig = signing.sign(creds.secret, creds.code, creds.key_id, method, ts, nonce, body)
    md = (
        (signing.H_CLIENT, creds.code),
        (signing.H_KEY_ID, creds.key_id),
        (signing.H_TIMESTAMP, str(ts)),
        (signing.H_NONCE, nonce),
        (signing.H_SIGNATURE, sig),
    )
    async with tls_channel(creds) as channel:
        call = channel.unary_stream(
            method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        return [m async for m in call(request, metadata=md, timeout=10)]


def dur(seconds: int, nanos: int = 0) -> Duration:
    return Duration(seconds=seconds, nanos=nanos)


def _unknown_field(size: int) -> bytes:
    """A length-delimited unknown field (number 15) of `size` bytes."""
    out, n = bytearray(b"\x7a"), size
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + b"x" * size


def token(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


@dataclass
class Case:
    id: str
    who: str
    method: str
    request: Callable[[World], Any]
    response: Any
    codes: set[grpc.StatusCode]
    reason: str | None = None
    stream: bool = False
    # The gateway copies the request's transaction_id into a header verbatim.


def submit_req(**over: Any) -> Callable[[World], pb.SubmitClaimRequest]:
    def build(w: World) -> pb.SubmitClaimRequest:
        fields: dict[str, Any] = dict(
            claim_ref=f"MATRIX-BAD-{secrets.token_hex(4)}",
            insurer_code="AIA",
            billed_amount_satang=1_000,
            envelope="e30.a.b.c.d",
        )
        fields.update(over)
        return pb.SubmitClaimRequest(**fields)

    return build


def post_req(tid: Callable[[World], str], **over: Any) -> Callable[[World], ipb.PostDecisionRequest]:
    def build(w: World) -> ipb.PostDecisionRequest:
        fields: dict[str, Any] = dict(
            transaction_id=tid(w),
            state=S.CLAIM_STATE_DENIED,
            approved_amount_satang=0,
            decision_envelope="",
            reason_code="NOT_COVERED",
        )
        fields.update(over)
        return ipb.PostDecisionRequest(**fields)

    return build


approved_tid: Callable[[World], str] = lambda w: w.approved.transaction_id  # noqa: E731
pull_tid: Callable[[World], str] = lambda w: w.open_pull.transaction_id  # noqa: E731
deep = base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode()
big_nested = base64.urlsafe_b64encode(b"[" * 50_000 + b"]" * 50_000).decode()

CASES = [
    # ClaimService.ListInsurers
    Case(
        "list-insurers-neg-size",
        H1,
        C + "ListInsurers",
        lambda w: pb.ListInsurersRequest(page_size=-1),
        pb.ListInsurersResponse,
        {IA},
        "PAGE_SIZE_INVALID",
    ),
    Case(
        "list-insurers-bad-token",
        H1,
        C + "ListInsurers",
        lambda w: pb.ListInsurersRequest(page_token="!!not-a-token"),
        pb.ListInsurersResponse,
        {IA},
        "PAGE_TOKEN_INVALID",
    ),
    Case(
        "list-insurers-wrong-token-shape",
        H1,
        C + "ListInsurers",
        lambda w: pb.ListInsurersRequest(page_token=token({"at": "x", "tid": "y"})),
        pb.ListInsurersResponse,
        {IA},
        "PAGE_TOKEN_INVALID",
    ),
    Case(
        "list-insurers-nested-token",
        H1,
        C + "ListInsurers",
        lambda w: pb.ListInsurersRequest(page_token=deep),
        pb.ListInsurersResponse,
        {IA},
        "PAGE_TOKEN_INVALID",
    ),
    Case(
        "list-insurers-huge-token",
        H1,
        C + "ListInsurers",
        lambda w: pb.ListInsurersRequest(page_token=big_nested),
        pb.ListInsurersResponse,
        {IA},
        "PAGE_TOKEN_INVALID",
    ),
    # ClaimService.SubmitClaim
    Case(
        "submit-negative-amount",
        H1,
        C + "SubmitClaim",
        submit_req(billed_amount_satang=-5),
        pb.SubmitClaimResponse,
        {IA},
        "AMOUNT_INVALID",
    ),
    Case(
        "submit-zero-amount",
        H1,
        C + "SubmitClaim",
        submit_req(billed_amount_satang=0),
        pb.SubmitClaimResponse,
        {IA},
        "AMOUNT_INVALID",
    ),
    Case(
        "submit-huge-amount",
        H1,
        C + "SubmitClaim",
        submit_req(billed_amount_satang=2**62),
        pb.SubmitClaimResponse,
        {IA},
        "AMOUNT_INVALID",
    ),
    Case(
        "submit-bad-claim-ref",
        H1,
        C + "SubmitClaim",
        submit_req(claim_ref="bad ref!"),
        pb.SubmitClaimResponse,
        {IA},
        "CLAIM_REF_INVALID",
    ),
    Case(
        "submit-huge-claim-ref",
        H1,
        C + "SubmitClaim",
        submit_req(claim_ref="R" * 200_000),
        pb.SubmitClaimResponse,
        {IA},
        "CLAIM_REF_INVALID",
    ),
    Case(
        "submit-bad-insurer-code",
        H1,
        C + "SubmitClaim",
        submit_req(insurer_code="aia;drop"),
        pb.SubmitClaimResponse,
        {IA},
        "INSURER_CODE_INVALID",
    ),
    Case(
        "submit-huge-insurer-code",
        H1,
        C + "SubmitClaim",
        submit_req(insurer_code="A" * 100_000),
        pb.SubmitClaimResponse,
        {IA},
        "INSURER_CODE_INVALID",
    ),
    Case(
        "submit-timeout-31s",
        H1,
        C + "SubmitClaim",
        submit_req(decision_timeout=dur(31)),
        pb.SubmitClaimResponse,
        {IA},
        "DECISION_TIMEOUT_INVALID",
    ),
    Case(
        "submit-timeout-negative",
        H1,
        C + "SubmitClaim",
        submit_req(decision_timeout=dur(-1)),
        pb.SubmitClaimResponse,
        {IA},
        "DECISION_TIMEOUT_INVALID",
    ),
    Case(
        "submit-timeout-bad-nanos",
        H1,
        C + "SubmitClaim",
        submit_req(decision_timeout=dur(1, 2_000_000_000)),
        pb.SubmitClaimResponse,
        {IA},
        "DECISION_TIMEOUT_INVALID",
    ),
    Case(
        "submit-empty-envelope",
        H1,
        C + "SubmitClaim",
        submit_req(envelope=""),
        pb.SubmitClaimResponse,
        {IA},
        "ENVELOPE_MALFORMED",
    ),
    Case(
        "submit-garbage-envelope",
        H1,
        C + "SubmitClaim",
        submit_req(envelope="not a jwe"),
        pb.SubmitClaimResponse,
        {IA},
        "ENVELOPE_MALFORMED",
    ),
    Case(
        "submit-envelope-just-over-1mib",
        H1,
        C + "SubmitClaim",
        submit_req(envelope="a" * (MIB + 1)),
        pb.SubmitClaimResponse,
        {IA, RE},
    ),
    Case(
        "submit-oversized-request",
        H1,
        C + "SubmitClaim",
        submit_req(envelope="a" * (3 * MIB)),
        pb.SubmitClaimResponse,
        {RE},
    ),
    Case(
        "submit-unknown-insurer",
        H1,
        C + "SubmitClaim",
        submit_req(insurer_code="NOSUCH"),
        pb.SubmitClaimResponse,
        {IA, NF},
    ),
    # ClaimService.GetClaim / WatchClaim / CancelClaim
    Case(
        "get-other-hospitals-claim",
        H2,
        C + "GetClaim",
        lambda w: pb.GetClaimRequest(transaction_id=w.approved.transaction_id),
        pb.Claim,
        {NF},
        "CLAIM_NOT_FOUND",
    ),
    Case(
        "get-unknown-claim",
        H1,
        C + "GetClaim",
        lambda w: pb.GetClaimRequest(transaction_id=UNKNOWN_TID),
        pb.Claim,
        {NF},
        "CLAIM_NOT_FOUND",
    ),
    Case(
        "get-bad-tid",
        H1,
        C + "GetClaim",
        lambda w: pb.GetClaimRequest(transaction_id="txn_ZZ'--"),
        pb.Claim,
        {IA},
        "TRANSACTION_ID_INVALID",
    ),
    Case(
        "get-empty-tid",
        H1,
        C + "GetClaim",
        lambda w: pb.GetClaimRequest(transaction_id=""),
        pb.Claim,
        {IA},
        "TRANSACTION_ID_INVALID",
    ),
    Case(
        "get-huge-tid",
        H1,
        C + "GetClaim",
        lambda w: pb.GetClaimRequest(transaction_id="txn_" + "a" * 300_000),
        pb.Claim,
        {IA},
        "TRANSACTION_ID_INVALID",
    ),
    Case(
        "get-newline-tid",
        H1,
        C + "GetClaim",
        lambda w: pb.GetClaimRequest(transaction_id="txn_\r\nx-iclaim-role: insurer"),
        pb.Claim,
        {IA},
        "TRANSACTION_ID_INVALID",
    ),
    Case(
        "get-non-ascii-tid",
        H1,
        C + "GetClaim",
        lambda w: pb.GetClaimRequest(transaction_id="txn_\u0e01\u0e02"),
        pb.Claim,
        {IA},
        "TRANSACTION_ID_INVALID",
    ),
    Case(
        "watch-other-hospitals-claim",
        H2,
        C + "WatchClaim",
        lambda w: pb.WatchClaimRequest(transaction_id=w.open_pull.transaction_id),
        pb.Claim,
        {NF},
        "CLAIM_NOT_FOUND",
        stream=True,
    ),
    Case(
        "watch-bad-tid",
        H1,
        C + "WatchClaim",
        lambda w: pb.WatchClaimRequest(transaction_id="nope"),
        pb.Claim,
        {IA},
        "TRANSACTION_ID_INVALID",
        stream=True,
    ),
    Case(
        "cancel-other-hospitals-claim",
        H2,
        C + "CancelClaim",
        lambda w: pb.CancelClaimRequest(transaction_id=w.open_pull.transaction_id),
        pb.Claim,
        {NF},
        "CLAIM_NOT_FOUND",
    ),
    Case(
        "cancel-bad-tid",
        H1,
        C + "CancelClaim",
        lambda w: pb.CancelClaimRequest(transaction_id="txn_1"),
        pb.Claim,
        {IA},
        "TRANSACTION_ID_INVALID",
    ),
    Case(
        "cancel-huge-reason",
        H1,
        C + "CancelClaim",
        lambda w: pb.CancelClaimRequest(transaction_id=w.open_pull.transaction_id, reason="x" * 10_000),
        pb.Claim,
        {IA},
        "CANCEL_REASON_INVALID",
    ),
    # ClaimService.ListClaims
    Case(
        "list-claims-neg-size",
        H1,
        C + "ListClaims",
        lambda w: pb.ListClaimsRequest(page_size=-3),
        pb.ListClaimsResponse,
        {IA},
        "PAGE_SIZE_INVALID",
    ),
    Case(
        "list-claims-bad-token",
        H1,
        C + "ListClaims",
        lambda w: pb.ListClaimsRequest(page_token="%%%"),
        pb.ListClaimsResponse,
        {IA},
        "PAGE_TOKEN_INVALID",
    ),
    Case(
        "list-claims-token-bad-time",
        H1,
        C + "ListClaims",
        lambda w: pb.ListClaimsRequest(page_token=token({"at": "yesterday", "tid": "t"})),
        pb.ListClaimsResponse,
        {IA},
        "PAGE_TOKEN_INVALID",
    ),
    Case(
        "list-claims-token-nul-id",
        H1,
        C + "ListClaims",
        lambda w: pb.ListClaimsRequest(
            page_token=token({"at": "2026-01-01T00:00:00+00:00", "tid": "\u0000"})
        ),
        pb.ListClaimsResponse,
        {IA},
        "PAGE_TOKEN_INVALID",
    ),
    Case(
        "list-claims-token-year-one",
        H1,
        C + "ListClaims",
        lambda w: pb.ListClaimsRequest(
            page_token=token({"at": "0001-01-01T00:00:00+01:00", "tid": UNKNOWN_TID})
        ),
        pb.ListClaimsResponse,
        {IA},
        "PAGE_TOKEN_INVALID",
    ),
    Case(
        "list-claims-unknown-state",
        H1,
        C + "ListClaims",
        lambda w: pb.ListClaimsRequest(state=99),
        pb.ListClaimsResponse,  # type: ignore[arg-type]
        {IA},
        "STATE_INVALID",
    ),
    Case(
        "list-claims-bad-insurer",
        H1,
        C + "ListClaims",
        lambda w: pb.ListClaimsRequest(insurer_code="a b"),
        pb.ListClaimsResponse,
        {IA},
        "INSURER_CODE_INVALID",
    ),
    # InsurerService.PullClaims
    Case(
        "pull-zero",
        INS,
        INSR + "PullClaims",
        lambda w: ipb.PullClaimsRequest(max_claims=0),
        ipb.PullClaimsResponse,
        {IA},
        "MAX_CLAIMS_INVALID",
    ),
    Case(
        "pull-101",
        INS,
        INSR + "PullClaims",
        lambda w: ipb.PullClaimsRequest(max_claims=101),
        ipb.PullClaimsResponse,
        {IA},
        "MAX_CLAIMS_INVALID",
    ),
    Case(
        "pull-negative",
        INS,
        INSR + "PullClaims",
        lambda w: ipb.PullClaimsRequest(max_claims=-1),
        ipb.PullClaimsResponse,
        {IA},
        "MAX_CLAIMS_INVALID",
    ),
    Case(
        "pull-wait-31s",
        INS,
        INSR + "PullClaims",
        lambda w: ipb.PullClaimsRequest(max_claims=1, wait=dur(31)),
        ipb.PullClaimsResponse,
        {IA},
        "WAIT_INVALID",
    ),
    Case(
        "pull-wait-negative",
        INS,
        INSR + "PullClaims",
        lambda w: ipb.PullClaimsRequest(max_claims=1, wait=dur(0, -5)),
        ipb.PullClaimsResponse,
        {IA},
        "WAIT_INVALID",
    ),
    Case(
        "pull-wait-bad-nanos",
        INS,
        INSR + "PullClaims",
        lambda w: ipb.PullClaimsRequest(max_claims=1, wait=dur(1, -1)),
        ipb.PullClaimsResponse,
        {IA},
        "WAIT_INVALID",
    ),
    # InsurerService.GetHospital
    Case(
        "hospital-bad-code",
        INS,
        INSR + "GetHospital",
        lambda w: ipb.GetHospitalRequest(hospital_code="1067O"),
        ipb.Hospital,
        {IA},
        "HOSPITAL_CODE_INVALID",
    ),
    Case(
        "hospital-huge-code",
        INS,
        INSR + "GetHospital",
        lambda w: ipb.GetHospitalRequest(hospital_code="1" * 100_000),
        ipb.Hospital,
        {IA},
        "HOSPITAL_CODE_INVALID",
    ),
    Case(
        "hospital-unknown",
        INS,
        INSR + "GetHospital",
        lambda w: ipb.GetHospitalRequest(hospital_code="99999"),
        ipb.Hospital,
        {NF},
        "HOSPITAL_NOT_FOUND",
    ),
    # InsurerService.PostDecision
    Case(
        "decide-other-insurers-claim",
        INS,
        INSR + "PostDecision",
        post_req(approved_tid),
        pb.Claim,
        {NF},
        "CLAIM_NOT_FOUND",
    ),
    Case(
        "decide-bad-tid",
        INS,
        INSR + "PostDecision",
        post_req(lambda w: "txn_x"),
        pb.Claim,
        {IA},
        "TRANSACTION_ID_INVALID",
    ),
    Case(
        "decide-unknown-state",
        INS,
        INSR + "PostDecision",
        post_req(pull_tid, state=42),
        pb.Claim,
        {IA},
        "DECISION_STATE_INVALID",
    ),
    Case(
        "decide-received-state",
        INS,
        INSR + "PostDecision",
        post_req(pull_tid, state=S.CLAIM_STATE_RECEIVED),
        pb.Claim,
        {IA},
        "DECISION_STATE_INVALID",
    ),
    Case(
        "decide-negative-amount",
        INS,
        INSR + "PostDecision",
        post_req(
            pull_tid,
            state=S.CLAIM_STATE_PARTIALLY_APPROVED,
            approved_amount_satang=-1,
            decision_envelope="e30.a.b.c.d",
        ),
        pb.Claim,
        {IA},
        "DECISION_AMOUNT_INVALID",
    ),
    Case(
        "decide-bad-reason-code",
        INS,
        INSR + "PostDecision",
        post_req(pull_tid, reason_code="not upper"),
        pb.Claim,
        {IA},
        "REASON_CODE_INVALID",
    ),
    Case(
        "decide-huge-reason-code",
        INS,
        INSR + "PostDecision",
        post_req(pull_tid, reason_code="A" * 100_000),
        pb.Claim,
        {IA},
        "REASON_CODE_INVALID",
    ),
    Case(
        "decide-missing-envelope",
        INS,
        INSR + "PostDecision",
        post_req(pull_tid),
        pb.Claim,
        {IA},
        "ENVELOPE_MALFORMED",
    ),
    Case(
        "decide-garbage-envelope",
        INS,
        INSR + "PostDecision",
        post_req(pull_tid, decision_envelope="x.y"),
        pb.Claim,
        {IA},
        "ENVELOPE_MALFORMED",
    ),
    # BillingService (served by services/billing in the stack)
    Case(
        "billing-other-hospitals-invoice",
        H2,
        B + "GetInvoice",
        lambda w: bpb.GetInvoiceRequest(invoice_id=w.invoice_id or "inv_unknown"),
        bpb.Invoice,
        {NF},
    ),
    Case(
        "billing-create-no-claims",
        H1,
        B + "CreateInvoice",
        lambda w: bpb.CreateInvoiceRequest(invoice_ref="INV-X1", insurer_code="AIA"),
        bpb.Invoice,
        {IA},
        "NO_TRANSACTION_IDS",
    ),
    Case(
        "billing-create-duplicate-claims",
        H1,
        B + "CreateInvoice",
        lambda w: bpb.CreateInvoiceRequest(
            invoice_ref="INV-X2", insurer_code="AIA", transaction_ids=[approved_tid(w)] * 2
        ),
        bpb.Invoice,
        {IA},
        "DUPLICATE_TRANSACTION_ID",
    ),
    Case(
        "billing-create-other-hospitals-claim",
        H2,
        B + "CreateInvoice",
        lambda w: bpb.CreateInvoiceRequest(
            invoice_ref="INV-X3", insurer_code="AIA", transaction_ids=[approved_tid(w)]
        ),
        bpb.Invoice,
        {NF, grpc.StatusCode.FAILED_PRECONDITION},
    ),
    Case(
        "billing-list-neg-size",
        H1,
        B + "ListInvoices",
        lambda w: bpb.ListInvoicesRequest(page_size=-1),
        bpb.ListInvoicesResponse,
        {IA},
        "INVALID_PAGE_SIZE",
    ),
    Case(
        "billing-list-unknown-status",
        H1,
        B + "ListInvoices",
        lambda w: bpb.ListInvoicesRequest(status=77),  # type: ignore[arg-type]
        bpb.ListInvoicesResponse,
        {IA},
        "INVALID_STATUS",
    ),
    Case(
        "billing-list-bad-token",
        H1,
        B + "ListInvoices",
        lambda w: bpb.ListInvoicesRequest(page_token="%%%"),
        bpb.ListInvoicesResponse,
        {IA},
    ),
    # A token's parts reach SQL: none PostgreSQL or the driver would refuse (INTERNAL).
    Case(
        "billing-list-nested-token",
        H1,
        B + "ListInvoices",
        lambda w: bpb.ListInvoicesRequest(page_token=deep),
        bpb.ListInvoicesResponse,
        {IA},
        "INVALID_PAGE_TOKEN",
    ),
    Case(
        "billing-list-token-nul-id",
        H1,
        B + "ListInvoices",
        lambda w: bpb.ListInvoicesRequest(page_token=token(["2026-01-01T00:00:00+00:00", "\u0000"])),
        bpb.ListInvoicesResponse,
        {IA},
        "INVALID_PAGE_TOKEN",
    ),
    Case(
        "billing-list-token-year-one",
        H1,
        B + "ListInvoices",
        lambda w: bpb.ListInvoicesRequest(page_token=token(["0001-01-01T00:00:00+01:00", "inv_" + "0" * 32])),
        bpb.ListInvoicesResponse,
        {IA},
        "INVALID_PAGE_TOKEN",
    ),
    Case(
        "billing-get-nul-invoice-id",
        H1,
        B + "GetInvoice",
        lambda w: bpb.GetInvoiceRequest(invoice_id="\x00"),
        bpb.Invoice,
        {NF},
        "INVOICE_NOT_FOUND",
    ),
    Case(
        "billing-void-nul-invoice-id",
        H1,
        B + "VoidInvoice",
        lambda w: bpb.VoidInvoiceRequest(invoice_id="\x00", reason="DUP"),
        bpb.Invoice,
        {NF},
        "INVOICE_NOT_FOUND",
    ),
    Case(
        "billing-acknowledge-nul-invoice-id",
        INS,
        B + "AcknowledgeInvoice",
        lambda w: bpb.AcknowledgeInvoiceRequest(invoice_id="\x00"),
        bpb.Invoice,
        {NF},
        "INVOICE_NOT_FOUND",
    ),
    Case(
        "billing-statement-no-period",
        H1,
        B + "GetStatement",
        lambda w: bpb.GetStatementRequest(counterparty_code="AIA"),
        bpb.Statement,
        {IA},
        "DATE_OUT_OF_RANGE",
    ),
    Case(
        "billing-statement-bad-date",
        H1,
        B + "GetStatement",
        lambda w: bpb.GetStatementRequest(
            counterparty_code="AIA",
            period_start=Date(year=2026, month=13, day=40),
            period_end=Date(year=2026, month=1, day=1),
        ),
        bpb.Statement,
        {IA},
        "DATE_OUT_OF_RANGE",
    ),
    Case(
        "billing-ack-unknown-invoice",
        INS,
        B + "AcknowledgeInvoice",
        lambda w: bpb.AcknowledgeInvoiceRequest(invoice_id=w.invoice_id or "inv_unknown"),
        bpb.Invoice,
        {NF},
    ),
    Case(
        "billing-void-unknown-invoice",
        H1,
        B + "VoidInvoice",
        lambda w: bpb.VoidInvoiceRequest(invoice_id="inv_unknown", reason="typo"),
        bpb.Invoice,
        {NF},
    ),
    Case(
        "billing-payment-no-date",
        INS,
        B + "PostPayment",
        lambda w: bpb.PostPaymentRequest(trace_no="T-1", total_satang=-5),
        bpb.Payment,
        {IA},
    ),
    Case(
        "billing-payment-negative",
        INS,
        B + "PostPayment",
        lambda w: bpb.PostPaymentRequest(
            trace_no="T-2", total_satang=-5, paid_at=Timestamp(seconds=int(time.time()))
        ),
        bpb.Payment,
        {IA},
    ),
    # AuditTrailService (read-only; own entries only).
    Case(
        "audit-checkpoint-oversized",
        H1,
        A + "GetAuditCheckpoint",
        lambda w: apb.GetAuditCheckpointRequest.FromString(_unknown_field(3 * MIB)),
        apb.AuditCheckpoint,
        {RE},
    ),
    Case(
        "audit-list-bad-tid",
        H1,
        A + "ListAuditEntries",
        lambda w: apb.ListAuditEntriesRequest(transaction_id="not a transaction id!"),
        apb.ListAuditEntriesResponse,
        {IA},
        "TRANSACTION_ID_INVALID",
    ),
    Case(
        "audit-list-page-too-big",
        INS,
        A + "ListAuditEntries",
        lambda w: apb.ListAuditEntriesRequest(max_entries=5000),
        apb.ListAuditEntriesResponse,
        {IA},
        "PAGE_INVALID",
    ),
    Case(
        "audit-proof-negative-leaf",
        H1,
        A + "GetAuditInclusionProof",
        lambda w: apb.GetAuditInclusionProofRequest(leaf_index=-1),
        apb.AuditInclusionProof,
        {IA},
        "LEAF_INDEX_INVALID",
    ),
    Case(
        "audit-consistency-zero",
        INS,
        A + "GetAuditConsistencyProof",
        lambda w: apb.GetAuditConsistencyProofRequest(first_size=0, second_size=0),
        apb.AuditConsistencyProof,
        {IA},
        "TREE_SIZE_INVALID",
    ),
]


# --- side effects and audit -------------------------------------------------------


async def snapshot(w: World) -> tuple[Any, ...]:
    conn = await w.stack.db()
    try:
        # Deliveries of claims older than the world are left out: the adapter
        # may store a push's row after the push (or after a router's re-hand-off
        # of an earlier test's claim), which no call here caused.
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM router.claims) AS claims,"
            " (SELECT count(*) FROM adapter.deliveries d JOIN router.claims c USING (transaction_id)"
            "  WHERE c.submitted_at > $2) AS deliveries,"
            " (SELECT array_agg(state || '@' || updated_at::text ORDER BY transaction_id)"
            "  FROM router.claims WHERE transaction_id = ANY($1::text[])) AS ours",
            [w.approved.transaction_id, w.open_pull.transaction_id],
            w.since,
        )
    finally:
        await conn.close()
    return tuple(row)


async def audit_size(w: World) -> int:
    resp = await w.audit.ListEntries(
        audit_log_pb2.ListEntriesRequest(start_index=0, max_entries=1), timeout=5
    )
    return int(resp.tree_size)


async def missing_from_audit(
    w: World, start: int, wanted: list[tuple[str, str, grpc.StatusCode, str]]
) -> list[tuple[str, str, grpc.StatusCode, str]]:
    """Polls the audit log (it tails Envoy's access log) until every refused call
    appears (by principal, route, code, reason); returns those still missing."""
    missing = list(wanted)
    key = pseudonym_key(b64url_decode(w.stack.stack.master_key))
    deadline = asyncio.get_running_loop().time() + 15
    while missing and asyncio.get_running_loop().time() < deadline:
        seen = set()
        index = start
        while True:
            resp = await w.audit.ListEntries(
                audit_log_pb2.ListEntriesRequest(start_index=index, max_entries=1000), timeout=5
            )
            for e in resp.entries:
                ev = e.event
                seen.add((ev.origin_principal, ev.route, ev.outcome_code, ev.outcome_reason))
            if not resp.entries or resp.next_start_index >= resp.tree_size:
                break
            index = resp.next_start_index
        missing = [
            (who, method, code, reason)
            for who, method, code, reason in missing
            if not any(
                o in (who, f"unverified:{pseudonym(key, who)}")
                and r == method
                and c == code.name
                and (not reason or rr == reason)
                for o, r, c, rr in seen
            )
        ]
        if missing:
            await asyncio.sleep(0.25)
    return missing


def _params() -> list[Any]:
    return [pytest.param(c, id=c.id) for c in CASES]


@pytest.mark.parametrize("case", _params())
async def test_bad_call_is_refused_without_side_effect(world: World, case: Case) -> None:
    before = await snapshot(world)
    request = case.request(world)
    creds = world.creds[case.who]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if case.stream:
            await raw_stream(creds, case.method, request, case.response)
        else:
            await raw_call(creds, case.method, request, case.response)
    code = err.value.code()
    assert code not in NEVER, (code, err.value.details())
    assert code in case.codes, (code, err.value.details())
    reason = ""
    if code != RE:  # the gateway's own size refusal may carry no ErrorInfo
        reason = reason_of(err.value)
        assert reason and reason.isupper()
        if case.reason:
            assert reason == case.reason
    assert await snapshot(world) == before
    world.refused.append((case.who, case.method, code, reason))


async def test_refused_calls_reach_the_audit_log(world: World) -> None:
    """Checked once for all the refused calls above (the log is fed by tailing
    Envoy's access log, about a second behind); makes one of its own so that it
    also stands alone."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw_call(
            world.creds[H2],
            C + "GetClaim",
            pb.GetClaimRequest(transaction_id=world.approved.transaction_id),
            pb.Claim,
        )
    world.refused.append((H2, C + "GetClaim", err.value.code(), reason_of(err.value)))
    missing = await missing_from_audit(world, world.audit_start, world.refused)
    assert not missing, f"{len(missing)} refused calls not in the audit log: {missing[:5]}"


async def test_page_size_above_max_is_clamped_not_refused(world: World) -> None:
    resp = await raw_call(
        world.creds[H1],
        C + "ListInsurers",
        pb.ListInsurersRequest(page_size=2**31 - 1),
        pb.ListInsurersResponse,
    )
    assert 0 < len(resp.insurers) <= 500
    claims = await raw_call(
        world.creds[H1], C + "ListClaims", pb.ListClaimsRequest(page_size=10**6), pb.ListClaimsResponse
    )
    assert 0 < len(claims.claims) <= 500


async def test_every_public_rpc_is_covered() -> None:
    assert public_methods() == {c.method for c in CASES}
