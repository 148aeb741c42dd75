"""BillingService and BillingIntakeService on an in-process server over real
PostgreSQL (PROTOCOL.md §9)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.type import date_pb2
from grpc_status import rpc_status

from iclaim.errors import error_info_of
from iclaim.v1 import billing_service_pb2 as pb
from iclaim.v1 import claim_service_pb2
from services.billing.domain import BANGKOK
from tests.support.billing import (
    HOSPITAL,
    HOSPITAL2,
    INSURER,
    INSURER2,
    Harness,
    ledger_invariants,
    md,
    running_billing,
)


def info(err: grpc.aio.AioRpcError):  # type: ignore[no-untyped-def]
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin"
    return error_info_of(status)


def line(tx: str, paid: int, *adj: tuple[str, str, int]) -> pb.PaymentLine:
    return pb.PaymentLine(
        transaction_id=tx,
        paid_satang=paid,
        adjustments=[pb.Adjustment(group=g, reason_code=r, amount_satang=a) for g, r, a in adj],
    )


def gdate(d: date) -> date_pb2.Date:
    return date_pb2.Date(year=d.year, month=d.month, day=d.day)


async def statement(h: Harness, caller: str, other: str, start: date, end: date) -> pb.Statement:
    return await h.stub.GetStatement(
        pb.GetStatementRequest(counterparty_code=other, period_start=gdate(start), period_end=gdate(end)),
        metadata=md(caller),
        timeout=10,
    )


def per_claim(inv: pb.Invoice) -> list[tuple[str, int, int, int]]:
    return [(c.transaction_id, c.approved_satang, c.paid_satang, c.settled_satang) for c in inv.claims]


@pytest.fixture
async def h(database_url: str):  # type: ignore[no-untyped-def]
    async with running_billing(database_url) as harness:
        yield harness


async def test_invoice_payment_and_paid_claim_flow(h: Harness) -> None:
    await h.approve("tx-1", 100_000)
    await h.approve("tx-2", 50_000, state=claim_service_pb2.CLAIM_STATE_PARTIALLY_APPROVED)
    inv = await h.invoice("INV-1", ["tx-1", "tx-2"])
    assert inv.status == pb.INVOICE_STATUS_SUBMITTED and inv.total_satang == 150_000
    assert list(inv.transaction_ids) == ["tx-1", "tx-2"]

    acked = await h.stub.AcknowledgeInvoice(
        pb.AcknowledgeInvoiceRequest(invoice_id=inv.invoice_id), metadata=md(INSURER), timeout=10
    )
    today = datetime.now(BANGKOK).date()
    assert acked.status == pb.INVOICE_STATUS_ACKNOWLEDGED
    assert date(acked.due_date.year, acked.due_date.month, acked.due_date.day) == (today + timedelta(days=15))

    # Partial payment with a contractual adjustment: 60,000 paid + 10,000 CO settles 70,000.
    await h.pay("TRC-1", [line("tx-1", 60_000, ("CO", "45", 10_000))])
    got = await h.stub.GetInvoice(
        pb.GetInvoiceRequest(invoice_id=inv.invoice_id), metadata=md(HOSPITAL), timeout=10
    )
    assert got.status == pb.INVOICE_STATUS_PARTIALLY_PAID and got.paid_satang == 70_000
    assert h.fake.calls == []
    # Per claim: money paid apart from what the adjustment took off.
    assert per_claim(got) == [("tx-1", 100_000, 60_000, 70_000), ("tx-2", 50_000, 0, 0)]

    # Pay the rest of tx-1 and all of tx-2: both claims become PAID at the router.
    await h.pay("TRC-2", [line("tx-1", 30_000), line("tx-2", 50_000)])
    got = await h.stub.GetInvoice(
        pb.GetInvoiceRequest(invoice_id=inv.invoice_id), metadata=md(INSURER), timeout=10
    )
    assert got.status == pb.INVOICE_STATUS_PAID and got.paid_satang == 150_000
    assert per_claim(got) == [("tx-1", 100_000, 90_000, 100_000), ("tx-2", 50_000, 50_000, 50_000)]
    listed = await h.stub.ListInvoices(pb.ListInvoicesRequest(), metadata=md(HOSPITAL), timeout=10)
    assert [per_claim(i) for i in listed.invoices] == [per_claim(got)]
    for _ in range(100):
        if sorted(h.fake.calls) == ["tx-1", "tx-2"]:
            break
        await asyncio.sleep(0.05)
    assert sorted(h.fake.calls) == ["tx-1", "tx-2"]

    st = await statement(h, HOSPITAL, INSURER, today - timedelta(days=1), today)
    assert st.opening_balance_satang == 0 and st.closing_balance_satang == 0
    kinds = [ln.kind for ln in st.lines]
    assert kinds.count("APPROVAL") == 2 and kinds.count("INVOICE") == 1
    assert kinds.count("PAYMENT") == 2 and kinds.count("ADJUSTMENT") == 1
    # Money paid and the adjustment each on their own line, both lowering what is owed.
    moves = [
        (ln.kind, ln.reference, ln.amount_satang) for ln in st.lines if ln.kind in ("PAYMENT", "ADJUSTMENT")
    ]
    assert moves == [
        ("PAYMENT", "TRC-1", -60_000),
        ("ADJUSTMENT", "TRC-1", -10_000),
        ("PAYMENT", "TRC-2", -80_000),
    ]
    assert st.lines[-1].running_balance_satang == 0
    assert st.closing_balance_text_th == "ศูนย์บาทถ้วน"
    await ledger_invariants(h.pool)


async def test_outbox_retries_until_router_acknowledges(h: Harness) -> None:
    h.fake.fail_next = 2
    await h.approve("tx-r", 1_000)
    await h.pay("TRC-R", [line("tx-r", 1_000)])
    async with h.pool.acquire() as conn:
        # Skip the backoff waits so the test stays fast.
        for _ in range(200):
            await conn.execute(
                "UPDATE billing.paid_outbox SET next_attempt_at = now() WHERE delivered_at IS NULL"
            )
            if h.fake.calls:
                break
            await asyncio.sleep(0.05)
        row = await conn.fetchrow("SELECT attempts, delivered_at FROM billing.paid_outbox")
    assert h.fake.calls == ["tx-r"]
    assert row["attempts"] == 3 and row["delivered_at"] is not None


async def test_overpayment_is_held_and_recovered_with_wo(h: Harness) -> None:
    await h.approve("tx-o", 10_000)
    inv = await h.invoice("INV-O", ["tx-o"])
    await h.pay("TRC-O1", [line("tx-o", 12_500)])
    today = datetime.now(BANGKOK).date()
    st = await statement(h, INSURER, HOSPITAL, today, today)
    assert st.closing_balance_satang == -2_500  # owed back to the insurer
    assert st.aging.current == -2_500
    assert (await ledger_invariants(h.pool))["overpayment_held"] == 2_500
    # The money paid counts the excess; what is settled stops at the approval.
    inv = await h.stub.GetInvoice(
        pb.GetInvoiceRequest(invoice_id=inv.invoice_id), metadata=md(INSURER), timeout=10
    )
    assert per_claim(inv) == [("tx-o", 10_000, 12_500, 10_000)]

    # Recovering more than is held is refused and changes nothing.
    await h.approve("tx-p", 5_000)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.pay(
            "TRC-O2",
            [line("tx-p", 5_000)],
            plbs=[pb.ProviderAdjustment(code="WO", reference="tx-o", amount_satang=3_000)],
        )
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info(e.value).reason == "NOTHING_TO_RECOVER"

    pay = await h.pay(
        "TRC-O3",
        [line("tx-p", 5_000)],
        plbs=[pb.ProviderAdjustment(code="WO", reference="tx-o", amount_satang=2_500)],
    )
    assert pay.total_satang == 2_500 and list(pay.hospital_codes) == [HOSPITAL]
    st = await statement(h, HOSPITAL, INSURER, today, today)
    assert st.closing_balance_satang == 0
    assert (await ledger_invariants(h.pool))["overpayment_held"] == 0


async def test_bad_payments_are_refused_and_change_nothing(h: Harness) -> None:
    await h.approve("tx-a", 10_000)
    await h.approve("tx-b", 10_000, hospital=HOSPITAL2, insurer=INSURER2)
    await h.approve("tx-d", 0, state=claim_service_pb2.CLAIM_STATE_DENIED)

    async def snapshot() -> list[asyncpg.Record]:
        return await h.pool.fetch(
            "SELECT (SELECT count(*) FROM billing.journal_lines) AS l,"
            " (SELECT count(*) FROM billing.payments) AS p,"
            " (SELECT sum(settled_satang) FROM billing.claims) AS s"
        )

    before = await snapshot()
    cases = [
        (
            dict(trace="T1", lines=[line("tx-a", 5_000)], total=4_000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "PAYMENT_UNBALANCED",
        ),
        (
            dict(trace="T2", lines=[line("tx-b", 5_000)]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "CLAIMS_NOT_PAYABLE",
        ),
        (
            dict(trace="T3", lines=[line("tx-d", 5_000)]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "CLAIMS_NOT_PAYABLE",
        ),
        (
            dict(trace="T4", lines=[line("tx-nope", 5_000)]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "CLAIMS_NOT_PAYABLE",
        ),
        (dict(trace="T5", lines=[line("tx-a", -5)]), grpc.StatusCode.INVALID_ARGUMENT, "NEGATIVE_AMOUNT"),
        (
            dict(trace="T6", lines=[line("tx-a", 10**15 + 1)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "AMOUNT_OUT_OF_RANGE",
        ),
        (
            dict(trace="T7", lines=[line("tx-a", 6 * 10**14), line("tx-b", 6 * 10**14)], total=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "AMOUNT_OUT_OF_RANGE",
        ),
        (
            dict(trace="T8", lines=[line("tx-a", 5)], paid_at=datetime(1999, 1, 1, tzinfo=UTC)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "DATE_OUT_OF_RANGE",
        ),
        (
            dict(trace="T9", lines=[line("tx-a", 5)], paid_at=datetime.now(UTC) + timedelta(days=3)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "DATE_OUT_OF_RANGE",
        ),
        (
            dict(trace="T10", lines=[line("tx-a", 5, ("XX", "1", 1))]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ADJUSTMENT",
        ),
        (dict(trace="", lines=[line("tx-a", 5)]), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TRACE_NO"),
    ]
    for kwargs, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await h.pay(**kwargs)  # type: ignore[arg-type]
        assert (e.value.code(), info(e.value).reason) == (code, reason), kwargs
        assert info(e.value).domain == "iclaim.v1"
    # The CLAIMS_NOT_PAYABLE refusal names the offending claim.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.pay("T11", [line("tx-a", 5), line("tx-b", 5)])
    assert info(e.value).metadata["transaction_ids"] == "tx-b"
    assert await snapshot() == before
    await ledger_invariants(h.pool)


async def test_trace_no_is_idempotent_and_conflicts_on_other_content(h: Harness) -> None:
    await h.approve("tx-i", 10_000)
    at = datetime.now(UTC)
    first = await h.pay("TRC-I", [line("tx-i", 4_000)], paid_at=at)
    again = await h.pay("TRC-I", [line("tx-i", 4_000)], paid_at=at)
    assert again.payment_id == first.payment_id
    assert again == first
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.pay("TRC-I", [line("tx-i", 4_001)], paid_at=at)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert info(e.value).reason == "TRACE_NO_REUSED"
    settled = await h.pool.fetchval("SELECT settled_satang FROM billing.claims")
    assert settled == 4_000
    # Another insurer may use the same trace number.
    await h.approve("tx-j", 1_000, insurer=INSURER2)
    other = await h.pay("TRC-I", [line("tx-j", 1_000)], insurer=INSURER2)
    assert other.payment_id != first.payment_id


async def test_concurrent_same_trace_no_gives_one_payment(h: Harness) -> None:
    await h.approve("tx-c", 10_000)
    await h.approve("tx-c2", 10_000)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{h.billing.port}") for _ in range(6)]
    try:
        from iclaim.v1 import billing_service_pb2_grpc
        from tests.support.billing import ts

        req = pb.PostPaymentRequest(
            trace_no="TRC-C",
            paid_at=ts(datetime.now(UTC)),
            total_satang=13_000,
            lines=[line("tx-c", 7_000), line("tx-c2", 6_000)],
        )
        results = await asyncio.gather(
            *(
                billing_service_pb2_grpc.BillingServiceStub(ch).PostPayment(
                    req, metadata=md(INSURER), timeout=20
                )
                for ch in channels
                for _ in range(3)
            )
        )
    finally:
        for ch in channels:
            await ch.close()
    assert len({r.payment_id for r in results}) == 1
    assert await h.pool.fetchval("SELECT count(*) FROM billing.payments") == 1
    assert await h.pool.fetchval("SELECT sum(settled_satang) FROM billing.claims") == 13_000
    await ledger_invariants(h.pool)


async def test_create_invoice_refusals_name_offending_claims(h: Harness) -> None:
    await h.approve("tx-1", 1_000)
    await h.approve("tx-2", 1_000)
    await h.approve("tx-other-ins", 1_000, insurer=INSURER2)
    await h.approve("tx-other-hosp", 1_000, hospital=HOSPITAL2)
    await h.approve("tx-denied", 0, state=claim_service_pb2.CLAIM_STATE_DENIED)
    await h.invoice("INV-A", ["tx-1"])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.invoice("INV-B", ["tx-2", "tx-1", "tx-other-ins", "tx-other-hosp", "tx-denied", "tx-unknown"])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    meta = info(e.value).metadata
    assert meta["transaction_ids"] == "tx-1,tx-denied,tx-other-hosp,tx-other-ins,tx-unknown"
    assert meta["tx_tx-1"] == "ON_OPEN_INVOICE" and meta["tx_tx-other-ins"] == "OTHER_INSURER"
    assert await h.pool.fetchval("SELECT count(*) FROM billing.invoices") == 1

    # invoice_ref is idempotent; different content under it is ALREADY_EXISTS.
    again = await h.invoice("INV-A", ["tx-1"])
    assert again.invoice_id == (await h.invoice("INV-A", ["tx-1"])).invoice_id
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.invoice("INV-A", ["tx-2"])
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # Insurers cannot create invoices; hospitals cannot post payments.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.invoice("INV-C", ["tx-2"], hospital=INSURER)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.pay("T", [line("tx-2", 1)], insurer=HOSPITAL)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_parties_see_only_their_invoices_and_listing_pages(h: Harness) -> None:
    for i in range(5):
        await h.approve(f"tx-{i}", 1_000 + i)
        await h.invoice(f"INV-{i}", [f"tx-{i}"])
    await h.approve("tx-x", 1_000, hospital=HOSPITAL2)
    other = await h.invoice("INV-X", ["tx-x"], hospital=HOSPITAL2)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.stub.GetInvoice(
            pb.GetInvoiceRequest(invoice_id=other.invoice_id), metadata=md(HOSPITAL), timeout=10
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.stub.AcknowledgeInvoice(
            pb.AcknowledgeInvoiceRequest(invoice_id=other.invoice_id), metadata=md(INSURER2), timeout=10
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    seen: list[str] = []
    token = ""
    while True:
        page = await h.stub.ListInvoices(
            pb.ListInvoicesRequest(counterparty_code=INSURER, page_size=2, page_token=token),
            metadata=md(HOSPITAL),
            timeout=10,
        )
        seen += [i.invoice_ref for i in page.invoices]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"INV-{i}" for i in range(5)]
    ins = await h.stub.ListInvoices(pb.ListInvoicesRequest(page_size=100), metadata=md(INSURER), timeout=10)
    assert len(ins.invoices) == 6
    # A counterparty no code looks like (a NUL PostgreSQL refuses, a trailing
    # newline) is no one's: an empty page, not INTERNAL, not someone's invoices.
    for nobody in ("AIA\x00", "AIA\n", "aia"):
        none = await h.stub.ListInvoices(
            pb.ListInvoicesRequest(counterparty_code=nobody), metadata=md(HOSPITAL), timeout=10
        )
        assert list(none.invoices) == [] and none.next_page_token == ""


async def test_overdue_after_due_date_and_credit_term_per_pair(database_url: str) -> None:
    async with running_billing(database_url, credit_terms={(HOSPITAL, INSURER): 30}) as h:
        await h.approve("tx-1", 1_000)
        await h.approve("tx-2", 2_000, hospital=HOSPITAL2)
        inv = await h.invoice("INV-1", ["tx-1"])
        inv2 = await h.invoice("INV-2", ["tx-2"], hospital=HOSPITAL2)
        ack = await h.stub.AcknowledgeInvoice(
            pb.AcknowledgeInvoiceRequest(invoice_id=inv.invoice_id), metadata=md(INSURER), timeout=10
        )
        ack2 = await h.stub.AcknowledgeInvoice(
            pb.AcknowledgeInvoiceRequest(invoice_id=inv2.invoice_id), metadata=md(INSURER), timeout=10
        )
        today = datetime.now(BANGKOK).date()
        assert (ack.due_date.year, ack.due_date.month, ack.due_date.day) == (
            (today + timedelta(days=30)).timetuple()[:3]
        )
        assert date(ack2.due_date.year, ack2.due_date.month, ack2.due_date.day) == (
            today + timedelta(days=15)
        )
        # Move the second invoice's due date 40 days into the past (as if time passed).
        await h.pool.execute(
            "UPDATE billing.invoices SET due_date = $1 WHERE invoice_id = $2",
            today - timedelta(days=40),
            inv2.invoice_id,
        )
        got = await h.stub.GetInvoice(
            pb.GetInvoiceRequest(invoice_id=inv2.invoice_id), metadata=md(HOSPITAL2), timeout=10
        )
        assert got.status == pb.INVOICE_STATUS_OVERDUE
        listed = await h.stub.ListInvoices(
            pb.ListInvoicesRequest(status=pb.INVOICE_STATUS_OVERDUE), metadata=md(INSURER), timeout=10
        )
        assert [i.invoice_id for i in listed.invoices] == [inv2.invoice_id]
        listed = await h.stub.ListInvoices(
            pb.ListInvoicesRequest(status=pb.INVOICE_STATUS_ACKNOWLEDGED), metadata=md(INSURER), timeout=10
        )
        assert [i.invoice_id for i in listed.invoices] == [inv.invoice_id]
        await h.approve("tx-3", 3_000)
        inv3 = await h.invoice("INV-3", ["tx-3"])
        listed = await h.stub.ListInvoices(
            pb.ListInvoicesRequest(counterparty_code=HOSPITAL, status=pb.INVOICE_STATUS_SUBMITTED),
            metadata=md(INSURER),
            timeout=10,
        )
        assert [i.invoice_id for i in listed.invoices] == [inv3.invoice_id]
        st = await statement(h, INSURER, HOSPITAL2, today, today)
        assert st.aging.d31_60 == 2_000 and st.closing_balance_satang == 2_000
        assert st.closing_balance_text_th == "ยี่สิบบาทถ้วน"


async def test_decisions_redelivered_or_conflicting(h: Harness) -> None:
    await h.approve("tx-1", 1_000)
    await h.approve("tx-1", 1_000)
    await h.approve("tx-1", 0, state=claim_service_pb2.CLAIM_STATE_PENDING_REVIEW)
    await h.approve("tx-1", 0, state=claim_service_pb2.CLAIM_STATE_PAID)
    assert await h.pool.fetchval("SELECT count(*) FROM billing.journals") == 1
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.approve("tx-1", 2_000)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info(e.value).reason == "DECISION_CONFLICT"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.approve("tx-2", -1)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_statement_periods_and_bad_dates(h: Harness) -> None:
    day = datetime(2026, 3, 10, 12, tzinfo=BANGKOK)
    await h.approve("tx-1", 10_000, decided_at=day)
    await h.approve("tx-2", 5_000, decided_at=day + timedelta(days=5))
    await h.pay("T1", [line("tx-1", 4_000)], paid_at=day + timedelta(days=20))
    st = await statement(h, HOSPITAL, INSURER, date(2026, 3, 12), date(2026, 3, 31))
    assert st.opening_balance_satang == 10_000
    assert [ln.amount_satang for ln in st.lines] == [5_000, -4_000]
    assert [ln.running_balance_satang for ln in st.lines] == [15_000, 11_000]
    assert st.closing_balance_satang == 11_000
    a = st.aging
    assert a.current + a.d1_30 + a.d31_60 + a.d61_90 + a.over_90 == 11_000
    assert st.closing_balance_text_th == "หนึ่งร้อยสิบบาทถ้วน"
    # The period is inclusive, in Bangkok days: 2026-03-10 00:00 +07 starts it.
    st = await statement(h, HOSPITAL, INSURER, date(2026, 3, 10), date(2026, 3, 10))
    assert st.opening_balance_satang == 0 and st.closing_balance_satang == 10_000
    for start, end in [(date(2026, 3, 2), date(2026, 3, 1)), (date(1990, 1, 1), date(2026, 1, 1))]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await statement(h, HOSPITAL, INSURER, start, end)
        assert info(e.value).reason == "DATE_OUT_OF_RANGE"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.stub.GetStatement(
            pb.GetStatementRequest(
                counterparty_code=INSURER,
                period_start=date_pb2.Date(year=2026, month=2, day=30),
                period_end=gdate(date(2026, 3, 1)),
            ),
            metadata=md(HOSPITAL),
            timeout=10,
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_database_refuses_edits_of_posted_entries(h: Harness) -> None:
    await h.approve("tx-1", 1_000)
    async with h.pool.acquire() as conn:
        for sql in [
            "UPDATE billing.journal_lines SET amount_satang = amount_satang * 2",
            "DELETE FROM billing.journal_lines",
            "UPDATE billing.journals SET description = 'x'",
            "DELETE FROM billing.journals",
            "TRUNCATE billing.journal_lines",
            "UPDATE billing.accounts SET balance_satang = 0",
        ]:
            with pytest.raises(asyncpg.PostgresError, match="billing:"):
                await conn.execute(sql)
        # An unbalanced journal cannot commit.
        with pytest.raises(asyncpg.PostgresError, match="unbalanced"):
            async with conn.transaction():
                jid = await conn.fetchval(
                    "INSERT INTO billing.journals (idem_key, content_sha256, kind, hospital_code,"
                    " insurer_code, reference, description, effective_at)"
                    " VALUES ('x', 'x', 'ADJUSTMENT', $1, $2, 'r', 'd', now()) RETURNING id",
                    HOSPITAL,
                    INSURER,
                )
                acc = await conn.fetchval("SELECT min(id) FROM billing.accounts")
                await conn.execute(
                    "INSERT INTO billing.journal_lines (journal_id, account_id,"
                    " amount_satang) VALUES ($1, $2, 5)",
                    jid,
                    acc,
                )
        # Lines cannot be added to an already posted journal.
        with pytest.raises(asyncpg.PostgresError, match="already posted"):
            await conn.execute(
                "INSERT INTO billing.journal_lines (journal_id, account_id, amount_satang)"
                " SELECT min(j.id), min(a.id), 1 FROM billing.journals j, billing.accounts a"
            )
    # Corrections go through a reversing entry.
    jid = await h.pool.fetchval("SELECT id FROM billing.journals")
    await h.billing.usecases.reverse_journal(jid, "rev:1", datetime.now(UTC))
    assert (
        await h.pool.fetchval("SELECT sum(balance_satang) FROM billing.accounts WHERE kind = 'receivable'")
        == 0
    )
    await ledger_invariants(h.pool)


async def test_metrics_invoices_outstanding_overdue_and_days_to_pay(h: Harness) -> None:
    from prometheus_client import REGISTRY

    from services.billing import metrics

    def days_to_pay_count() -> float:
        return REGISTRY.get_sample_value("iclaim_billing_days_to_pay_count", {"insurer": INSURER}) or 0.0

    before = days_to_pay_count()
    await h.approve("tx-1", 1_000)
    await h.approve("tx-2", 2_000)
    await h.approve("tx-3", 4_000, insurer=INSURER2)
    paid = await h.invoice("INV-1", ["tx-1"])
    late = await h.invoice("INV-2", ["tx-2"])
    await h.invoice("INV-3", ["tx-3"], insurer=INSURER2)
    await h.pay("TRC-1", [line("tx-1", 1_000)])
    assert days_to_pay_count() == before + 1
    await h.pool.execute(
        "UPDATE billing.invoices SET due_date = $1 WHERE invoice_id = $2", date(2026, 1, 1), late.invoice_id
    )
    snap = await h.billing.usecases.metrics_snapshot(datetime.now(BANGKOK).date())
    assert snap.invoices_by_status == {"PAID": 1, "OVERDUE": 1, "SUBMITTED": 1}
    assert snap.outstanding_by_insurer == {INSURER: 2_000, INSURER2: 4_000}
    assert snap.overdue_by_insurer == {INSURER: 2_000}
    metrics.publish(snap)
    assert REGISTRY.get_sample_value("iclaim_billing_invoices", {"status": "OVERDUE"}) == 1
    assert REGISTRY.get_sample_value("iclaim_billing_overdue_satang", {"insurer": INSURER}) == 2_000
    assert paid.invoice_id


async def test_a_reversed_payment_leaves_the_claims_amounts(h: Harness) -> None:
    await h.approve("tx-rv", 8_000)
    inv = await h.invoice("INV-RV", ["tx-rv"])
    await h.pay("TRC-RV", [line("tx-rv", 5_000, ("CO", "45", 1_000))])
    got = await h.stub.GetInvoice(
        pb.GetInvoiceRequest(invoice_id=inv.invoice_id), metadata=md(HOSPITAL), timeout=10
    )
    assert per_claim(got) == [("tx-rv", 8_000, 5_000, 6_000)]
    jid = await h.pool.fetchval("SELECT id FROM billing.journals WHERE kind = 'PAYMENT'")
    await h.billing.usecases.reverse_journal(jid, "rev:rv", datetime.now(UTC))
    got = await h.stub.GetInvoice(
        pb.GetInvoiceRequest(invoice_id=inv.invoice_id), metadata=md(HOSPITAL), timeout=10
    )
    assert per_claim(got) == [("tx-rv", 8_000, 0, 0)] and got.paid_satang == 0
    await ledger_invariants(h.pool)
