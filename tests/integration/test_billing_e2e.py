"""Issue 5 end to end through the gateway: claims → decisions → invoice (at
once, issue 10) → voided and invoiced again → acknowledgement → two
instalments → claims PAID, invoice PAID, statements zero and mirrored."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest

from iclaim.client.billing import BillingClient
from iclaim.client.hospital import HospitalClient
from iclaim.client.insurer import InsurerClient
from iclaim.fhir.claim_response import build_claim_response
from iclaim.v1 import billing_service_pb2 as bpb
from iclaim.v1 import claim_service_pb2 as pb
from tests.support.stack import RunningStack
from tests.support.wire import reason_of
from tests.support.claims import fhir

pytestmark = pytest.mark.integration
BANGKOK = ZoneInfo("Asia/Bangkok")


async def approved_pull_claims(stack: RunningStack, amounts: list[int]) -> list[pb.Claim]:
    """Claims to TESTPULL, decided from outside through InsurerService."""
    async with (
        HospitalClient(stack.creds("10671")) as hospital,
        InsurerClient(stack.creds("TESTPULL")) as insurer,
    ):
        tids = []
        for amount in amounts:
            ref = f"BILL-{secrets.token_hex(4)}"
            claim = await hospital.submit_claim(
                fhir(hospital.creds.code, "TESTPULL", ref, "POL-B", amount),
                insurer_code="TESTPULL",
                claim_ref=ref,
                amount_satang=amount,
            )
            tids.append(claim.transaction_id)
        pending = set(tids)
        for _ in range(20):
            for d in await insurer.pull(max_claims=100, wait_s=1):
                if d.transaction_id not in pending:
                    continue
                response = build_claim_response(
                    claim_ref=d.claim_ref,
                    hospital_code=d.hospital_code,
                    insurer_code="TESTPULL",
                    state="APPROVED",
                    billed_satang=d.billed_amount_satang,
                    approved_satang=d.billed_amount_satang,
                    reason_code="",
                )
                await insurer.decide(
                    d,
                    state=pb.CLAIM_STATE_APPROVED,
                    approved_amount_satang=d.billed_amount_satang,
                    claim_response=response,
                )
                pending.discard(d.transaction_id)
            if not pending:
                break
        assert not pending
        return [await hospital.get_claim(t) for t in tids]


async def test_invoice_paid_in_two_instalments(running_stack: RunningStack) -> None:
    claims = await approved_pull_claims(running_stack, [120_000, 80_050, 4_950])
    tids = [c.transaction_id for c in claims]
    total = sum(c.approved_amount_satang for c in claims)
    today = datetime.now(BANGKOK).date()

    async with (
        BillingClient(running_stack.creds("10671")) as hospital,
        BillingClient(running_stack.creds("TESTPULL")) as insurer,
    ):
        opening_h = (await hospital.statement("TESTPULL", today, today)).opening_balance_satang
        ref = f"INV-{secrets.token_hex(4)}"
        # Issue 10: claims GetClaim has shown as APPROVED are invoiceable at once,
        # whether or not the router's outbox has brought the approvals to billing yet.
        withdrawn = await hospital.create_invoice(f"{ref}-W", "TESTPULL", tids)
        assert withdrawn.total_satang == total
        # Only the hospital voids (before any payment); its claims are then free again.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await insurer.void_invoice(withdrawn.invoice_id)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        voided = await hospital.void_invoice(withdrawn.invoice_id, "billed in the wrong period")
        assert voided.status == bpb.INVOICE_STATUS_VOID and voided.paid_satang == 0
        assert (await insurer.get_invoice(withdrawn.invoice_id)).status == bpb.INVOICE_STATUS_VOID
        invoice = await hospital.create_invoice(ref, "TESTPULL", tids)
        assert invoice.total_satang == total
        assert invoice.status == bpb.INVOICE_STATUS_SUBMITTED
        # Idempotent by invoice_ref; a claim cannot be on two open invoices.
        again = await hospital.create_invoice(ref, "TESTPULL", tids)
        assert again.invoice_id == invoice.invoice_id
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await hospital.create_invoice(f"{ref}-2", "TESTPULL", tids[:1])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(err.value) == "CLAIMS_NOT_INVOICEABLE"
        # Roles: a hospital cannot acknowledge or pay.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await hospital.acknowledge_invoice(invoice.invoice_id)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

        acked = await insurer.acknowledge_invoice(invoice.invoice_id)
        assert acked.status == bpb.INVOICE_STATUS_ACKNOWLEDGED
        due = acked.due_date
        assert (due.year, due.month, due.day) == (
            (today + timedelta(days=15)).year,
            (today + timedelta(days=15)).month,
            (today + timedelta(days=15)).day,
        )

        first = [
            bpb.PaymentLine(transaction_id=tids[0], paid_satang=120_000),
            bpb.PaymentLine(transaction_id=tids[1], paid_satang=40_000),
        ]
        trace1 = f"TR-{secrets.token_hex(4)}"
        paid_at = datetime.now(UTC).replace(microsecond=0)
        p1 = await insurer.post_payment(trace1, paid_at, first)
        assert (await insurer.post_payment(trace1, paid_at, first)).payment_id == p1.payment_id
        partly = await hospital.get_invoice(invoice.invoice_id)
        assert partly.status == bpb.INVOICE_STATUS_PARTIALLY_PAID
        assert partly.paid_satang == 160_000

        second = [
            bpb.PaymentLine(
                transaction_id=tids[1],
                paid_satang=40_000,
                adjustments=[bpb.Adjustment(group="CO", reason_code="45", amount_satang=50)],
            ),
            bpb.PaymentLine(transaction_id=tids[2], paid_satang=4_950),
        ]
        await insurer.post_payment(f"TR-{secrets.token_hex(4)}", datetime.now(UTC), second)
        paid = await hospital.get_invoice(invoice.invoice_id)
        assert paid.status == bpb.INVOICE_STATUS_PAID

        st_h = await hospital.statement("TESTPULL", today, today)
        st_i = await insurer.statement("10671", today, today)

    # Claims follow the money (MarkClaimPaid through billing's outbox).
    async with HospitalClient(running_stack.creds("10671")) as client:
        for _ in range(100):
            states = [(await client.get_claim(t)).state for t in tids]
            if all(s == pb.CLAIM_STATE_PAID for s in states):
                break
            await asyncio.sleep(0.1)
        assert all(s == pb.CLAIM_STATE_PAID for s in states), states

    assert st_h.closing_balance_satang == opening_h
    aging = st_h.aging
    assert (
        aging.current + aging.d1_30 + aging.d31_60 + aging.d61_90 + aging.over_90
        == st_h.closing_balance_satang
    )
    assert st_h.closing_balance_satang == st_i.closing_balance_satang
    assert st_h.opening_balance_satang == st_i.opening_balance_satang
    assert [(ln.kind, ln.amount_satang) for ln in st_h.lines] == [
        (ln.kind, ln.amount_satang) for ln in st_i.lines
    ]
    assert st_h.closing_balance_text_th
