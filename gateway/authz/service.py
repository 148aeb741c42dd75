"""envoy.service.auth.v3.Authorization servicer: adapts Envoy's CheckRequest
to the Authorizer and its decision back to a CheckResponse.

A denial is sent as a complete gRPC trailers-only response (HTTP 200,
grpc-status, grpc-message, grpc-status-details-bin) so the client sees exactly
the §7 code and ErrorInfo rather than Envoy's HTTP-to-gRPC mapping.
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from gateway.authz import clientcert
from gateway.authz.authorizer import Allow, Authorizer, CheckInput, Deny
from gateway.authz.metrics import CHECK_LATENCY, DECISIONS
from iclaim_hub.common.access_log import CLAIMED_CLIENT_KEY, REASON_HEADER
from iclaim_hub.common import tracing
from iclaim_hub.common.db import database_unavailable, is_connection_lost
from iclaim_hub.common.grpc_tracing import request_id
from iclaim.errors import build_status

log = structlog.get_logger("gateway.authz")

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
CHECK_SPAN = "envoy.service.auth.v3.Authorization/Check"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


def _grpc_message(text: str) -> str:
    # grpc-message is percent-encoded (gRPC over HTTP/2 spec).
    return urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def allow_response(allow: Allow) -> external_auth_pb2.CheckResponse:
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[_header(k, v) for k, v in allow.headers.items()]
        ),
    )


def deny_response(deny: Deny) -> external_auth_pb2.CheckResponse:
    err = deny.error
    status = build_status(err.code, err.message, err.reason, err.metadata)
    details = base64.b64encode(status.SerializeToString()).decode("ascii").rstrip("=")
    headers = {
        "content-type": "application/grpc",
        "grpc-status": str(int(err.code)),
        "grpc-message": _grpc_message(err.message),
        "grpc-status-details-bin": details,
        REASON_HEADER: err.reason,
        **deny.headers,
    }
    # Envoy logs these (access log), not the caller's own values.
    metadata = struct_pb2.Struct()
    metadata.update(deny.log_fields)
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=err.reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.OK),
            headers=[_header(k, v) for k, v in headers.items()],
        ),
        dynamic_metadata=metadata,
    )


def check_input(request: external_auth_pb2.CheckRequest) -> CheckInput:
    http = request.attributes.request.http
    headers = {k.lower(): v for k, v in http.headers.items()}
    # Set by Envoy only for a certificate it verified against the client CA.
    pem = request.attributes.source.certificate
    return CheckInput(
        cert_principals=clientcert.principals_of(pem) if pem else None,
        method=http.path,
        headers=headers,
        raw_body=http.raw_body,
        partial_body=any(
            v.strip().lower() == "true" for v in headers.get(PARTIAL_BODY_HEADER, "").split(",")
        ),
    )


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def _decide(self, inp: CheckInput) -> Allow | Deny:
        try:
            return await self._authorizer.check(inp)
        except Exception as exc:
            # The stores name their own outages (REGISTRY_UNAVAILABLE, ...); a
            # database lost anywhere else is refused the same way, as retryable.
            if not is_connection_lost(exc):
                raise
            log.warning("database_unavailable", error=type(exc).__name__)
            return Deny(database_unavailable())

    async def Check(  # noqa: N802 (generated name)
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        start = time.perf_counter()
        inp = check_input(request)
        # Envoy's request id (UUID form only) and the client's trace for this check's log lines.
        rid = request_id(request.attributes.request.http.id)
        with (
            tracing.request_span(CHECK_SPAN, inp.headers),
            structlog.contextvars.bound_contextvars(**({"request_id": rid} if rid else {})),
        ):
            return await self._check(inp, start)

    async def _check(self, inp: CheckInput, start: float) -> external_auth_pb2.CheckResponse:
        decision = await self._decide(inp)
        CHECK_LATENCY.observe(time.perf_counter() - start)
        if isinstance(decision, Allow):
            DECISIONS.labels("allow", "OK").inc()
            log.debug("allow", rpc=inp.method, client=decision.principal)
            return allow_response(decision)
        DECISIONS.labels("deny", decision.error.reason).inc()
        # The path and the claimed client are the caller's text: hashes only.
        log.info(
            "deny",
            rpc=self._authorizer.route_of(inp.method),
            claimed_client=decision.log_fields.get(CLAIMED_CLIENT_KEY, ""),
            code=decision.error.code.name,
            reason=decision.error.reason,
        )
        return deny_response(decision)
