"""Freshness rules: timestamp window, nonce lifetime, nonce-store loss (§3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.authz.replay import (
    ACCEPT_AHEAD_S,
    CLOCK_SKEW_MARGIN_S,
    ACCEPT_BEHIND_S,
    SyncAction,
    nonce_expires_at,
    refused_after_loss,
    retry_not_before,
    skew_problem,
    sync_action,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize("delta", [-300, -299, 0, 59, 60])
def test_timestamps_within_300_behind_and_60_ahead_are_fresh(delta: int) -> None:
    assert skew_problem(int(NOW) + delta, NOW) is None


@pytest.mark.parametrize(
    ("delta", "word"), [(-301, "behind"), (-5000, "behind"), (61, "ahead"), (3600, "ahead")]
)
def test_skew_message_names_the_skew(delta: int, word: str) -> None:
    msg = skew_problem(int(NOW) + delta, NOW)
    assert msg is not None
    assert f"{abs(delta)} s {word}" in msg


@given(st.integers(min_value=-ACCEPT_BEHIND_S, max_value=ACCEPT_AHEAD_S))
def test_nonce_outlives_the_acceptance_of_its_timestamp(delta: int) -> None:
    ts = int(NOW) + delta
    # The last moment ts is still acceptable is ts + ACCEPT_BEHIND_S.
    assert nonce_expires_at(ts) > ts + ACCEPT_BEHIND_S


def test_loss_window_covers_everything_accepted_before_the_loss() -> None:
    recovered = NOW
    # Anything accepted before the loss was stamped <= (the accepting replica's
    # clock, at most the margin ahead of ours) + 60 s <= R + 60 + margin.
    assert refused_after_loss(int(NOW) + ACCEPT_AHEAD_S, recovered)
    assert refused_after_loss(int(NOW) + ACCEPT_AHEAD_S + CLOCK_SKEW_MARGIN_S, recovered)
    assert refused_after_loss(int(NOW) - ACCEPT_BEHIND_S, recovered)
    assert not refused_after_loss(int(NOW) + ACCEPT_AHEAD_S + CLOCK_SKEW_MARGIN_S + 1, recovered)
    assert not refused_after_loss(int(NOW), None)


@given(st.floats(min_value=1e9, max_value=4e9))
def test_retry_hint_is_the_first_accepted_stamp(recovered: float) -> None:
    first = retry_not_before(recovered)
    assert not refused_after_loss(first, recovered)
    assert refused_after_loss(first - 1, recovered)


def test_loss_refusals_last_at_most_70_s_for_a_correct_clock() -> None:
    recovered = NOW
    # A client with an exact clock stamps `now`; it is accepted from R + 71 on.
    assert refused_after_loss(int(NOW) + 70, recovered)
    assert not refused_after_loss(int(NOW) + 71, recovered)


@pytest.mark.parametrize(
    ("recorded", "marker", "cached", "action"),
    [
        (None, None, None, SyncAction.FIRST_BOOT),  # first boot ever is not a loss
        (None, "stale", None, SyncAction.FIRST_BOOT),  # nothing recorded: Redis is not ours
        ("g1", "g1", None, SyncAction.ADOPT),  # restart of the gateway
        ("g1", "g1", "g0", SyncAction.ADOPT),  # a peer recovered and set the marker
        ("g1", None, None, SyncAction.LOSS),  # Redis lost while we were down
        ("g1", None, "g1", SyncAction.LOSS),  # Redis lost while we ran
        ("g1", "g9", "g1", SyncAction.LOSS),  # foreign marker: trust nothing
        # A peer recovered (marker written before the commit), then Redis was
        # lost again: a loss, never "a peer is mid-recovery" (found by
        # tests/unit/test_replay_property.py).
        ("g2", None, "g1", SyncAction.LOSS),
        ("g2", "g3", "g1", SyncAction.LOSS),
    ],
)
def test_sync_action(
    recorded: str | None, marker: str | None, cached: str | None, action: SyncAction
) -> None:
    del cached  # what this process last adopted: the action must not depend on it
    assert sync_action(recorded, marker) is action
