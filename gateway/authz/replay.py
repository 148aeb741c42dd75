"""Pure rules of the §3 freshness checks: timestamp window, nonce lifetime and
what to do when the nonce store (Redis) may have been lost.

A lost store forgets which nonces were used. Any request accepted before the
loss carried a timestamp <= (the accepting replica's clock) + ACCEPT_AHEAD_S,
and that clock was at most CLOCK_SKEW_MARGIN_S ahead of the recovering
replica's (replicas disagree a little; a clock may step back), so refusing
every request stamped no later than recovery time + ACCEPT_AHEAD_S +
CLOCK_SKEW_MARGIN_S makes replays of them impossible, at the cost of at most
70 s of refusals. (Without the margin, a request stamped 60 s ahead by a
replica 1 s ahead could be replayed after a loss noticed by another; the
replay property test found it.)
"""

from __future__ import annotations

from enum import Enum

ACCEPT_BEHIND_S = 300
ACCEPT_AHEAD_S = 60
# Redis' clock may run a little ahead of ours; keep nonces a bit longer.
NONCE_TTL_MARGIN_S = 5
# How far gateway replicas' clocks may disagree, a step back included
# (NTP keeps them within milliseconds; a larger step is a fault to alert on).
CLOCK_SKEW_MARGIN_S = 10


def skew_problem(timestamp: int, now: float) -> str | None:
    """None when acceptable, else a message naming the skew."""
    skew = timestamp - now
    if skew > ACCEPT_AHEAD_S:
        return (
            f"timestamp is {skew:.0f} s ahead of server time"
            f" (allowed: {ACCEPT_BEHIND_S} s behind to {ACCEPT_AHEAD_S} s ahead)"
        )
    if -skew > ACCEPT_BEHIND_S:
        return (
            f"timestamp is {-skew:.0f} s behind server time"
            f" (allowed: {ACCEPT_BEHIND_S} s behind to {ACCEPT_AHEAD_S} s ahead)"
        )
    return None


def nonce_expires_at(timestamp: int) -> int:
    """Absolute Unix time until which a (client, nonce) must be remembered:
    as long as its timestamp is still acceptable."""
    return timestamp + ACCEPT_BEHIND_S + NONCE_TTL_MARGIN_S


def refused_after_loss(timestamp: int, recovered_at: float | None) -> bool:
    return recovered_at is not None and timestamp <= recovered_at + ACCEPT_AHEAD_S + CLOCK_SKEW_MARGIN_S


def retry_not_before(recovered_at: float) -> int:
    """First timestamp accepted after a loss recovered at `recovered_at`."""
    return int(recovered_at + ACCEPT_AHEAD_S + CLOCK_SKEW_MARGIN_S) + 1


class SyncAction(Enum):
    ADOPT = "adopt"  # Redis and PostgreSQL agree
    FIRST_BOOT = "first_boot"  # no marker ever existed: not a loss
    LOSS = "loss"  # PostgreSQL remembers a marker Redis lacks


def sync_action(recorded: str | None, marker: str | None) -> SyncAction:
    """recorded: generation in PostgreSQL; marker: generation in Redis.

    A generation's marker is written to Redis BEFORE the generation is
    committed to PostgreSQL, so a committed generation whose marker is absent
    or different always means Redis lost data (or a peer is mid-recovery, in
    which case recording one more loss costs only milliseconds of extra
    refusals). What this process last adopted does not enter into it: an
    earlier rule that trusted "a peer is between PostgreSQL and Redis" let a
    second loss right after a recovery go unnoticed."""
    if recorded is None:
        return SyncAction.FIRST_BOOT
    if marker == recorded:
        return SyncAction.ADOPT
    return SyncAction.LOSS
