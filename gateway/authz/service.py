"""envoy.service.auth.v3.Authorization servicer: Envoy's ext_authz over gRPC,
adapting its CheckRequest to the Checker and the decision back to a
CheckResponse (a denial carries the whole gRPC answer, checker.denial_headers).
The gateway's Envoy uses the HTTP form (http_check.py); this one serves
proxies configured for gRPC (ICLAIM_AUTHZ_PROTOCOL=grpc).
"""

from __future__ import annotations

from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from gateway.authz import clientcert
from gateway.authz.authorizer import Allow, CheckInput, Deny
from gateway.authz.checker import Checker, denial_headers, is_partial_body
from iclaim_hub.common.grpc_tracing import request_id

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


def allow_response(allow: Allow) -> external_auth_pb2.CheckResponse:
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[_header(k, v) for k, v in allow.headers.items()]
        ),
    )


def deny_response(deny: Deny) -> external_auth_pb2.CheckResponse:
    # Envoy logs these (access log), not the caller's own values.
    metadata = struct_pb2.Struct()
    metadata.update(deny.log_fields)
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=deny.error.reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.OK),
            headers=[_header(k, v) for k, v in denial_headers(deny).items()],
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
        partial_body=is_partial_body(headers),
    )


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, checker: Checker) -> None:
        self._checker = checker

    async def Check(  # noqa: N802 (generated name)
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        decision = await self._checker.check(
            check_input(request), request_id(request.attributes.request.http.id)
        )
        return allow_response(decision) if isinstance(decision, Allow) else deny_response(decision)
