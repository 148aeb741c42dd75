"""Issue 10, item 6: VoidInvoice (§9, additive) on an in-process billing server
over real PostgreSQL. A hospital withdraws its invoice before any payment on
it; its claims become invoiceable again; the ledger is untouched (issuing an
invoice posts no journal: the approval already made the claims owed)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import grpc
import pytest
from grpc_status import rpc_status
from structlog.testing import capture_logs

from iclaim.errors import error_info_of
from iclaim.v1 import billing_service_pb2 as pb
from services.billing.domain import BANGKOK, MAX_VOID_REASON
from tests.support.billing import (
    HOSPITAL,
    HOSPITAL2,
    INSURER,
    Harness,
    ledger_invariants,
    md,
    running_billing,
)


def reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin"
    info = error_info_of(status)
    assert info is not None
    return info.reason


def line(tx: str, paid: int) -> pb.PaymentLine:
    return pb.PaymentLine(transaction_id=tx, paid_satang=paid)


async def get(h: Harness, invoice_id: str, caller: str = HOSPITAL) -> pb.Invoice:
    return await h.stub.GetInvoice(
        pb.GetInvoiceRequest(invoice_id=invoice_id), metadata=md(caller), timeout=10
    )


async def ledger(h: Harness) -> tuple[int, int]:
    row = await h.pool.fetchrow(
        "SELECT (SELECT count(*) FROM billing.journals) AS j,"
        " (SELECT coalesce(sum(balance_satang), 0) FROM billing.accounts WHERE kind = 'receivable') AS r"
    )
    assert row is not None
    return int(row["j"]), int(row["r"])


@pytest.fixture
async def h(database_url: str):  # type: ignore[no-untyped-def]
    async with running_billing(database_url) as harness:
        yield harness


async def test_void_before_payment_frees_the_claims_and_leaves_the_ledger(h: Harness) -> None:
    await h.approve("tx-v1", 10_000)
    await h.approve("tx-v2", 5_000)
    first = await h.invoice("INV-V1", ["tx-v1", "tx-v2"])
    await h.stub.AcknowledgeInvoice(
        pb.AcknowledgeInvoiceRequest(invoice_id=first.invoice_id), metadata=md(INSURER), timeout=10
    )
    before = await ledger(h)

    void = await h.void(first.invoice_id, "wrong room charge")
    assert void.status == pb.INVOICE_STATUS_VOID and void.invoice_id == first.invoice_id
    assert void.total_satang == 15_000 and void.paid_satang == 0
    assert (await get(h, first.invoice_id, INSURER)).status == pb.INVOICE_STATUS_VOID
    assert await ledger(h) == before  # no journal, nothing owed changed
    # Idempotent: voiding again, or replaying its CreateInvoice, returns the void invoice.
    assert (await h.void(first.invoice_id, "again")).status == pb.INVOICE_STATUS_VOID
    assert (await h.invoice("INV-V1", ["tx-v1", "tx-v2"])).status == pb.INVOICE_STATUS_VOID
    # The insurer cannot acknowledge it any more.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await h.stub.AcknowledgeInvoice(
            pb.AcknowledgeInvoiceRequest(invoice_id=first.invoice_id), metadata=md(INSURER), timeout=10
        )
    assert reason(err.value) == "INVOICE_VOID"

    # Its claims are invoiceable again, and are paid on the new invoice.
    second = await h.invoice("INV-V2", ["tx-v1", "tx-v2"])
    assert second.status == pb.INVOICE_STATUS_SUBMITTED and second.total_satang == 15_000
    await h.pay("TRC-V", [line("tx-v1", 10_000), line("tx-v2", 5_000)])
    paid = await get(h, second.invoice_id)
    assert paid.status == pb.INVOICE_STATUS_PAID
    assert [(c.transaction_id, c.paid_satang, c.settled_satang) for c in paid.claims] == [
        ("tx-v1", 10_000, 10_000),
        ("tx-v2", 5_000, 5_000),
    ]
    after = await get(h, first.invoice_id)
    assert after.status == pb.INVOICE_STATUS_VOID and after.paid_satang == 0
    # What the new invoice collected is not shown again on the void one.
    assert [(c.transaction_id, c.approved_satang, c.paid_satang, c.settled_satang) for c in after.claims] == [
        ("tx-v1", 10_000, 0, 0),
        ("tx-v2", 5_000, 0, 0),
    ]

    listed = await h.stub.ListInvoices(
        pb.ListInvoicesRequest(counterparty_code=INSURER, status=pb.INVOICE_STATUS_VOID),
        metadata=md(HOSPITAL),
        timeout=10,
    )
    assert [i.invoice_id for i in listed.invoices] == [first.invoice_id]

    today = datetime.now(BANGKOK).date()
    st = await h.stub.GetStatement(
        pb.GetStatementRequest(
            counterparty_code=INSURER,
            period_start={"year": today.year, "month": today.month, "day": today.day},
            period_end={"year": today.year, "month": today.month, "day": today.day},
        ),
        metadata=md(HOSPITAL),
        timeout=10,
    )
    invoices = [
        (ln.reference, ln.amount_satang, "voided" in ln.description)
        for ln in st.lines
        if ln.kind == "INVOICE"
    ]
    assert sorted(invoices) == [("INV-V1", 0, False), ("INV-V1", 0, True), ("INV-V2", 0, False)]
    assert st.closing_balance_satang == 0
    await ledger_invariants(h.pool)


async def test_void_is_refused_once_a_payment_touched_the_invoice(h: Harness) -> None:
    await h.approve("tx-p1", 10_000)
    await h.approve("tx-p2", 4_000)
    inv = await h.invoice("INV-P", ["tx-p1", "tx-p2"])
    await h.pay("TRC-P", [line("tx-p1", 1)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await h.void(inv.invoice_id, "too late")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err.value) == "INVOICE_HAS_PAYMENTS"
    still = await get(h, inv.invoice_id)
    assert still.status == pb.INVOICE_STATUS_PARTIALLY_PAID and still.paid_satang == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:  # its claims stay on it
        await h.invoice("INV-P2", ["tx-p2"])
    assert reason(err.value) == "CLAIMS_NOT_INVOICEABLE"

    await h.pay("TRC-P2", [line("tx-p1", 9_999), line("tx-p2", 4_000)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await h.void(inv.invoice_id)
    assert reason(err.value) == "INVOICE_HAS_PAYMENTS"
    assert (await get(h, inv.invoice_id)).status == pb.INVOICE_STATUS_PAID
    await ledger_invariants(h.pool)


async def test_void_is_the_invoicing_hospitals_alone_and_checks_its_reason(h: Harness) -> None:
    await h.approve("tx-r", 1_000)
    inv = await h.invoice("INV-R", ["tx-r"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await h.stub.VoidInvoice(
            pb.VoidInvoiceRequest(invoice_id=inv.invoice_id), metadata=md(INSURER), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and reason(err.value) == "WRONG_ROLE"
    for other, invoice_id in ((HOSPITAL2, inv.invoice_id), (HOSPITAL, "inv_nope"), (HOSPITAL, "")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.void(invoice_id, hospital=other)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and reason(err.value) == "INVOICE_NOT_FOUND"
    for bad in ("x" * (MAX_VOID_REASON + 1), "line\nbreak", "nul\x00"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.void(inv.invoice_id, bad)
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and reason(err.value) == "INVALID_VOID_REASON"
        )
    assert (await get(h, inv.invoice_id)).status == pb.INVOICE_STATUS_SUBMITTED

    # At the limit, in Thai, and never in a log line.
    text = ("ยกเลิก สมชาย 3100600123458 " * 20)[:MAX_VOID_REASON]
    with capture_logs() as logs:
        assert (await h.void(inv.invoice_id, text)).status == pb.INVOICE_STATUS_VOID
    assert "3100600123458" not in repr(logs)
    stored = await h.pool.fetchval(
        "SELECT void_reason FROM billing.invoices WHERE invoice_id = $1", inv.invoice_id
    )
    assert stored == text


async def test_void_racing_a_payment_never_voids_a_paid_invoice(h: Harness) -> None:
    for i in range(8):
        tx = f"tx-race-{i}"
        await h.approve(tx, 2_000)
        inv = await h.invoice(f"INV-RACE-{i}", [tx])
        void, pay = await asyncio.gather(
            h.void(inv.invoice_id), h.pay(f"TRC-RACE-{i}", [line(tx, 2_000)]), return_exceptions=True
        )
        assert not isinstance(pay, BaseException), pay
        final = await get(h, inv.invoice_id)
        if isinstance(void, BaseException):
            assert isinstance(void, grpc.aio.AioRpcError) and reason(void) == "INVOICE_HAS_PAYMENTS"
            assert final.status == pb.INVOICE_STATUS_PAID
        else:
            # Voided first: the payment settled the claim directly, not this invoice.
            assert final.status == pb.INVOICE_STATUS_VOID and final.paid_satang == 0
    await ledger_invariants(h.pool)


async def test_a_void_invoice_cannot_change_in_the_database(h: Harness) -> None:
    await h.approve("tx-db", 1_000)
    inv = await h.invoice("INV-DB", ["tx-db"])
    await h.void(inv.invoice_id)
    async with h.pool.acquire() as conn:
        with pytest.raises(Exception, match="void"):
            await conn.execute(
                "UPDATE billing.invoices SET status = 'SUBMITTED' WHERE invoice_id = $1", inv.invoice_id
            )
        with pytest.raises(Exception, match="void"):
            await conn.execute(
                "UPDATE billing.invoice_claims SET open = true WHERE invoice_id = $1", inv.invoice_id
            )


async def test_a_claim_whose_only_invoice_was_voided_counts_as_uninvoiced(h: Harness) -> None:
    await h.approve("tx-u", 3_000)
    inv = await h.invoice("INV-U", ["tx-u"])
    await h.void(inv.invoice_id)
    await h.pay("TRC-U", [line("tx-u", 3_000)])
    month = datetime.now(BANGKOK).strftime("%Y-%m")
    found = (await h.billing.usecases.reconcile(month)).findings
    assert [(f.kind, f.reference, "names no invoiced claim" in f.detail) for f in found] == [
        ("UNMATCHED_PAYMENT_LINE", "TRC-U", True)
    ]
