"""The simulated insurer's §8 rules, keyed by magic policy numbers."""

from __future__ import annotations

import pytest

from services.insurer_adapter.simulator import (
    APPROVED,
    DENIED,
    PARTIALLY_APPROVED,
    PENDING_REVIEW,
    Step,
    Timing,
    decide,
    invalid_document,
)

T = Timing(review_s=2.0, slow_s=10.0)


@pytest.mark.parametrize(
    ("policy", "billed", "expected"),
    [
        ("POL-1", 150_000, (Step(APPROVED, 150_000, "", 0.0),)),
        ("DENY-123", 150_000, (Step(DENIED, 0, "POLICY_NOT_FOUND", 0.0),)),
        ("deny-123", 150_000, (Step(DENIED, 0, "POLICY_NOT_FOUND", 0.0),)),
        ("REVIEW-9", 150_000, (Step(PENDING_REVIEW, 0, "", 0.0), Step(APPROVED, 150_000, "", 2.0))),
        ("LIMIT-100000-A", 150_000, (Step(PARTIALLY_APPROVED, 100_000, "COVERAGE_LIMIT_REACHED", 0.0),)),
        ("LIMIT-100000", 150_000, (Step(PARTIALLY_APPROVED, 100_000, "COVERAGE_LIMIT_REACHED", 0.0),)),
        ("LIMIT-100000-A", 100_000, (Step(APPROVED, 100_000, "", 0.0),)),
        ("LIMIT-100000-A", 99_999, (Step(APPROVED, 99_999, "", 0.0),)),
        ("LIMIT-0-A", 150_000, (Step(DENIED, 0, "COVERAGE_LIMIT_REACHED", 0.0),)),
        ("LIMIT-0-A", 0, (Step(APPROVED, 0, "", 0.0),)),
        ("LIMIT-abc-1", 150_000, (Step(APPROVED, 150_000, "", 0.0),)),
        ("LIMIT-1000X", 150_000, (Step(APPROVED, 150_000, "", 0.0),)),
        ("SLOW-7", 150_000, (Step(APPROVED, 150_000, "", 10.0),)),
        ("XDENY-1", 150_000, (Step(APPROVED, 150_000, "", 0.0),)),
        ("", 0, (Step(APPROVED, 0, "", 0.0),)),
    ],
)
def test_rules(policy: str, billed: int, expected: tuple[Step, ...]) -> None:
    assert decide(policy, billed, T) == expected


def test_delays_come_from_the_timing_knobs() -> None:
    fast = Timing(review_s=0.1, slow_s=0.3)
    assert decide("REVIEW-1", 5, fast)[1].delay_s == 0.1
    assert decide("SLOW-1", 5, fast)[0].delay_s == 0.3


def test_only_pending_review_is_not_final() -> None:
    steps = decide("REVIEW-1", 5, T)
    assert [s.final for s in steps] == [False, True]
    assert all(s.final for p in ("POL", "DENY-1", "LIMIT-1-x", "SLOW-1") for s in decide(p, 5, T))


def test_unreadable_documents_are_denied() -> None:
    assert invalid_document() == (Step(DENIED, 0, "INVALID_CLAIM_DOCUMENT", 0.0),)
