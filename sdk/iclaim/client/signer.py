"""Client interceptors that sign every call (docs/protocol.md §3), keep the clock
offset the gateway reports, and retry retryable failures with fresh signatures.

Every attempt is signed anew (fresh nonce, current timestamp), so a retry is
never a replay. What a failure teaches:
- UNAUTHENTICATED TIMESTAMP_SKEW: the trailer x-iclaim-server-time gives the
  server's clock; learn the offset and retry at once.
- UNAVAILABLE NONCE_STORE_RECOVERING: the gateway lost its nonce store and
  accepts only timestamps >= ErrorInfo metadata retry_not_before (server time).
  The gateway accepts stamps up to 60 s ahead of its clock, so stamp that
  floor as soon as it is within reach (about 11 s after the loss: the floor is
  recovery + 70 s) instead of waiting out the whole refusal.
- RESOURCE_EXHAUSTED RATE_LIMITED: wait ErrorInfo metadata retry_after_ms.
- other UNAVAILABLE / RESOURCE_EXHAUSTED: exponential backoff with jitter,
  except RESOURCE_EXHAUSTED for a request too large (REQUEST_TOO_LARGE, or
  gRPC's own size limit without a reason): never retried.
Attempts and total time are bounded (and never outlast the call's deadline).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from iclaim.crypto import signing

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Clock skew: the gateway names its time on timestamp rejections.
SKEW_REASON_CODE = grpc.StatusCode.UNAUTHENTICATED
SKEW_REASON = "TIMESTAMP_SKEW"
RECOVERING_REASON = "NONCE_STORE_RECOVERING"
RATE_LIMITED_REASON = "RATE_LIMITED"
# RESOURCE_EXHAUSTED reasons that pass with time; any other (REQUEST_TOO_LARGE,
# none at all) would only repeat.
TRANSIENT_EXHAUSTION = frozenset({RATE_LIMITED_REASON, RECOVERING_REASON, "INBOX_FULL"})
# The gateway accepts timestamps up to 60 s ahead; keep a margin for our
# whole-second offset estimate and network time.
AHEAD_ALLOWANCE_S = 57
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_MAX_RETRY_S = 90.0
_MAX_BACKOFF_S = 2.0


def _monotonic() -> float:
    return time.monotonic()


async def _sleep(seconds: float) -> None:
    # The retry's own wait, so a test can stand in for it without replacing
    # asyncio.sleep for every task on the loop.
    await asyncio.sleep(seconds)


class Clock:
    """Local time corrected by the offset the server last reported, never
    below a floor the server asked for (after a nonce-store loss) while that
    floor is within the window the server accepts."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.offset = 0
        self.floor = 0
        self._now = now

    def server_now(self) -> int:
        return int(self._now()) + self.offset

    def now(self) -> int:
        t = self.server_now()
        if t < self.floor <= t + AHEAD_ALLOWANCE_S:
            return self.floor
        return t

    def wait_for_floor_s(self) -> float:
        """Seconds until the floor is within the accepted window (0 if it is)."""
        return max(0.0, float(self.floor - AHEAD_ALLOWANCE_S - self.server_now()))

    def learn(self, trailing: Any) -> bool:
        for key, value in trailing or ():
            if key == signing.H_SERVER_TIME and isinstance(value, str) and value.isdigit():
                new = int(value) - int(self._now())
                changed = abs(new - self.offset) > 1
                self.offset = new
                return changed
        return False


def _method(details: grpc.aio.ClientCallDetails) -> str:
    m = details.method
    return m.decode() if isinstance(m, bytes) else m


def _error_info(trailing: Any) -> tuple[str, dict[str, str]]:
    """(reason, metadata) of the ErrorInfo in grpc-status-details-bin, if any."""
    for key, value in trailing or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # noqa: BLE001 (a garbled trailer must not break the retry loop)
            return "", {}
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason, dict(info.metadata)
    for key, value in trailing or ():
        if key == "x-iclaim-reason" and isinstance(value, str):
            return value, {}
    return "", {}


class _Signer:
    def __init__(
        self,
        code: str,
        key_id: str,
        secret: bytes,
        clock: Clock,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_retry_s: float = DEFAULT_MAX_RETRY_S,
    ) -> None:
        self.code, self.key_id, self.secret = code, key_id, secret
        self.clock = clock
        self.max_attempts = max_attempts
        self.max_retry_s = max_retry_s

    def sign(
        self,
        details: grpc.aio.ClientCallDetails,
        request: Any,
        timeout: float | None = None,
    ) -> grpc.aio.ClientCallDetails:
        body = request.SerializeToString()
        ts = self.clock.now()
        nonce = secrets.token_urlsafe(24)
        signature = signing.sign(self.secret, self.code, self.key_id, _method(details), ts, nonce, body)
        md = [(k, v) for k, v in (details.metadata or ()) if not k.startswith("x-iclaim-")] + [
            (signing.H_CLIENT, self.code),
            (signing.H_KEY_ID, self.key_id),
            (signing.H_TIMESTAMP, str(ts)),
            (signing.H_NONCE, nonce),
            (signing.H_SIGNATURE, signature),
        ]
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout if timeout is None else timeout,
            metadata=grpc.aio.Metadata(*md),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


def _backoff_s(attempt: int) -> float:
    return float(min(_MAX_BACKOFF_S, 0.1 * 2**attempt) * (0.5 + random.random()))


def retry_delay_s(
    code: grpc.StatusCode,
    reason: str,
    info: dict[str, str],
    trailing: Any,
    clock: Clock,
    attempt: int,
) -> float | None:
    """How long to wait before the next attempt, or None when not retryable."""
    if code == SKEW_REASON_CODE:
        if reason == SKEW_REASON and clock.learn(trailing):
            return 0.0
        return None
    if code not in RETRYABLE:
        return None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and reason not in TRANSIENT_EXHAUSTION:
        # A request too large (the gateway's REQUEST_TOO_LARGE, or gRPC's own
        # message limit, which carries no reason) is refused again every time.
        return None
    if reason == RECOVERING_REASON:
        clock.learn(trailing)
        floor = info.get("retry_not_before", "")
        if floor.isdigit():
            clock.floor = max(clock.floor, int(floor))
            # Just past the point where the floor is acceptable, plus jitter
            # so recovering clients do not arrive all at once.
            return clock.wait_for_floor_s() + 0.2 + random.random() * 0.5
        return _backoff_s(attempt)
    if reason == RATE_LIMITED_REASON:
        after = info.get("retry_after_ms", "")
        if after.isdigit():
            return int(after) / 1000 * (1 + random.random() * 0.2)
    return _backoff_s(attempt)


class _SignsCalls:
    """Each interceptor signs with the one signer its channel was given."""

    def __init__(self, signer: _Signer) -> None:
        self._s = signer


class SigningUnaryUnary(_SignsCalls, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        budget = self._s.max_retry_s
        if details.timeout is not None:
            budget = min(budget, details.timeout)
        deadline = _monotonic() + budget
        attempt = 0
        while True:
            remaining = deadline - _monotonic()
            timeout = None if details.timeout is None else max(0.05, remaining)
            call = await continuation(self._s.sign(details, request, timeout), request)
            code = await call.code()
            attempt += 1
            if code == grpc.StatusCode.OK or attempt >= self._s.max_attempts:
                return call
            trailing = await call.trailing_metadata()
            reason, info = _error_info(trailing)
            delay = retry_delay_s(code, reason, info, trailing, self._s.clock, attempt)
            if delay is None or _monotonic() + delay >= deadline:
                return call
            if delay > 0:
                await _sleep(delay)


class SigningUnaryStream(_SignsCalls, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        # A stream cannot be retried transparently once items flowed; callers
        # (e.g. HospitalClient.watch) re-open it, and each open is signed anew.
        return await continuation(self._s.sign(details, request), request)


def signing_interceptors(
    code: str,
    key_id: str,
    secret: bytes,
    clock: Clock | None = None,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    max_retry_s: float = DEFAULT_MAX_RETRY_S,
) -> list[grpc.aio.ClientInterceptor]:
    signer = _Signer(code, key_id, secret, clock or Clock(), max_attempts, max_retry_s)
    return [SigningUnaryUnary(signer), SigningUnaryStream(signer)]
