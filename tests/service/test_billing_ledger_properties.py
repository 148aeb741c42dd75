"""A Hypothesis state machine drives random approvals, invoices,
acknowledgements, payments (partial, full, over, with adjustments and WO
recoveries), duplicates, reorderings and concurrent posts through the billing
server on real PostgreSQL, against a small reference model; after every step
the ledger's invariants and the model must agree."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg
import grpc
from google.type import date_pb2
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from iclaim.v1 import billing_service_pb2 as pb
from iclaim.v1 import claim_service_pb2
from services.billing.domain import BANGKOK
from tests.support.billing import Harness, ledger_invariants, md, running_billing, ts

HOSPITALS = ("10670", "10671")
INSURERS = ("AIA", "MTL")
# Each claim id has a fixed owner and approved amount, so redeliveries are
# identical unless a rule deliberately sends a conflicting decision.
CLAIMS = {
    f"c{i}": (HOSPITALS[i % 2], INSURERS[(i // 2) % 2], 1_000 * (1 + i % 5) + 37 * i) for i in range(12)
}
TRACES = [f"T{i}" for i in range(8)]
REFS = [f"INV{i}" for i in range(5)]
NOW = datetime.now(UTC)
TABLES = (
    "journal_lines",
    "journals",
    "accounts",
    "paid_outbox",
    "invoice_claims",
    "invoices",
    "payments",
    "claims",
    "credit_terms",
)


@dataclass
class Model:
    approved: dict[str, int] = field(default_factory=dict)  # tx -> approved amount
    denied: set[str] = field(default_factory=set)
    settled: dict[str, int] = field(default_factory=dict)
    held: dict[tuple[str, str], int] = field(default_factory=dict)  # overpayment per pair
    payments: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    invoices: dict[tuple[str, str], tuple[bytes, str, tuple[str, ...]]] = field(default_factory=dict)
    open_invoice: dict[str, str] = field(default_factory=dict)  # tx -> invoice_id
    invoice_claims: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def remaining(self, tx: str) -> int:
        return self.approved[tx] - self.settled.get(tx, 0)

    def apply_line(self, insurer: str, tx: str, settles: int) -> None:
        applied = min(settles, self.remaining(tx))
        self.settled[tx] = self.settled.get(tx, 0) + applied
        pair = (CLAIMS[tx][0], insurer)
        self.held[pair] = self.held.get(pair, 0) + settles - applied
        self.close_paid_invoices()

    def close_paid_invoices(self) -> None:
        for iid, txs in self.invoice_claims.items():
            if all(self.remaining(t) == 0 for t in txs):
                for t in txs:
                    if self.open_invoice.get(t) == iid:
                        del self.open_invoice[t]


line_st = st.tuples(
    st.sampled_from(sorted(CLAIMS)),
    st.integers(0, 6_000),
    st.one_of(st.none(), st.tuples(st.sampled_from(["CO", "PR", "OA", "PI", "CR"]), st.integers(1, 800))),
)


def make_line(tx: str, paid: int, adj: tuple[str, int] | None) -> pb.PaymentLine:
    return pb.PaymentLine(
        transaction_id=tx,
        paid_satang=paid,
        adjustments=([pb.Adjustment(group=adj[0], reason_code="45", amount_satang=adj[1])] if adj else []),
    )


def settles(ln: pb.PaymentLine) -> int:
    return ln.paid_satang + sum(a.amount_satang for a in ln.adjustments)


def test_ledger_state_machine(database_url: str) -> None:
    runner = asyncio.Runner()
    holder: dict[str, object] = {}

    async def start() -> None:
        cm = running_billing(database_url)
        holder["cm"] = cm
        holder["h"] = await cm.__aenter__()

    runner.run(start())
    h: Harness = holder["h"]  # type: ignore[assignment]

    async def reset() -> None:
        # Test-only: a superuser session bypasses the immutability triggers to
        # start each example from an empty ledger. The server's background
        # workers may hold locks for a moment: retry a lost deadlock.
        for _ in range(10):
            try:
                async with h.pool.acquire() as conn:
                    await conn.execute("SET session_replication_role = replica")
                    try:
                        await conn.execute("TRUNCATE " + ", ".join(f"billing.{t}" for t in TABLES))
                    finally:
                        await conn.execute("RESET session_replication_role")
                return
            except asyncpg.exceptions.DeadlockDetectedError:
                await asyncio.sleep(0.05)
        raise AssertionError("could not reset the billing schema")

    class BillingMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            runner.run(reset())
            self.m = Model()

        def call(self, make):  # type: ignore[no-untyped-def]
            """Runs make() (an RPC or coroutine) to completion on the test's loop."""

            async def go():  # type: ignore[no-untyped-def]
                return await make()

            return runner.run(go())

        def expect_error(self, coro, code: grpc.StatusCode, reason: str | None = None) -> None:  # type: ignore[no-untyped-def]
            try:
                self.call(coro)
            except grpc.aio.AioRpcError as err:
                assert err.code() == code, (err.code(), err.details())
                if reason:
                    assert dict(err.trailing_metadata() or ())["x-iclaim-reason"] == reason
                return
            raise AssertionError(f"expected {code.name}")

        # --- approvals ------------------------------------------------------------
        @rule(
            tx=st.sampled_from(sorted(CLAIMS)),
            partial=st.booleans(),
            days_ago=st.integers(0, 120),
            conflicting=st.integers(0, 5).map(lambda x: x == 0),
        )
        def approve(self, tx: str, partial: bool, days_ago: int, conflicting: bool) -> None:
            hospital, insurer, amount = CLAIMS[tx]
            if conflicting:
                amount += 1
            state = (
                claim_service_pb2.CLAIM_STATE_PARTIALLY_APPROVED
                if partial
                else claim_service_pb2.CLAIM_STATE_APPROVED
            )
            coro = functools.partial(
                h.approve,
                tx,
                amount,
                hospital=hospital,
                insurer=insurer,
                state=state,
                decided_at=NOW - timedelta(days=days_ago),
            )
            # A claim is decided once: the same amount again (state partial or
            # not is the insurer's label) is a replay only if fully identical.
            if tx in self.m.denied or (
                tx in self.m.approved and (self.m.approved[tx] != amount or self._states.get(tx) != state)
            ):
                self.expect_error(coro, grpc.StatusCode.FAILED_PRECONDITION, "DECISION_CONFLICT")
                return
            self.call(coro)
            self.m.approved[tx] = amount
            self._states[tx] = state

        @rule(tx=st.sampled_from(sorted(CLAIMS)))
        def deny(self, tx: str) -> None:
            hospital, insurer, _ = CLAIMS[tx]
            coro = functools.partial(
                h.approve,
                tx,
                0,
                hospital=hospital,
                insurer=insurer,
                state=claim_service_pb2.CLAIM_STATE_DENIED,
            )
            if tx in self.m.approved:
                self.expect_error(coro, grpc.StatusCode.FAILED_PRECONDITION, "DECISION_CONFLICT")
                return
            self.call(coro)
            self.m.denied.add(tx)

        # --- invoices ---------------------------------------------------------------
        @rule(
            hospital=st.sampled_from(HOSPITALS),
            insurer=st.sampled_from(INSURERS),
            ref=st.sampled_from(REFS),
            txs=st.lists(st.sampled_from(sorted(CLAIMS)), min_size=1, max_size=4, unique=True),
        )
        def create_invoice(self, hospital: str, insurer: str, ref: str, txs: list[str]) -> None:
            req = pb.CreateInvoiceRequest(invoice_ref=ref, insurer_code=insurer, transaction_ids=txs)
            coro = functools.partial(h.stub.CreateInvoice, req, metadata=md(hospital), timeout=20)
            key = (hospital, ref)
            content = pb.CreateInvoiceRequest(
                insurer_code=insurer, transaction_ids=sorted(txs)
            ).SerializeToString()
            if key in self.m.invoices:
                have, iid, _ = self.m.invoices[key]
                if have == content:
                    assert self.call(coro).invoice_id == iid
                else:
                    self.expect_error(coro, grpc.StatusCode.ALREADY_EXISTS, "INVOICE_REF_REUSED")
                return
            bad = {
                t
                for t in txs
                if t not in self.m.approved
                or CLAIMS[t][0] != hospital
                or CLAIMS[t][1] != insurer
                or t in self.m.open_invoice
                or self.m.remaining(t) <= 0
            }
            if bad:
                try:
                    self.call(coro)
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
                    from grpc_status import rpc_status

                    from iclaim.errors import error_info_of

                    info = error_info_of(rpc_status.from_call(err))  # type: ignore[arg-type]
                    assert info is not None
                    assert set(info.metadata["transaction_ids"].split(",")) == bad
                    return
                raise AssertionError("invoice with ineligible claims accepted")
            inv = self.call(coro)
            assert inv.total_satang == sum(self.m.approved[t] for t in txs)
            self.m.invoices[key] = (content, inv.invoice_id, tuple(txs))
            self.m.invoice_claims[inv.invoice_id] = tuple(txs)
            for t in txs:
                self.m.open_invoice[t] = inv.invoice_id

        @precondition(lambda self: bool(self.m.invoices))
        @rule(data=st.data())
        def acknowledge(self, data: st.DataObject) -> None:
            key = data.draw(st.sampled_from(sorted(self.m.invoices)))
            _, iid, txs = self.m.invoices[key]
            insurer = CLAIMS[txs[0]][1]
            inv = self.call(
                lambda: h.stub.AcknowledgeInvoice(
                    pb.AcknowledgeInvoiceRequest(invoice_id=iid), metadata=md(insurer), timeout=20
                )
            )
            assert inv.HasField("due_date") and inv.HasField("acknowledged_at")
            other = INSURERS[1 - INSURERS.index(insurer)]
            self.expect_error(
                lambda: h.stub.AcknowledgeInvoice(
                    pb.AcknowledgeInvoiceRequest(invoice_id=iid), metadata=md(other), timeout=20
                ),
                grpc.StatusCode.NOT_FOUND,
            )

        # --- payments ---------------------------------------------------------------------
        def payment_outcome(self, insurer: str, req: pb.PostPaymentRequest) -> str:
            key = (insurer, req.trace_no)
            if key in self.m.payments:
                return "replay" if self.m.payments[key][0] == req.SerializeToString() else "reused"
            if any(
                ln.transaction_id not in self.m.approved or CLAIMS[ln.transaction_id][1] != insurer
                for ln in req.lines
            ):
                return "not_payable"
            return "ok"

        @rule(
            data=st.data(),
            insurer=st.sampled_from(INSURERS),
            hospital=st.sampled_from(HOSPITALS),
            trace=st.sampled_from(TRACES),
            days_ago=st.integers(0, 90),
            wo=st.one_of(st.just(0), st.integers(1, 3_000)),
            unbalanced=st.integers(0, 5).map(lambda x: x == 0),
        )
        def pay(
            self,
            data: st.DataObject,
            insurer: str,
            hospital: str,
            trace: str,
            days_ago: int,
            wo: int,
            unbalanced: bool,
        ) -> None:
            # Mostly this insurer's approved claims of one hospital (so WO
            # recoveries apply); sometimes any claim at all.
            if self.m.approved and data.draw(st.integers(0, 4)):
                anchor = data.draw(st.sampled_from(sorted(self.m.approved)))
                hospital, insurer = CLAIMS[anchor][:2]
            mine = sorted(t for t in self.m.approved if CLAIMS[t][:2] == (hospital, insurer))
            choices = mine if mine and data.draw(st.integers(0, 4)) else sorted(CLAIMS)
            txs = data.draw(st.lists(st.sampled_from(choices), min_size=1, max_size=4, unique=True))
            lines = [(tx, *data.draw(line_st)[1:]) for tx in txs]
            pls = [make_line(*ln) for ln in lines]
            plbs = []
            hospitals = {CLAIMS[ln.transaction_id][0] for ln in pls}
            if wo and len(hospitals) == 1:
                plbs = [pb.ProviderAdjustment(code="WO", reference="recovery", amount_satang=wo)]
            total = sum(ln.paid_satang for ln in pls) - sum(a.amount_satang for a in plbs)
            if total < 0:
                plbs, total = [], sum(ln.paid_satang for ln in pls)
            req = pb.PostPaymentRequest(
                trace_no=trace,
                paid_at=ts(NOW - timedelta(days=days_ago, hours=3)),
                total_satang=total + (7 if unbalanced else 0),
                lines=pls,
                provider_adjustments=plbs,
            )
            coro = functools.partial(h.stub.PostPayment, req, metadata=md(insurer), timeout=20)
            if unbalanced:
                self.expect_error(coro, grpc.StatusCode.INVALID_ARGUMENT, "PAYMENT_UNBALANCED")
                return
            outcome = self.payment_outcome(insurer, req)
            event(f"pay: {outcome}{' with WO' if plbs else ''}")
            if outcome == "reused":
                self.expect_error(coro, grpc.StatusCode.ALREADY_EXISTS, "TRACE_NO_REUSED")
                return
            if outcome == "replay":
                assert self.call(coro).payment_id == self.m.payments[(insurer, trace)][1]
                return
            if outcome == "not_payable":
                self.expect_error(coro, grpc.StatusCode.FAILED_PRECONDITION, "CLAIMS_NOT_PAYABLE")
                return
            pair = (next(iter(hospitals)), insurer)
            # WO may recover only what is held after this payment's own lines.
            held_after = self.m.held.get(pair, 0) + sum(
                max(0, settles(ln) - self.m.remaining(ln.transaction_id)) for ln in pls
            )
            if plbs and wo > held_after:
                self.expect_error(coro, grpc.StatusCode.FAILED_PRECONDITION, "NOTHING_TO_RECOVER")
                return
            payment = self.call(coro)
            assert payment.total_satang == total
            self.m.payments[(insurer, trace)] = (req.SerializeToString(), payment.payment_id)
            for ln in pls:
                self.m.apply_line(insurer, ln.transaction_id, settles(ln))
            if plbs:
                self.m.held[pair] -= wo

        @precondition(lambda self: bool(self.m.payments))
        @rule(data=st.data())
        def redeliver_payment(self, data: st.DataObject) -> None:
            (insurer, _), (raw, pid) = data.draw(st.sampled_from(sorted(self.m.payments.items())))
            req = pb.PostPaymentRequest.FromString(raw)
            got = self.call(lambda: h.stub.PostPayment(req, metadata=md(insurer), timeout=20))
            assert got.payment_id == pid

        @rule(
            insurer=st.sampled_from(INSURERS),
            batches=st.lists(
                st.lists(line_st, min_size=1, max_size=3, unique_by=lambda x: x[0]),  # type: ignore[arg-type]
                min_size=2,
                max_size=3,
            ),
            copies=st.integers(1, 3),
        )
        def concurrent_payments(self, insurer: str, batches: list, copies: int) -> None:  # type: ignore[type-arg]
            """Different payments over overlapping claims at once (each possibly
            sent several times concurrently): the result is order-independent."""
            mine = [tx for tx in self.m.approved if CLAIMS[tx][1] == insurer]
            if not mine:
                return
            reqs = []
            for i, batch in enumerate(batches):
                pls = [make_line(mine[hash(tx) % len(mine)], paid, adj) for tx, paid, adj in batch]
                uniq = {ln.transaction_id: ln for ln in pls}
                trace = f"CC{len(self.m.payments)}-{i}"
                reqs.append(
                    pb.PostPaymentRequest(
                        trace_no=trace,
                        paid_at=ts(NOW - timedelta(minutes=i)),
                        total_satang=sum(ln.paid_satang for ln in uniq.values()),
                        lines=list(uniq.values()),
                    )
                )

            async def send() -> list[pb.Payment]:
                # Wait for every call, even after a failure, so that nothing is
                # still in flight when the next example resets the database.
                out = await asyncio.gather(
                    *(
                        h.stub.PostPayment(r, metadata=md(insurer), timeout=30)
                        for r in reqs
                        for _ in range(copies)
                    ),
                    return_exceptions=True,
                )
                for o in out:
                    if isinstance(o, BaseException):
                        raise o
                return out  # type: ignore[return-value]

            results = self.call(send)
            by_trace: dict[str, set[str]] = {}
            for r in results:
                by_trace.setdefault(r.trace_no, set()).add(r.payment_id)
            assert all(len(ids) == 1 for ids in by_trace.values())
            for r in reqs:
                self.m.payments[(insurer, r.trace_no)] = (
                    r.SerializeToString(),
                    next(iter(by_trace[r.trace_no])),
                )
                for ln in r.lines:
                    self.m.apply_line(insurer, ln.transaction_id, settles(ln))

        # --- invariants ------------------------------------------------------------------
        @invariant()
        def ledger_agrees_with_model(self) -> None:
            async def check() -> None:
                totals = await ledger_invariants(h.pool)
                assert totals["overpayment_held"] == sum(self.m.held.values())
                rows = await h.pool.fetch(
                    "SELECT transaction_id, approved_satang, settled_satang FROM billing.claims"
                    " WHERE state <> 'DENIED'"
                )
                assert {r["transaction_id"]: (r["approved_satang"], r["settled_satang"]) for r in rows} == {
                    t: (a, self.m.settled.get(t, 0)) for t, a in self.m.approved.items()
                }
                # Each fully settled claim is queued for PAID exactly once.
                queued = {
                    r["transaction_id"]
                    for r in await h.pool.fetch("SELECT transaction_id FROM billing.paid_outbox")
                }
                assert queued == {t for t, a in self.m.approved.items() if a > 0 and self.m.remaining(t) == 0}
                # Money in (cash + claim adjustments) = settled + overpayment held.
                money = await h.pool.fetchval(
                    "SELECT coalesce(sum(balance_satang), 0) FROM billing.accounts"
                    " WHERE kind = 'cash' OR kind LIKE 'adj%'"
                )
                assert money == sum(self.m.settled.values()) + sum(self.m.held.values())
                opened = {
                    r["transaction_id"]: r["invoice_id"]
                    for r in await h.pool.fetch(
                        "SELECT transaction_id, invoice_id FROM billing.invoice_claims WHERE open"
                    )
                }
                assert opened == self.m.open_invoice
                for iid, txs in self.m.invoice_claims.items():
                    hospital = CLAIMS[txs[0]][0]
                    inv = await h.stub.GetInvoice(
                        pb.GetInvoiceRequest(invoice_id=iid), metadata=md(hospital), timeout=20
                    )
                    assert inv.paid_satang == sum(self.m.settled.get(t, 0) for t in txs)
                    assert (inv.status == pb.INVOICE_STATUS_PAID) == (inv.paid_satang == inv.total_satang)
                for hospital in HOSPITALS:
                    for insurer in INSURERS:
                        await self.check_statements(hospital, insurer)

            self.call(check)

        async def check_statements(self, hospital: str, insurer: str) -> None:
            today = datetime.now(BANGKOK).date()
            owed = sum(
                self.m.remaining(t) for t in self.m.approved if CLAIMS[t][:2] == (hospital, insurer)
            ) - self.m.held.get((hospital, insurer), 0)
            previous_closing = None
            for start, end in [
                (date(2000, 1, 1), today - timedelta(days=45)),
                (today - timedelta(days=44), today + timedelta(days=1)),
            ]:
                s = await h.stub.GetStatement(
                    pb.GetStatementRequest(
                        counterparty_code=insurer,
                        period_start=date_pb2.Date(year=start.year, month=start.month, day=start.day),
                        period_end=date_pb2.Date(year=end.year, month=end.month, day=end.day),
                    ),
                    metadata=md(hospital),
                    timeout=20,
                )
                if previous_closing is not None:
                    assert s.opening_balance_satang == previous_closing
                assert s.closing_balance_satang == s.opening_balance_satang + sum(
                    ln.amount_satang for ln in s.lines
                )
                running = s.opening_balance_satang
                for ln in s.lines:
                    running += ln.amount_satang
                    assert ln.running_balance_satang == running
                a = s.aging
                assert a.current + a.d1_30 + a.d31_60 + a.d61_90 + a.over_90 == (s.closing_balance_satang)
                previous_closing = s.closing_balance_satang
            assert previous_closing == owed

    BillingMachine._states = {}  # type: ignore[attr-defined]

    def fresh_states(self: BillingMachine) -> None:
        self._states = {}  # type: ignore[attr-defined]

    original_init = BillingMachine.__init__

    def init(self: BillingMachine) -> None:
        original_init(self)
        fresh_states(self)

    BillingMachine.__init__ = init  # type: ignore[method-assign]

    try:
        run_state_machine_as_test(
            BillingMachine,
            settings=settings(
                max_examples=60,
                stateful_step_count=30,
                deadline=None,
                # No shrinking: concurrent steps make replays timing-dependent, and
                # the failing step sequence is printed as found.
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        cm = holder["cm"]
        runner.run(cm.__aexit__(None, None, None))  # type: ignore[attr-defined]
        runner.close()
