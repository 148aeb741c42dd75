"""Billing's batched intake (RecordClaimDecisions) on real PostgreSQL, and the
router's relay using it: one call, one transaction and five statements for a
batch of decisions; a decision refused for good is named and the others are
still recorded; a billing that does not know the call yet is sent the decisions
one by one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from iclaim.v1 import claim_service_pb2
from iclaim_hub.internal.v1 import billing_intake_pb2 as bi
from iclaim_hub.internal.v1 import billing_intake_pb2_grpc as bi_grpc
from services.billing.domain import MAX_DECISIONS_PER_CALL, Decision
from services.billing.store import PgBillingTx
from services.billing.usecases import _record_all
from services.claim_router.model import OutboxEvent
from services.claim_router.relay import OutboxRelay
from tests.support.billing import HOSPITAL, INSURER, Harness, running_billing
from tests.support.one_servicer import serving

APPROVED = claim_service_pb2.CLAIM_STATE_APPROVED
PENDING = claim_service_pb2.CLAIM_STATE_PENDING_REVIEW


def decision(tx: str, amount: int, state: int = APPROVED) -> bi.RecordClaimDecisionRequest:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return bi.RecordClaimDecisionRequest(
        transaction_id=tx,
        hospital_code=HOSPITAL,
        insurer_code=INSURER,
        state=state,  # type: ignore[arg-type]
        approved_amount_satang=amount,
        decided_at=ts,
    )


@pytest.fixture
async def h(database_url: str) -> AsyncIterator[Harness]:
    async with running_billing(database_url) as harness:
        yield harness


async def _journal_txids(h: Harness) -> set[int]:
    rows = await h.pool.fetch("SELECT DISTINCT created_txid FROM billing.journals WHERE kind = 'APPROVAL'")
    return {int(r[0]) for r in rows}


async def test_a_batch_is_recorded_in_one_transaction(h: Harness) -> None:
    answer = await h.intake.RecordClaimDecisions(
        bi.RecordClaimDecisionsRequest(
            decisions=[decision("tx-b1", 1_000), decision("tx-b2", 2_000), decision("tx-b3", 0, PENDING)]
        ),
        timeout=10,
    )
    assert list(answer.refused) == []
    assert len(await _journal_txids(h)) == 1  # both approvals, one commit
    owed = await h.pool.fetchval("SELECT sum(approved_satang) FROM billing.claims")
    assert owed == 3_000
    # The same batch again changes nothing.
    again = await h.intake.RecordClaimDecisions(
        bi.RecordClaimDecisionsRequest(decisions=[decision("tx-b1", 1_000), decision("tx-b2", 2_000)]),
        timeout=10,
    )
    assert list(again.refused) == []
    assert await h.pool.fetchval("SELECT count(*) FROM billing.journals") == 2


async def test_refused_decisions_are_named_and_the_rest_recorded(h: Harness) -> None:
    await h.approve("tx-r1", 5_000)
    answer = await h.intake.RecordClaimDecisions(
        bi.RecordClaimDecisionsRequest(
            decisions=[
                decision("tx-r2", 1_000),
                decision("tx-r1", 6_000),  # decided differently before
                decision("tx-r3", 2_000, state=99),  # not a claim state
                decision("tx-r4", 3_000),
            ]
        ),
        timeout=10,
    )
    assert [(r.index, r.reason) for r in answer.refused] == [(1, "DECISION_CONFLICT"), (2, "INVALID_STATE")]
    rows = await h.pool.fetch("SELECT transaction_id, approved_satang FROM billing.claims ORDER BY 1")
    assert [(r[0], r[1]) for r in rows] == [("tx-r1", 5_000), ("tx-r2", 1_000), ("tx-r4", 3_000)]


async def test_a_batch_has_a_limit(h: Harness) -> None:
    too_many = [decision(f"tx-l{i}", 1) for i in range(MAX_DECISIONS_PER_CALL + 1)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await h.intake.RecordClaimDecisions(bi.RecordClaimDecisionsRequest(decisions=too_many), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await h.pool.fetchval("SELECT count(*) FROM billing.claims") == 0


class _OldBilling(bi_grpc.BillingIntakeServiceServicer):
    """A billing before RecordClaimDecisions: the generated base answers UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.singly: list[str] = []

    async def RecordClaimDecision(  # noqa: N802 (generated name)
        self, request: bi.RecordClaimDecisionRequest, context: object
    ) -> bi.RecordClaimDecisionResponse:
        self.singly.append(request.transaction_id)
        return bi.RecordClaimDecisionResponse()


async def test_the_relay_sends_one_call_and_falls_back_for_an_older_billing(h: Harness) -> None:
    events = [OutboxEvent(i, decision(f"tx-v{i}", 100 * (i + 1)).SerializeToString()) for i in range(3)]
    calls: list[str] = []

    async def count(continuation, details, request):  # type: ignore[no-untyped-def]
        calls.append(details.method.decode() if isinstance(details.method, bytes) else details.method)
        return await continuation(details, request)

    class Counting(grpc.aio.UnaryUnaryClientInterceptor):
        intercept_unary_unary = staticmethod(count)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{h.billing.port}", interceptors=[Counting()]) as channel:
        await OutboxRelay(_NoStore(), None, channel)._send_billing(events)
    assert calls == ["/iclaim_hub.internal.v1.BillingIntakeService/RecordClaimDecisions"]
    assert await h.pool.fetchval("SELECT count(*) FROM billing.claims") == 3

    old = _OldBilling()
    async with serving(bi_grpc.add_BillingIntakeServiceServicer_to_server, old) as channel:
        await OutboxRelay(_NoStore(), None, channel)._send_billing(events)
    assert old.singly == ["tx-v0", "tx-v1", "tx-v2"]


class _NoStore:
    async def outbox_next(self, topic: str, limit: int, sent: object) -> list[OutboxEvent]:
        return []

    async def outbox_mark_sent(self, ids: object) -> None:
        return None


def decision_of(tx: str, hospital: str, amount: int, state: int = APPROVED) -> bi.RecordClaimDecisionRequest:
    d = decision(tx, amount, state)
    d.hospital_code = hospital
    return d


async def test_a_batch_posts_each_approval_once_with_its_lines(h: Harness) -> None:
    """The batch's claims, journals and lines go in a fixed number of statements;
    what they record is what one decision at a time records."""
    other = "10671"
    batch = [
        decision_of("tx-m1", HOSPITAL, 1_000),
        decision_of("tx-m2", other, 2_500),
        decision_of("tx-m3", HOSPITAL, 700, claim_service_pb2.CLAIM_STATE_PARTIALLY_APPROVED),
        decision_of("tx-m4", other, 0, claim_service_pb2.CLAIM_STATE_DENIED),
        decision_of("tx-m1", HOSPITAL, 1_000),  # repeated in the same batch: once
        decision_of("tx-m5", other, 300),
    ]
    answer = await h.intake.RecordClaimDecisions(bi.RecordClaimDecisionsRequest(decisions=batch), timeout=10)
    assert list(answer.refused) == []
    lines = await h.pool.fetch(
        "SELECT j.reference, a.hospital_code, a.kind, l.transaction_id, l.amount_satang"
        " FROM billing.journal_lines l JOIN billing.journals j ON j.id = l.journal_id"
        " JOIN billing.accounts a ON a.id = l.account_id WHERE j.kind = 'APPROVAL' ORDER BY 1, 3"
    )
    assert [tuple(r) for r in lines] == [
        (tx, hospital, kind, tx, amount if kind == "receivable" else -amount)
        for tx, hospital, amount in (
            ("tx-m1", HOSPITAL, 1_000),
            ("tx-m2", other, 2_500),
            ("tx-m3", HOSPITAL, 700),
            ("tx-m5", other, 300),
        )
        for kind in ("receivable", "revenue")
    ]
    balances = await h.pool.fetch(
        "SELECT hospital_code, kind, balance_satang FROM billing.accounts ORDER BY 1, 2"
    )
    assert [tuple(r) for r in balances] == [
        (HOSPITAL, "receivable", 1_700),
        (HOSPITAL, "revenue", -1_700),
        (other, "receivable", 2_800),
        (other, "revenue", -2_800),
    ]
    assert await h.pool.fetchval("SELECT sum(amount_satang) FROM billing.journal_lines") == 0
    states = await h.pool.fetch("SELECT transaction_id, state FROM billing.claims ORDER BY 1")
    assert [tuple(r) for r in states] == [
        ("tx-m1", "APPROVED"),
        ("tx-m2", "APPROVED"),
        ("tx-m3", "PARTIALLY_APPROVED"),
        ("tx-m4", "DENIED"),
        ("tx-m5", "APPROVED"),
    ]


async def test_a_claim_decided_two_ways_in_one_batch_is_refused_alone(h: Harness) -> None:
    answer = await h.intake.RecordClaimDecisions(
        bi.RecordClaimDecisionsRequest(
            decisions=[decision("tx-t1", 1_000), decision("tx-t2", 400), decision("tx-t1", 900)]
        ),
        timeout=10,
    )
    assert [(r.index, r.reason) for r in answer.refused] == [(2, "DECISION_CONFLICT")]
    rows = await h.pool.fetch("SELECT transaction_id, approved_satang FROM billing.claims ORDER BY 1")
    assert [tuple(r) for r in rows] == [("tx-t1", 1_000), ("tx-t2", 400)]
    assert await h.pool.fetchval("SELECT count(*) FROM billing.journals") == 2


class _CountingConnection:
    """The connection, counting the statements sent through it."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.statements = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._conn, name)
        if name not in ("execute", "fetch", "fetchrow", "fetchval"):
            return method

        async def counted(*args: Any) -> Any:
            self.statements += 1
            return await method(*args)

        return counted


async def test_a_batch_takes_as_many_statements_as_one_decision(h: Harness) -> None:
    counts = []
    for size, prefix in ((1, "tx-one"), (40, "tx-forty")):
        decisions = [
            Decision(f"{prefix}-{i}", HOSPITAL, INSURER, "APPROVED", 100 + i, datetime.now(UTC))
            for i in range(size)
        ]
        async with h.pool.acquire() as conn, conn.transaction():
            counting = _CountingConnection(conn)
            await _record_all(PgBillingTx(counting), decisions)  # type: ignore[arg-type]
        counts.append(counting.statements)
    assert counts[0] == counts[1] == 5  # claims, journals, accounts, their ids, lines
    assert await h.pool.fetchval("SELECT count(*) FROM billing.journals") == 41
