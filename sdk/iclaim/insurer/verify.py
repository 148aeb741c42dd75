"""Checks that a push really comes from the clearinghouse (docs/protocol.md §10.1).

The hub signs each push with the scheme of §3: client `ICLAIM`, the insurer's
endpoint key, a fresh timestamp and nonce. The string-to-sign is built by the
same function (`iclaim.crypto.signing`) that clients use for gateway calls.
Checks, in order: metadata form, client, key, signature (constant time),
window (-300/+60 s), nonce seen once. A nonce is remembered only after the
signature verified, so nobody can burn nonces without the key.

Nonces live in a bounded in-memory cache for as long as their timestamp is in
the window. After a restart a replay inside the window is possible, but the
inbox deduplicates on transaction_id, so it can only repeat a delivery.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from iclaim.crypto import signing
from iclaim.insurer.credentials import InsurerCredentials

HUB_CLIENT = "ICLAIM"
GRPC_METHOD = "/iclaim.v1.InsurerEndpoint/ReceiveClaim"
DEFAULT_WINDOW = (-300, 60)
# Enough for ~650 pushes a second sustained over the 5-minute window; beyond it
# pushes are refused (and retried by the hub) rather than replays let in.
DEFAULT_MAX_NONCES = 200_000

MALFORMED_METADATA = "MALFORMED_METADATA"
UNKNOWN_CLIENT = "UNKNOWN_CLIENT"
UNKNOWN_KEY = "UNKNOWN_KEY"
BAD_SIGNATURE = "BAD_SIGNATURE"
TIMESTAMP_SKEW = "TIMESTAMP_SKEW"
NONCE_REUSED = "NONCE_REUSED"
NONCE_CACHE_FULL = "NONCE_CACHE_FULL"


class PushRejected(Exception):
    """`reason` is one of the constants above; `server_time` is the verifier's
    clock (Unix seconds), for a sender whose clock is off."""

    def __init__(self, reason: str, server_time: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.server_time = server_time


def auth_headers(pairs: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The five auth headers from HTTP headers or gRPC metadata (names in any
    case). A header given twice is refused: which copy was signed is unclear."""
    out: dict[str, str] = {}
    wanted = set(signing.AUTH_HEADERS)
    for name, value in pairs:
        key = name.lower()
        if key not in wanted:
            continue
        if key in out or not isinstance(value, str):
            raise PushRejected(MALFORMED_METADATA, int(time.time()))
        out[key] = value
    return out


class _NonceCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires, nonce = heapq.heappop(self._heap)
            if self._expiry.get(nonce) == expires:
                del self._expiry[nonce]

    def seen(self, nonce: str, now: float) -> bool:
        self._purge(now)
        return nonce in self._expiry

    def full(self, now: float) -> bool:
        self._purge(now)
        return len(self._expiry) >= self.max_entries

    def add(self, nonce: str, expires: float) -> None:
        self._expiry[nonce] = expires
        heapq.heappush(self._heap, (expires, nonce))


class PushVerifier:
    """`keys` maps an endpoint key id to (insurer code, 32-byte secret)."""

    def __init__(
        self,
        keys: Mapping[str, tuple[str, bytes]],
        clock: Callable[[], float] = time.time,
        window: tuple[int, int] = DEFAULT_WINDOW,
        max_nonces: int = DEFAULT_MAX_NONCES,
    ) -> None:
        if window[0] > 0 or window[1] < 0:
            raise ValueError("window is (seconds behind <= 0, seconds ahead >= 0)")
        self._keys = dict(keys)
        self._clock = clock
        self._window = window
        self._nonces = _NonceCache(max_nonces)

    def verify(
        self,
        method_line: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        insurer_code: str | None = None,
    ) -> str:
        """The insurer code the push is for, or PushRejected."""
        return self.verify_any((method_line,), body, headers, insurer_code=insurer_code)

    def verify_any(
        self,
        method_lines: Sequence[str],
        body: bytes,
        headers: Mapping[str, str],
        *,
        insurer_code: str | None = None,
    ) -> str:
        """As `verify`, accepting a signature over any of `method_lines` (a
        webhook URL with a query string: with or without it). `insurer_code`
        restricts which insurer's keys count (a webhook path names one)."""
        now = self._clock()
        server_time = int(now)

        def reject(reason: str) -> PushRejected:
            return PushRejected(reason, server_time)

        try:
            meta = signing.parse_auth_metadata({k.lower(): v for k, v in headers.items()})
        except signing.MalformedMetadata:
            raise reject(MALFORMED_METADATA) from None
        if meta.client != HUB_CLIENT:
            raise reject(UNKNOWN_CLIENT)
        entry = self._keys.get(meta.key_id)
        if entry is None or (insurer_code is not None and entry[0] != insurer_code):
            raise reject(UNKNOWN_KEY)
        code, secret = entry
        ok = False
        for line in method_lines:
            ok |= signing.verify(secret, meta, line, body)
        if not ok:
            raise reject(BAD_SIGNATURE)
        behind, ahead = self._window
        if not now + behind <= meta.timestamp <= now + ahead:
            raise reject(TIMESTAMP_SKEW)
        if self._nonces.seen(meta.nonce, now):
            raise reject(NONCE_REUSED)
        if self._nonces.full(now):
            raise reject(NONCE_CACHE_FULL)
        # Remembered until its timestamp leaves the window (then it fails the
        # window check anyway).
        self._nonces.add(meta.nonce, max(meta.timestamp - behind, now) + 1)
        return code


def keys_of(insurers: Iterable[InsurerCredentials]) -> dict[str, tuple[str, bytes]]:
    """Endpoint keys of insurer credentials (those without one are skipped)."""
    out: dict[str, tuple[str, bytes]] = {}
    for ins in insurers:
        if ins.endpoint_key_id:
            if ins.endpoint_key_id in out:
                raise ValueError("two insurers share an endpoint key id")
            out[ins.endpoint_key_id] = (ins.code, ins.endpoint_secret)
    return out
