"""AdminService (internal, docs/protocol.md §11): thin proto in/out over the
admin use cases, behind a bearer token.

Served on the adapter's internal port only; the gateway never routes it. The
token is never stored or logged here: only its SHA-256, compared in constant
time with the SHA-256 of what the caller sent."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import grpc

from iclaim.crypto.signing import b64url
from iclaim.errors import Unauthenticated
from iclaim_hub.common.config import ConfigError
from iclaim_hub.common.fields import copy_fields
from iclaim_hub.internal.v1 import admin_pb2 as pb
from iclaim_hub.internal.v1 import admin_pb2_grpc
from services.insurer_adapter.admin_usecases import (
    AdminRegistry,
    DeliveryAdmin,
    DeliveryOps,
    DeliveryView,
    Enrolled,
    InsurerChange,
    NewHospital,
    NewInsurer,
    RegistryAdmin,
    RegistryView,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdminService"].full_name
AUTHORIZATION = "authorization"
_BEARER = "Bearer "
MIN_TOKEN_CHARS = 32
MAX_TOKEN_CHARS = 512

_Context = grpc.aio.ServicerContext[Any, Any]


def admin_token_digest(token: str) -> bytes:
    """The SHA-256 the servicer compares against (for the service's config):
    a token of 32-512 visible ASCII characters, so a short or pasted-with-a-
    newline token fails at start-up rather than at the first call."""
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or not all("!" <= c <= "~" for c in token):
        raise ConfigError(
            f"ICLAIM_ADMIN_TOKEN must be {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} visible ASCII characters"
        )
    return hashlib.sha256(token.encode("ascii")).digest()


class BearerAuth:
    """`authorization: Bearer <token>`, checked by digest in constant time."""

    def __init__(self, token_sha256: bytes) -> None:
        if len(token_sha256) != hashlib.sha256().digest_size:
            raise ValueError("token_sha256 must be a SHA-256 digest (32 bytes)")
        self._digest = token_sha256

    def check(self, context: _Context) -> None:
        sent = b""
        for key, value in context.invocation_metadata() or ():
            if key == AUTHORIZATION and isinstance(value, str) and value.startswith(_BEARER):
                sent = value[len(_BEARER) :].encode("utf-8", "surrogatepass")
                break
        # Digests of equal length: the comparison time says nothing about the token.
        if not hmac.compare_digest(hashlib.sha256(sent).digest(), self._digest) or not sent:
            raise Unauthenticated("admin token missing or wrong", reason="ADMIN_TOKEN_INVALID")


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, registry: AdminRegistry, deliveries: DeliveryAdmin, token_sha256: bytes) -> None:
        self._auth = BearerAuth(token_sha256)
        self._registry = RegistryAdmin(registry)
        self._deliveries = DeliveryOps(deliveries)

    async def AddInsurer(self, request: pb.AddInsurerRequest, context: _Context) -> pb.AddInsurerResponse:
        self._auth.check(context)
        enrolled = await self._registry.add_insurer(copy_fields(NewInsurer, request))
        return pb.AddInsurerResponse(
            code=enrolled.code,
            key_id=enrolled.key_id,
            secret=b64url(enrolled.secret),
            endpoint_key_id=enrolled.endpoint_key_id,
            endpoint_secret=b64url(enrolled.endpoint_secret) if enrolled.endpoint_secret else "",
        )

    async def SetInsurer(self, request: pb.SetInsurerRequest, context: _Context) -> pb.RegistryEntry:
        self._auth.check(context)

        def given(name: str) -> Any:
            return getattr(request, name) if request.HasField(name) else None

        view = await self._registry.set_insurer(
            InsurerChange(
                code=request.code,
                available=given("available"),
                endpoint=given("endpoint"),
                endpoint_ca_pem=given("endpoint_ca_pem"),
                delivery=given("delivery"),
                endpoint_mtls=given("endpoint_mtls"),
            )
        )
        return _entry(view)

    async def RotateEndpointKey(
        self, request: pb.RotateEndpointKeyRequest, context: _Context
    ) -> pb.EndpointKeyResponse:
        self._auth.check(context)
        key = await self._registry.rotate_endpoint_key(request.code)
        return pb.EndpointKeyResponse(endpoint_key_id=key.key_id, endpoint_secret=b64url(key.secret))

    async def AddHospital(self, request: pb.AddHospitalRequest, context: _Context) -> pb.AddHospitalResponse:
        self._auth.check(context)
        enrolled: Enrolled = await self._registry.add_hospital(
            NewHospital(request.code, request.display_name, request.encryption_public_jwk)
        )
        return pb.AddHospitalResponse(
            code=enrolled.code, key_id=enrolled.key_id, secret=b64url(enrolled.secret)
        )

    async def GetRegistryEntry(
        self, request: pb.GetRegistryEntryRequest, context: _Context
    ) -> pb.RegistryEntry:
        self._auth.check(context)
        return _entry(await self._registry.entry(request.code))

    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: _Context
    ) -> pb.ListDeliveriesResponse:
        self._auth.check(context)
        rows = await self._deliveries.list(request.insurer_code, request.state, request.limit)
        return pb.ListDeliveriesResponse(deliveries=_deliveries(rows))

    async def RedriveDeliveries(
        self, request: pb.RedriveDeliveriesRequest, context: _Context
    ) -> pb.RedriveDeliveriesResponse:
        self._auth.check(context)
        redriven = await self._deliveries.redrive(list(request.transaction_ids))
        return pb.RedriveDeliveriesResponse(redriven=list(redriven))


def _entry(v: RegistryView) -> pb.RegistryEntry:
    return copy_fields(
        pb.RegistryEntry, v, endpoint_secret=b64url(v.endpoint_secret) if v.endpoint_secret else ""
    )


def _deliveries(rows: Sequence[DeliveryView]) -> list[pb.Delivery]:
    out = []
    for r in rows:
        d = pb.Delivery(
            transaction_id=r.transaction_id,
            insurer_code=r.insurer_code,
            attempts=r.attempts,
            last_error=r.last_error or "",
            state=r.state,
        )
        if r.next_attempt_at is not None:
            d.next_attempt_at.FromDatetime(r.next_attempt_at.astimezone(UTC))
        out.append(d)
    return out
