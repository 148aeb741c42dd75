"""The limits of one batched call between hub services (DeliverClaims, router
-> adapter; RecordPushAnswers, adapter -> router), which its caller keeps to
and its server enforces: in one place so the two cannot drift."""

from __future__ import annotations

from collections.abc import Sequence

from iclaim.crypto.envelope import MAX_ENVELOPE_BYTES

MAX_CLAIMS_PER_CALL = 200
# Envelopes a call carries at most: with their other fields well inside every
# service's request limit (iclaim.limits.MAX_REQUEST_BYTES). One claim alone
# always fits: an envelope is at most this size.
MAX_ENVELOPE_BYTES_PER_CALL = MAX_ENVELOPE_BYTES


def take_within(sizes: Sequence[int], max_items: int, max_bytes: int) -> int:
    """How many items, from the front, one call carries given their envelopes'
    sizes: at least one, at most `max_items` and `max_bytes` of envelopes."""
    total = 0
    for count, size in enumerate(sizes[:max_items]):
        total += size
        if total > max_bytes and count > 0:
            return count
    return min(len(sizes), max_items)
