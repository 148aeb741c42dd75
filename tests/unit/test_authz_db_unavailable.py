"""The gateway's ext_authz Check when its database goes away: a refusal Envoy
passes on as UNAVAILABLE with a reason (retryable), never a failed check that
hides the cause; a bug is still a bug. Driver errors are real asyncpg ones (a
connection to a socket that does not exist)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import asyncpg
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.rpc import status_pb2

from gateway.authz.authorizer import Authorizer
from gateway.authz.checker import Checker
from gateway.authz.keys import CachedKeys
from gateway.authz.service import AuthorizationService
from iclaim_hub.common.db import is_connection_lost
from iclaim.crypto import signing
from iclaim.errors import error_info_of
from iclaim.v1 import claim_service_pb2
from iclaim_hub.registry.model import SigningKey

GET_CLAIM = "/iclaim.v1.ClaimService/GetClaim"
BODY = claim_service_pb2.GetClaimRequest(transaction_id="T-1").SerializeToString()
SECRET = b"\x02" * 32
KEY = SigningKey("10670", "k1", SECRET, "hospital", False)


async def _lost_connection(tmp_path: Path) -> BaseException:
    """What asyncpg raises when the server is not there (stopped, restarting)."""
    try:
        await asyncpg.connect(f"postgresql://x@/db?host={tmp_path}", timeout=5)
    except OSError as exc:
        return exc
    raise AssertionError("expected the connection to fail")


class Keys:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error

    async def signing_key(self, code: str, key_id: str) -> SigningKey | None:
        if self.error is not None:
            raise self.error
        return KEY


class Guard:
    """A store on the Check path that does not name its own outages."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error

    async def admit(self, client: str, nonce: str, timestamp: int, principal: str | None = None) -> None:
        if self.error is not None:
            raise self.error


def _check_request() -> external_auth_pb2.CheckRequest:
    ts, nonce = int(time.time()), "n" * 16
    headers = {
        signing.H_CLIENT: "10670",
        signing.H_KEY_ID: "k1",
        signing.H_TIMESTAMP: str(ts),
        signing.H_NONCE: nonce,
        signing.H_SIGNATURE: signing.sign(SECRET, "10670", "k1", GET_CLAIM, ts, nonce, BODY),
    }
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        path=GET_CLAIM, method="POST", headers=headers, raw_body=b"\x00" + len(BODY).to_bytes(4, "big") + BODY
    )
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )


def _refusal(resp: external_auth_pb2.CheckResponse) -> tuple[str, str]:
    """(grpc-status, ErrorInfo reason) the client will see."""
    assert resp.HasField("denied_response")
    headers = {h.header.key: h.header.value for h in resp.denied_response.headers}
    raw = headers["grpc-status-details-bin"]
    info = error_info_of(status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4))))
    assert info is not None and info.reason == headers["x-iclaim-reason"]
    return headers["grpc-status"], info.reason


def _service(keys: Keys, guard: Guard) -> AuthorizationService:
    return AuthorizationService(
        Checker(Authorizer(CachedKeys(keys, is_outage=is_connection_lost, ttl_s=0), guard))
    )


async def test_a_lost_database_on_the_check_path_is_unavailable(tmp_path: Path) -> None:
    service = _service(Keys(), Guard(await _lost_connection(tmp_path)))
    resp = await service.Check(_check_request(), None)
    assert _refusal(resp) == ("14", "DATABASE_UNAVAILABLE")


async def test_a_registry_that_is_down_is_registry_unavailable(tmp_path: Path) -> None:
    service = _service(Keys(await _lost_connection(tmp_path)), Guard())
    resp = await service.Check(_check_request(), None)
    assert _refusal(resp) == ("14", "REGISTRY_UNAVAILABLE")


async def test_the_check_allows_again_once_the_database_is_back(tmp_path: Path) -> None:
    keys, guard = Keys(await _lost_connection(tmp_path)), Guard(await _lost_connection(tmp_path))
    service = _service(keys, guard)
    assert _refusal(await service.Check(_check_request(), None))[0] == "14"
    keys.error = guard.error = None
    assert (await service.Check(_check_request(), None)).HasField("ok_response")


async def test_a_bug_on_the_check_path_is_not_reported_as_an_outage() -> None:
    # The check fails (the interceptor logs a crash; Envoy fails closed with
    # UNAVAILABLE) instead of a retryable refusal that would hide it.
    service = _service(Keys(), Guard(ValueError("a bug")))
    with pytest.raises(ValueError):
        await service.Check(_check_request(), None)


async def test_a_bug_in_the_key_lookup_is_not_reported_as_an_outage() -> None:
    service = _service(Keys(ValueError("a bug")), Guard())
    with pytest.raises(ValueError):
        await service.Check(_check_request(), None)


async def test_a_key_lookup_that_times_out_is_registry_unavailable() -> None:
    service = _service(Keys(TimeoutError()), Guard())
    assert _refusal(await service.Check(_check_request(), None)) == ("14", "REGISTRY_UNAVAILABLE")
