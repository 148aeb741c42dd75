"""HospitalClient.watch_claim re-opens its stream by the unary calls' rules: a
TIMESTAMP_SKEW teaches the client the server's clock and is retried at once,
a nonce-store recovery waits for its retry_not_before, a bad signature is not
retried, and running out of time is the TimeoutError the docstring promises.
Stand-in stubs; no server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from iclaim.client.credentials import Credentials
from iclaim.client.hospital import HospitalClient
from iclaim.crypto import signing
from iclaim.v1 import claim_service_pb2 as pb

CREDS = Credentials("127.0.0.1:9", None, "10670", "k1", b"\x01" * 32, {})


def refused(
    code: grpc.StatusCode, reason: str, *extra: tuple[str, str | bytes], **info: str
) -> grpc.aio.AioRpcError:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="iclaim.v1", metadata=info))
    status = status_pb2.Status(code=code.value[0], message=reason, details=[detail])
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()), *extra)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=reason)


class Streams:
    """Each WatchClaim call: the next script, a list of claims then maybe an error."""

    def __init__(self, *scripts: list[Any]) -> None:
        self._scripts = list(scripts)
        self.opened = 0

    def __call__(self, request: Any, timeout: float) -> AsyncIterator[pb.Claim]:
        self.opened += 1
        script = self._scripts.pop(0)

        async def stream() -> AsyncIterator[pb.Claim]:
            for item in script:
                if isinstance(item, BaseException):
                    raise item
                yield item

        return stream()


RECEIVED = pb.Claim(transaction_id="txn_1", state=pb.CLAIM_STATE_RECEIVED)
APPROVED = pb.Claim(transaction_id="txn_1", state=pb.CLAIM_STATE_APPROVED)


async def _watch(client: HospitalClient, timeout_s: float = 5.0) -> list[int]:
    return [c.state async for c in client.watch_claim("txn_1", timeout_s=timeout_s)]


async def test_a_skewed_clock_is_learned_and_the_watch_reopened() -> None:
    ahead = str(int(time.time()) + 600)
    skew = refused(grpc.StatusCode.UNAUTHENTICATED, "TIMESTAMP_SKEW", (signing.H_SERVER_TIME, ahead))
    async with HospitalClient(CREDS) as client:
        client.stub.WatchClaim = Streams([skew], [RECEIVED, APPROVED])  # type: ignore[method-assign]
        assert await _watch(client) == [pb.CLAIM_STATE_RECEIVED, pb.CLAIM_STATE_APPROVED]
        assert abs(client.clock.offset - 600) <= 1


async def test_a_recovering_nonce_store_is_waited_for_by_its_floor() -> None:
    floor = str(int(time.time()) + 57)  # acceptable at once: a short wait, not a blind backoff
    recovering = refused(grpc.StatusCode.UNAVAILABLE, "NONCE_STORE_RECOVERING", retry_not_before=floor)
    async with HospitalClient(CREDS) as client:
        client.stub.WatchClaim = Streams([RECEIVED, recovering], [APPROVED])  # type: ignore[method-assign]
        started = time.monotonic()
        assert await _watch(client) == [pb.CLAIM_STATE_RECEIVED, pb.CLAIM_STATE_APPROVED]
        assert time.monotonic() - started < 2.0
        assert client.clock.floor == int(floor)


async def test_a_bad_signature_is_not_retried() -> None:
    bad = refused(grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE")
    async with HospitalClient(CREDS) as client:
        streams = Streams([bad], [APPROVED])
        client.stub.WatchClaim = streams  # type: ignore[method-assign]
        with pytest.raises(grpc.aio.AioRpcError):
            await _watch(client)
        assert streams.opened == 1


async def test_running_out_of_time_is_a_timeout_error() -> None:
    late = grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="deadline"
    )
    async with HospitalClient(CREDS) as client:
        client.stub.WatchClaim = Streams([RECEIVED, late])  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):
            await _watch(client, timeout_s=0.5)
