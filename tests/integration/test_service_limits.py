"""One request limit (iclaim.limits.MAX_REQUEST_BYTES, the README's 1 MiB + 64 KiB)
everywhere: every service enforces it itself, not only Envoy; the gateway's auth
service receives Envoy's wrapping of a request of that size and refuses a larger
body with REQUEST_TOO_LARGE; the SDK sends nothing larger."""

from __future__ import annotations

import secrets
import time

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from gateway.authz.frame import MAX_CHECK_REQUEST_BYTES
from iclaim.client.hospital import HospitalClient
from iclaim.crypto import signing
from iclaim.limits import MAX_REQUEST_BYTES
from iclaim.v1 import claim_service_pb2 as pb
from iclaim_ops.devstack.stack import SERVICES
from tests.support.stack import RunningStack
from tests.support.wire import reason_of, tls_channel

pytestmark = pytest.mark.integration

H1 = "10670"
GET_CLAIM = "/iclaim.v1.ClaimService/GetClaim"
# What each server accepts: the request limit, except the auth service, whose
# requests are Envoy's CheckRequests wrapping a whole client request.
RECEIVE_LIMITS = {
    "audit_log": MAX_REQUEST_BYTES,
    "billing": MAX_REQUEST_BYTES,
    "claim_router": MAX_REQUEST_BYTES,
    "insurer_adapter": MAX_REQUEST_BYTES,
    "authz": MAX_CHECK_REQUEST_BYTES,
}
UNLIMITED_SEND = [("grpc.max_send_message_length", -1)]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def padding(size: int) -> bytes:
    """Exactly `size` bytes of protobuf: one length-delimited field 15 that no
    request message has, so every parser skips it."""
    for prefix in range(2, 7):
        n = size - prefix
        if n >= 0 and 1 + len(_varint(n)) == prefix:
            return b"\x7a" + _varint(n) + b"x" * n
    raise ValueError(f"no padding of {size} bytes")


def identity(b: bytes) -> bytes:
    return b


def test_padding_is_exact() -> None:
    for size in (2, 129, 16_385, MAX_REQUEST_BYTES, MAX_REQUEST_BYTES + 1, MAX_CHECK_REQUEST_BYTES + 1):
        assert len(padding(size)) == size


def test_every_service_has_a_known_receive_limit() -> None:
    assert {s.name for s in SERVICES if s.grpc_port_field} == set(RECEIVE_LIMITS)
    assert MAX_REQUEST_BYTES == 1024 * 1024 + 64 * 1024  # the README's number


@pytest.mark.parametrize("service", [s for s in SERVICES if s.grpc_port_field], ids=lambda s: s.name)
async def test_each_service_accepts_its_limit_and_refuses_one_byte_more(
    running_stack: RunningStack, service: object
) -> None:
    port = getattr(running_stack.stack.ports, service.grpc_port_field)  # type: ignore[attr-defined]
    limit = RECEIVE_LIMITS[service.name]  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=UNLIMITED_SEND) as ch:
        # Health ignores the unknown field: only the transport's limit decides.
        call = ch.unary_unary("/grpc.health.v1.Health/Check", identity, identity)
        assert await call(padding(limit), timeout=10) == b"\x08\x01"  # SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(padding(limit + 1), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _check_request(creds: object, body: bytes) -> external_auth_pb2.CheckRequest:
    ts, nonce = int(time.time()), secrets.token_urlsafe(18)
    code, key_id, secret = creds.code, creds.key_id, creds.secret  # type: ignore[attr-defined]
    headers = {
        signing.H_CLIENT: code,
        signing.H_KEY_ID: key_id,
        signing.H_TIMESTAMP: str(ts),
        signing.H_NONCE: nonce,
        signing.H_SIGNATURE: signing.sign(secret, code, key_id, GET_CLAIM, ts, nonce, body),
    }
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        path=GET_CLAIM,
        method="POST",
        headers=headers,
        raw_body=b"\x00" + len(body).to_bytes(4, "big") + body,
    )
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )


def _denial(resp: external_auth_pb2.CheckResponse) -> tuple[str, str] | None:
    """(grpc-status, x-iclaim-reason) of a denial; None when allowed."""
    if resp.HasField("ok_response"):
        return None
    headers = {h.header.key: h.header.value for h in resp.denied_response.headers}
    return headers["grpc-status"], headers["x-iclaim-reason"]


async def test_authz_allows_a_signed_body_at_the_limit_and_refuses_one_byte_more(
    running_stack: RunningStack,
) -> None:
    creds = running_stack.creds(H1)
    port = running_stack.stack.ports.authz
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=UNLIMITED_SEND) as ch:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)  # type: ignore[no-untyped-call]
        at_limit = await stub.Check(_check_request(creds, padding(MAX_REQUEST_BYTES)), timeout=10)
        assert _denial(at_limit) is None
        over = await stub.Check(_check_request(creds, padding(MAX_REQUEST_BYTES + 1)), timeout=10)
        assert _denial(over) == (str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]), "REQUEST_TOO_LARGE")


def _submit_of_size(envelope: str, claim_ref: str, size: int) -> pb.SubmitClaimRequest:
    base = pb.SubmitClaimRequest(
        claim_ref=claim_ref, insurer_code="AIA", billed_amount_satang=1_000, envelope=envelope
    ).SerializeToString()
    # Unknown fields survive parsing and re-serialization (the SDK signs those bytes).
    request = pb.SubmitClaimRequest.FromString(base + padding(size - len(base)))
    assert request.ByteSize() == size
    return request


async def test_a_claim_at_the_limit_goes_through_the_sdk_the_gateway_and_the_router(
    running_stack: RunningStack,
) -> None:
    async with HospitalClient(running_stack.creds(H1)) as client:
        ref = f"LIMIT-{secrets.token_hex(4)}"
        envelope = await client.seal_claim(b"{}", insurer_code="AIA", claim_ref=ref, amount_satang=1_000)
        resp = await client.stub.SubmitClaim(_submit_of_size(envelope, ref, MAX_REQUEST_BYTES), timeout=20)
        assert resp.claim.claim_ref == ref and resp.claim.transaction_id.startswith("txn_")


async def test_the_sdk_does_not_send_more_than_the_limit(running_stack: RunningStack) -> None:
    async with HospitalClient(running_stack.creds(H1)) as client:
        ref = f"LIMIT-{secrets.token_hex(4)}"
        envelope = await client.seal_claim(b"{}", insurer_code="AIA", claim_ref=ref, amount_satang=1_000)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.stub.SubmitClaim(_submit_of_size(envelope, ref, MAX_REQUEST_BYTES + 1), timeout=3)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Refused by the client's own channel: the gateway would have named a reason.
    trailers = dict(err.value.trailing_metadata() or ())
    assert "x-iclaim-reason" not in trailers, trailers


async def test_the_gateway_refuses_one_byte_over_the_limit(running_stack: RunningStack) -> None:
    creds = running_stack.creds(H1)
    body = padding(MAX_REQUEST_BYTES + 1)
    ts, nonce = int(time.time()), secrets.token_urlsafe(18)
    md = (
        (signing.H_CLIENT, creds.code),
        (signing.H_KEY_ID, creds.key_id),
        (signing.H_TIMESTAMP, str(ts)),
        (signing.H_NONCE, nonce),
        (
            signing.H_SIGNATURE,
            signing.sign(creds.secret, creds.code, creds.key_id, GET_CLAIM, ts, nonce, body),
        ),
    )
    async with tls_channel(creds) as ch:
        call = ch.unary_unary(GET_CLAIM, identity, identity)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(body, metadata=md, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(err.value) == "REQUEST_TOO_LARGE"
