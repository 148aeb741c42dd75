"""§3's x-iclaim-timestamp: only the canonical decimal form parses, so the
string-to-sign (built from the parsed value) is always the text the client sent."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.authz.authorizer import Authorizer, CheckInput, Deny
from iclaim.crypto import signing
from iclaim.errors import Code, Unauthenticated
from iclaim_hub.registry.model import SigningKey
from iclaim.v1 import claim_service_pb2

NOW = 1_700_000_000
SECRET = b"\x01" * 32
GET = "/iclaim.v1.ClaimService/GetClaim"
NONCE = "nnnnnnnnnnnnnnnn"


def headers(timestamp: str) -> dict[str, str]:
    return {
        signing.H_CLIENT: "10670",
        signing.H_KEY_ID: "k1",
        signing.H_TIMESTAMP: timestamp,
        signing.H_NONCE: NONCE,
        signing.H_SIGNATURE: "A" * 43,
    }


@pytest.mark.parametrize("text", ["0", "1", "9", "10", "1700000000", "999999999999"])
def test_canonical_timestamps_parse(text: str) -> None:
    assert signing.parse_auth_metadata(headers(text)).timestamp == int(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00",
        "01",
        "01700000000",
        "001700000000",  # 12 digits: within the length, still not canonical
        "1000000000000",  # 13 digits
        "+1700000000",
        "-1",
        " 1700000000",
        "1700000000 ",
        "1700000000\n",
        "1_700_000_000",
        "1.7e9",
        "0x6553f100",
        "\uff11\uff17",  # fullwidth digits: int() would take them
        "\u0661\u0667",  # Arabic-Indic digits
    ],
)
def test_other_forms_are_malformed(text: str) -> None:
    with pytest.raises(signing.MalformedMetadata) as err:
        signing.parse_auth_metadata(headers(text))
    assert err.value.header == signing.H_TIMESTAMP


@given(st.text(alphabet="0123456789+- ", max_size=14))
def test_whatever_parses_is_signed_as_sent(text: str) -> None:
    try:
        meta = signing.parse_auth_metadata(headers(text))
    except signing.MalformedMetadata:
        return
    assert str(meta.timestamp) == text


class _Keys:
    async def signing_key(self, code: str, key_id: str) -> SigningKey | None:
        return SigningKey("10670", "k1", SECRET, "hospital", False)


class _Nonces:
    async def admit(self, client: str, nonce: str, timestamp: int, principal: str | None = None) -> None:
        raise Unauthenticated("replay", reason="NONCE_REPLAYED")  # never reached here


async def test_leading_zeros_signed_as_sent_are_malformed_not_bad_signature() -> None:
    body = claim_service_pb2.GetClaimRequest(transaction_id="T1").SerializeToString()
    sent = "00" + str(NOW)
    lines = [signing.SCHEME, "10670", "k1", GET, sent, NONCE, hashlib.sha256(body).hexdigest()]
    md = headers(sent)
    md[signing.H_SIGNATURE] = signing.b64url(
        hmac.new(SECRET, "\n".join(lines).encode(), hashlib.sha256).digest()
    )
    az = Authorizer(_Keys(), _Nonces(), clock=lambda: float(NOW))
    decision = await az.check(CheckInput(GET, md, b"\x00" + len(body).to_bytes(4, "big") + body))
    assert isinstance(decision, Deny)
    assert (decision.error.code, decision.error.reason) == (Code.UNAUTHENTICATED, "MALFORMED_METADATA")
