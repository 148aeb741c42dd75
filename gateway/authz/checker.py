"""One check, whatever carried it (gRPC Check or HTTP): the Authorizer's
decision with a lost database turned into a retryable refusal, the metrics and
the log line. The transports (service.py, http_check.py) only translate."""

from __future__ import annotations

import base64
import time
import urllib.parse
from collections.abc import Mapping

import structlog

from gateway.authz.authorizer import Allow, Authorizer, CheckInput, Deny
from gateway.authz.metrics import CHECK_LATENCY, DECISIONS
from iclaim_hub.common import tracing
from iclaim_hub.common.access_log import CLAIMED_CLIENT_KEY, REASON_HEADER
from iclaim_hub.common.db import database_unavailable, is_connection_lost
from iclaim.errors import build_status

log = structlog.get_logger("gateway.authz")

CHECK_SPAN = "envoy.service.auth.v3.Authorization/Check"
# Envoy's "the body it sent was cut at max_request_bytes" signal.
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
# The gRPC status of a refused call, as the headers of a trailers-only response.
DENIAL_GRPC_HEADERS = ("content-type", "grpc-status", "grpc-message", "grpc-status-details-bin")


def is_partial_body(headers: Mapping[str, str]) -> bool:
    return any(v.strip().lower() == "true" for v in headers.get(PARTIAL_BODY_HEADER, "").split(","))


def _grpc_message(text: str) -> str:
    # grpc-message is percent-encoded (gRPC over HTTP/2 spec).
    return urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def denial_headers(deny: Deny) -> dict[str, str]:
    """A refused call's whole answer, sent by Envoy as a trailers-only gRPC
    response so the client sees exactly the §7 code and ErrorInfo rather than
    Envoy's HTTP-to-gRPC mapping."""
    err = deny.error
    status = build_status(err.code, err.message, err.reason, err.metadata)
    details = base64.b64encode(status.SerializeToString()).decode("ascii").rstrip("=")
    return {
        "content-type": "application/grpc",
        "grpc-status": str(int(err.code)),
        "grpc-message": _grpc_message(err.message),
        "grpc-status-details-bin": details,
        REASON_HEADER: err.reason,
        **deny.headers,
    }


class Checker:
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def check(self, inp: CheckInput, request_id: str) -> Allow | Deny:
        """`request_id` is Envoy's (UUID form only, else ""), for the log lines."""
        start = time.perf_counter()
        with (
            tracing.request_span(CHECK_SPAN, inp.headers),
            structlog.contextvars.bound_contextvars(**({"request_id": request_id} if request_id else {})),
        ):
            decision = await self._decide(inp)
            CHECK_LATENCY.observe(time.perf_counter() - start)
            self._record(inp, decision)
        return decision

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

    def _record(self, inp: CheckInput, decision: Allow | Deny) -> None:
        if isinstance(decision, Allow):
            DECISIONS.labels("allow", "OK").inc()
            log.debug("allow", rpc=inp.method, client=decision.principal)
            return
        DECISIONS.labels("deny", decision.error.reason).inc()
        # The path and the claimed client are the caller's text: hashes only.
        log.info(
            "deny",
            rpc=self._authorizer.route_of(inp.method),
            claimed_client=decision.log_fields.get(CLAIMED_CLIENT_KEY, ""),
            code=decision.error.code.name,
            reason=decision.error.reason,
        )
