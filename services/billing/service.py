"""Thin servicers: the caller from the gateway's headers, proto <-> plain data,
one use case per call. Refusals are `iclaim.errors`; the shared interceptor
turns them into the §7 error model."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf import timestamp_pb2
from google.type import date_pb2

from iclaim.errors import InvalidArgument, PermissionDenied
from iclaim.v1 import billing_service_pb2 as pb
from iclaim.v1 import billing_service_pb2_grpc
from iclaim_hub.common.fields import copy_fields
from iclaim_hub.common.proto_time import timestamp, timestamp_or_none
from iclaim_hub.common.server import Caller, caller_of
from iclaim_hub.common.servicer import Serves
from iclaim_hub.internal.v1 import billing_intake_pb2, billing_intake_pb2_grpc
from services.billing.decision_map import datetime_or_none, decision_report
from services.billing.domain import (
    MAX_LINES,
    Adjustment,
    PaymentInput,
    PaymentLine,
    ProviderAdjustment,
    StatementOut,
    page_size_of,
)
from services.billing.usecases import Billing
from services.billing.views import InvoiceView, PaymentView

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _require(caller: Caller, role: str) -> None:
    if caller.role != role:
        raise PermissionDenied(f"only a {role} may call this", reason="WRONG_ROLE")


def _date(d: date | None) -> date_pb2.Date | None:
    return None if d is None else date_pb2.Date(year=d.year, month=d.month, day=d.day)


def _from_date(d: date_pb2.Date, what: str) -> date:
    try:
        return date(d.year, d.month, d.day)
    except ValueError:
        raise InvalidArgument(f"{what} is not a valid date", reason="DATE_OUT_OF_RANGE") from None


def _from_ts(ts: timestamp_pb2.Timestamp, what: str) -> datetime:
    dt = datetime_or_none(ts)
    if dt is None:
        raise InvalidArgument(f"{what} is out of range", reason="DATE_OUT_OF_RANGE")
    return dt


def invoice_pb(v: InvoiceView) -> pb.Invoice:
    return copy_fields(
        pb.Invoice,
        v,
        status=cast(pb.InvoiceStatus, pb.InvoiceStatus.Value(f"INVOICE_STATUS_{v.status}")),
        submitted_at=timestamp(v.submitted_at),
        acknowledged_at=timestamp_or_none(v.acknowledged_at),
        due_date=_date(v.due_date),
        claims=[copy_fields(pb.InvoiceClaim, c) for c in v.claims],
    )


def payment_pb(v: PaymentView) -> pb.Payment:
    p = v.payment
    return pb.Payment(
        payment_id=v.payment_id,
        trace_no=p.trace_no,
        insurer_code=p.insurer_code,
        hospital_codes=list(v.hospital_codes),
        paid_at=timestamp(p.paid_at),
        total_satang=p.total,
        lines=[
            pb.PaymentLine(
                transaction_id=ln.transaction_id,
                paid_satang=ln.paid,
                adjustments=[
                    pb.Adjustment(group=a.group, reason_code=a.reason_code, amount_satang=a.amount)
                    for a in ln.adjustments
                ],
            )
            for ln in p.lines
        ],
        provider_adjustments=[
            pb.ProviderAdjustment(
                code=a.code, reference=a.reference, amount_satang=a.amount, hospital_code=a.hospital_code
            )
            for a in p.provider_adjustments
        ],
        recorded_at=timestamp(v.recorded_at),
    )


def statement_pb(s: StatementOut) -> pb.Statement:
    return pb.Statement(
        hospital_code=s.hospital_code,
        insurer_code=s.insurer_code,
        period_start=_date(s.period_start),
        period_end=_date(s.period_end),
        opening_balance_satang=s.opening,
        closing_balance_satang=s.closing,
        lines=[
            pb.StatementLine(
                occurred_at=timestamp(ln.occurred_at),
                kind=ln.kind,
                reference=ln.reference,
                description=ln.description,
                amount_satang=ln.amount,
                running_balance_satang=ln.running_balance,
            )
            for ln in s.lines
        ],
        aging=pb.Aging(
            current=s.aging.current,
            d1_30=s.aging.d1_30,
            d31_60=s.aging.d31_60,
            d61_90=s.aging.d61_90,
            over_90=s.aging.over_90,
        ),
        closing_balance_text_th=s.closing_text_th,
    )


def payment_input(insurer: str, req: pb.PostPaymentRequest) -> PaymentInput:
    if not req.HasField("paid_at"):
        raise InvalidArgument("paid_at is required", reason="DATE_OUT_OF_RANGE")
    # Refused before mapping: a huge request is not worth converting.
    if len(req.lines) > MAX_LINES:
        raise InvalidArgument(f"at most {MAX_LINES} lines", reason="TOO_MANY_LINES")
    return PaymentInput(
        insurer_code=insurer,
        trace_no=req.trace_no,
        paid_at=_from_ts(req.paid_at, "paid_at"),
        total=req.total_satang,
        lines=tuple(
            PaymentLine(
                ln.transaction_id,
                ln.paid_satang,
                tuple(Adjustment(a.group, a.reason_code, a.amount_satang) for a in ln.adjustments),
            )
            for ln in req.lines
        ),
        provider_adjustments=tuple(
            ProviderAdjustment(a.code, a.reference, a.amount_satang, a.hospital_code)
            for a in req.provider_adjustments
        ),
    )


def status_filter(req: pb.ListInvoicesRequest) -> str | None:
    """The shown status to list (None: any)."""
    if not req.HasField("status"):
        return None
    if req.status == pb.INVOICE_STATUS_UNSPECIFIED:
        raise InvalidArgument("status must be a real status", reason="INVALID_STATUS")
    try:
        return pb.InvoiceStatus.Name(req.status).removeprefix("INVOICE_STATUS_")
    except ValueError:
        raise InvalidArgument("unknown status", reason="INVALID_STATUS") from None


class BillingServicer(Serves[Billing], billing_service_pb2_grpc.BillingServiceServicer):
    async def VoidInvoice(self, request: pb.VoidInvoiceRequest, context: Ctx) -> pb.Invoice:
        caller = caller_of(context)
        _require(caller, "hospital")
        return invoice_pb(await self.use_cases.void_invoice(request.invoice_id, caller.code, request.reason))

    async def CreateInvoice(self, request: pb.CreateInvoiceRequest, context: Ctx) -> pb.Invoice:
        caller = caller_of(context)
        _require(caller, "hospital")
        return invoice_pb(
            await self.use_cases.create_invoice(
                caller.code, request.insurer_code, request.invoice_ref, list(request.transaction_ids)
            )
        )

    async def ListInvoices(self, request: pb.ListInvoicesRequest, context: Ctx) -> pb.ListInvoicesResponse:
        caller = caller_of(context)
        size = page_size_of(request.page_size)
        views, token = await self.use_cases.list_invoices(
            caller.role,
            caller.code,
            request.counterparty_code,
            status_filter(request),
            size,
            request.page_token,
        )
        return pb.ListInvoicesResponse(invoices=[invoice_pb(v) for v in views], next_page_token=token)

    async def GetInvoice(self, request: pb.GetInvoiceRequest, context: Ctx) -> pb.Invoice:
        caller = caller_of(context)
        return invoice_pb(await self.use_cases.get_invoice(request.invoice_id, caller.role, caller.code))

    async def AcknowledgeInvoice(self, request: pb.AcknowledgeInvoiceRequest, context: Ctx) -> pb.Invoice:
        caller = caller_of(context)
        _require(caller, "insurer")
        return invoice_pb(await self.use_cases.acknowledge_invoice(request.invoice_id, caller.code))

    async def PostPayment(self, request: pb.PostPaymentRequest, context: Ctx) -> pb.Payment:
        caller = caller_of(context)
        _require(caller, "insurer")
        return payment_pb(await self.use_cases.post_payment(payment_input(caller.code, request)))

    async def GetStatement(self, request: pb.GetStatementRequest, context: Ctx) -> pb.Statement:
        caller = caller_of(context)
        if not request.HasField("period_start") or not request.HasField("period_end"):
            raise InvalidArgument("period_start and period_end are required", reason="DATE_OUT_OF_RANGE")
        start = _from_date(request.period_start, "period_start")
        end = _from_date(request.period_end, "period_end")
        return statement_pb(
            await self.use_cases.statement(caller.role, caller.code, request.counterparty_code, start, end)
        )


class BillingIntakeServicer(Serves[Billing], billing_intake_pb2_grpc.BillingIntakeServiceServicer):
    """Claim decisions from the claim router's outbox."""

    async def RecordClaimDecision(
        self, request: billing_intake_pb2.RecordClaimDecisionRequest, context: Ctx
    ) -> billing_intake_pb2.RecordClaimDecisionResponse:
        await self.use_cases.receive_decision(decision_report(request))
        return billing_intake_pb2.RecordClaimDecisionResponse()

    async def RecordClaimDecisions(
        self, request: billing_intake_pb2.RecordClaimDecisionsRequest, context: Ctx
    ) -> billing_intake_pb2.RecordClaimDecisionsResponse:
        refused = await self.use_cases.receive_decisions([decision_report(d) for d in request.decisions])
        return billing_intake_pb2.RecordClaimDecisionsResponse(
            refused=[billing_intake_pb2.RefusedDecision(index=i, reason=r) for i, r in refused]
        )
