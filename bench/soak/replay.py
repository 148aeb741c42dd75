"""Replays captured signed requests byte for byte through Envoy: each must be
refused. Captures come from the soak's own clients (wire.Tap): SubmitClaim and
GetClaim of the hospitals, PostDecision of an insurer re-posting a decision
already recorded (a no-op the contract allows, so it is a real accepted call).

Outcomes of a replay:
- refused: NONCE_REPLAYED, NONCE_STORE_RECOVERING (after a Redis flush) or
  TIMESTAMP_SKEW (older than the window);
- unanswered: the gateway could not decide (its auth service or store is being
  killed, rate limit): kept and replayed again later;
- accepted: anything else, i.e. OK or an answer of a service behind the gateway.
An unanswered replay may have been admitted and then failed behind the gateway
(a service or PostgreSQL down), and its later re-send refused as a replay of
itself: so the verdicts are checked against the access log too, where the
gateway marks each admitted request with a keyed hash of its client and nonce
(checks.replays_admitted)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import grpc

from bench.soak.wire import Captured, has_status_details
from iclaim.client.signer import _error_info
from iclaim.crypto import signing
from iclaim.limits import CLIENT_OPTIONS

REFUSED = frozenset({"NONCE_REPLAYED", "NONCE_STORE_RECOVERING", "TIMESTAMP_SKEW"})
# The gateway could not check at all: try the same bytes again later.
UNDECIDED = frozenset(
    {"", "NONCE_STORE_UNAVAILABLE", "REGISTRY_UNAVAILABLE", "RATE_LIMITER_UNAVAILABLE",
     "DATABASE_UNAVAILABLE", "RATE_LIMITED"}
)  # fmt: skip
POOL = 400
FRESH_S = 240.0  # prefer captures the timestamp window still admits (300 s)
CALL_TIMEOUT_S = 10.0


def classify(code: grpc.StatusCode, reason: str, details: bool) -> str:
    """'refused', 'unanswered' or 'accepted' (see the module's docstring)."""
    if code == grpc.StatusCode.OK:
        return "accepted"
    if reason in REFUSED and code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE):
        return "refused"
    transient = (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    if code in transient and reason in UNDECIDED:
        return "unanswered"
    if code == grpc.StatusCode.INTERNAL and not details:
        return "unanswered"  # Envoy reset the stream (its upstream was killed)
    return "accepted"


class Replayer:
    def __init__(self, gateway: str, ca_cert: Path, rng: random.Random) -> None:
        self._channel = grpc.aio.secure_channel(
            gateway, grpc.ssl_channel_credentials(ca_cert.read_bytes()), options=CLIENT_OPTIONS
        )
        self._rng = rng
        self._pool: list[Captured] = []
        self._again: list[Captured] = []  # unanswered: sent again until the gateway decides
        self.captured: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()  # "refused NONCE_REPLAYED", ...
        self.accepted: list[str] = []  # what got through, for the report
        # (client, nonce) of every capture replayed: the access log's check that
        # no verdict above missed an admission (checks.replays_admitted).
        self.replayed: dict[tuple[str, str], str] = {}  # -> method name

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def refused(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k.startswith("refused"))

    @property
    def unanswered_left(self) -> int:
        return len(self._again)

    def capture(self, c: Captured) -> None:
        self.captured[c.method.rsplit("/", 1)[-1]] += 1
        if len(self._pool) < POOL:
            self._pool.append(c)
        else:
            self._pool[self._rng.randrange(POOL)] = c

    def _pick(self) -> Captured | None:
        if not self._pool:
            return None
        fresh = [c for c in self._pool if time.time() - c.at < FRESH_S]
        return self._rng.choice(fresh or self._pool)

    async def replay(self, c: Captured) -> str:
        md = dict(c.metadata)
        self.replayed[md.get(signing.H_CLIENT, ""), md.get(signing.H_NONCE, "")] = c.method.rsplit("/", 1)[-1]
        # No serializers: bytes in, bytes out, sent exactly as captured.
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(c.method)
        try:
            await call(c.body, metadata=c.metadata, timeout=CALL_TIMEOUT_S)
            code, reason, details = grpc.StatusCode.OK, "", True
        except grpc.aio.AioRpcError as err:
            trailing = err.trailing_metadata()
            code, reason, details = err.code(), _error_info(trailing)[0], has_status_details(trailing)
        verdict = classify(code, reason, details)
        name = c.method.rsplit("/", 1)[-1]
        self.outcomes[f"{verdict} {name} {code.name} {reason}".rstrip()] += 1
        if verdict == "unanswered" and len(self._again) < POOL:
            self._again.append(c)
        if verdict == "accepted":
            self.accepted.append(f"{name} captured {time.time() - c.at:.0f} s before: {code.name} {reason}")
        return verdict

    async def burst(self, n: int) -> None:
        """`n` replays at once (the chaos driver calls this right after each event)."""
        picks = [c for c in (self._pick() for _ in range(n)) if c is not None]
        await asyncio.gather(*(self.replay(c) for c in picks))

    async def settle(self) -> None:
        """At the end, on a settled system: every replay still unanswered, once more."""
        again, self._again = self._again, []
        await asyncio.gather(*(self.replay(c) for c in again))

    async def run(self, stop: asyncio.Event) -> None:
        """Replays at random times until `stop`."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self._rng.uniform(0.3, 2.0))
            except TimeoutError:
                c = self._again.pop(0) if self._again else self._pick()
                if c is not None:
                    await self.replay(c)

    async def close(self) -> None:
        await self._channel.close()
