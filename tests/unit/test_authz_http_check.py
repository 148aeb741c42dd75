"""The authz's HTTP check (Envoy's ext_authz HTTP protocol) over a real socket:
what a request is turned into (path, headers, body, certificate) and what the
decision is turned back into (200 with the trusted headers; 403 with the
client's whole gRPC answer and the access log's hashes; 500 for a bug, which
Envoy answers as UNAVAILABLE). The Authorizer is the real one; only its key
lookup and nonce store are stubs. Through the real Envoy: tests/service/
test_gateway_envoy.py and test_gateway_hardening_envoy.py."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from google.rpc import status_pb2

from gateway.authz import frame
from gateway.authz.authorizer import Authorizer
from gateway.authz.checker import Checker
from gateway.authz.http_check import MAX_BODY_BYTES, client_cert_pem, http_server
from gateway.authz.keys import CachedKeys
from gateway.tls import ensure_dev_client_ca, issue_dev_client_cert
from iclaim.crypto import signing
from iclaim.errors import error_info_of
from iclaim.v1 import claim_service_pb2
from iclaim_hub.common.db import is_connection_lost
from iclaim_hub.registry.model import SigningKey

GET_CLAIM = "/iclaim.v1.ClaimService/GetClaim"
BODY = claim_service_pb2.GetClaimRequest(transaction_id="T-1").SerializeToString()
FRAMED = b"\x00" + len(BODY).to_bytes(4, "big") + BODY
SECRET = b"\x03" * 32
HOSPITAL = "10670"


class Keys:
    def __init__(self) -> None:
        self.error: BaseException | None = None

    async def signing_key(self, code: str, key_id: str) -> SigningKey | None:
        if self.error is not None:
            raise self.error
        return SigningKey(HOSPITAL, "k1", SECRET, "hospital", False) if code == HOSPITAL else None


class Guard:
    async def admit(self, client: str, nonce: str, timestamp: int, principal: str | None = None) -> None:
        return None


def _signed(client: str = HOSPITAL, secret: bytes = SECRET) -> dict[str, str]:
    ts, nonce = int(time.time()), secrets.token_urlsafe(18)
    return {
        signing.H_CLIENT: client,
        signing.H_KEY_ID: "k1",
        signing.H_TIMESTAMP: str(ts),
        signing.H_NONCE: nonce,
        signing.H_SIGNATURE: signing.sign(secret, client, "k1", GET_CLAIM, ts, nonce, BODY),
    }


class Check:
    def __init__(self, base: str, session: aiohttp.ClientSession, keys: Keys) -> None:
        self.base, self.session, self.keys = base, session, keys

    async def post(
        self, headers: dict[str, str] | list[tuple[str, str]], body: bytes = FRAMED, path: str = GET_CLAIM
    ) -> tuple[int, dict[str, str]]:
        async with self.session.post(self.base + path, headers=headers, data=body) as resp:
            await resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}


@pytest.fixture
async def check() -> AsyncIterator[Check]:
    keys = Keys()
    authorizer = Authorizer(CachedKeys(keys, is_outage=is_connection_lost, ttl_s=0), Guard())
    server = http_server(Checker(authorizer))
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield Check(f"http://127.0.0.1:{port}", session, keys)
    listener.close()
    await server.shutdown(1)


def _refusal(headers: dict[str, str]) -> tuple[str, str]:
    raw = headers["grpc-status-details-bin"]
    info = error_info_of(status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4))))
    assert info is not None and info.reason == headers["x-iclaim-reason"]
    assert headers["content-type"] == "application/grpc"
    return headers["grpc-status"], info.reason


async def test_a_signed_call_is_allowed_with_the_trusted_headers(check: Check) -> None:
    status, headers = await check.post(_signed())
    assert status == 200
    assert headers["x-iclaim-principal"] == HOSPITAL and headers["x-iclaim-role"] == "hospital"


async def test_a_forgery_gets_the_grpc_answer_and_only_hashes(check: Check) -> None:
    claimed = "10671"  # well-formed, not registered
    status, headers = await check.post(_signed(secret=b"\x04" * 32) | {signing.H_CLIENT: claimed})
    assert status == 403  # never 5xx: Envoy would call that an outage
    assert _refusal(headers) == ("16", "BAD_SIGNATURE")
    assert urllib.parse.unquote(headers["grpc-message"]) == "request signature is not valid"
    # The claimed client reaches the access log as a keyed hash, never as written.
    assert headers["claimed_client"].startswith("h:")
    assert not [v for v in headers.values() if claimed in v]


async def test_an_unknown_path_is_refused_with_its_hash(check: Check) -> None:
    status, headers = await check.post(_signed(), path="/no.Such/Method")
    assert status == 403 and _refusal(headers) == ("12", "UNKNOWN_METHOD")
    assert headers["route_hash"].startswith("h:")


async def test_a_repeated_header_is_joined_as_envoy_joins_it(check: Check) -> None:
    # Two signatures: one value "a,b", which is no signature (as over gRPC).
    headers = list(_signed().items()) + [(signing.H_SIGNATURE, "x")]
    status, answer = await check.post(headers)
    assert status == 403 and answer["x-iclaim-reason"] in {"MALFORMED_METADATA", "BAD_SIGNATURE"}


async def test_a_cut_body_is_refused_as_too_large(check: Check) -> None:
    status, headers = await check.post(_signed() | {"x-envoy-auth-partial-body": "true"})
    assert status == 403 and _refusal(headers) == ("8", "REQUEST_TOO_LARGE")


async def test_a_body_above_the_limit_is_refused_before_it_is_read(check: Check) -> None:
    assert MAX_BODY_BYTES >= frame.MAX_MESSAGE_BYTES + frame.PREFIX_BYTES + 1  # what Envoy may send
    status, _ = await check.post(_signed(), body=b"\x00" * (MAX_BODY_BYTES + 1))
    assert status == 413


async def test_the_certificate_envoy_sets_is_bound_to_the_signer(check: Check, tmp_path: Path) -> None:
    ensure_dev_client_ca(tmp_path)
    other = issue_dev_client_cert(tmp_path, "10999")
    xfcc = 'Hash=ab;Cert="' + urllib.parse.quote(other.cert.read_text()) + '";Subject=""'
    status, headers = await check.post(_signed() | {"x-forwarded-client-cert": xfcc})
    assert status == 403 and _refusal(headers) == ("7", "CLIENT_CERT_MISMATCH")
    mine = issue_dev_client_cert(tmp_path, HOSPITAL)
    xfcc = 'Hash=ab;Cert="' + urllib.parse.quote(mine.cert.read_text()) + '"'
    assert (await check.post(_signed() | {"x-forwarded-client-cert": xfcc}))[0] == 200


def test_the_certificate_is_read_from_the_cert_element_only() -> None:
    assert client_cert_pem('Hash=ab;Cert="PEM%0A";Subject="CN=x"') == "PEM%0A"
    assert client_cert_pem('By=spiffe://x;Hash=ab;Cert="P"') == "P"
    assert client_cert_pem('Hash=ab;Subject="Cert=\\"no\\""') == ""
    assert client_cert_pem("") == ""


async def test_a_lost_database_is_a_retryable_refusal(check: Check, tmp_path: Path) -> None:
    import asyncpg

    try:
        await asyncpg.connect(f"postgresql://x@/db?host={tmp_path}", timeout=5)
    except OSError as exc:
        check.keys.error = exc
    status, headers = await check.post(_signed())
    assert status == 403 and _refusal(headers) == ("14", "REGISTRY_UNAVAILABLE")


async def test_a_bug_is_a_500_and_the_server_goes_on(check: Check) -> None:
    check.keys.error = ZeroDivisionError("bug")
    status, headers = await check.post(_signed())
    assert status == 500 and "grpc-status" not in headers
    check.keys.error = None
    assert (await check.post(_signed()))[0] == 200
