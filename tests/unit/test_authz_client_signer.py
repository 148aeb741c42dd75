"""The client SDK's signing/retry interceptor (iclaim/client/signer.py) against
a scripted gateway: fresh signature per attempt, clock offset learning,
riding through a nonce-store loss, rate-limit hints, bounded attempts."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from iclaim.client import signer as signer_mod
from iclaim.client.signer import Clock, SigningUnaryUnary, _Signer
from iclaim.errors import Code, build_status
from iclaim.crypto import signing
from iclaim.v1 import claim_service_pb2

T0 = 1_800_000_000.0
METHOD = "/iclaim.v1.ClaimService/GetClaim"


class FakeCall:
    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str = "",
        meta: dict[str, str] | None = None,
        server_time: int | None = None,
    ) -> None:
        self._code = code
        trailing: list[tuple[str, Any]] = []
        if reason:
            status = build_status(Code[code.name], "x", reason, meta or {})
            trailing.append(("grpc-status-details-bin", status.SerializeToString()))
            trailing.append(("x-iclaim-reason", reason))
        if server_time is not None:
            trailing.append((signing.H_SERVER_TIME, str(server_time)))
        self._trailing = tuple(trailing)

    async def code(self) -> grpc.StatusCode:
        return self._code

    async def trailing_metadata(self) -> Any:
        return self._trailing


class Gateway:
    """Answers each attempt from a script; records the metadata each was signed with."""

    def __init__(self, script: list[FakeCall]) -> None:
        self.script = script
        self.seen: list[dict[str, str]] = []

    async def __call__(self, details: grpc.aio.ClientCallDetails, request: Any) -> FakeCall:
        md = dict(details.metadata)
        meta = signing.parse_auth_metadata(md)
        body = request.SerializeToString()
        assert signing.verify(b"\x01" * 32, meta, METHOD, body)
        self.seen.append(md)
        return self.script.pop(0)


@pytest.fixture
def clock_and_sleeps(monkeypatch: pytest.MonkeyPatch) -> tuple[Clock, list[float]]:
    now = [T0]
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    # Only the signer's wait: asyncio.sleep itself is shared with every task on
    # the session's loop (a portal server's tick spun on a no-op sleep and hung CI).
    monkeypatch.setattr(signer_mod, "_sleep", fake_sleep)
    monkeypatch.setattr(signer_mod, "_monotonic", lambda: now[0])
    return Clock(now=lambda: now[0]), sleeps


async def _run(clock: Clock, script: list[FakeCall], **kw: Any) -> tuple[Gateway, FakeCall]:
    gw = Gateway(script)
    interceptor = SigningUnaryUnary(_Signer("10670", "k1", b"\x01" * 32, clock, **kw))
    details = grpc.aio.ClientCallDetails(METHOD, 30.0, grpc.aio.Metadata(), None, None)
    call = await interceptor.intercept_unary_unary(
        gw, details, claim_service_pb2.GetClaimRequest(transaction_id="T")
    )
    return gw, call


OK = FakeCall(grpc.StatusCode.OK)


async def test_skew_refusal_teaches_the_offset_and_retries_at_once(clock_and_sleeps) -> None:
    clock, sleeps = clock_and_sleeps
    skew = FakeCall(grpc.StatusCode.UNAUTHENTICATED, "TIMESTAMP_SKEW", server_time=int(T0) + 900)
    gw, call = await _run(clock, [skew, OK])
    assert await call.code() == grpc.StatusCode.OK and sleeps == []
    first, second = gw.seen
    assert int(second[signing.H_TIMESTAMP]) - int(first[signing.H_TIMESTAMP]) == 900
    assert first[signing.H_NONCE] != second[signing.H_NONCE]


async def test_other_refusals_are_not_retried(clock_and_sleeps) -> None:
    clock, _ = clock_and_sleeps
    for reason, code in (
        ("NONCE_REPLAYED", grpc.StatusCode.UNAUTHENTICATED),
        ("WRONG_ROLE", grpc.StatusCode.PERMISSION_DENIED),
        ("BAD_SIGNATURE", grpc.StatusCode.UNAUTHENTICATED),
        # Too large: the same request is refused again, however long one waits.
        ("REQUEST_TOO_LARGE", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("", grpc.StatusCode.RESOURCE_EXHAUSTED),  # gRPC's own message limit
    ):
        gw, call = await _run(clock, [FakeCall(code, reason, server_time=int(T0) + 900), OK])
        assert await call.code() == code and len(gw.seen) == 1


async def test_nonce_store_recovery_stamps_the_floor_once_it_is_reachable(
    clock_and_sleeps,
) -> None:
    clock, sleeps = clock_and_sleeps
    floor = int(T0) + 61  # loss recovered at T0
    rec = FakeCall(
        grpc.StatusCode.UNAVAILABLE,
        "NONCE_STORE_RECOVERING",
        {"retry_not_before": str(floor)},
        server_time=int(T0),
    )
    gw, call = await _run(clock, [rec, OK])
    assert await call.code() == grpc.StatusCode.OK
    # Waited only until the floor is within the 60 s the gateway accepts ahead.
    assert 4 <= sum(sleeps) <= 5
    assert int(gw.seen[1][signing.H_TIMESTAMP]) == floor
    assert int(gw.seen[1][signing.H_TIMESTAMP]) - clock.server_now() <= 57


async def test_rate_limit_hint_is_honoured(clock_and_sleeps) -> None:
    clock, sleeps = clock_and_sleeps
    limited = FakeCall(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", {"retry_after_ms": "400"})
    gw, call = await _run(clock, [limited, limited, OK])
    assert await call.code() == grpc.StatusCode.OK and len(gw.seen) == 3
    assert all(0.4 <= s <= 0.48 for s in sleeps)
    assert len({md[signing.H_NONCE] for md in gw.seen}) == 3


async def test_attempts_and_time_are_bounded(clock_and_sleeps) -> None:
    clock, sleeps = clock_and_sleeps
    down = FakeCall(grpc.StatusCode.UNAVAILABLE, "NONCE_STORE_UNAVAILABLE")
    gw, call = await _run(clock, [down] * 20, max_attempts=5)
    assert await call.code() == grpc.StatusCode.UNAVAILABLE and len(gw.seen) == 5
    # A floor a long way off is not waited for beyond the call's deadline (30 s).
    far = FakeCall(
        grpc.StatusCode.UNAVAILABLE, "NONCE_STORE_RECOVERING", {"retry_not_before": str(int(T0) + 500)}
    )
    gw, call = await _run(clock, [far, OK])
    assert await call.code() == grpc.StatusCode.UNAVAILABLE and len(gw.seen) == 1
