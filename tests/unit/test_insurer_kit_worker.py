"""The kit's worker: open -> decide -> seal to the hospital -> PostDecision ->
mark decided, with real envelopes, a real inbox, and a stand-in gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from iclaim.crypto.envelope import open_envelope, seal
from iclaim.fhir import parse_claim_response
from iclaim.insurer.handler import (
    APPROVED,
    DENIED,
    MAX_DELAY_S,
    PARTIALLY_APPROVED,
    PENDING_REVIEW,
    Decision,
    IncomingClaim,
)
from iclaim.insurer.inbox import DECIDED, FAILED, RECEIVED, REVIEWING, Inbox, PutResult
from iclaim.insurer.worker import BACKOFF_CAP_S, Worker, backoff_s
from tests.support.insurer_kit import (
    HOSPITAL,
    HOSPITAL_PRIV,
    FakeGateway,
    Party,
    delivery,
    rpc_error,
    write_credentials,
)


@dataclass
class Rules:
    """A handler that records what it saw and answers what it is told."""

    answer: Decision | None = None
    seen: list[IncomingClaim] = field(default_factory=list)
    fail: int = 0
    log: list[str] | None = None

    async def decide(self, claim: IncomingClaim) -> Decision:
        self.seen.append(claim)
        if self.log is not None:
            self.log.append("decide")
        if self.fail:
            self.fail -= 1
            raise RuntimeError("the insurer's own bug (text never logged)")
        return self.answer or Decision.approve(claim.billed_satang)


@dataclass
class Kit:
    party: Party
    inbox: Inbox
    gateway: FakeGateway
    rules: Rules
    worker: Worker
    sleeps: list[float]


@pytest.fixture
async def kit(tmp_path: Path) -> AsyncIterator[Kit]:
    _, parties = write_credentials(tmp_path, ["AIA"], None)
    party = parties["AIA"]
    inbox = await Inbox.open(tmp_path / "state")
    gateway, rules, sleeps = FakeGateway(), Rules(), []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    worker = Worker(inbox, {"AIA": party.creds}, {"AIA": rules}, {"AIA": gateway}, sleep=sleep)
    yield Kit(party, inbox, gateway, rules, worker, sleeps)
    await worker.close()
    await inbox.close()


async def _put(kit: Kit, **kw: object) -> str:
    d = delivery(kit.party, **kw)  # type: ignore[arg-type]
    await kit.inbox.put("AIA", d)
    return d.transaction_id


async def test_a_claim_is_opened_decided_sealed_to_the_hospital_and_posted(kit: Kit) -> None:
    txid = await _put(kit, policy="POL-9", amount=250_000)
    assert await kit.worker.process("AIA", txid) == DECIDED
    seen = kit.rules.seen[0]
    assert (seen.policy_number, seen.billed_satang, seen.hospital_code) == ("POL-9", 250_000, HOSPITAL)
    assert seen.claim["resourceType"] == "Claim" and seen.header.recipient == "AIA"
    [posted] = kit.gateway.posted
    assert (posted.transaction_id, posted.state, posted.approved, posted.reason_code) == (
        txid,
        APPROVED,
        250_000,
        "",
    )
    header, response = posted.opened()  # the hospital can read it
    assert (header.sender, header.recipient, header.amount_satang) == ("AIA", HOSPITAL, 250_000)
    assert (response.state, response.approved_satang, response.claim_ref) == (
        "APPROVED",
        250_000,
        seen.claim_ref,
    )
    # Deciding again is a no-op: the row is closed.
    assert await kit.worker.process("AIA", txid) == DECIDED
    assert len(kit.gateway.posted) == 1


async def test_decide_then_seal_then_post_then_mark(kit: Kit) -> None:
    order: list[str] = []
    kit.rules.log = order
    txid = await _put(kit)
    states: list[str | None] = []
    real_post = kit.gateway.post_decision

    async def post(*a: object, **kw: object) -> object:
        states.append(await kit.inbox.state_of("AIA", txid))
        return await real_post(*a, **kw)  # type: ignore[arg-type]

    kit.gateway.post_decision = post  # type: ignore[method-assign]
    await kit.worker.process("AIA", txid)
    assert order + kit.gateway.calls == ["decide", "hospital_key", "post_decision"]
    assert states == [RECEIVED]  # marked decided only after the post
    assert await kit.inbox.state_of("AIA", txid) == DECIDED


async def test_pending_review_then_a_final_decision_later(kit: Kit) -> None:
    kit.rules.answer = Decision.review(Decision.approve(125_000, delay_s=2.0))
    txid = await _put(kit, amount=125_000)
    assert await kit.worker.process("AIA", txid) == DECIDED
    assert [(p.state, p.approved) for p in kit.gateway.posted] == [(PENDING_REVIEW, 0), (APPROVED, 125_000)]
    assert kit.sleeps == [2.0]
    assert [p.opened()[1].state for p in kit.gateway.posted] == ["PENDING_REVIEW", "APPROVED"]


async def test_after_pending_review_was_posted_a_retry_posts_only_the_final_decision(kit: Kit) -> None:
    kit.rules.answer = Decision.review(Decision.partially_approve(100_000, "COVERAGE_LIMIT_REACHED"))
    kit.gateway.errors = [None, rpc_error(grpc.StatusCode.UNAVAILABLE, "")]
    txid = await _put(kit, amount=125_000)
    assert await kit.worker.process("AIA", txid) == REVIEWING
    item = await kit.inbox.get("AIA", txid)
    assert item is not None and (item.state, item.attempts, item.last_error) == (REVIEWING, 1, "UNAVAILABLE")
    assert await kit.worker.process("AIA", txid) == DECIDED
    assert [(p.state, p.approved, p.reason_code) for p in kit.gateway.posted] == [
        (PENDING_REVIEW, 0, ""),
        (PARTIALLY_APPROVED, 100_000, "COVERAGE_LIMIT_REACHED"),
    ]


async def test_a_slow_decision_waits_before_it_is_posted(kit: Kit) -> None:
    kit.rules.answer = Decision.approve(125_000, delay_s=10.0)
    txid = await _put(kit, amount=125_000)
    await kit.worker.process("AIA", txid)
    assert kit.sleeps == [10.0] and [p.state for p in kit.gateway.posted] == [APPROVED]


@pytest.mark.parametrize(
    "envelope_of",
    [
        lambda party: "a.b.c.d.e",  # not a JWE at all
        lambda party: seal(
            b'{"resourceType":"Patient"}',
            party.public_jwk,
            sender=HOSPITAL,
            recipient="AIA",
            claim_ref="C-x",
            amount_satang=125_000,
        ),  # not a Claim
        lambda party: seal(
            b"not json",
            party.public_jwk,
            sender=HOSPITAL,
            recipient="MTL",
            claim_ref="C-x",
            amount_satang=125_000,
        ),  # sealed for someone else
    ],
)
async def test_an_unreadable_claim_is_denied_invalid_claim_document_without_asking_the_handler(
    kit: Kit, envelope_of: object
) -> None:
    txid = await _put(kit, envelope=envelope_of(kit.party), claim_ref="C-x", amount=125_000)  # type: ignore[operator]
    assert await kit.worker.process("AIA", txid) == DECIDED
    assert kit.rules.seen == []
    [posted] = kit.gateway.posted
    assert (posted.state, posted.approved, posted.reason_code) == (DENIED, 0, "INVALID_CLAIM_DOCUMENT")
    assert posted.opened()[1].outcome == "error"


async def test_a_delivery_that_disagrees_with_its_envelope_is_invalid(kit: Kit) -> None:
    d = delivery(kit.party, amount=125_000)
    d.billed_amount_satang = 999  # the hub says one amount, the sealed claim another
    await kit.inbox.put("AIA", d)
    await kit.worker.process("AIA", d.transaction_id)
    assert kit.rules.seen == [] and kit.gateway.posted[0].reason_code == "INVALID_CLAIM_DOCUMENT"


async def test_a_failing_handler_is_retried_later_with_backoff(kit: Kit) -> None:
    kit.rules.fail = 1
    txid = await _put(kit)
    assert await kit.worker.process("AIA", txid) == RECEIVED
    item = await kit.inbox.get("AIA", txid)
    assert item is not None and (item.attempts, item.last_error) == (1, "HANDLER_ERROR:RuntimeError")
    assert kit.gateway.posted == [] and await kit.inbox.due(["AIA"], 10) == []  # not due yet
    assert await kit.worker.process("AIA", txid) == DECIDED


@pytest.mark.parametrize(
    ("error", "state", "last_error"),
    [
        (
            rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "DECISION_CONFLICT"),
            DECIDED,
            "FAILED_PRECONDITION:DECISION_CONFLICT",
        ),
        (rpc_error(grpc.StatusCode.NOT_FOUND, "CLAIM_NOT_FOUND"), FAILED, "NOT_FOUND:CLAIM_NOT_FOUND"),
        (
            rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_HEADER_MISMATCH"),
            FAILED,
            "INVALID_ARGUMENT:ENVELOPE_HEADER_MISMATCH",
        ),
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "DB_UNAVAILABLE"), RECEIVED, "UNAVAILABLE:DB_UNAVAILABLE"),
        (
            rpc_error(grpc.StatusCode.PERMISSION_DENIED, "PRINCIPAL_SUSPENDED"),
            RECEIVED,
            "PERMISSION_DENIED:PRINCIPAL_SUSPENDED",
        ),
    ],
)
async def test_what_a_refused_post_means(
    kit: Kit, error: grpc.aio.AioRpcError, state: str, last_error: str
) -> None:
    kit.gateway.errors = [error]
    txid = await _put(kit)
    assert await kit.worker.process("AIA", txid) == state
    item = await kit.inbox.get("AIA", txid)
    assert item is not None and (item.state, item.last_error) == (state, last_error)


async def test_a_stale_hospital_key_is_looked_up_again(kit: Kit) -> None:
    a, b = await _put(kit), await _put(kit)
    await kit.worker.process("AIA", a)
    await kit.worker.process("AIA", b)
    assert kit.gateway.key_lookups == 1  # cached for a few seconds
    kit.gateway.errors = [rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_KID_UNKNOWN")]
    c = await _put(kit)
    assert await kit.worker.process("AIA", c) == RECEIVED  # retried, not given up
    assert await kit.worker.process("AIA", c) == DECIDED
    assert kit.gateway.key_lookups == 2


@pytest.mark.parametrize(
    "answer",
    [
        Decision.approve(1),  # APPROVED must approve the billed amount
        Decision.partially_approve(125_000, "LIMIT"),  # partial must be less than billed
        Decision(APPROVED, 125_000, pending_then=Decision.approve(125_000)),  # then only after review
        Decision.review(Decision.review()),  # one review step
        Decision.deny("lower case"),
        Decision(99, 0),
        Decision.approve(125_000, delay_s=MAX_DELAY_S + 1),
        Decision.approve(125_000, delay_s=-1),
        "APPROVED",  # not a Decision at all
    ],
)
async def test_a_decision_that_cannot_be_posted_fails_the_claim_clearly(kit: Kit, answer: object) -> None:
    kit.rules.answer = answer  # type: ignore[assignment]
    txid = await _put(kit, amount=125_000)
    assert await kit.worker.process("AIA", txid) == FAILED
    item = await kit.inbox.get("AIA", txid)
    assert item is not None and item.last_error.startswith("DECISION_")
    assert kit.gateway.posted == []


def test_backoff_is_full_jitter_from_1_s_doubling_to_60_s() -> None:
    assert backoff_s(0, lambda: 0.999) < 1.0
    assert 7.9 < backoff_s(3, lambda: 0.999) < 8.0
    assert backoff_s(50, lambda: 0.999) <= BACKOFF_CAP_S
    assert backoff_s(5, lambda: 0.0) == 0.0


async def test_the_loop_decides_what_a_crash_left_and_bounds_work_in_flight(tmp_path: Path) -> None:
    _, parties = write_credentials(tmp_path, ["AIA"], None)
    party = parties["AIA"]
    inbox = await Inbox.open(tmp_path / "state")
    gateway = FakeGateway()
    release = asyncio.Event()
    waiting = 0

    async def sleep(_: float) -> None:
        nonlocal waiting
        waiting += 1
        await release.wait()

    # Three claims taken before a crash: nobody told the (new) worker about them.
    txids = []
    for _ in range(3):
        d = delivery(party, amount=125_000)
        await inbox.put("AIA", d)
        txids.append(d.transaction_id)
    slow = Rules(Decision.approve(125_000, delay_s=5.0))
    worker = Worker(
        inbox,
        {"AIA": party.creds},
        {"AIA": slow},
        {"AIA": gateway},
        sleep=sleep,
        max_active=2,
        scan_interval_s=0.05,
    )
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run(stop))
    try:
        for _ in range(100):
            if waiting == 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert (waiting, worker.active) == (2, 2)  # the third waits in the inbox
        release.set()
        posted = await gateway.wait_for(3)
        assert sorted(p.transaction_id for p in posted) == sorted(txids)
    finally:
        stop.set()
        await loop
        await inbox.close()


async def test_a_slow_claim_does_not_hold_up_the_next_one(tmp_path: Path) -> None:
    _, parties = write_credentials(tmp_path, ["AIA"], None)
    party = parties["AIA"]
    inbox = await Inbox.open(tmp_path / "state")
    gateway = FakeGateway()

    class PerPolicy:
        async def decide(self, claim: IncomingClaim) -> Decision:
            slow = claim.policy_number.startswith("SLOW-")
            return Decision.approve(claim.billed_satang, delay_s=3600.0 if slow else 0.0)

    worker = Worker(inbox, {"AIA": party.creds}, {"AIA": PerPolicy()}, {"AIA": gateway})
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run(stop))
    try:
        slow, quick = delivery(party, policy="SLOW-1"), delivery(party, policy="POL-2")
        for d in (slow, quick):
            await inbox.put("AIA", d)
            worker.submit("AIA", d.transaction_id)
        [posted] = await gateway.wait_for(1)
        assert posted.transaction_id == quick.transaction_id
        assert await inbox.state_of("AIA", slow.transaction_id) == RECEIVED
    finally:
        stop.set()
        await loop
        # Stopping left the slow one open: the next run decides it.
        assert await inbox.state_of("AIA", slow.transaction_id) == RECEIVED
        await inbox.close()


def _envelopes_sent(kit: Kit) -> list[str]:
    """Every envelope post_decision was called with, answered or not."""
    sent: list[str] = []
    real = kit.gateway.post_decision

    async def post(transaction_id: str, **kw: object) -> object:
        sent.append(str(kw["decision_envelope"]))
        return await real(transaction_id, **kw)  # type: ignore[arg-type]

    kit.gateway.post_decision = post  # type: ignore[method-assign]
    return sent


async def test_a_post_whose_answer_was_lost_is_repeated_byte_for_byte(kit: Kit, tmp_path: Path) -> None:
    sent = _envelopes_sent(kit)
    kit.gateway.errors = [rpc_error(grpc.StatusCode.UNAVAILABLE, "")]
    txid = await _put(kit)
    assert await kit.worker.process("AIA", txid) == RECEIVED
    # A restarted kit (new worker, inbox reopened) posts what was staged.
    await kit.worker.close()
    await kit.inbox.close()
    inbox = await Inbox.open(tmp_path / "state")
    again = Worker(inbox, {"AIA": kit.party.creds}, {"AIA": kit.rules}, {"AIA": kit.gateway})
    try:
        assert await again.process("AIA", txid) == DECIDED
        assert len(sent) == 2 and sent[0] == sent[1]  # the hub sees the same decision, not a conflict
        assert len(kit.rules.seen) == 1  # the handler was asked once
        assert await inbox.staged("AIA", txid) == []  # dropped once decided
    finally:
        await again.close()
        await inbox.close()


async def test_an_envelope_refused_for_its_key_is_sealed_again_without_asking_the_handler(kit: Kit) -> None:
    sent = _envelopes_sent(kit)
    kit.rules.answer = Decision.partially_approve(100_000, "COVERAGE_LIMIT_REACHED")
    kit.gateway.errors = [rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "ENVELOPE_KID_UNKNOWN")]
    txid = await _put(kit, amount=125_000)
    assert await kit.worker.process("AIA", txid) == RECEIVED
    assert all(p.envelope == "" for p in await kit.inbox.staged("AIA", txid))
    assert await kit.worker.process("AIA", txid) == DECIDED
    assert len(sent) == 2 and sent[0] != sent[1]
    assert len(kit.rules.seen) == 1
    assert [(p.state, p.approved, p.reason_code) for p in kit.gateway.posted] == [
        (PARTIALLY_APPROVED, 100_000, "COVERAGE_LIMIT_REACHED")
    ]


# A JSON number FHIR validation accepts but the decimal context cannot scale
# (decimal.Overflow): once a WORKER_ERROR retried forever, or a refused push.
HUGE_TOTAL = b"1E+999998"


async def test_a_claim_total_out_of_decimal_range_is_denied_invalid_claim_document(kit: Kit) -> None:
    txid = await _put(kit, total_literal=HUGE_TOTAL)
    assert await kit.worker.process("AIA", txid) == DECIDED
    assert kit.rules.seen == []
    [posted] = kit.gateway.posted
    assert (posted.state, posted.approved, posted.reason_code) == (DENIED, 0, "INVALID_CLAIM_DOCUMENT")


async def test_a_claim_total_out_of_decimal_range_is_denied_in_the_push_answer(kit: Kit) -> None:
    d = delivery(kit.party, total_literal=HUGE_TOTAL)
    result, answer = await kit.worker.answer("AIA", d)
    assert result is PutResult.NEW and answer is not None
    assert (answer.state, answer.approved_satang, answer.reason_code) == (
        DENIED,
        0,
        "INVALID_CLAIM_DOCUMENT",
    )
    assert parse_claim_response(open_envelope(answer.envelope, HOSPITAL_PRIV)[1]).outcome == "error"
    assert kit.rules.seen == [] and kit.gateway.posted == []
    assert await kit.inbox.state_of("AIA", d.transaction_id) == DECIDED


async def test_an_unexpected_failure_while_answering_stores_the_push_for_the_worker(kit: Kit) -> None:
    d = delivery(kit.party)

    async def broken(code: str, delivery: object) -> list[object]:
        raise ArithmeticError("a bug, not the hub's fault")

    kit.worker._prepare = broken  # type: ignore[assignment,method-assign]
    result, answer = await kit.worker.answer("AIA", d)  # taken, not refused
    assert (result, answer) == (PutResult.NEW, None)
    assert await kit.inbox.state_of("AIA", d.transaction_id) == RECEIVED


async def test_a_hospital_key_that_cannot_be_had_does_not_ask_the_handler_again(kit: Kit) -> None:
    """GetHospital fails (the gateway away): the answer is kept and sealed on
    the retry; a handler with side effects (a review ticket) runs once."""
    txid = await _put(kit)
    real_key, failures = kit.gateway.hospital_key, [rpc_error(grpc.StatusCode.UNAVAILABLE, "")]

    async def flaky_key(hospital_code: str) -> dict[str, Any]:
        if failures:
            raise failures.pop()
        return await real_key(hospital_code)

    kit.gateway.hospital_key = flaky_key  # type: ignore[method-assign]
    assert await kit.worker.process("AIA", txid) != DECIDED
    assert await kit.worker.process("AIA", txid) == DECIDED
    assert len(kit.rules.seen) == 1
    [posted] = kit.gateway.posted
    assert posted.opened()[0].recipient == HOSPITAL
