"""The §3 decision for one call: who is calling, may they, is it fresh.

No transport code here; service.py adapts Envoy's CheckRequest to CheckInput
and the result back to a CheckResponse.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Protocol

from gateway.authz import frame, messages, policy, replay
from gateway.authz.keys import KeyLookup
from iclaim_hub.common.access_log import (
    CLAIMED_CLIENT_KEY,
    ENVELOPE_SHA_HEADER,
    PRINCIPAL_HEADER,
    REQUEST_HASH_HEADER,
    ROLE_HEADER,
    ROUTE_HASH_KEY,
    TRANSACTION_HEADER,
    UNKNOWN_ROUTE,
    pseudonym,
    request_pseudonym,
)
from iclaim.errors import IclaimError, PermissionDenied, Unauthenticated, Unimplemented
from iclaim.crypto import signing
from iclaim_hub.registry.model import SigningKey

# One message for unknown client, unknown key and wrong signature (no enumeration).
BAD_SIGNATURE_MESSAGE = "request signature is not valid"
# Verified against when the key is unknown, so every failure costs one HMAC.
_DUMMY_SECRET = os.urandom(signing.SECRET_BYTES)


class ReplayGuard(Protocol):
    """Admits a nonce once and, where rates are limited, takes one of the
    verified principal's tokens in the same call (gateway/authz/nonces.py)."""

    async def admit(self, client: str, nonce: str, timestamp: int, principal: str | None = None) -> None: ...


# Denials that tell the client the server's time so it can fix its clock or
# pick a timestamp the gateway will accept.
_TIME_HINT_REASONS = frozenset({"NONCE_STORE_RECOVERING"})


@dataclass(frozen=True)
class CheckInput:
    method: str
    headers: Mapping[str, str]  # lower-case names
    raw_body: bytes
    partial_body: bool = False
    # Principals a verified TLS client certificate names; None when the
    # connection presented no client certificate.
    cert_principals: frozenset[str] | None = None


@dataclass(frozen=True)
class Allow:
    principal: str
    role: str
    headers: dict[str, str]  # trusted headers for the upstream


@dataclass(frozen=True)
class Deny:
    error: IclaimError
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    # For the access log (Envoy dynamic metadata) and our own log line: keyed
    # hashes of the caller's claimed client and of an unknown path, never the values.
    log_fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Authorizer:
    keys: KeyLookup
    guard: ReplayGuard
    _: KW_ONLY
    clock: Callable[[], float] = time.time
    max_message_bytes: int = frame.MAX_MESSAGE_BYTES
    # The server passes the key derived from the master key (same hashes on
    # every replica); a random one still hides the values, only uncorrelated.
    pseudonym_key: bytes = field(default_factory=lambda: os.urandom(32), repr=False)

    async def check(self, req: CheckInput) -> Allow | Deny:
        decision = await self._decide(req)
        if isinstance(decision, Deny):
            return replace(decision, log_fields=self._log_fields(req))
        return decision

    def route_of(self, method: str) -> str:
        """The method as it may be logged: a public method, else a fixed token
        plus the path's keyed hash (a path is whatever the caller wrote)."""
        if method in policy.ALLOWED_ROLES:
            return method
        return f"{UNKNOWN_ROUTE}:{pseudonym(self.pseudonym_key, method)}"

    def _log_fields(self, req: CheckInput) -> dict[str, str]:
        out: dict[str, str] = {}
        if req.method not in policy.ALLOWED_ROLES:
            out[ROUTE_HASH_KEY] = pseudonym(self.pseudonym_key, req.method)
        claimed = req.headers.get(signing.H_CLIENT)
        if claimed:
            # Unverified: whatever the caller wrote, well-formed or not.
            out[CLAIMED_CLIENT_KEY] = pseudonym(self.pseudonym_key, claimed)
        return out

    async def _decide(self, req: CheckInput) -> Allow | Deny:
        try:
            return await self._check(req)
        except _Skew as skew:
            return Deny(
                Unauthenticated(skew.message, reason="TIMESTAMP_SKEW"),
                {signing.H_SERVER_TIME: str(skew.server_time)},
            )
        except IclaimError as err:
            if err.reason in _TIME_HINT_REASONS:
                return Deny(err, {signing.H_SERVER_TIME: str(int(self.clock()))})
            return Deny(err)

    async def _check(self, req: CheckInput) -> Allow:
        if req.method not in policy.ALLOWED_ROLES:
            raise Unimplemented("unknown method", reason="UNKNOWN_METHOD")
        try:
            meta = signing.parse_auth_metadata(dict(req.headers))
        except signing.MalformedMetadata as exc:
            raise Unauthenticated(
                f"authentication metadata invalid: {exc}", reason="MALFORMED_METADATA"
            ) from None
        body = frame.message_bytes(
            req.raw_body, partial=req.partial_body, max_message_bytes=self.max_message_bytes
        )
        now = self.clock()
        problem = replay.skew_problem(meta.timestamp, now)
        if problem is not None:
            raise _Skew(problem, int(now))

        key = await self.keys.signing_key(meta.client, meta.key_id)
        ok = signing.verify(key.secret if key else _DUMMY_SECRET, meta, req.method, body)
        if key is None or not ok:
            raise Unauthenticated(BAD_SIGNATURE_MESSAGE, reason="BAD_SIGNATURE")
        if key.suspended:
            raise PermissionDenied("principal is suspended", reason="PRINCIPAL_SUSPENDED")
        _check_client_cert(key, req.cert_principals)
        if not policy.may_call(key.role, req.method):
            raise PermissionDenied(f"a {key.role} may not call {req.method}", reason="WRONG_ROLE")
        derived = messages.derive(req.method, body)
        # Last, and one Redis call: the nonce, and the rate token of the
        # verified principal (a forgery never spends the victim's budget).
        await self.guard.admit(meta.client, meta.nonce, meta.timestamp, key.principal_code)

        headers = {
            PRINCIPAL_HEADER: key.principal_code,
            ROLE_HEADER: key.role,
            REQUEST_HASH_HEADER: request_pseudonym(self.pseudonym_key, meta.client, meta.nonce),
        }
        if derived.transaction_id:
            headers[TRANSACTION_HEADER] = derived.transaction_id
        if derived.envelope_sha256:
            headers[ENVELOPE_SHA_HEADER] = derived.envelope_sha256
        return Allow(key.principal_code, key.role, headers)


def _check_client_cert(key: SigningKey, cert_principals: frozenset[str] | None) -> None:
    """A client certificate, when presented, must name the signing principal;
    a principal flagged require_mtls must present one."""
    if cert_principals is None:
        if getattr(key, "require_mtls", False):
            raise PermissionDenied(
                "this principal must connect with its TLS client certificate",
                reason="CLIENT_CERT_REQUIRED",
            )
        return
    if key.principal_code not in cert_principals:
        raise PermissionDenied(
            "the TLS client certificate does not belong to the signing principal",
            reason="CLIENT_CERT_MISMATCH",
        )


class _Skew(Exception):
    def __init__(self, message: str, server_time: int) -> None:
        super().__init__(message)
        self.message = message
        self.server_time = server_time
