"""`iclaim.v1.InsurerEndpoint` served over TLS (docs/protocol.md §10.2).

The method is registered without a request deserializer, so the handler gets
the raw message bytes: the signature (§10.1) is over exactly those bytes and
is checked before anything is parsed. One server can host many insurers; the
`x-iclaim-key-id` of the push (the insurer's endpoint key) says which.

Answers: OK once the delivery is durably in the inbox (also for a duplicate:
"taken"), with the decision when the kit answers in the push (§10.6);
UNAUTHENTICATED with ErrorInfo reason (BAD_SIGNATURE, TIMESTAMP_SKEW
+ trailer x-iclaim-server-time, NONCE_REUSED, UNKNOWN_KEY, ...);
INVALID_ARGUMENT DELIVERY_INVALID; RESOURCE_EXHAUSTED (INBOX_FULL,
NONCE_CACHE_FULL); UNAVAILABLE (INBOX_UNAVAILABLE). Never UNKNOWN.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from google.protobuf.message import DecodeError

from iclaim.crypto.signing import H_SERVER_TIME
from iclaim.errors import IclaimError, InvalidArgument, Unavailable
from iclaim.insurer.credentials import InsurerCredentials
from iclaim.insurer.host import InsurerHost
from iclaim.insurer.intake import DELIVERY_INVALID, Intake
from iclaim.insurer.tls import grpc_server_credentials, server_tls
from iclaim.insurer.verify import GRPC_METHOD
from iclaim.limits import MAX_REQUEST_BYTES
from iclaim.v1 import insurer_endpoint_pb2 as epb

log = logging.getLogger("iclaim.insurer")

SERVICE = "iclaim.v1.InsurerEndpoint"
# Pushes handled at once; more wait in gRPC's queue up to this many, then
# RESOURCE_EXHAUSTED (the hub retries). The hub sends at most 16 per insurer.
MAX_CONCURRENT_RPCS = 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.max_send_message_length", 64 * 1024),  # the hub reads at most 64 KiB (§10.6)
    # Never share a port silently with another process.
    ("grpc.so_reuseport", 0),
]


async def _abort(
    context: grpc.aio.ServicerContext[bytes, epb.ReceiveClaimResponse], err: IclaimError
) -> None:
    trailing: list[tuple[str, str | bytes]] = [
        ("grpc-status-details-bin", err.to_status().SerializeToString())
    ]
    if "server_time" in err.metadata:
        trailing.append((H_SERVER_TIME, err.metadata["server_time"]))
    await context.abort(grpc.StatusCode[err.code.name], err.message, trailing_metadata=tuple(trailing))


class ReceiveClaim:
    """The unary-unary behaviour: bytes in, verified, stored, OK out."""

    def __init__(self, intake: Intake) -> None:
        self._intake = intake

    async def receive(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, epb.ReceiveClaimResponse]
    ) -> epb.ReceiveClaimResponse:
        try:
            code = self._intake.verify((GRPC_METHOD,), request, context.invocation_metadata() or ())
            try:
                received = epb.ReceiveClaimRequest.FromString(request)
            except DecodeError:
                raise InvalidArgument(
                    "request is not a ReceiveClaimRequest", reason=DELIVERY_INVALID
                ) from None
            _, decision = await self._intake.take(
                code, received.delivery, accepts_decision=received.accepts_decision
            )
        except IclaimError as err:
            await _abort(context, err)
        except Exception as exc:  # noqa: BLE001 (a bug must be retryable for the hub, never UNKNOWN)
            log.warning("insurer kit: ReceiveClaim failed (%s)", type(exc).__name__)
            await _abort(context, Unavailable("receiver error", reason="RECEIVER_ERROR"))
        return epb.ReceiveClaimResponse(decision=decision)


def endpoint_handler(intake: Intake) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ReceiveClaim": grpc.unary_unary_rpc_method_handler(
                ReceiveClaim(intake).receive,  # a coroutine function, as grpc.aio requires
                request_deserializer=None,  # raw bytes: verify before parsing
                response_serializer=epb.ReceiveClaimResponse.SerializeToString,
            )
        },
    )


async def start_grpc(
    host: InsurerHost, insurers: Sequence[InsurerCredentials], addr: str
) -> tuple[grpc.aio.Server, int]:
    """Starts a TLS gRPC server for `insurers` (all served by `host`) on `addr`
    (HOST:PORT; port 0 picks one). Returns the server and its port."""
    creds = grpc_server_credentials(server_tls(insurers))
    server = grpc.aio.server(options=SERVER_OPTIONS, maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
    server.add_generic_rpc_handlers((endpoint_handler(host.intake(insurers)),))
    port = server.add_secure_port(addr, creds)
    await server.start()
    return server, port
