"""Client interceptors that sign every call (PROTOCOL.md §3), keep the clock
offset the gateway reports, and retry retryable failures with fresh signatures."""
from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

import grpc

from iclaim.crypto import signing

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Clock skew: the gateway names its time on timestamp rejections.
SKEW_REASON_CODE = grpc.StatusCode.UNAUTHENTICATED


class Clock:
    """Local time corrected by the offset the server last reported."""

    def __init__(self) -> None:
        self.offset = 0

    def now(self) -> int:
        return int(time.time()) + self.offset

    def learn(self, trailing: Any) -> bool:
        for key, value in trailing or ():
            if key == signing.H_SERVER_TIME and isinstance(value, str) and value.isdigit():
                new = int(value) - int(time.time())
                changed = abs(new - self.offset) > 1
                self.offset = new
                return changed
        return False


def _method(details: grpc.aio.ClientCallDetails) -> str:
    m = details.method
    return m.decode() if isinstance(m, bytes) else m


class _Signer:
    def __init__(
        self, code: str, key_id: str, secret: bytes, clock: Clock, max_attempts: int = 4
    ) -> None:
        self.code, self.key_id, self.secret = code, key_id, secret
        self.clock = clock
        self.max_attempts = max_attempts

    def sign(self, details: grpc.aio.ClientCallDetails, request: Any) -> grpc.aio.ClientCallDetails:
        body = request.SerializeToString()
        ts = self.clock.now()
        nonce = secrets.token_urlsafe(24)
        signature = signing.sign(self.secret, self.code, self.key_id, _method(details), ts, nonce, body)
        md = [
            (k, v) for k, v in (details.metadata or ()) if not k.startswith("x-iclaim-")
        ] + [
            (signing.H_CLIENT, self.code),
            (signing.H_KEY_ID, self.key_id),
            (signing.H_TIMESTAMP, str(ts)),
            (signing.H_NONCE, nonce),
            (signing.H_SIGNATURE, signature),
        ]
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=grpc.aio.Metadata(*md),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))


class SigningUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, signer: _Signer) -> None:
        self._s = signer

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        attempt = 0
        while True:
            call = await continuation(self._s.sign(details, request), request)
            code = await call.code()
            if code == grpc.StatusCode.OK or attempt + 1 >= self._s.max_attempts:
                return call
            trailing = await call.trailing_metadata()
            skew_fixed = code == SKEW_REASON_CODE and self._s.clock.learn(trailing)
            if code not in RETRYABLE and not skew_fixed:
                return call
            attempt += 1
            if not skew_fixed:
                await _backoff(attempt)


class SigningUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, signer: _Signer) -> None:
        self._s = signer

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._s.sign(details, request), request)


def signing_interceptors(
    code: str, key_id: str, secret: bytes, clock: Clock | None = None
) -> list[grpc.aio.ClientInterceptor]:
    signer = _Signer(code, key_id, secret, clock or Clock())
    return [SigningUnaryUnary(signer), SigningUnaryStream(signer)]
