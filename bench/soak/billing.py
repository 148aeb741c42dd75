"""Invoices and payments during the soak, so the ledger has more than approvals:
a share of the approved claims is invoiced by its hospital (CreateInvoice),
acknowledged and paid in full by its insurer (PostPayment), all through the
gateway with the SDK. Every call is retried with the same invoice_ref/trace_no
(idempotent, §7) until it succeeds; a paid claim becomes PAID."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc

from bench.soak.his import _describe, _retryable
from iclaim.client.billing import BillingClient
from iclaim.client.credentials import Credentials
from iclaim.v1 import billing_service_pb2 as bpb
from iclaim.v1 import claim_service_pb2 as pb

BATCH = 4  # claims per invoice
GIVE_UP_S = 600.0
T = TypeVar("T")


class Billing:
    def __init__(
        self,
        creds: Callable[[str], Credentials],
        share: float,
        run_id: str,
        rng: random.Random,
        wrap: Callable[[BillingClient], Awaitable[BillingClient]],
    ) -> None:
        self._creds = creds
        self._share = share
        self._run_id = run_id
        self._rng = rng
        self._wrap = wrap
        self._clients: dict[str, BillingClient] = {}
        self._waiting: dict[tuple[str, str], list[pb.Claim]] = defaultdict(list)
        self.chosen: set[str] = set()  # transaction ids picked for payment (they end PAID)
        self.invoices = 0
        self.payments = 0
        self.paid_claims = 0
        self.paid: dict[str, int] = {}  # transaction id -> satang, each PostPayment that succeeded
        self.errors: Counter[str] = Counter()
        self._batches = 0
        self._work: asyncio.Queue[list[pb.Claim] | None] = asyncio.Queue()

    def offer(self, claim: pb.Claim) -> None:
        """A claim the HIS saw decided; approved ones are invoiced at `share`."""
        if claim.approved_amount_satang <= 0 or claim.state == pb.CLAIM_STATE_PAID:
            return
        if self._rng.random() >= self._share:
            return
        self.chosen.add(claim.transaction_id)
        pair = (claim.hospital_code, claim.insurer_code)
        self._waiting[pair].append(claim)
        if len(self._waiting[pair]) >= BATCH:
            self._work.put_nowait(self._waiting.pop(pair))

    def flush(self) -> None:
        """The rest of the claims, in smaller invoices (end of the run)."""
        for pair in list(self._waiting):
            self._work.put_nowait(self._waiting.pop(pair))
        self._work.put_nowait(None)

    async def _client(self, code: str) -> BillingClient:
        if code not in self._clients:
            self._clients[code] = await self._wrap(BillingClient(self._creds(code)))
        return self._clients[code]

    async def _until_done(self, what: str, call: Callable[[], Awaitable[T]]) -> T | None:
        deadline = time.monotonic() + GIVE_UP_S
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as err:
                if not _retryable(err) or time.monotonic() > deadline:
                    self.errors[_describe(what, err)] += 1
                    return None
                await asyncio.sleep(self._rng.uniform(0.5, 3.0))

    async def _settle(self, claims: list[pb.Claim]) -> None:
        hospital, insurer = claims[0].hospital_code, claims[0].insurer_code
        self._batches += 1
        ref = f"SOAK-{self._run_id}-INV-{self._batches}"
        trace_no = f"SOAK-{self._run_id}-PAY-{self._batches}"
        tids = [c.transaction_id for c in claims]
        hosp, ins = await self._client(hospital), await self._client(insurer)
        invoice = await self._until_done("CreateInvoice", lambda: hosp.create_invoice(ref, insurer, tids))
        if invoice is None:
            return
        self.invoices += 1
        if (
            await self._until_done("AcknowledgeInvoice", lambda: ins.acknowledge_invoice(invoice.invoice_id))
            is None
        ):
            return
        paid_at = datetime.now(UTC) - timedelta(minutes=1)  # fixed: a resend must be the same payment
        lines = [
            bpb.PaymentLine(transaction_id=c.transaction_id, paid_satang=c.approved_amount_satang)
            for c in claims
        ]
        if (
            await self._until_done("PostPayment", lambda: ins.post_payment(trace_no, paid_at, lines))
            is not None
        ):
            self.payments += 1
            self.paid_claims += len(claims)
            self.paid.update((c.transaction_id, c.approved_amount_satang) for c in claims)

    async def run(self) -> None:
        """Settles batches as they fill, until flush() and the last batch."""
        pending: set[asyncio.Task[None]] = set()
        while (batch := await self._work.get()) is not None:
            task = asyncio.create_task(self._settle(batch))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
