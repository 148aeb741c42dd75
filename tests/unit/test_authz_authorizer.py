"""The §3 decision, with in-memory key and nonce stores (the Redis/PostgreSQL
ones are exercised in tests/service/test_gateway_*.py)."""

from __future__ import annotations

import hashlib
import re


import pytest

from gateway.authz.authorizer import BAD_SIGNATURE_MESSAGE, Allow, Authorizer, CheckInput, Deny
from iclaim.errors import Code, Unauthenticated
from iclaim.crypto import signing
from iclaim_hub.registry.model import SigningKey
from iclaim.v1 import claim_service_pb2

NOW = 1_700_000_000
SECRET = b"\x01" * 32
SUBMIT = "/iclaim.v1.ClaimService/SubmitClaim"
GET = "/iclaim.v1.ClaimService/GetClaim"


class Keys:
    def __init__(self, *keys: SigningKey) -> None:
        self.keys = {(k.principal_code, k.key_id): k for k in keys}

    async def signing_key(self, code: str, key_id: str) -> SigningKey | None:
        return self.keys.get((code, key_id))


class Nonces:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    async def admit(self, client: str, nonce: str, timestamp: int, principal: str | None = None) -> None:
        if (client, nonce) in self.seen:
            raise Unauthenticated("replay", reason="NONCE_REPLAYED")
        self.seen.add((client, nonce))


def authorizer(*keys: SigningKey) -> Authorizer:
    return Authorizer(Keys(*keys), Nonces(), clock=lambda: float(NOW))


HOSP = SigningKey("10670", "k1", SECRET, "hospital", False)


def request(
    method: str,
    body: bytes,
    *,
    secret: bytes = SECRET,
    client: str = "10670",
    key_id: str = "k1",
    ts: int = NOW,
    nonce: str = "nnnnnnnnnnnnnnnn",
) -> CheckInput:
    sig = signing.sign(secret, client, key_id, method, ts, nonce, body)
    headers = {
        "x-iclaim-client": client,
        "x-iclaim-key-id": key_id,
        "x-iclaim-timestamp": str(ts),
        "x-iclaim-nonce": nonce,
        "x-iclaim-signature": sig,
    }
    frame = b"\x00" + len(body).to_bytes(4, "big") + body
    return CheckInput(method, headers, frame)


async def test_spec_worked_example_passes_the_signature_check() -> None:
    # §3 vector: the signature is right, so the failure is the body not being a
    # SubmitClaimRequest, never BAD_SIGNATURE.
    req = request(SUBMIT, b"abc")
    assert req.headers["x-iclaim-signature"] == "G8gFAcd7_yqmsD_EAUr2Y0GdTJ9IreMVZE0Y5hxIAjs"
    decision = await authorizer(HOSP).check(req)
    assert isinstance(decision, Deny)
    assert decision.error.reason == "MALFORMED_REQUEST"


async def test_allow_sets_trusted_headers() -> None:
    body = claim_service_pb2.SubmitClaimRequest(claim_ref="c", envelope="a.b.c.d.e")
    decision = await authorizer(HOSP).check(request(SUBMIT, body.SerializeToString()))
    assert isinstance(decision, Allow)
    request_token = decision.headers.pop("x-iclaim-request")  # test_access_log_pdpa checks its value
    assert re.fullmatch(r"h:[0-9a-f]{32}", request_token)
    assert decision.headers == {
        "x-iclaim-principal": "10670",
        "x-iclaim-role": "hospital",
        "x-iclaim-envelope-sha256": hashlib.sha256(b"a.b.c.d.e").hexdigest(),
    }
    get = claim_service_pb2.GetClaimRequest(
        transaction_id="txn_019a2b3c4d5e6f708192a3b4c5d6"
    ).SerializeToString()
    decision = await authorizer(HOSP).check(request(GET, get))
    assert isinstance(decision, Allow)
    assert decision.headers["x-iclaim-transaction-id"] == "txn_019a2b3c4d5e6f708192a3b4c5d6"


async def test_unknown_client_key_and_bad_signature_are_indistinguishable() -> None:
    body = claim_service_pb2.GetClaimRequest(
        transaction_id="txn_019a2b3c4d5e6f708192a3b4c5d6"
    ).SerializeToString()
    az = authorizer(HOSP)
    outcomes = [
        await az.check(request(GET, body, secret=b"\x02" * 32)),
        await az.check(request(GET, body, client="10671")),
        await az.check(request(GET, body, key_id="k2")),
    ]
    for d in outcomes:
        assert isinstance(d, Deny)
        assert (d.error.code, d.error.reason, d.error.message) == (
            Code.UNAUTHENTICATED,
            "BAD_SIGNATURE",
            BAD_SIGNATURE_MESSAGE,
        )


async def test_skew_denial_carries_server_time() -> None:
    body = claim_service_pb2.GetClaimRequest(
        transaction_id="txn_019a2b3c4d5e6f708192a3b4c5d6"
    ).SerializeToString()
    d = await authorizer(HOSP).check(request(GET, body, ts=NOW - 301))
    assert isinstance(d, Deny) and d.error.reason == "TIMESTAMP_SKEW"
    assert d.headers == {"x-iclaim-server-time": str(NOW)}


@pytest.mark.parametrize(
    ("key", "method", "reason"),
    [
        (SigningKey("10670", "k1", SECRET, "hospital", True), GET, "PRINCIPAL_SUSPENDED"),
        (SigningKey("10670", "k1", SECRET, "insurer", False), GET, "WRONG_ROLE"),
        (HOSP, "/iclaim.v1.InsurerService/PullClaims", "WRONG_ROLE"),
    ],
)
async def test_permission_denials(key: SigningKey, method: str, reason: str) -> None:
    d = await authorizer(key).check(request(method, b""))
    assert isinstance(d, Deny)
    assert (d.error.code, d.error.reason) == (Code.PERMISSION_DENIED, reason)


async def test_denied_requests_do_not_burn_the_nonce() -> None:
    body = claim_service_pb2.GetClaimRequest(
        transaction_id="txn_019a2b3c4d5e6f708192a3b4c5d6"
    ).SerializeToString()
    az = authorizer(HOSP)
    assert isinstance(await az.check(request(GET, body, secret=b"\x02" * 32)), Deny)
    assert isinstance(await az.check(request(GET, body)), Allow)
    d = await az.check(request(GET, body))
    assert isinstance(d, Deny) and d.error.reason == "NONCE_REPLAYED"


async def test_unknown_method_is_unimplemented() -> None:
    d = await authorizer(HOSP).check(request("/iclaim.v1.ClaimService/Nope", b""))
    assert isinstance(d, Deny) and d.error.code == Code.UNIMPLEMENTED


# --- mutual TLS binding, rate limit hook, time hints (issue 3) -----------------------
def _with_cert(req: CheckInput, principals: frozenset[str] | None) -> CheckInput:
    return CheckInput(req.method, req.headers, req.raw_body, cert_principals=principals)


async def test_client_certificate_must_name_the_signing_principal() -> None:
    body = claim_service_pb2.GetClaimRequest(transaction_id="T").SerializeToString()
    a = authorizer(HOSP)
    ok = await a.check(_with_cert(request(GET, body, nonce="a" * 16), frozenset({"10670"})))
    assert isinstance(ok, Allow)
    d = await a.check(_with_cert(request(GET, body, nonce="b" * 16), frozenset({"10671"})))
    assert isinstance(d, Deny) and d.error.code == Code.PERMISSION_DENIED
    assert d.error.reason == "CLIENT_CERT_MISMATCH"
    d = await a.check(_with_cert(request(GET, body, nonce="c" * 16), frozenset()))
    assert isinstance(d, Deny) and d.error.reason == "CLIENT_CERT_MISMATCH"


async def test_principal_requiring_mtls_is_refused_without_a_certificate() -> None:
    from iclaim_hub.registry.store import GatewayKey

    key = GatewayKey("10670", "k1", SECRET, "hospital", False, True)
    body = claim_service_pb2.GetClaimRequest(transaction_id="T").SerializeToString()
    d = await authorizer(key).check(request(GET, body))
    assert isinstance(d, Deny) and d.error.code == Code.PERMISSION_DENIED
    assert d.error.reason == "CLIENT_CERT_REQUIRED"
    ok = await authorizer(key).check(_with_cert(request(GET, body), frozenset({"10670"})))
    assert isinstance(ok, Allow)


async def test_rate_limit_is_taken_for_the_verified_principal_only() -> None:
    from gateway.authz.ratelimit import rate_limited

    taken: list[str | None] = []

    class RatedNonces(Nonces):
        async def admit(self, client: str, nonce: str, timestamp: int, principal: str | None = None) -> None:
            taken.append(principal)
            if len(taken) > 1:
                raise rate_limited(250)
            await super().admit(client, nonce, timestamp, principal)

    a = Authorizer(Keys(HOSP), RatedNonces(), clock=lambda: float(NOW))
    body = claim_service_pb2.GetClaimRequest(transaction_id="T").SerializeToString()
    forged = await a.check(request(GET, body, secret=b"\x02" * 32, nonce="f" * 16))
    assert isinstance(forged, Deny) and forged.error.reason == "BAD_SIGNATURE"
    malformed = await a.check(request(GET, b"\xff\xff", nonce="m" * 16))
    assert isinstance(malformed, Deny) and malformed.error.reason == "MALFORMED_REQUEST"
    assert taken == []  # neither a forgery nor a call refused anyway spends the budget
    assert isinstance(await a.check(request(GET, body, nonce="a" * 16)), Allow)
    d = await a.check(request(GET, body, nonce="b" * 16))
    assert isinstance(d, Deny) and d.error.code == Code.RESOURCE_EXHAUSTED
    assert (d.error.reason, d.error.metadata) == ("RATE_LIMITED", {"retry_after_ms": "250"})
    assert taken == ["10670", "10670"]


async def test_recovering_denial_names_server_time_and_first_accepted_stamp() -> None:
    from gateway.authz.nonces import recovering
    from gateway.authz.replay import CLOCK_SKEW_MARGIN_S

    class Recovering:
        async def admit(self, client: str, nonce: str, timestamp: int, principal: str | None = None) -> None:
            raise recovering(NOW - 10)

    a = Authorizer(Keys(HOSP), Recovering(), clock=lambda: float(NOW))
    body = claim_service_pb2.GetClaimRequest(transaction_id="T").SerializeToString()
    d = await a.check(request(GET, body))
    assert isinstance(d, Deny) and d.error.code == Code.UNAVAILABLE
    assert d.error.metadata == {"retry_not_before": str(NOW - 10 + 60 + CLOCK_SKEW_MARGIN_S + 1)}
    assert d.headers == {"x-iclaim-server-time": str(NOW)}


@pytest.mark.parametrize(
    "txn", ["txn_" + "a" * 300_000, "txn_\r\nx-iclaim-role: insurer", "txn_\u0e01", "", "a b"]
)
async def test_unsafe_transaction_ids_pass_without_the_trusted_header(txn: str) -> None:
    # The router refuses them (INVALID_ARGUMENT); the gateway must not break the call.
    body = claim_service_pb2.GetClaimRequest(transaction_id=txn).SerializeToString()
    d = await authorizer(HOSP).check(request(GET, body))
    assert isinstance(d, Allow)
    assert "x-iclaim-transaction-id" not in d.headers
