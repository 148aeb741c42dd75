"""A pulled batch is stored in one inbox transaction (one fsync, not one per
delivery), with put's rules per delivery; the pull loop checks each delivery
and stores the valid ones together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iclaim.errors import ResourceExhausted, Unavailable
from iclaim.insurer.inbox import RECEIVED, Inbox, PutResult
from iclaim.insurer.intake import Taken, store_many
from iclaim.insurer.pull import run_pull
from iclaim.v1 import insurer_service_pb2 as ipb


def _d(txid: str, envelope: str = "a.b.c.d.e") -> ipb.ClaimDelivery:
    return ipb.ClaimDelivery(
        transaction_id=txid, hospital_code="10670", claim_ref="C-1", billed_amount_satang=5, envelope=envelope
    )


async def test_a_batch_is_one_commit_with_puts_rules_per_delivery(tmp_path: Path) -> None:
    inbox = await Inbox.open(tmp_path)
    try:
        await inbox.put("AIA", _d("txn_old"))
        db = inbox._db
        assert db is not None
        statements: list[str] = []
        db.set_trace_callback(statements.append)
        batch = [_d("txn_a"), _d("txn_old"), _d("txn_b"), _d("txn_a", envelope="again")]
        results = await inbox.put_many("AIA", batch)
        db.set_trace_callback(None)
        assert results == [PutResult.NEW, PutResult.DUPLICATE, PutResult.NEW, PutResult.DUPLICATE]
        assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
        assert inbox.undecided == 3
        item = await inbox.get("AIA", "txn_a")
        assert item is not None and item.state == RECEIVED and item.delivery.envelope == "a.b.c.d.e"
        assert await inbox.put_many("AIA", []) == []
    finally:
        await inbox.close()


async def test_past_its_limit_a_batch_stores_what_fits_and_says_which_did_not(tmp_path: Path) -> None:
    inbox = await Inbox.open(tmp_path, max_undecided=2)
    try:
        await inbox.put("AIA", _d("txn_1"))
        results = await inbox.put_many("AIA", [_d("txn_2"), _d("txn_3"), _d("txn_1"), _d("txn_4")])
        assert results == [PutResult.NEW, None, PutResult.DUPLICATE, None]
        assert await inbox.get("AIA", "txn_3") is None and await inbox.get("AIA", "txn_4") is None
        assert inbox.undecided == 2
    finally:
        await inbox.close()


async def test_an_error_part_way_stores_none_of_the_batch(tmp_path: Path) -> None:
    inbox = await Inbox.open(tmp_path)
    try:
        db = inbox._db
        assert db is not None
        # A failing write in the middle of the batch (as a full disk would be).
        db.execute(
            "CREATE TEMP TRIGGER fail BEFORE INSERT ON deliveries WHEN NEW.transaction_id = 'txn_bad'"
            " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
        with pytest.raises(Unavailable) as info:
            await inbox.put_many("AIA", [_d("txn_a"), _d("txn_bad"), _d("txn_b")])
        assert info.value.reason == "INBOX_UNAVAILABLE"
        assert inbox.undecided == 0
        assert await inbox.get("AIA", "txn_a") is None
        assert await inbox.load("AIA", "txn_a") == (None, [])  # not remembered as fresh either
        # The connection is not left inside the failed transaction.
        assert await inbox.put_many("AIA", [_d("txn_a")]) == [PutResult.NEW]
    finally:
        await inbox.close()


async def test_stored_ones_reach_the_worker_even_when_the_inbox_fills_part_way(tmp_path: Path) -> None:
    inbox = await Inbox.open(tmp_path, max_undecided=2)
    told: list[tuple[str, str]] = []
    try:
        await inbox.put("AIA", _d("txn_1"))
        taken = await store_many(inbox, lambda i, t: told.append((i, t)), "AIA", [_d("txn_1"), _d("txn_2")])
        assert [(t.transaction_id, t.result) for t in taken] == [
            ("txn_1", PutResult.DUPLICATE),
            ("txn_2", PutResult.NEW),
        ]
        assert told == [("AIA", "txn_2")]  # only new ones
        with pytest.raises(ResourceExhausted) as info:
            await store_many(inbox, lambda i, t: told.append((i, t)), "AIA", [_d("txn_2"), _d("txn_3")])
        assert info.value.reason == "INBOX_FULL"
        assert told == [("AIA", "txn_2")]
    finally:
        await inbox.close()


class _Client:
    def __init__(self, batches: list[list[ipb.ClaimDelivery]], stop: asyncio.Event) -> None:
        self.batches = batches
        self.stop = stop

    async def pull(self, max_claims: int = 10, wait_s: float = 0.0) -> list[ipb.ClaimDelivery]:
        if not self.batches:
            self.stop.set()
            await asyncio.sleep(3600)
        return self.batches.pop(0)


class _Host:
    def __init__(self, client: _Client) -> None:
        self._client = client
        self.taken: list[list[str]] = []

    def client(self, insurer_code: str) -> Any:
        return self._client

    @contextlib.contextmanager
    def gateway_for_worker(self, insurer_code: str, gateway: Any) -> Iterator[None]:
        yield

    async def take_pulled(self, insurer_code: str, deliveries: list[ipb.ClaimDelivery]) -> list[Any]:
        self.taken.append([d.transaction_id for d in deliveries])
        return []


async def test_the_pull_loop_stores_each_batchs_valid_deliveries_together() -> None:
    stop = asyncio.Event()
    invalid = _d("txn bad id")  # a space: not a transaction id the worker can key on
    client = _Client([[_d("txn_1"), invalid, _d("txn_2")], [invalid], [_d("txn_3")]], stop)
    host = _Host(client)
    await asyncio.wait_for(run_pull(host, "AIA", stop), 5)  # type: ignore[arg-type]
    assert host.taken == [["txn_1", "txn_2"], ["txn_3"]]  # nothing stored for an all-invalid batch


class _CarryingClient:
    """A gateway that takes decisions on its pulls (§6.1): one batch, then
    records what the next pull carries and stops the loop."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.carried: list[list[str]] = []
        self.posted: list[str] = []

    async def hospital_key(self, hospital_code: str) -> dict[str, Any]:
        return {}

    async def post_decision(self, transaction_id: str, **_: Any) -> None:
        self.posted.append(transaction_id)

    async def pull(self, max_claims: int = 10, wait_s: float = 0.0) -> list[ipb.ClaimDelivery]:
        if self.carried:
            self.stop.set()
            await asyncio.sleep(3600)
        return [_d("txn_1"), _d("txn_2")]

    async def pull_carrying(
        self, max_claims: int, wait_s: float, decisions: list[ipb.PostDecisionRequest]
    ) -> tuple[list[ipb.ClaimDelivery], list[ipb.DecisionResult]]:
        self.carried.append([d.transaction_id for d in decisions])
        return [], [ipb.DecisionResult(transaction_id=d.transaction_id) for d in decisions]


class _DecidingHost:
    """Stores a batch and has a stand-in worker post each new claim's decision
    through whatever gateway the host gives the worker for the insurer."""

    def __init__(self, client: _CarryingClient) -> None:
        self.clients: dict[str, Any] = {"AIA": client}
        self.posts: list[asyncio.Task[Any]] = []

    def client(self, insurer_code: str) -> Any:
        return self.clients[insurer_code]

    @contextlib.contextmanager
    def gateway_for_worker(self, insurer_code: str, gateway: Any) -> Iterator[None]:
        before, self.clients[insurer_code] = self.clients[insurer_code], gateway
        try:
            yield
        finally:
            self.clients[insurer_code] = before

    async def take_pulled(self, insurer_code: str, deliveries: list[ipb.ClaimDelivery]) -> list[Taken]:
        for d in deliveries:
            gateway = self.clients[insurer_code]
            self.posts.append(
                asyncio.create_task(
                    gateway.post_decision(
                        d.transaction_id, state=2, approved_amount_satang=5, decision_envelope="a.b.c.d.e"
                    )
                )
            )
        return [Taken(insurer_code, d.transaction_id, PutResult.NEW) for d in deliveries]


async def test_the_pull_loop_carries_a_batchs_decisions_on_its_next_pull() -> None:
    stop = asyncio.Event()
    client = _CarryingClient(stop)
    host = _DecidingHost(client)
    await asyncio.wait_for(run_pull(host, "AIA", stop), 5)  # type: ignore[arg-type]
    assert client.carried == [["txn_1", "txn_2"]]
    assert await asyncio.gather(*host.posts) == [None, None]  # recorded on the pull, not posted
    assert client.posted == []
    assert host.clients["AIA"] is client  # the worker's own gateway again once the loop stopped
