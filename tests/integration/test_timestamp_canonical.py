"""x-iclaim-timestamp is accepted only in its canonical decimal form (§3):
through the real gateway, a timestamp with leading zeros is MALFORMED_METADATA,
however it was signed, never BAD_SIGNATURE nor accepted."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import grpc
import pytest

from iclaim.crypto import signing
from iclaim.v1 import claim_service_pb2 as pb
from tests.support.stack import RunningStack
from tests.support.wire import reason_of, tls_channel

pytestmark = pytest.mark.integration

H1 = "10670"
GET_CLAIM = "/iclaim.v1.ClaimService/GetClaim"
BODY = pb.GetClaimRequest(transaction_id="txn_" + "0" * 28).SerializeToString()


def _signature(secret: bytes, client: str, key_id: str, timestamp_text: str, nonce: str) -> str:
    """§3's signature with the timestamp line exactly as given."""
    lines = [
        signing.SCHEME,
        client,
        key_id,
        GET_CLAIM,
        timestamp_text,
        nonce,
        hashlib.sha256(BODY).hexdigest(),
    ]
    return signing.b64url(hmac.new(secret, "\n".join(lines).encode(), hashlib.sha256).digest())


async def _get_claim(running_stack: RunningStack, sent: str, signed: str) -> grpc.aio.AioRpcError:
    creds = running_stack.creds(H1)
    nonce = secrets.token_urlsafe(18)
    md = (
        (signing.H_CLIENT, creds.code),
        (signing.H_KEY_ID, creds.key_id),
        (signing.H_TIMESTAMP, sent),
        (signing.H_NONCE, nonce),
        (signing.H_SIGNATURE, _signature(creds.secret, creds.code, creds.key_id, signed, nonce)),
    )
    async with tls_channel(creds) as ch:
        call = ch.unary_unary(GET_CLAIM, lambda b: b, lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(BODY, metadata=md, timeout=10)
    return err.value


async def test_canonical_timestamp_passes_the_gateway(running_stack: RunningStack) -> None:
    now = str(int(time.time()))
    err = await _get_claim(running_stack, now, now)
    # Past the gateway: the router answers for the (unknown) claim.
    assert (err.code(), reason_of(err)) == (grpc.StatusCode.NOT_FOUND, "CLAIM_NOT_FOUND")


@pytest.mark.parametrize("signed_over", ["as sent", "as parsed"])
async def test_leading_zeros_are_malformed_metadata(running_stack: RunningStack, signed_over: str) -> None:
    now = str(int(time.time()))
    sent = "00" + now
    err = await _get_claim(running_stack, sent, sent if signed_over == "as sent" else now)
    assert (err.code(), reason_of(err)) == (grpc.StatusCode.UNAUTHENTICATED, "MALFORMED_METADATA")
