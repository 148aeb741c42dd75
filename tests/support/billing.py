"""Shared pieces for billing service tests: an in-process billing server on port
0 over real PostgreSQL, and a fake ClaimSettlementService peer that records
MarkClaimPaid calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import grpc

from iclaim_hub.common.db import create_pool
from iclaim_hub.common.proto_time import timestamp as ts
from iclaim_hub.common.server import ServeConfig
from iclaim_hub.internal.v1 import (
    billing_intake_pb2,
    billing_intake_pb2_grpc,
    decision_intake_pb2,
    decision_intake_pb2_grpc,
)
from iclaim.v1 import billing_service_pb2 as pb
from iclaim.v1 import billing_service_pb2_grpc, claim_service_pb2
from services.billing.server import BillingApp, Config, build_server

HOSPITAL = "10670"
HOSPITAL2 = "10671"
INSURER = "AIA"
INSURER2 = "MTL"


class FakeSettlement(decision_intake_pb2_grpc.ClaimSettlementServiceServicer):
    """The claim router as billing sees it: MarkClaimPaid, and GetClaimDecisions
    answered from `decided` (claims the router has approved; empty: billing's
    read-through finds nothing and billing behaves as if it had no router)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_next = 0
        self.event = asyncio.Event()
        self.decided: dict[str, decision_intake_pb2.ClaimDecision] = {}
        self.lookups: list[list[str]] = []
        self.lookup_down = False

    async def MarkClaimPaid(self, request, context):  # type: ignore[no-untyped-def]
        if self.fail_next > 0:
            self.fail_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "router restarting")
        self.calls.append(request.transaction_id)
        self.event.set()
        return decision_intake_pb2.MarkClaimPaidResponse(
            claim=claim_service_pb2.Claim(
                transaction_id=request.transaction_id, state=claim_service_pb2.CLAIM_STATE_PAID
            )
        )

    async def GetClaimDecisions(self, request, context):  # type: ignore[no-untyped-def]
        if self.lookup_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "router restarting")
        self.lookups.append(list(request.transaction_ids))
        return decision_intake_pb2.GetClaimDecisionsResponse(
            decisions=[self.decided[t] for t in request.transaction_ids if t in self.decided]
        )

    def approve_at_router(
        self,
        tx: str,
        amount: int,
        *,
        hospital: str,
        insurer: str,
        state: int = claim_service_pb2.CLAIM_STATE_APPROVED,
    ) -> None:
        """A decision the router has made and billing's intake has not received."""
        self.decided[tx] = decision_intake_pb2.ClaimDecision(
            transaction_id=tx,
            hospital_code=hospital,
            insurer_code=insurer,
            state=state,  # type: ignore[arg-type]
            approved_amount_satang=amount,
            decided_at=ts(datetime.now(UTC)),
        )


def md(code: str) -> tuple[tuple[str, str], ...]:
    role = "hospital" if code.isdigit() else "insurer"
    return (("x-iclaim-principal", code), ("x-iclaim-role", role))


@dataclass
class Harness:
    billing: BillingApp
    pool: asyncpg.Pool
    fake: FakeSettlement
    channel: grpc.aio.Channel
    stub: billing_service_pb2_grpc.BillingServiceStub
    intake: billing_intake_pb2_grpc.BillingIntakeServiceStub
    counter: list[int] = field(default_factory=lambda: [0])

    async def approve(
        self,
        tx: str,
        amount: int,
        *,
        hospital: str = HOSPITAL,
        insurer: str = INSURER,
        state: int = claim_service_pb2.CLAIM_STATE_APPROVED,
        decided_at: datetime | None = None,
    ) -> None:
        await self.intake.RecordClaimDecision(
            billing_intake_pb2.RecordClaimDecisionRequest(
                transaction_id=tx,
                hospital_code=hospital,
                insurer_code=insurer,
                state=state,
                approved_amount_satang=amount,
                decided_at=ts(decided_at or datetime.now(UTC)),
            ),
            timeout=10,
        )

    async def invoice(
        self, ref: str, txs: list[str], *, hospital: str = HOSPITAL, insurer: str = INSURER
    ) -> pb.Invoice:
        return await self.stub.CreateInvoice(
            pb.CreateInvoiceRequest(invoice_ref=ref, insurer_code=insurer, transaction_ids=txs),
            metadata=md(hospital),
            timeout=10,
        )

    async def void(self, invoice_id: str, reason: str = "", *, hospital: str = HOSPITAL) -> pb.Invoice:
        return await self.stub.VoidInvoice(
            pb.VoidInvoiceRequest(invoice_id=invoice_id, reason=reason), metadata=md(hospital), timeout=10
        )

    async def pay(
        self,
        trace: str,
        lines: list[pb.PaymentLine],
        *,
        insurer: str = INSURER,
        plbs: list[pb.ProviderAdjustment] = (),
        total: int | None = None,  # type: ignore[assignment]
        paid_at: datetime | None = None,
    ) -> pb.Payment:
        if total is None:
            total = sum(ln.paid_satang for ln in lines) - sum(a.amount_satang for a in plbs)
        return await self.stub.PostPayment(
            pb.PostPaymentRequest(
                trace_no=trace,
                paid_at=ts(paid_at or datetime.now(UTC)),
                total_satang=total,
                lines=lines,
                provider_adjustments=list(plbs),
            ),
            metadata=md(insurer),
            timeout=10,
        )


@asynccontextmanager
async def running_billing(
    database_url: str, *, router_target: str | None = None, **config: object
) -> AsyncIterator[Harness]:
    """Billing in-process; its claim router is the FakeSettlement unless
    `router_target` names a real one (then `fake` sees no calls)."""
    fake = FakeSettlement()
    peer = grpc.aio.server()
    decision_intake_pb2_grpc.add_ClaimSettlementServiceServicer_to_server(fake, peer)
    peer_port = peer.add_insecure_port("127.0.0.1:0")
    await peer.start()
    pool = await create_pool(database_url, max_size=20)
    cfg = Config(
        serve=ServeConfig(listen_addr="127.0.0.1:0", metrics_port=-1),
        database_url=database_url,
        router_target=router_target or f"127.0.0.1:{peer_port}",
        outbox_poll_s=0.05,
        **config,
    )  # type: ignore[arg-type]
    billing = await build_server(cfg)
    await billing.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{billing.port}")
    try:
        yield Harness(
            billing,
            pool,
            fake,
            channel,
            billing_service_pb2_grpc.BillingServiceStub(channel),
            billing_intake_pb2_grpc.BillingIntakeServiceStub(channel),
        )
    finally:
        await channel.close()
        await billing.stop(0)
        await pool.close()
        await peer.stop(0)


async def ledger_invariants(pool: asyncpg.Pool) -> dict[str, int]:
    """Checks the ledger's own invariants; returns a few totals for the caller."""
    async with pool.acquire() as conn:
        unbalanced = await conn.fetchval(
            "SELECT count(*) FROM (SELECT journal_id FROM billing.journal_lines"
            " GROUP BY journal_id HAVING sum(amount_satang) <> 0) x"
        )
        assert unbalanced == 0, "a journal does not balance"
        trial = await conn.fetchval("SELECT coalesce(sum(amount_satang), 0) FROM billing.journal_lines")
        assert trial == 0, "trial balance is not zero"
        cached = await conn.fetch(
            "SELECT a.id, a.balance_satang, coalesce(sum(l.amount_satang), 0) AS s"
            " FROM billing.accounts a LEFT JOIN billing.journal_lines l ON l.account_id = a.id"
            " GROUP BY a.id HAVING a.balance_satang <> coalesce(sum(l.amount_satang), 0)"
        )
        assert not cached, f"cached balances differ from entries: {cached}"
        claims = await conn.fetch(
            "SELECT c.transaction_id, c.approved_satang, c.settled_satang,"
            " coalesce((SELECT sum(l.amount_satang) FROM billing.journal_lines l"
            "  JOIN billing.accounts a ON a.id = l.account_id"
            "  WHERE a.kind = 'receivable' AND l.transaction_id = c.transaction_id), 0) AS due"
            " FROM billing.claims c"
        )
        for c in claims:
            assert 0 <= c["settled_satang"] <= c["approved_satang"], c
            assert c["due"] == c["approved_satang"] - c["settled_satang"], c
        twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT transaction_id FROM billing.invoice_claims WHERE open"
            " GROUP BY transaction_id HAVING count(*) > 1) x"
        )
        assert twice == 0, "a claim is on two open invoices"
        stale_open = await conn.fetchval(
            "SELECT count(*) FROM billing.invoice_claims x JOIN billing.invoices i"
            " USING (invoice_id) WHERE x.open <> (i.status NOT IN ('PAID', 'VOID'))"
        )
        assert stale_open == 0, "invoice_claims.open disagrees with invoice status"
        over = await conn.fetchval(
            "SELECT coalesce(sum(balance_satang), 0) FROM billing.accounts WHERE kind = 'overpayment'"
        )
        return {"overpayment_held": -int(over)}
