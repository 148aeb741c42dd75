"""Protocol §10.6 in the insurer kit: answering a push with its decision.

With `answer_in_push` on, a claim whose handler gives a final decision at once
is answered in the push itself (gRPC `ReceiveClaimResponse.decision`, webhook
200 `{"result": "taken", "decision": ...}`) and stored decided, with no
PostDecision. If the hub pushes the claim again (it did not record the
answer), the kit reopens the row and posts the same, byte-identical decision
through the gateway. Reviews, delayed decisions and failing handlers are not
answered in the push; with the option off nothing changes. Real TLS, real
sqlite, real envelopes; the gateway is the FakeGateway stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import json_format

from iclaim.crypto.envelope import open_envelope
from iclaim.fhir import parse_claim_response
from iclaim.insurer.handler import APPROVED, DENIED, PENDING_REVIEW, Decision, IncomingClaim
from iclaim.insurer.inbox import DECIDED, RECEIVED, Inbox, PutResult, StagedPost
from iclaim.insurer.runner import Running, ServePlan, start
from iclaim.insurer.verify import GRPC_METHOD
from iclaim.v1 import insurer_endpoint_pb2 as epb
from iclaim.v1 import insurer_service_pb2 as ipb
from tests.support.insurer_kit import (
    HOSPITAL,
    HOSPITAL_PRIV,
    FakeGateway,
    Party,
    client_ssl,
    delivery,
    delivery_json,
    grpc_channel,
    make_tls,
    push_headers,
    write_credentials,
)

CODE = "AIA"
BILLED = 125_000


# --- a handler that counts how often it is asked ----------------------------------


@dataclass
class Counting:
    """Answers `decide(claim)` (approve in full by default); raises while `failing`."""

    decide_with: Callable[[IncomingClaim], Decision] = lambda c: Decision.approve(c.billed_satang)
    failing: bool = False
    calls: int = 0

    async def decide(self, claim: IncomingClaim) -> Decision:
        self.calls += 1
        if self.failing:
            raise RuntimeError("the insurer's own bug")
        return self.decide_with(claim)


# --- the kit served over real TLS -------------------------------------------------------


@dataclass
class Kit:
    party: Party
    gateway: FakeGateway
    running: Running
    rules: Counting
    channel: grpc.aio.Channel | None = None
    session: aiohttp.ClientSession | None = None

    @property
    def inbox(self) -> Inbox:
        return self.running.host.inbox

    async def push_grpc(self, d: ipb.ClaimDelivery, *, accepts: bool = True) -> epb.ReceiveClaimResponse:
        """One signed push (a fresh nonce each time, as the hub's retries have);
        `accepts`: the hub says it takes a decision in the answer."""
        assert self.channel is not None
        body = epb.ReceiveClaimRequest(delivery=d, accepts_decision=accepts).SerializeToString()
        method = self.channel.unary_unary(
            GRPC_METHOD, request_serializer=None, response_deserializer=epb.ReceiveClaimResponse.FromString
        )
        headers = push_headers(self.party.creds, GRPC_METHOD, body)
        return await method(body, metadata=tuple(headers.items()), timeout=10)  # OK, or raises

    async def push_webhook(self, d: ipb.ClaimDelivery, *, accepts: bool = True) -> tuple[int, dict[str, Any]]:
        assert self.session is not None and self.running.webhook_port is not None
        path = f"/insurers/{CODE}/claims"
        body = delivery_json(d)
        headers = {**push_headers(self.party.creds, f"POST {path}", body), "content-type": "application/json"}
        if accepts:
            headers["x-iclaim-accepts-decision"] = "true"
        url = f"https://localhost:{self.running.webhook_port}{path}"
        async with self.session.post(url, data=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def state(self, txid: str) -> str | None:
        return await self.inbox.state_of(CODE, txid)


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path, rules: Counting | None = None, *, answer: bool = True, webhook: bool = False
) -> AsyncIterator[Kit]:
    tls = make_tls(tmp_path / "tls")
    _, parties = write_credentials(tmp_path, [CODE], tls)
    party, gateway, rules = parties[CODE], FakeGateway(), rules or Counting()
    plan = (
        ServePlan(webhook=[party.creds], webhook_addr="127.0.0.1:0")
        if webhook
        else ServePlan(grpc=[party.creds], grpc_addr="127.0.0.1:0")
    )
    options = {"worker_options": {"answer_in_push": True}} if answer else {}
    running = await start(plan, rules, tmp_path / "state", clients={CODE: gateway}, host_options=options)
    kit = Kit(party, gateway, running, rules)
    try:
        if webhook:
            kit.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl(tls)))
        else:
            assert running.grpc_port is not None
            kit.channel = grpc_channel(tls, running.grpc_port)
        yield kit
    finally:
        if kit.session is not None:
            await kit.session.close()
        if kit.channel is not None:
            await kit.channel.close()
        await running.stop()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """Polls; the timeout only bounds a broken run, it measures nothing."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def read_as_hospital(envelope: str) -> Any:
    """The ClaimResponse in a decision envelope, opened with the hospital's key."""
    header, body = open_envelope(envelope, HOSPITAL_PRIV)
    assert (header.sender, header.recipient) == (CODE, HOSPITAL)
    return parse_claim_response(body)


def post_decisions(gateway: FakeGateway) -> int:
    return gateway.calls.count("post_decision")


# --- gRPC push ---------------------------------------------------------------------


async def test_a_claim_decided_at_once_is_answered_in_the_push_and_not_posted(tmp_path: Path) -> None:
    async with served(tmp_path) as kit:
        d = delivery(kit.party, amount=BILLED)
        answer = await kit.push_grpc(d)

        assert answer.HasField("decision")
        decision = answer.decision
        assert (decision.transaction_id, decision.state, decision.approved_amount_satang) == (
            d.transaction_id,
            APPROVED,
            BILLED,
        )
        response = read_as_hospital(decision.decision_envelope)
        assert (response.claim_ref, response.state, response.approved_satang) == (
            d.claim_ref,
            "APPROVED",
            BILLED,
        )
        # Stored decided in the same commit as the answer: the worker never posts it.
        assert await kit.inbox.counts() == {DECIDED: 1}
        assert post_decisions(kit.gateway) == 0
        assert kit.rules.calls == 1


async def test_pushed_again_the_same_decision_is_posted_through_the_gateway_once(tmp_path: Path) -> None:
    async with served(tmp_path) as kit:
        d = delivery(kit.party, amount=BILLED)
        first = await kit.push_grpc(d)
        assert first.HasField("decision")

        # The hub did not record the answer, so it pushes the claim again.
        again = await kit.push_grpc(d)
        assert not again.HasField("decision")
        [posted] = await kit.gateway.wait_for(1)
        # Byte for byte what the push answered: the hub takes it as the same decision.
        assert (posted.transaction_id, posted.state, posted.approved, posted.envelope) == (
            d.transaction_id,
            APPROVED,
            BILLED,
            first.decision.decision_envelope,
        )
        await eventually(lambda: _is(kit, d.transaction_id, DECIDED), "the row to be decided again")
        assert kit.rules.calls == 1  # the staged decision was posted, the handler not asked again

        # A third push finds nothing staged: a plain duplicate, nothing posted.
        third = await kit.push_grpc(d)
        assert not third.HasField("decision")
        assert await kit.inbox.counts() == {DECIDED: 1}
        assert post_decisions(kit.gateway) == 1


async def test_a_claim_total_beyond_the_decimal_range_is_answered_denied_not_refused(tmp_path: Path) -> None:
    # 1E+999998 passes FHIR validation but overflowed the satang conversion:
    # every push was once refused UNAVAILABLE RECEIVER_ERROR.
    async with served(tmp_path) as kit:
        d = delivery(kit.party, amount=BILLED, total_literal=b"1E+999998")
        answer = await kit.push_grpc(d)
        assert (answer.decision.state, answer.decision.reason_code) == (DENIED, "INVALID_CLAIM_DOCUMENT")
        assert read_as_hospital(answer.decision.decision_envelope).outcome == "error"
        assert kit.rules.calls == 0 and post_decisions(kit.gateway) == 0
        assert await kit.inbox.counts() == {DECIDED: 1}


async def _is(kit: Kit, txid: str, state: str) -> bool:
    return await kit.state(txid) == state


def _review_then_approve(c: IncomingClaim) -> Decision:
    return Decision.review(Decision.approve(c.billed_satang))


def _approve_later(c: IncomingClaim) -> Decision:
    return Decision.approve(c.billed_satang, delay_s=0.2)


@pytest.mark.parametrize(
    ("decide_with", "posted_states"),
    [(_review_then_approve, [PENDING_REVIEW, APPROVED]), (_approve_later, [APPROVED])],
    ids=["review-then-final", "delayed"],
)
async def test_a_review_or_a_delayed_decision_is_posted_not_answered(
    tmp_path: Path, decide_with: Callable[[IncomingClaim], Decision], posted_states: list[int]
) -> None:
    async with served(tmp_path, Counting(decide_with)) as kit:
        d = delivery(kit.party, amount=BILLED)
        answer = await kit.push_grpc(d)
        assert not answer.HasField("decision")
        posted = await kit.gateway.wait_for(len(posted_states))
        assert [(p.transaction_id, p.state) for p in posted] == [(d.transaction_id, s) for s in posted_states]
        await eventually(lambda: _is(kit, d.transaction_id, DECIDED), "the row to be decided")
        assert kit.rules.calls == 1  # asked while taking the push; the worker used what was staged
        assert len(kit.gateway.posted) == len(posted_states)


async def test_a_failing_handler_is_not_answered_the_claim_is_taken_and_retried(tmp_path: Path) -> None:
    rules = Counting(failing=True)
    async with served(tmp_path, rules) as kit:
        d = delivery(kit.party, amount=BILLED)
        answer = await kit.push_grpc(d)  # OK: taken, even though the handler failed
        assert not answer.HasField("decision")
        assert await kit.state(d.transaction_id) == RECEIVED  # stored open, for the worker
        assert post_decisions(kit.gateway) == 0

        rules.failing = False  # the insurer's bug is fixed: the worker's retry decides it
        [posted] = await kit.gateway.wait_for(1, timeout=30)
        assert (posted.transaction_id, posted.state, posted.approved) == (d.transaction_id, APPROVED, BILLED)
        await eventually(lambda: _is(kit, d.transaction_id, DECIDED), "the row to be decided")
        assert rules.calls >= 2  # once in the push, then again by the worker


async def test_with_answering_off_the_answer_is_empty_and_the_decision_is_posted(tmp_path: Path) -> None:
    async with served(tmp_path, answer=False) as kit:
        d = delivery(kit.party, amount=BILLED)
        answer = await kit.push_grpc(d)
        assert not answer.HasField("decision")
        [posted] = await kit.gateway.wait_for(1)
        assert (posted.transaction_id, posted.state, posted.approved) == (d.transaction_id, APPROVED, BILLED)
        assert read_as_hospital(posted.envelope).claim_ref == d.claim_ref


# --- webhook push ------------------------------------------------------------------


async def test_webhook_answers_with_the_decision_then_409_and_posts_it_when_pushed_again(
    tmp_path: Path,
) -> None:
    async with served(tmp_path, webhook=True) as kit:
        d = delivery(kit.party, amount=BILLED)
        status, body = await kit.push_webhook(d)
        assert (status, body["result"]) == (200, "taken")
        decision = json_format.ParseDict(body["decision"], ipb.PostDecisionRequest())
        assert (decision.transaction_id, decision.state, decision.approved_amount_satang) == (
            d.transaction_id,
            APPROVED,
            BILLED,
        )
        assert read_as_hospital(decision.decision_envelope).claim_ref == d.claim_ref
        assert await kit.inbox.counts() == {DECIDED: 1}
        assert post_decisions(kit.gateway) == 0

        # Pushed again (not recorded by the hub): taken already, posted instead.
        assert await kit.push_webhook(d) == (409, {"result": "duplicate"})
        [posted] = await kit.gateway.wait_for(1)
        assert (posted.transaction_id, posted.envelope) == (d.transaction_id, decision.decision_envelope)
        await eventually(lambda: _is(kit, d.transaction_id, DECIDED), "the row to be decided again")


# --- the inbox's part (sqlite only, no network) ------------------------------------------


def _d(txid: str) -> ipb.ClaimDelivery:
    return ipb.ClaimDelivery(
        transaction_id=txid,
        hospital_code=HOSPITAL,
        claim_ref="C-1",
        billed_amount_satang=5,
        envelope="a.b.c.d.e",
    )


ANSWERED = StagedPost(0, APPROVED, 5, "", 0.0, envelope="sealed.answer")


async def test_an_answered_row_reopens_once_when_pushed_again_and_purge_drops_its_decision(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    inbox = await Inbox.open(tmp_path, answer_keep_s=100.0, retention_s=1000.0, clock=lambda: now[0])
    try:
        assert await inbox.put_with_posts(CODE, _d("txn_ans"), [ANSWERED], answered=True) is PutResult.NEW
        assert await inbox.state_of(CODE, "txn_ans") == DECIDED
        assert await inbox.staged(CODE, "txn_ans") == [ANSWERED]  # kept in case of a second push
        assert inbox.undecided == 0

        # The hub pushes it again: open, due now, with its staged decision.
        assert await inbox.put(CODE, _d("txn_ans")) is PutResult.REOPENED
        assert inbox.undecided == 1
        assert await inbox.due([CODE], 10) == [(CODE, "txn_ans")]
        item, staged = await inbox.load(CODE, "txn_ans")
        assert item is not None and item.state == RECEIVED and item.delivery == _d("txn_ans")
        assert staged == [ANSWERED]

        # Decided through the worker's path (mark): a plain duplicate from then on.
        await inbox.mark(CODE, "txn_ans", DECIDED)
        assert await inbox.put(CODE, _d("txn_ans")) is PutResult.DUPLICATE
        await inbox.put(CODE, _d("txn_plain"))
        await inbox.mark(CODE, "txn_plain", DECIDED)
        assert await inbox.put(CODE, _d("txn_plain")) is PutResult.DUPLICATE

        # Past answer_keep_s (not retention_s): the staged decision goes, the key stays.
        assert await inbox.put_with_posts(CODE, _d("txn_old"), [ANSWERED], answered=True) is PutResult.NEW
        now[0] += 200.0
        assert await inbox.purge() == 0
        assert await inbox.staged(CODE, "txn_old") == []
        assert await inbox.state_of(CODE, "txn_old") == DECIDED
        assert await inbox.put(CODE, _d("txn_old")) is PutResult.DUPLICATE  # nothing staged to reopen
        assert inbox.undecided == 0
    finally:
        await inbox.close()


async def test_an_answered_push_is_one_inbox_commit(tmp_path: Path) -> None:
    inbox = await Inbox.open(tmp_path)
    try:
        db = inbox._db
        assert db is not None
        statements: list[str] = []
        db.set_trace_callback(statements.append)
        result = await inbox.put_with_posts(CODE, _d("txn_one"), [ANSWERED], answered=True)
        db.set_trace_callback(None)
        assert result is PutResult.NEW
        # Row and staged decision together: one fsync before the push is answered.
        assert [s for s in statements if s in ("BEGIN IMMEDIATE", "BEGIN", "COMMIT")] == [
            "BEGIN IMMEDIATE",
            "COMMIT",
        ]
    finally:
        await inbox.close()


# --- a hub that does not say it takes a decision (an earlier release) --------------------
@pytest.mark.parametrize("webhook", [False, True], ids=["grpc", "webhook"])
async def test_a_push_from_a_hub_that_takes_no_decision_is_not_answered_with_one(
    tmp_path: Path, webhook: bool
) -> None:
    """Such a hub would drop the decision and count the claim taken: the kit
    stores the claim and posts the decision, as without answering in the push."""
    async with served(tmp_path, webhook=webhook) as kit:
        d = delivery(kit.party)
        if webhook:
            status, answer = await kit.push_webhook(d, accepts=False)
            assert status == 200 and "decision" not in answer
        else:
            response = await kit.push_grpc(d, accepts=False)
            assert not response.HasField("decision")
        [posted] = await kit.gateway.wait_for(1)
        assert posted.transaction_id == d.transaction_id

        async def decided() -> bool:
            return await kit.state(d.transaction_id) == DECIDED

        await eventually(decided, "the row decided")
        assert kit.rules.calls == 1
