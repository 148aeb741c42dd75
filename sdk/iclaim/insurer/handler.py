"""The insurer's own code meets the kit here: an opened claim in, a decision out.

    class MyRules:
        async def decide(self, claim: IncomingClaim) -> Decision:
            if claim.policy_number.startswith("DENY-"):
                return Decision.deny("POLICY_NOT_FOUND")
            return Decision.approve(claim.billed_satang)

The kit seals the decision to the hospital and posts it (§6 PostDecision).
A claim that cannot be opened or is not a FHIR Claim never reaches `decide`:
the kit denies it with INVALID_CLAIM_DOCUMENT (§8).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from iclaim.crypto.envelope import ProtectedHeader
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb

if TYPE_CHECKING:
    from iclaim.fhir.claim import ParsedClaim

PENDING_REVIEW = pb.CLAIM_STATE_PENDING_REVIEW
APPROVED = pb.CLAIM_STATE_APPROVED
PARTIALLY_APPROVED = pb.CLAIM_STATE_PARTIALLY_APPROVED
DENIED = pb.CLAIM_STATE_DENIED
# Longest wait a decision may ask for before it is posted.
MAX_DELAY_S = 3600.0


@dataclass(frozen=True)
class IncomingClaim:
    insurer_code: str  # which of the served insurers this claim is for
    delivery: ipb.ClaimDelivery  # as pushed or pulled (§6)
    claim: dict[str, Any]  # the opened FHIR R4 Claim (JSON; decimals as Decimal)
    parsed: ParsedClaim  # the fields most rules need, already checked
    header: ProtectedHeader  # the envelope's protected header (§4)

    @property
    def transaction_id(self) -> str:
        return self.delivery.transaction_id

    @property
    def hospital_code(self) -> str:
        return self.delivery.hospital_code

    @property
    def claim_ref(self) -> str:
        return self.delivery.claim_ref

    @property
    def billed_satang(self) -> int:
        return int(self.delivery.billed_amount_satang)

    @property
    def policy_number(self) -> str:
        return self.parsed.policy_number


@dataclass(frozen=True)
class Decision:
    """What to post. `state` is a ClaimState number (PENDING_REVIEW, APPROVED,
    PARTIALLY_APPROVED, DENIED). `delay_s`: wait this long before posting it.
    `pending_then`: only with PENDING_REVIEW, the final decision to post
    afterwards (its own `delay_s` counts from the PENDING_REVIEW post)."""

    state: int
    approved_satang: int = 0
    reason_code: str = ""
    pending_then: Decision | None = None
    delay_s: float = 0.0

    @classmethod
    def approve(cls, billed_satang: int, *, delay_s: float = 0.0) -> Decision:
        return cls(APPROVED, billed_satang, delay_s=delay_s)

    @classmethod
    def partially_approve(cls, approved_satang: int, reason_code: str, *, delay_s: float = 0.0) -> Decision:
        return cls(PARTIALLY_APPROVED, approved_satang, reason_code, delay_s=delay_s)

    @classmethod
    def deny(cls, reason_code: str, *, delay_s: float = 0.0) -> Decision:
        return cls(DENIED, 0, reason_code, delay_s=delay_s)

    @classmethod
    def review(cls, then: Decision | None = None, *, delay_s: float = 0.0) -> Decision:
        """PENDING_REVIEW now; `then` (if given) when its delay has passed.
        Without `then` the insurer posts the final decision itself later."""
        return cls(PENDING_REVIEW, 0, pending_then=then, delay_s=delay_s)


class ClaimHandler(Protocol):
    async def decide(self, claim: IncomingClaim) -> Decision: ...


class ApproveInFull:
    """The default handler: every readable claim approved for its billed amount."""

    async def decide(self, claim: IncomingClaim) -> Decision:
        return Decision.approve(claim.billed_satang)


class FunctionHandler:
    """Wraps `async def decide(claim) -> Decision` as a ClaimHandler."""

    def __init__(self, fn: Callable[[IncomingClaim], Awaitable[Decision]]) -> None:
        self._fn = fn

    async def decide(self, claim: IncomingClaim) -> Decision:
        return await self._fn(claim)
