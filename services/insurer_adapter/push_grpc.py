"""§10.2 gRPC push: `iclaim.v1.InsurerEndpoint/ReceiveClaim` over TLS verified
against the insurer's registered CA (or the system roots), with the hub's
client certificate when the insurer asks for mTLS, signed per §10.1 over the
exact bytes sent. OK or ALREADY_EXISTS within the timeout means taken; an OK answer may carry
the insurer's decision (§10.6)."""

from __future__ import annotations

import asyncio
import hashlib

import grpc

from iclaim.limits import MAX_REQUEST_BYTES
from iclaim.v1 import insurer_endpoint_pb2
from iclaim_hub.common import tracing
from services.insurer_adapter import push_answer
from services.insurer_adapter.domain import GRPC_METHOD, MAX_ANSWER_BYTES, PushError, grpc_error
from services.insurer_adapter.model import Delivery, Endpoint, PushResult
from services.insurer_adapter.push_auth import signed_headers
from services.insurer_adapter.pushers import ClientIdentity, ClientPool, claim_delivery, unconfigured_identity

_TAKEN = frozenset({grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS})
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    # Bounded answers: at most a decision (§10.6).
    ("grpc.max_receive_message_length", MAX_ANSWER_BYTES),
    ("grpc.max_metadata_size", 16 * 1024),
    ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
    # An endpoint that comes back is reconnected within seconds, not after
    # gRPC's default backoff of up to two minutes (a probe would find the
    # channel still waiting). grpc.min_reconnect_backoff_ms stays at its
    # default: it is also the connect (and TLS handshake) timeout.
    ("grpc.initial_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 5000),
    # Our own retries, with fresh signatures, are the only ones.
    ("grpc.enable_retries", 0),
]


def _bytes(response: bytes) -> bytes:
    return response


class GrpcPusher:
    def __init__(self, timeout_s: float, identity: ClientIdentity | None) -> None:
        self._timeout_s = timeout_s
        self._identity = identity
        self._channels: ClientPool[grpc.aio.Channel] = ClientPool(self._close_channel, timeout_s + 1)

    @staticmethod
    async def _close_channel(channel: grpc.aio.Channel) -> None:
        await channel.close()

    def _channel(self, endpoint: Endpoint) -> grpc.aio.Channel:
        ca_digest = hashlib.sha256(endpoint.ca_pem.encode()).hexdigest() if endpoint.ca_pem else ""
        shape = (endpoint.target, ca_digest, endpoint.mtls)

        def build() -> grpc.aio.Channel:
            identity = self._identity if endpoint.mtls else None
            credentials = grpc.ssl_channel_credentials(
                root_certificates=endpoint.ca_pem.encode() if endpoint.ca_pem else None,
                private_key=identity.key_pem if identity else None,
                certificate_chain=identity.cert_pem if identity else None,
            )
            return grpc.aio.secure_channel(endpoint.target, credentials, options=_CHANNEL_OPTIONS)

        return self._channels.get(endpoint.insurer_code, shape, build)

    async def push(self, endpoint: Endpoint, delivery: Delivery) -> PushResult:
        refused = unconfigured_identity(endpoint, self._identity)
        if refused is not None or endpoint.key is None:
            return refused or PushResult(False, PushError.INTERNAL.value)
        # accepts_decision: this hub takes a decision in the answer (§10.6).
        body = insurer_endpoint_pb2.ReceiveClaimRequest(
            delivery=claim_delivery(delivery), accepts_decision=True
        ).SerializeToString()
        # traceparent is not signed: it only names the trace the insurer may continue.
        metadata = signed_headers(endpoint.key, GRPC_METHOD, body) + tracing.outgoing_headers()
        try:
            channel = self._channel(endpoint)
        except (ValueError, TypeError):  # a target gRPC cannot parse
            return PushResult(False, PushError.ENDPOINT_INVALID.value)
        try:
            # Raw bytes in: the signature covers exactly what goes on the wire.
            call = channel.unary_unary(GRPC_METHOD, request_serializer=_bytes, response_deserializer=_bytes)
            async with asyncio.timeout(self._timeout_s + 1):  # should the deadline itself stall
                answer = await call(body, timeout=self._timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            if err.code() in _TAKEN:
                return PushResult(True)
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                # A channel that failed to connect waits out its reconnect backoff
                # and fails every call meanwhile without trying; the next attempt
                # (a circuit's probe, say) should really try the endpoint.
                self._channels.discard(endpoint.insurer_code, channel)
            return PushResult(False, grpc_error(err.code().name).value)
        except TimeoutError:
            return PushResult(False, PushError.GRPC_DEADLINE_EXCEEDED.value)
        except (ValueError, TypeError):  # a target gRPC cannot parse
            return PushResult(False, PushError.ENDPOINT_INVALID.value)
        return push_answer.from_grpc(answer, delivery.transaction_id)

    async def close(self) -> None:
        await self._channels.close()
