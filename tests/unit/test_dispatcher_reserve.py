"""The dispatcher's inline-push slots (issue 9's latency work): a delivery is
stored already leased and pushed at once only while its lane has room and its
circuit is not DOWN; a slot not used is given back. In-memory fakes of the
store and the pusher: this is the slot accounting, not the transport."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from services.insurer_adapter.dispatcher import Dispatcher
from services.insurer_adapter.domain import DeliverySettings
from services.insurer_adapter.model import (
    Added,
    Backlog,
    Delivery,
    Endpoint,
    EndpointKey,
    NewDelivery,
    PushResult,
)

CODE = "AIA"
ENDPOINT = Endpoint(CODE, "grpc", "127.0.0.1:1", "", False, True, EndpointKey("ek", b"k" * 32))


class NoStore:
    """Nothing is due: only the inline path pushes."""

    def __init__(self) -> None:
        self.taken: list[str] = []
        self.added_taken: list[str] = []
        self.added_failed: list[tuple[str, str]] = []
        self.added_waiting: list[str] = []

    async def lease_due(self, *args: object, **kwargs: object) -> list[Delivery]:
        return []

    async def mark_taken(self, transaction_id: str, taken_at: datetime, *, reported: bool) -> bool:
        self.taken.append(transaction_id)
        return True

    async def mark_failed_attempt(self, transaction_id: str, owner: str, error: str, delay_s: float) -> str:
        return "waiting"

    async def add_taken_many(
        self, taken: Sequence[tuple[NewDelivery, datetime, bool]], expiry_s: float
    ) -> None:
        self.taken += [d.transaction_id for d, _, _ in taken]
        self.added_taken += [d.transaction_id for d, _, _ in taken]

    async def add_failed_attempt(self, d: NewDelivery, error: str, delay_s: float, expiry_s: float) -> str:
        self.added_failed.append((d.transaction_id, error))
        return "waiting"

    async def add_delivery(self, d: NewDelivery, expiry_s: float, lease: object = None) -> tuple[Added, None]:
        self.added_waiting.append(d.transaction_id)
        return Added.NEW, None

    async def release(self, transaction_ids: Sequence[str], owner: str) -> None:
        return None

    async def release_leases(self, owner: str) -> None:
        return None

    async def make_due(self, insurer_code: str) -> None:
        return None

    async def expire_due(self) -> list[str]:
        return []

    async def backlog(self) -> list[Backlog]:
        return []


class Endpoints:
    async def get(self, insurer_code: str) -> Endpoint | None:
        return ENDPOINT

    def invalidate(self, insurer_code: str | None = None) -> None:
        return None


class HeldPusher:
    """Each push waits until released, then answers `taken`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.taken = True
        self.started: list[str] = []

    async def push(self, endpoint: Endpoint, delivery: Delivery) -> PushResult:
        self.started.append(delivery.transaction_id)
        await self.release.wait()
        return PushResult(self.taken, "" if self.taken else "UNAVAILABLE")


class Health:
    async def set_push_health(self, code: str, health: str, consecutive_failures: int) -> None:
        return None


def delivery(n: int) -> Delivery:
    return Delivery(
        transaction_id=f"txn_{n:028x}",
        insurer_code=CODE,
        hospital_code="10670",
        claim_ref=f"CK-{n}",
        billed_amount_satang=100,
        envelope="e",
        submitted_at=None,
        received_at=datetime.now(UTC),
        attempts=1,
    )


def dispatcher(pusher: HeldPusher, store: NoStore, cap: int) -> Dispatcher:
    settings = DeliverySettings(max_inflight=cap, poll_s=60.0)
    return Dispatcher(store, Endpoints(), pusher, Health(), settings, owner="me", on_report=lambda: None)


async def test_slots_are_reserved_up_to_the_cap_and_given_back() -> None:
    pusher, store = HeldPusher(), NoStore()
    d = dispatcher(pusher, store, cap=2)
    d.start()
    try:
        first, second = d.reserve(CODE), d.reserve(CODE)
        assert first is not None and first.owner == "me"
        assert second is not None
        assert d.reserve(CODE) is None  # reserved slots count against the cap
        d.unreserve(CODE)
        assert d.reserve(CODE) is not None

        # Started pushes hold their slots until they finish.
        d.start_leased(ENDPOINT, delivery(1))
        d.start_leased(ENDPOINT, delivery(2))
        await asyncio.sleep(0)
        assert pusher.started == [delivery(1).transaction_id, delivery(2).transaction_id]
        assert d.reserve(CODE) is None
        pusher.release.set()
        for _ in range(100):
            if len(store.taken) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(store.taken) == [delivery(1).transaction_id, delivery(2).transaction_id]
        assert d.reserve(CODE) is not None
    finally:
        await d.stop()


async def test_no_inline_slot_while_the_circuit_is_down() -> None:
    pusher, store = HeldPusher(), NoStore()
    pusher.taken = False
    pusher.release.set()
    d = dispatcher(pusher, store, cap=16)
    d.start()
    try:
        for n in range(5):  # five consecutive failures: DOWN
            lease = d.reserve(CODE)
            assert lease is not None, n
            d.start_leased(ENDPOINT, delivery(n))
            for _ in range(100):
                if len(pusher.started) == n + 1 and not d._lanes[CODE].inflight:
                    break
                await asyncio.sleep(0.01)
        assert d.reserve(CODE) is None  # the lane's probe decides when pushing resumes
    finally:
        await d.stop()


async def test_nothing_is_reserved_before_start_or_after_stop() -> None:
    d = dispatcher(HeldPusher(), NoStore(), cap=4)
    assert d.reserve(CODE) is None
    d.start()
    await d.stop()
    assert d.reserve(CODE) is None


async def test_stop_ends_a_lane_woken_as_it_is_cancelled() -> None:
    """A push ending as stop() cancels wakes its lane in the same moment; the
    lane must still end (asyncio.wait_for on 3.11 dropped that cancel while the
    lane slept towards its next probe, and the lane, and stop(), ran on: found
    as a hung test teardown in CI)."""
    pusher, store = HeldPusher(), NoStore()
    pusher.taken = False
    pusher.release.set()
    d = dispatcher(pusher, store, cap=16)
    d.start()
    for n in range(5):  # five consecutive failures: DOWN, the lane sleeps until its probe
        assert d.reserve(CODE) is not None
        d.start_leased(ENDPOINT, delivery(n))
        for _ in range(100):
            if len(pusher.started) == n + 1 and not d._lanes[CODE].inflight:
                break
            await asyncio.sleep(0.01)
    lane = d._lanes[CODE]
    await asyncio.sleep(0.05)
    assert lane.task is not None and not lane.task.done()
    lane.wake.set()
    lane.task.cancel()
    done, _ = await asyncio.wait([lane.task], timeout=2)
    assert done, "the lane ignored its cancel"
    await asyncio.wait_for(d.stop(), 5)


def new_delivery(n: int) -> NewDelivery:
    return NewDelivery(f"txn_{n:028x}", CODE, "10670", f"CK-{n}", 100, "e", None, envelope_sha256="0" * 64)


async def _settled(d: Dispatcher) -> None:
    for _ in range(200):
        if not d._lanes[CODE].inflight:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("pushes still in flight")


async def test_a_push_before_storing_holds_its_slot_and_stores_its_outcome() -> None:
    pusher, store = HeldPusher(), NoStore()
    d = dispatcher(pusher, store, cap=1)
    d.start()
    try:
        assert d.reserve(CODE) is not None
        d.start_unstored(ENDPOINT, new_delivery(1))
        await asyncio.sleep(0)
        assert pusher.started == [new_delivery(1).transaction_id]
        assert d.reserve(CODE) is None  # its slot is held until the push ends
        pusher.release.set()
        await _settled(d)
        assert store.added_taken == [new_delivery(1).transaction_id]  # stored taken, not marked
        pusher.taken = False
        assert d.reserve(CODE) is not None
        d.start_unstored(ENDPOINT, new_delivery(2))
        await _settled(d)
        assert store.added_failed == [(new_delivery(2).transaction_id, "UNAVAILABLE")]
        assert store.added_waiting == [] and not d._lanes[CODE].unstored
    finally:
        await d.stop()


async def test_stop_stores_a_push_before_storing_it_cut_short() -> None:
    pusher, store = HeldPusher(), NoStore()
    d = dispatcher(pusher, store, cap=4)
    d.start()
    assert d.reserve(CODE) is not None
    d.start_unstored(ENDPOINT, new_delivery(3))
    await asyncio.sleep(0)
    await d.stop()
    assert store.added_waiting == [new_delivery(3).transaction_id]
    assert store.added_taken == [] and store.added_failed == []
