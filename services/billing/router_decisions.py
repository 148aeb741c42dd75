"""Billing's read-through to the claim router (issue 10, item 5).

Approvals reach billing through the router's outbox, a fraction of a second
after a hospital can already see them with GetClaim. When CreateInvoice or
PostPayment names claims billing has not heard of, the use cases ask the router
for their decisions here and record them exactly as the intake would; the
outbox delivery that follows finds the same decision and changes nothing."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import structlog

from iclaim.errors import Unavailable
from iclaim_hub.internal.v1 import decision_intake_pb2, decision_intake_pb2_grpc
from services.billing.decision_map import decision_report
from services.billing.domain import DecisionReport

log = structlog.get_logger("iclaim.billing.router_decisions")


class RouterDecisions:
    def __init__(self, channel: grpc.aio.Channel, *, deadline_s: float) -> None:
        self._stub = decision_intake_pb2_grpc.ClaimSettlementServiceStub(channel)
        self._deadline = deadline_s

    async def decisions(self, transaction_ids: Sequence[str]) -> list[DecisionReport]:
        """The router's approved claims among these ids (the rest are not
        approved, or not claims at all). Without an answer billing cannot tell
        an approval it has not received from a claim that is not approved:
        UNAVAILABLE (retryable), never a wrong refusal."""
        try:
            resp = await self._stub.GetClaimDecisions(
                decision_intake_pb2.GetClaimDecisionsRequest(transaction_ids=list(transaction_ids)),
                timeout=self._deadline,
            )
        except grpc.aio.AioRpcError as err:
            # The code only: the router's message may echo what the caller sent.
            log.warning("claim_decisions_unavailable", code=err.code().name)
            raise Unavailable(
                "the claim decisions could not be confirmed; retry",
                reason="CLAIM_DECISIONS_UNAVAILABLE",
            ) from None
        return [decision_report(d) for d in resp.decisions]
