"""Thin servicers: proto <-> domain, caller checks, refusal -> §7 error model."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any, TypeAlias, TypeVar, cast

import grpc
from google.protobuf import timestamp_pb2
from google.type import date_pb2

from iclaim_hub.common import errors
from iclaim_hub.common.server import Caller, caller_of
from iclaim_hub.internal.v1 import billing_intake_pb2, billing_intake_pb2_grpc
from iclaim.v1 import billing_service_pb2 as pb
from iclaim.v1 import billing_service_pb2_grpc, claim_service_pb2
from services.billing import metrics
from services.billing.domain import (
    MAX_LINES,
    Adjustment,
    Decision,
    PaymentInput,
    PaymentLine,
    ProviderAdjustment,
    Refused,
    StatementOut,
    bangkok_date,
    check_amount,
    check_hospital,
    check_insurer,
    check_ref,
    check_timestamp,
    check_transaction_id,
)
from services.billing.store import PgBillingStore
from services.billing.views import InvoiceView, PaymentView

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
T = TypeVar("T")
_REFUSAL = {
    "invalid": errors.InvalidArgument,
    "not_found": errors.NotFound,
    "exists": errors.AlreadyExists,
    "precondition": errors.FailedPrecondition,
}
MAX_PAGE = 500
DEFAULT_PAGE = 50


def _now() -> datetime:
    return datetime.now(UTC)


async def _domain(call: Awaitable[T]) -> T:
    """Domain refusals become the matching IclaimError (the interceptor does the rest)."""
    try:
        return await call
    except Refused as r:
        raise _REFUSAL[r.kind](r.message, reason=r.reason, metadata=r.metadata) from None


def _require(caller: Caller, role: str) -> None:
    if caller.role != role:
        raise errors.PermissionDenied(f"only a {role} may call this", reason="WRONG_ROLE")


def _ts(dt: datetime | None) -> timestamp_pb2.Timestamp | None:
    if dt is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt)
    return ts


def _date(d: date | None) -> date_pb2.Date | None:
    return None if d is None else date_pb2.Date(year=d.year, month=d.month, day=d.day)


def _from_date(d: date_pb2.Date, what: str) -> date:
    try:
        return date(d.year, d.month, d.day)
    except ValueError:
        raise errors.InvalidArgument(f"{what} is not a valid date",
                                     reason="DATE_OUT_OF_RANGE") from None


def _from_ts(ts: timestamp_pb2.Timestamp, what: str) -> datetime:
    try:
        dt: datetime = ts.ToDatetime(tzinfo=UTC)
        return dt
    except (ValueError, OverflowError):
        raise errors.InvalidArgument(f"{what} is out of range",
                                     reason="DATE_OUT_OF_RANGE") from None


def invoice_pb(v: InvoiceView) -> pb.Invoice:
    return pb.Invoice(
        invoice_id=v.invoice_id,
        invoice_ref=v.invoice_ref,
        hospital_code=v.hospital_code,
        insurer_code=v.insurer_code,
        transaction_ids=list(v.transaction_ids),
        total_satang=v.total_satang,
        paid_satang=v.paid_satang,
        status=cast(pb.InvoiceStatus, pb.InvoiceStatus.Value(f"INVOICE_STATUS_{v.status}")),
        submitted_at=_ts(v.submitted_at),
        acknowledged_at=_ts(v.acknowledged_at),
        due_date=_date(v.due_date),
    )


def payment_pb(v: PaymentView) -> pb.Payment:
    p = v.payment
    return pb.Payment(
        payment_id=v.payment_id,
        trace_no=p.trace_no,
        insurer_code=p.insurer_code,
        hospital_codes=list(v.hospital_codes),
        paid_at=_ts(p.paid_at),
        total_satang=p.total,
        lines=[
            pb.PaymentLine(
                transaction_id=ln.transaction_id,
                paid_satang=ln.paid,
                adjustments=[pb.Adjustment(group=a.group, reason_code=a.reason_code,
                                           amount_satang=a.amount) for a in ln.adjustments],
            )
            for ln in p.lines
        ],
        provider_adjustments=[
            pb.ProviderAdjustment(code=a.code, reference=a.reference, amount_satang=a.amount,
                                  hospital_code=a.hospital_code)
            for a in p.provider_adjustments
        ],
        recorded_at=_ts(v.recorded_at),
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
            pb.StatementLine(occurred_at=_ts(ln.occurred_at), kind=ln.kind,
                             reference=ln.reference, description=ln.description,
                             amount_satang=ln.amount, running_balance_satang=ln.running_balance)
            for ln in s.lines
        ],
        aging=pb.Aging(current=s.aging.current, d1_30=s.aging.d1_30, d31_60=s.aging.d31_60,
                       d61_90=s.aging.d61_90, over_90=s.aging.over_90),
        closing_balance_text_th=s.closing_text_th,
    )


def payment_input(insurer: str, req: pb.PostPaymentRequest) -> PaymentInput:
    if not req.HasField("paid_at"):
        raise errors.InvalidArgument("paid_at is required", reason="DATE_OUT_OF_RANGE")
    if len(req.lines) > MAX_LINES:
        raise errors.InvalidArgument(f"at most {MAX_LINES} lines", reason="TOO_MANY_LINES")
    return PaymentInput(
        insurer_code=insurer,
        trace_no=req.trace_no,
        paid_at=_from_ts(req.paid_at, "paid_at"),
        total=req.total_satang,
        lines=tuple(
            PaymentLine(ln.transaction_id, ln.paid_satang,
                        tuple(Adjustment(a.group, a.reason_code, a.amount_satang)
                              for a in ln.adjustments))
            for ln in req.lines
        ),
        provider_adjustments=tuple(
            ProviderAdjustment(a.code, a.reference, a.amount_satang, a.hospital_code)
            for a in req.provider_adjustments
        ),
    )


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    def __init__(self, store: PgBillingStore, on_paid: Callable[[], None] = lambda: None):
        self._store = store
        self._on_paid = on_paid

    async def CreateInvoice(self, request: pb.CreateInvoiceRequest, context: Ctx) -> pb.Invoice:
        caller = caller_of(context)
        _require(caller, "hospital")

        async def run() -> InvoiceView:
            check_ref(request.invoice_ref, "invoice_ref", "INVALID_INVOICE_REF")
            check_insurer(request.insurer_code)
            txs = list(request.transaction_ids)
            if not txs:
                raise errors.InvalidArgument("transaction_ids is empty",
                                             reason="NO_TRANSACTION_IDS")
            if len(txs) > MAX_LINES:
                raise errors.InvalidArgument(f"at most {MAX_LINES} claims per invoice",
                                             reason="TOO_MANY_LINES")
            for tx in txs:
                check_transaction_id(tx)
            if len(set(txs)) != len(txs):
                raise errors.InvalidArgument("a transaction_id is listed twice",
                                             reason="DUPLICATE_TRANSACTION_ID")
            return await self._store.create_invoice(caller.code, request.insurer_code,
                                                    request.invoice_ref, txs, _now())

        return invoice_pb(await _domain(run()))

    async def ListInvoices(
        self, request: pb.ListInvoicesRequest, context: Ctx
    ) -> pb.ListInvoicesResponse:
        caller = caller_of(context)
        if request.page_size < 0:
            raise errors.InvalidArgument("page_size must not be negative",
                                         reason="INVALID_PAGE_SIZE")
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        status = None
        if request.HasField("status"):
            if request.status == pb.INVOICE_STATUS_UNSPECIFIED:
                raise errors.InvalidArgument("status must be a real status",
                                             reason="INVALID_STATUS")
            try:
                status = pb.InvoiceStatus.Name(request.status).removeprefix("INVOICE_STATUS_")
            except ValueError:
                raise errors.InvalidArgument("unknown status", reason="INVALID_STATUS") from None
        views, token = await _domain(self._store.list_invoices(
            caller.role, caller.code, request.counterparty_code, status, size,
            request.page_token, bangkok_date(_now()),
        ))
        return pb.ListInvoicesResponse(invoices=[invoice_pb(v) for v in views],
                                       next_page_token=token)

    async def GetInvoice(self, request: pb.GetInvoiceRequest, context: Ctx) -> pb.Invoice:
        caller = caller_of(context)
        v = await _domain(self._store.get_invoice(request.invoice_id, caller.role, caller.code,
                                                  bangkok_date(_now())))
        return invoice_pb(v)

    async def AcknowledgeInvoice(
        self, request: pb.AcknowledgeInvoiceRequest, context: Ctx
    ) -> pb.Invoice:
        caller = caller_of(context)
        _require(caller, "insurer")
        v = await _domain(self._store.acknowledge_invoice(request.invoice_id, caller.code, _now()))
        return invoice_pb(v)

    async def PostPayment(self, request: pb.PostPaymentRequest, context: Ctx) -> pb.Payment:
        caller = caller_of(context)
        _require(caller, "insurer")

        async def run() -> Any:
            return await self._store.post_payment(payment_input(caller.code, request), _now())

        result = await _domain(run())
        if not result.replay:
            metrics.PAYMENTS.labels(caller.code).inc()
            metrics.PAYMENT_LINES.labels(caller.code).inc(len(request.lines))
            for insurer, days in result.invoices_paid:
                metrics.DAYS_TO_PAY.labels(insurer).observe(days)
            self._on_paid()
        return payment_pb(result.view)

    async def GetStatement(self, request: pb.GetStatementRequest, context: Ctx) -> pb.Statement:
        caller = caller_of(context)
        if not request.HasField("period_start") or not request.HasField("period_end"):
            raise errors.InvalidArgument("period_start and period_end are required",
                                         reason="DATE_OUT_OF_RANGE")
        start = _from_date(request.period_start, "period_start")
        end = _from_date(request.period_end, "period_end")

        async def run() -> StatementOut:
            if caller.role == "hospital":
                hospital, insurer = caller.code, check_insurer(request.counterparty_code)
            else:
                hospital, insurer = check_hospital(request.counterparty_code), caller.code
            return await self._store.statement(hospital, insurer, start, end)

        return statement_pb(await _domain(run()))


_DECISION_STATES = {
    claim_service_pb2.CLAIM_STATE_APPROVED: "APPROVED",
    claim_service_pb2.CLAIM_STATE_PARTIALLY_APPROVED: "PARTIALLY_APPROVED",
    claim_service_pb2.CLAIM_STATE_DENIED: "DENIED",
}


class BillingIntakeServicer(billing_intake_pb2_grpc.BillingIntakeServiceServicer):
    """Claim decisions from the claim router's outbox. Redelivery and reordering
    are expected: the same decision twice is a no-op; non-final states (pending
    review, paid echoes) change nothing."""

    def __init__(self, store: PgBillingStore):
        self._store = store

    async def RecordClaimDecision(
        self, request: billing_intake_pb2.RecordClaimDecisionRequest, context: Ctx
    ) -> billing_intake_pb2.RecordClaimDecisionResponse:
        async def run() -> None:
            check_transaction_id(request.transaction_id)
            check_hospital(request.hospital_code)
            check_insurer(request.insurer_code)
            state = _DECISION_STATES.get(request.state)
            if state is None:
                if request.state not in claim_service_pb2.ClaimState.values():
                    raise errors.InvalidArgument("unknown claim state", reason="INVALID_STATE")
                return
            amount = check_amount(request.approved_amount_satang, "approved_amount_satang")
            now = _now()
            decided = (_from_ts(request.decided_at, "decided_at")
                       if request.HasField("decided_at") else now)
            check_timestamp(decided, "decided_at", now)
            await self._store.record_decision(Decision(
                request.transaction_id, request.hospital_code, request.insurer_code, state,
                amount if state != "DENIED" else 0, decided,
            ))

        await _domain(run())
        return billing_intake_pb2.RecordClaimDecisionResponse()


