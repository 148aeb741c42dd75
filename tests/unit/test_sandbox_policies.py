"""The sandbox insurers' §8 rules (moved from the hub's simulator), keyed by
magic policy numbers, as insurer-kit Decisions."""

from __future__ import annotations

import math

import pytest

from iclaim.insurer.handler import APPROVED, DENIED, PARTIALLY_APPROVED, PENDING_REVIEW, Decision
from sandbox.policies import Timing, TimingError, decide_policy

T = Timing(review_s=2.0, slow_s=10.0)


@pytest.mark.parametrize(
    ("policy", "billed", "expected"),
    [
        ("POL-1", 150_000, Decision(APPROVED, 150_000)),
        ("DENY-123", 150_000, Decision(DENIED, 0, "POLICY_NOT_FOUND")),
        ("deny-123", 150_000, Decision(DENIED, 0, "POLICY_NOT_FOUND")),
        (" DENY-123 ", 150_000, Decision(DENIED, 0, "POLICY_NOT_FOUND")),
        (
            "REVIEW-9",
            150_000,
            Decision(PENDING_REVIEW, 0, pending_then=Decision(APPROVED, 150_000, delay_s=2.0)),
        ),
        ("LIMIT-100000-A", 150_000, Decision(PARTIALLY_APPROVED, 100_000, "COVERAGE_LIMIT_REACHED")),
        ("LIMIT-100000", 150_000, Decision(PARTIALLY_APPROVED, 100_000, "COVERAGE_LIMIT_REACHED")),
        ("LIMIT-100000-A", 100_000, Decision(APPROVED, 100_000)),
        ("LIMIT-100000-A", 99_999, Decision(APPROVED, 99_999)),
        ("LIMIT-0-A", 150_000, Decision(DENIED, 0, "COVERAGE_LIMIT_REACHED")),
        ("LIMIT-0-A", 0, Decision(APPROVED, 0)),
        ("LIMIT-abc-1", 150_000, Decision(APPROVED, 150_000)),
        ("LIMIT-1000X", 150_000, Decision(APPROVED, 150_000)),
        ("LIMIT-1234567890123456789-A", 150_000, Decision(APPROVED, 150_000)),  # 19 digits: not a limit
        ("SLOW-7", 150_000, Decision(APPROVED, 150_000, delay_s=10.0)),
        ("XDENY-1", 150_000, Decision(APPROVED, 150_000)),
        ("", 0, Decision(APPROVED, 0)),
    ],
)
def test_rules(policy: str, billed: int, expected: Decision) -> None:
    assert decide_policy(policy, billed, T) == expected


def test_delays_come_from_the_timing_knobs() -> None:
    fast = Timing(review_s=0.1, slow_s=0.3)
    review = decide_policy("REVIEW-1", 5, fast)
    assert review.delay_s == 0.0 and review.pending_then is not None
    assert review.pending_then.delay_s == 0.1
    assert decide_policy("SLOW-1", 5, fast).delay_s == 0.3


def test_only_review_posts_twice() -> None:
    assert decide_policy("REVIEW-1", 5, T).pending_then is not None
    for policy in ("POL", "DENY-1", "LIMIT-1-x", "SLOW-1"):
        assert decide_policy(policy, 5, T).pending_then is None


def test_timing_from_env() -> None:
    assert Timing.from_env({}) == Timing(2.0, 10.0)
    assert Timing.from_env({"ICLAIM_SIM_REVIEW_S": "0.5", "ICLAIM_SIM_SLOW_S": " 3 "}) == Timing(0.5, 3.0)
    assert Timing.from_env({"ICLAIM_SIM_REVIEW_S": "", "ICLAIM_SIM_SLOW_S": "0"}) == Timing(2.0, 0.0)


@pytest.mark.parametrize("value", ["x", "-1", "3601", "nan", "inf", str(math.pi * 1e9)])
def test_timing_refuses_bad_values_by_name(value: str) -> None:
    with pytest.raises(TimingError, match="ICLAIM_SIM_SLOW_S"):
        Timing.from_env({"ICLAIM_SIM_SLOW_S": value})
