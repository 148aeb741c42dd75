"""Billing for both sides (docs/protocol.md §9): invoices, payments, statements."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2

from iclaim.client.channel import GatewayClient, next_page
from iclaim.client.credentials import Credentials
from iclaim.v1 import billing_service_pb2 as bpb
from iclaim.v1 import billing_service_pb2_grpc

DEFAULT_TIMEOUT_S = 10.0


def to_date(d: date) -> date_pb2.Date:
    return date_pb2.Date(year=d.year, month=d.month, day=d.day)


class BillingClient(GatewayClient):
    def __init__(self, creds: Credentials) -> None:
        super().__init__(creds)
        self.stub = billing_service_pb2_grpc.BillingServiceStub(self.channel)

    async def create_invoice(
        self, invoice_ref: str, insurer_code: str, transaction_ids: Sequence[str]
    ) -> bpb.Invoice:
        return await self.stub.CreateInvoice(
            bpb.CreateInvoiceRequest(
                invoice_ref=invoice_ref,
                insurer_code=insurer_code,
                transaction_ids=list(transaction_ids),
            ),
            timeout=DEFAULT_TIMEOUT_S,
        )

    async def void_invoice(self, invoice_id: str, reason: str = "") -> bpb.Invoice:
        """Withdraws one of your invoices before any payment on it (hospitals, §9);
        its claims may then be invoiced again. Voiding a void invoice returns it."""
        return await self.stub.VoidInvoice(
            bpb.VoidInvoiceRequest(invoice_id=invoice_id, reason=reason), timeout=DEFAULT_TIMEOUT_S
        )

    async def get_invoice(self, invoice_id: str) -> bpb.Invoice:
        return await self.stub.GetInvoice(
            bpb.GetInvoiceRequest(invoice_id=invoice_id), timeout=DEFAULT_TIMEOUT_S
        )

    async def list_invoices(self, counterparty_code: str) -> list[bpb.Invoice]:
        out: list[bpb.Invoice] = []
        token, seen = "", set[str]()
        while True:
            resp = await self.stub.ListInvoices(
                bpb.ListInvoicesRequest(counterparty_code=counterparty_code, page_size=100, page_token=token),
                timeout=DEFAULT_TIMEOUT_S,
            )
            out.extend(resp.invoices)
            token = next_page(seen, resp.next_page_token)
            if not token:
                return out

    async def acknowledge_invoice(self, invoice_id: str) -> bpb.Invoice:
        return await self.stub.AcknowledgeInvoice(
            bpb.AcknowledgeInvoiceRequest(invoice_id=invoice_id), timeout=DEFAULT_TIMEOUT_S
        )

    async def post_payment(
        self,
        trace_no: str,
        paid_at: datetime,
        lines: Sequence[bpb.PaymentLine],
        provider_adjustments: Sequence[bpb.ProviderAdjustment] = (),
        total_satang: int | None = None,
    ) -> bpb.Payment:
        """Posts a remittance; `total_satang` defaults to the balanced total.
        `paid_at` must be timezone-aware, e.g. datetime.now(ZoneInfo("Asia/Bangkok"))."""
        if not isinstance(paid_at, datetime) or paid_at.utcoffset() is None:
            # FromDatetime takes a naive datetime as UTC: a Bangkok datetime.now()
            # would be recorded 7 h off, on the wrong statement day (§9).
            raise ValueError("paid_at must be a timezone-aware datetime (a naive one would be read as UTC)")
        ts = Timestamp()
        ts.FromDatetime(paid_at)
        if total_satang is None:
            total_satang = sum(line.paid_satang for line in lines) - sum(
                a.amount_satang for a in provider_adjustments
            )
        return await self.stub.PostPayment(
            bpb.PostPaymentRequest(
                trace_no=trace_no,
                paid_at=ts,
                total_satang=total_satang,
                lines=list(lines),
                provider_adjustments=list(provider_adjustments),
            ),
            timeout=DEFAULT_TIMEOUT_S,
        )

    async def statement(self, counterparty_code: str, start: date, end: date) -> bpb.Statement:
        return await self.stub.GetStatement(
            bpb.GetStatementRequest(
                counterparty_code=counterparty_code,
                period_start=to_date(start),
                period_end=to_date(end),
            ),
            timeout=DEFAULT_TIMEOUT_S,
        )
