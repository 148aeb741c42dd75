"""The sandbox insurers' magic policies (docs/protocol.md §8), as an insurer-kit
`ClaimHandler`. Pure: policy number in, `Decision` out.

Like a payment sandbox's test member ids, the policy number
(`insurance[0].coverage.identifier.value`) picks the outcome:
  DENY-...            -> DENIED (POLICY_NOT_FOUND)
  REVIEW-...          -> PENDING_REVIEW now, APPROVED `review_s` later
  LIMIT-<satang>-...  -> PARTIALLY_APPROVED up to <satang> when billed more, else APPROVED
                         (LIMIT-0-... on a non-zero bill: DENIED, COVERAGE_LIMIT_REACHED)
  SLOW-...            -> APPROVED after `slow_s`
  anything else       -> APPROVED in full
A claim that cannot be opened or read as a FHIR Claim never gets here: the kit
denies it with INVALID_CLAIM_DOCUMENT (and it has validated the FHIR Claim
once, `IncomingClaim.parsed`, so nothing here parses it again).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from iclaim.insurer.handler import MAX_DELAY_S, Decision, IncomingClaim

POLICY_NOT_FOUND = "POLICY_NOT_FOUND"
COVERAGE_LIMIT_REACHED = "COVERAGE_LIMIT_REACHED"

REVIEW_ENV = "ICLAIM_SIM_REVIEW_S"
SLOW_ENV = "ICLAIM_SIM_SLOW_S"

_LIMIT = re.compile(r"^LIMIT-([0-9]{1,18})(?:-|$)")


class TimingError(ValueError):
    """A timing knob is not a number of seconds in range; the message names it."""


@dataclass(frozen=True)
class Timing:
    review_s: float = 2.0
    slow_s: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Timing:
        return cls(
            review_s=_seconds(environ, REVIEW_ENV, cls.review_s),
            slow_s=_seconds(environ, SLOW_ENV, cls.slow_s),
        )


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TimingError(f"{name} must be a number of seconds") from None
    # The kit refuses longer waits; NaN fails both comparisons.
    if not 0 <= value <= MAX_DELAY_S:
        raise TimingError(f"{name} must be between 0 and {MAX_DELAY_S:.0f} seconds")
    return value


def decide_policy(policy_number: str, billed_satang: int, timing: Timing = Timing()) -> Decision:
    """The decision for a readable claim (§8)."""
    policy = policy_number.strip().upper()
    if policy.startswith("DENY-"):
        return Decision.deny(POLICY_NOT_FOUND)
    if policy.startswith("REVIEW-"):
        return Decision.review(Decision.approve(billed_satang, delay_s=timing.review_s))
    match = _LIMIT.match(policy)
    if match:
        limit = int(match.group(1))
        if limit == 0 and billed_satang > 0:  # a partial approval of nothing is a denial
            return Decision.deny(COVERAGE_LIMIT_REACHED)
        if billed_satang > limit:
            return Decision.partially_approve(limit, COVERAGE_LIMIT_REACHED)
        return Decision.approve(billed_satang)
    if policy.startswith("SLOW-"):
        return Decision.approve(billed_satang, delay_s=timing.slow_s)
    return Decision.approve(billed_satang)


class SandboxPolicies:
    """The one handler every sandbox insurer uses."""

    def __init__(self, timing: Timing = Timing()) -> None:
        self.timing = timing

    async def decide(self, claim: IncomingClaim) -> Decision:
        # The kit checked the FHIR total against the delivered amount.
        return decide_policy(claim.policy_number, claim.billed_satang, self.timing)
