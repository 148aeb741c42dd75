"""Thin gRPC servicers: ClaimService, InsurerService (public) and the internal
DecisionIntake / ClaimSettlement / DeliveryReport services. Each checks the caller's role,
maps the request, calls one use case and maps the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from iclaim.errors import PermissionDenied
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import claim_service_pb2_grpc, insurer_service_pb2, insurer_service_pb2_grpc
from iclaim_hub.common.access_log import TRANSACTION_HEADER
from iclaim_hub.common.server import Caller, caller_of
from iclaim_hub.common.servicer import Serves
from iclaim_hub.internal.v1 import (
    decision_intake_pb2,
    decision_intake_pb2_grpc,
    delivery_report_pb2,
    delivery_report_pb2_grpc,
)
from services.claim_router import mappers
from services.claim_router.usecases import ROUTE_PUSH_ANSWER, ClaimRouter

Ctx = grpc.aio.ServicerContext[Any, Any]


def _caller(context: Ctx, role: str) -> Caller:
    caller = caller_of(context)
    if caller.role != role:
        raise PermissionDenied(f"this method is for {role}s", reason="WRONG_ROLE")
    return caller


class ClaimServicer(Serves[ClaimRouter], claim_service_pb2_grpc.ClaimServiceServicer):
    """For hospitals."""

    async def ListInsurers(self, request: pb.ListInsurersRequest, context: Ctx) -> pb.ListInsurersResponse:
        _caller(context, "hospital")
        page = await self.use_cases.list_insurers(request.page_size, request.page_token)
        return pb.ListInsurersResponse(
            insurers=[mappers.insurer_to_proto(p) for p in page.items],
            next_page_token=page.next_page_token,
        )

    async def SubmitClaim(self, request: pb.SubmitClaimRequest, context: Ctx) -> pb.SubmitClaimResponse:
        caller = _caller(context, "hospital")
        stored = await self.use_cases.submit(mappers.submit_request_of(request, caller.code))
        context.set_trailing_metadata(((TRANSACTION_HEADER, stored.transaction_id),))
        return pb.SubmitClaimResponse(claim=mappers.claim_to_proto(stored))

    async def GetClaim(self, request: pb.GetClaimRequest, context: Ctx) -> pb.Claim:
        caller = _caller(context, "hospital")
        return mappers.claim_to_proto(await self.use_cases.get_claim(caller.code, request.transaction_id))

    async def WatchClaim(self, request: pb.WatchClaimRequest, context: Ctx) -> AsyncIterator[pb.Claim]:
        caller = _caller(context, "hospital")
        # aclosing: a cancelled stream releases the watch's subscription at once.
        async with aclosing(self.use_cases.watch(caller.code, request.transaction_id)) as changes:
            async for rec in changes:
                yield mappers.claim_to_proto(rec)

    async def ListClaims(self, request: pb.ListClaimsRequest, context: Ctx) -> pb.ListClaimsResponse:
        caller = _caller(context, "hospital")
        page = await self.use_cases.list_claims(mappers.list_claims_request_of(request, caller.code))
        return pb.ListClaimsResponse(
            claims=[mappers.claim_to_proto(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    async def CancelClaim(self, request: pb.CancelClaimRequest, context: Ctx) -> pb.Claim:
        caller = _caller(context, "hospital")
        stored = await self.use_cases.cancel(caller.code, request.transaction_id, request.reason)
        return mappers.claim_to_proto(stored)


class InsurerServicer(Serves[ClaimRouter], insurer_service_pb2_grpc.InsurerServiceServicer):
    """For insurers."""

    async def PullClaims(
        self, request: insurer_service_pb2.PullClaimsRequest, context: Ctx
    ) -> insurer_service_pb2.PullClaimsResponse:
        caller = _caller(context, "insurer")
        decisions = [mappers.decision_request_of(d, caller.code) for d in request.decisions]
        leased, outcomes = await self.use_cases.pull_carrying(
            caller.code, request.max_claims, (request.wait.seconds, request.wait.nanos), decisions
        )
        return insurer_service_pb2.PullClaimsResponse(
            deliveries=[mappers.delivery_to_proto(r) for r in leased],
            decision_results=[mappers.decision_result_to_proto(o) for o in outcomes],
        )

    async def GetHospital(
        self, request: insurer_service_pb2.GetHospitalRequest, context: Ctx
    ) -> insurer_service_pb2.Hospital:
        _caller(context, "insurer")
        return mappers.hospital_to_proto(await self.use_cases.get_hospital(request.hospital_code))

    async def PostDecision(self, request: insurer_service_pb2.PostDecisionRequest, context: Ctx) -> pb.Claim:
        caller = _caller(context, "insurer")
        stored = await self.use_cases.post_decision(mappers.decision_request_of(request, caller.code))
        return mappers.claim_to_proto(stored)


class DecisionIntakeServicer(Serves[ClaimRouter], decision_intake_pb2_grpc.DecisionIntakeServiceServicer):
    """Decisions from the insurer adapter (simulated and push insurers)."""

    async def RecordDecision(
        self, request: decision_intake_pb2.RecordDecisionRequest, context: Ctx
    ) -> decision_intake_pb2.RecordDecisionResponse:
        decision = mappers.decision_request_of(request, request.insurer_code)
        if request.push_answer:  # the insurer's own decision, answered to a push (§10.6)
            stored = await self.use_cases.post_decision(decision, route=ROUTE_PUSH_ANSWER)
        else:
            stored = await self.use_cases.record_decision(decision)
        return decision_intake_pb2.RecordDecisionResponse(claim=mappers.claim_to_proto(stored))

    async def RecordPushAnswers(
        self, request: decision_intake_pb2.RecordPushAnswersRequest, context: Ctx
    ) -> decision_intake_pb2.RecordPushAnswersResponse:
        refused = await self.use_cases.record_push_answers(
            [mappers.decision_request_of(a, a.insurer_code) for a in request.answers]
        )
        return decision_intake_pb2.RecordPushAnswersResponse(
            refused=[decision_intake_pb2.RefusedAnswer(index=i, reason=reason) for i, reason in refused]
        )


class ClaimSettlementServicer(Serves[ClaimRouter], decision_intake_pb2_grpc.ClaimSettlementServiceServicer):
    """Billing tells us when a claim has nothing left due, and reads the
    decisions its intake has not received yet."""

    async def MarkClaimPaid(
        self, request: decision_intake_pb2.MarkClaimPaidRequest, context: Ctx
    ) -> decision_intake_pb2.MarkClaimPaidResponse:
        stored = await self.use_cases.mark_paid(request.transaction_id)
        return decision_intake_pb2.MarkClaimPaidResponse(claim=mappers.claim_to_proto(stored))

    async def GetClaimDecisions(
        self, request: decision_intake_pb2.GetClaimDecisionsRequest, context: Ctx
    ) -> decision_intake_pb2.GetClaimDecisionsResponse:
        found = await self.use_cases.billing_decisions(list(request.transaction_ids))
        return decision_intake_pb2.GetClaimDecisionsResponse(
            decisions=[mappers.claim_decision_to_proto(r) for r in found]
        )


class DeliveryReportServicer(Serves[ClaimRouter], delivery_report_pb2_grpc.DeliveryReportServiceServicer):
    """What the delivery layer (insurer_adapter) says happened to a push."""

    async def ReportTaken(
        self, request: delivery_report_pb2.ReportTakenRequest, context: Ctx
    ) -> delivery_report_pb2.ReportTakenResponse:
        stored = await self.use_cases.report_taken(mappers.delivery_report_of(request))
        return delivery_report_pb2.ReportTakenResponse(state=mappers.claim_state_of(stored))

    async def ReportTakenBatch(
        self, request: delivery_report_pb2.ReportTakenBatchRequest, context: Ctx
    ) -> delivery_report_pb2.ReportTakenBatchResponse:
        refused = await self.use_cases.report_taken_many(
            [mappers.delivery_report_of(r) for r in request.reports]
        )
        return delivery_report_pb2.ReportTakenBatchResponse(
            refused=[delivery_report_pb2.RefusedReport(index=i, reason=reason) for i, reason in refused]
        )

    async def ReportExpired(
        self, request: delivery_report_pb2.ReportExpiredRequest, context: Ctx
    ) -> delivery_report_pb2.ReportExpiredResponse:
        stored = await self.use_cases.report_expired(mappers.delivery_report_of(request))
        return delivery_report_pb2.ReportExpiredResponse(state=mappers.claim_state_of(stored))

    async def ReportRedriven(
        self, request: delivery_report_pb2.ReportRedrivenRequest, context: Ctx
    ) -> delivery_report_pb2.ReportRedrivenResponse:
        stored = await self.use_cases.report_redriven(mappers.delivery_report_of(request))
        return delivery_report_pb2.ReportRedrivenResponse(state=mappers.claim_state_of(stored))
