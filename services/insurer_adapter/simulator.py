"""The simulated insurer's rules (PROTOCOL.md §8), pure: policy number in, plan out.

Magic policy prefixes, like a payment sandbox's test member ids:
  DENY-...            -> DENIED (POLICY_NOT_FOUND)
  REVIEW-...          -> PENDING_REVIEW now, APPROVED `review_s` later
  LIMIT-<satang>-...  -> PARTIALLY_APPROVED up to <satang> when billed more, else APPROVED
                         (LIMIT-0-... on a non-zero bill: DENIED, COVERAGE_LIMIT_REACHED)
  SLOW-...            -> APPROVED after `slow_s`
  anything else       -> APPROVED in full
"""

from __future__ import annotations

import re
from dataclasses import dataclass

APPROVED = "APPROVED"
PARTIALLY_APPROVED = "PARTIALLY_APPROVED"
DENIED = "DENIED"
PENDING_REVIEW = "PENDING_REVIEW"

POLICY_NOT_FOUND = "POLICY_NOT_FOUND"
INVALID_CLAIM_DOCUMENT = "INVALID_CLAIM_DOCUMENT"
COVERAGE_LIMIT_REACHED = "COVERAGE_LIMIT_REACHED"

_LIMIT = re.compile(r"^LIMIT-([0-9]{1,18})(?:-|$)")


@dataclass(frozen=True)
class Step:
    """One decision to report, `delay_s` after the claim was received."""

    state: str
    approved_satang: int
    reason_code: str
    delay_s: float

    @property
    def final(self) -> bool:
        return self.state != PENDING_REVIEW


@dataclass(frozen=True)
class Timing:
    review_s: float = 2.0
    slow_s: float = 10.0


def decide(policy_number: str, billed_satang: int, timing: Timing = Timing()) -> tuple[Step, ...]:
    """The decisions for a readable claim, in the order they are reported."""
    policy = policy_number.strip().upper()
    if policy.startswith("DENY-"):
        return (Step(DENIED, 0, POLICY_NOT_FOUND, 0.0),)
    if policy.startswith("REVIEW-"):
        return (
            Step(PENDING_REVIEW, 0, "", 0.0),
            Step(APPROVED, billed_satang, "", timing.review_s),
        )
    match = _LIMIT.match(policy)
    if match:
        limit = int(match.group(1))
        if limit == 0 and billed_satang > 0:  # a partial approval of nothing is a denial
            return (Step(DENIED, 0, COVERAGE_LIMIT_REACHED, 0.0),)
        if billed_satang > limit:
            return (Step(PARTIALLY_APPROVED, limit, COVERAGE_LIMIT_REACHED, 0.0),)
        return (Step(APPROVED, billed_satang, "", 0.0),)
    if policy.startswith("SLOW-"):
        return (Step(APPROVED, billed_satang, "", timing.slow_s),)
    return (Step(APPROVED, billed_satang, "", 0.0),)


def invalid_document() -> tuple[Step, ...]:
    """What an envelope that cannot be opened or read as a FHIR Claim gets."""
    return (Step(DENIED, 0, INVALID_CLAIM_DOCUMENT, 0.0),)
