"""Issue 10, item 5: what a client sees agrees across services. A claim that
GetClaim shows as approved can be invoiced (and paid) at once, even though its
approval reaches billing through the router's outbox only later: billing reads
the decision through from the claim router and records it as the intake would.

The claim router and billing run in-process over real PostgreSQL; the router's
outbox relay to billing is off, so billing hears of no approval by itself."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_status import rpc_status
from structlog.testing import capture_logs

from iclaim.errors import error_info_of
from iclaim.v1 import billing_service_pb2 as pb
from iclaim.v1 import claim_service_pb2 as cpb
from iclaim_hub.internal.v1 import billing_intake_pb2, decision_intake_pb2
from tests.support.billing import HOSPITAL, HOSPITAL2, INSURER, INSURER2, ledger_invariants, running_billing
from tests.support.router import PULL, running_router

S = cpb.ClaimState


def reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin"
    info = error_info_of(status)
    assert info is not None
    return info.reason


def line(tx: str, paid: int) -> pb.PaymentLine:
    return pb.PaymentLine(transaction_id=tx, paid_satang=paid)


async def test_an_approval_the_hospital_has_seen_is_invoiceable_at_once(database_url: str) -> None:
    async with (
        running_router(database_url) as router,
        running_billing(database_url, router_target=router.target) as h,
    ):
        full = await router.submit(HOSPITAL, "RT-1", 12_500)
        part = await router.submit(HOSPITAL, "RT-2", 8_000)
        await router.decide(full, S.CLAIM_STATE_APPROVED, 12_500)
        await router.decide(part, S.CLAIM_STATE_PARTIALLY_APPROVED, 5_000)
        assert (await router.get(full)).state == S.CLAIM_STATE_APPROVED  # what the hospital sees
        assert await h.pool.fetchval("SELECT count(*) FROM billing.claims") == 0  # the relay is off

        tids = [full.transaction_id, part.transaction_id]
        invoice = await h.invoice("INV-RT", tids, insurer=PULL)
        assert invoice.status == pb.INVOICE_STATUS_SUBMITTED and invoice.total_satang == 17_500

        # The outbox delivery that comes later finds the same decisions: nothing changes.
        journals_before = await h.pool.fetchval("SELECT count(*) FROM billing.journals")
        payloads = await h.pool.fetch("SELECT payload FROM router.outbox WHERE topic = 'billing' ORDER BY id")
        assert len(payloads) == 2
        for row in payloads:
            await h.intake.RecordClaimDecision(
                billing_intake_pb2.RecordClaimDecisionRequest.FromString(row["payload"]), timeout=10
            )
        assert await h.pool.fetchval("SELECT count(*) FROM billing.journals") == journals_before == 2
        rows = await h.pool.fetch(
            "SELECT transaction_id, state, approved_satang FROM billing.claims ORDER BY approved_satang"
        )
        assert [(r["transaction_id"], r["state"], r["approved_satang"]) for r in rows] == [
            (part.transaction_id, "PARTIALLY_APPROVED", 5_000),
            (full.transaction_id, "APPROVED", 12_500),
        ]
        await ledger_invariants(h.pool)


async def test_a_payment_may_name_an_approval_billing_has_not_heard_of(database_url: str) -> None:
    async with (
        running_router(database_url) as router,
        running_billing(database_url, router_target=router.target) as h,
    ):
        claim = await router.submit(HOSPITAL, "RT-P", 3_000)
        await router.decide(claim, S.CLAIM_STATE_APPROVED, 3_000)
        payment = await h.pay("TRC-RT", [line(claim.transaction_id, 3_000)], insurer=PULL)
        assert payment.total_satang == 3_000 and list(payment.hospital_codes) == [HOSPITAL]
        # Nothing left due: billing tells the (real) router, and the claim shows PAID.
        for _ in range(100):
            if (await router.get(claim)).state == S.CLAIM_STATE_PAID:
                break
            await asyncio.sleep(0.05)
        assert (await router.get(claim)).state == S.CLAIM_STATE_PAID
        await ledger_invariants(h.pool)


async def test_undecided_and_unknown_claims_are_still_refused(database_url: str) -> None:
    async with (
        running_router(database_url) as router,
        running_billing(database_url, router_target=router.target) as h,
    ):
        waiting = await router.submit(HOSPITAL, "RT-W", 1_000)
        denied = await router.submit(HOSPITAL, "RT-D", 1_000)
        await router.decide(denied, S.CLAIM_STATE_DENIED, 0)
        ids = [waiting.transaction_id, denied.transaction_id, "txn_" + "0" * 28, "not-a-claim"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.invoice("INV-W", ids, insurer=PULL)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err.value) == "CLAIMS_NOT_INVOICEABLE"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.pay("TRC-W", [line(waiting.transaction_id, 1_000)], insurer=PULL)
        assert reason(err.value) == "CLAIMS_NOT_PAYABLE"
        assert await h.pool.fetchval("SELECT count(*) FROM billing.claims") == 0


async def test_get_claim_decisions_answers_as_the_outbox_and_has_a_limit(database_url: str) -> None:
    async with running_router(database_url) as router:
        approved = await router.submit(HOSPITAL, "RT-A", 2_000)
        await router.decide(approved, S.CLAIM_STATE_APPROVED, 2_000)
        waiting = await router.submit(HOSPITAL, "RT-Q", 2_000)
        ids = [
            approved.transaction_id,
            waiting.transaction_id,
            "txn_" + "f" * 28,
            "garbage",
            approved.transaction_id,
        ]
        resp = await router.settlement.GetClaimDecisions(
            decision_intake_pb2.GetClaimDecisionsRequest(transaction_ids=ids), timeout=10
        )
        # Only the approved claim, once; its fields are those the outbox sends to billing.
        payload = await router.pool.fetchval("SELECT payload FROM router.outbox WHERE topic = 'billing'")
        sent = billing_intake_pb2.RecordClaimDecisionRequest.FromString(payload)
        assert len(resp.decisions) == 1
        assert resp.decisions[0].SerializeToString() == sent.SerializeToString()

        at_limit = [approved.transaction_id] + ["txn_" + "e" * 28] * 999
        ok = await router.settlement.GetClaimDecisions(
            decision_intake_pb2.GetClaimDecisionsRequest(transaction_ids=at_limit), timeout=10
        )
        assert [d.transaction_id for d in ok.decisions] == [approved.transaction_id]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.settlement.GetClaimDecisions(
                decision_intake_pb2.GetClaimDecisionsRequest(transaction_ids=[*at_limit, "x"]), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(err.value) == "TOO_MANY_TRANSACTION_IDS"


# --- billing's side, against a fake router --------------------------------------------


async def test_only_the_callers_own_claims_are_read_through(database_url: str) -> None:
    async with running_billing(database_url) as h:
        h.fake.approve_at_router("tx-other-h", 5_000, hospital=HOSPITAL2, insurer=INSURER)
        h.fake.approve_at_router("tx-other-i", 5_000, hospital=HOSPITAL, insurer=INSURER2)
        h.fake.approve_at_router("tx-mine", 5_000, hospital=HOSPITAL, insurer=INSURER)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.invoice("INV-O", ["tx-other-h", "tx-other-i"])
        assert reason(err.value) == "CLAIMS_NOT_INVOICEABLE"
        status = rpc_status.from_call(err.value)
        assert status is not None
        meta = dict(error_info_of(status).metadata)  # type: ignore[union-attr]
        # Another hospital's claim looks like any unapproved one; the other insurer's is named.
        assert meta["tx_tx-other-h"] == "NOT_APPROVED" and meta["tx_tx-other-i"] == "OTHER_INSURER"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.pay("TRC-O", [line("tx-other-i", 5_000)])
        assert reason(err.value) == "CLAIMS_NOT_PAYABLE"
        recorded = await h.pool.fetch("SELECT transaction_id FROM billing.claims ORDER BY 1")
        assert [r["transaction_id"] for r in recorded] == ["tx-other-i"]  # this hospital's own claim

        invoice = await h.invoice("INV-M", ["tx-mine"])
        assert invoice.total_satang == 5_000
        # Known claims are not asked for again.
        asked = len(h.fake.lookups)
        await h.invoice("INV-M", ["tx-mine"])
        assert len(h.fake.lookups) == asked


async def test_an_unreachable_router_is_unavailable_not_a_refusal(database_url: str) -> None:
    marker = "tx-Somchai-3100600123458"
    async with running_billing(database_url) as h:
        await h.approve("tx-known", 1_000)
        h.fake.approve_at_router(marker, 2_000, hospital=HOSPITAL, insurer=INSURER)
        h.fake.lookup_down = True
        with capture_logs() as logs:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.invoice("INV-U", ["tx-known", marker])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reason(err.value) == "CLAIM_DECISIONS_UNAVAILABLE"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.pay("TRC-U", [line(marker, 2_000)])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert marker not in repr(logs)
        assert await h.pool.fetchval("SELECT count(*) FROM billing.invoices") == 0
        # Claims billing knows need no router.
        assert (await h.invoice("INV-K", ["tx-known"])).total_satang == 1_000
        h.fake.lookup_down = False  # the router is back: the retry succeeds
        assert (await h.invoice("INV-U", [marker])).total_satang == 2_000
