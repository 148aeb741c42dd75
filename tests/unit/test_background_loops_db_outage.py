"""Background loops when the database goes away: they log a warning (no
traceback: an outage is not a bug), leave nothing unhandled and keep going.
In-memory stores that raise the real asyncpg error of a stopped server."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from structlog.testing import capture_logs

from services.audit_log.tailer import AccessLogTailer
from services.billing.notifier import PaidNotifier
from services.claim_router.delivery import PushDeliverer
from services.claim_router.model import ClaimRecord, Mutation
from tests.support.router_records import claim_record


@pytest.fixture
async def lost(tmp_path: Path) -> BaseException:
    try:
        await asyncpg.connect(f"postgresql://x@/db?host={tmp_path}", timeout=5)
    except OSError as exc:
        return exc
    raise AssertionError("expected the connection to fail")


class DownPushStore:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.leases = 0
        self.leased_again = asyncio.Event()

    async def lease_push(self, limit: int, lease_s: float) -> list[ClaimRecord]:
        self.leases += 1
        if self.leases >= 2:
            self.leased_again.set()
        raise self.error

    async def retry_push_later(self, transaction_id: str, delay_s: float) -> None:
        raise self.error

    async def transition(self, transaction_id: str, mutate: Mutation) -> ClaimRecord | None:
        raise self.error


async def test_a_kicked_delivery_during_an_outage_is_logged_not_left_unhandled(
    lost: BaseException,
) -> None:
    store = DownPushStore(lost)
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        deliverer = PushDeliverer(store, channel)
        unhandled: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        try:
            with capture_logs() as logs:
                deliverer.kick(claim_record("CK-1"))
                tasks = list(deliverer._inflight)
                await asyncio.gather(*tasks)
                del tasks
                gc.collect()  # an exception nobody retrieved is reported here
        finally:
            loop.set_exception_handler(None)
    # The kicked claim was leased at insert: the adapter is unreachable, so
    # it is put back for later, which fails on the lost database and is logged.
    assert store.leases == 0
    assert unhandled == []
    assert [(e["event"], e["log_level"], e.get("error")) for e in logs] == [
        ("delivery_failed", "warning", None),
        ("delivery_pass_failed", "warning", type(lost).__name__),
    ]


async def test_the_delivery_loop_keeps_polling_through_an_outage(lost: BaseException) -> None:
    store = DownPushStore(lost)
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        deliverer = PushDeliverer(store, channel)
        with capture_logs() as logs:
            deliverer.start()
            try:
                async with asyncio.timeout(10):
                    await store.leased_again.wait()  # a second pass after the failed one
            finally:
                await deliverer.close()
    assert {e["log_level"] for e in logs} == {"warning"}
    assert not any("exc_info" in e or "exception" in e for e in logs)


class DownOutbox:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.polls = 0
        self.polled_thrice = asyncio.Event()

    async def due_outbox(self) -> list[tuple[str, int]]:
        self.polls += 1
        if self.polls >= 3:
            self.polled_thrice.set()
        raise self.error

    async def outbox_delivered(self, transaction_id: str) -> None:
        raise self.error

    async def outbox_failed(self, transaction_id: str, error: str, retry_in_s: float) -> None:
        raise self.error


async def test_the_paid_notifier_keeps_polling_through_an_outage(lost: BaseException) -> None:
    outbox = DownOutbox(lost)
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        notifier = PaidNotifier(outbox, channel, poll_s=0.05)
        with capture_logs() as logs:
            task = asyncio.create_task(notifier.run())
            try:
                async with asyncio.timeout(10):
                    await outbox.polled_thrice.wait()
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
    events: Sequence[tuple[str, str]] = [(e["event"], e["log_level"]) for e in logs]
    assert events and set(events) == {("outbox_drain_failed", "warning")}
    assert not any("exc_info" in e for e in logs)


class DownOffsets:
    """The audit store's ingest offsets while the database is down."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.reads = 0
        self.read_thrice = asyncio.Event()

    async def ingest_offset(self, source: str) -> Any:
        self.reads += 1
        if self.reads >= 3:
            self.read_thrice.set()
        raise self.error


async def test_the_access_log_tailer_waits_out_an_outage_without_tracebacks(
    lost: BaseException, tmp_path: Path
) -> None:
    store = DownOffsets(lost)
    tailer = AccessLogTailer(store, tmp_path / "envoy-access.log", poll_s=0.01)  # type: ignore[arg-type]
    with capture_logs() as logs:
        task = asyncio.create_task(tailer.run())
        try:
            async with asyncio.timeout(10):
                await store.read_thrice.wait()
        finally:
            task.cancel()
    assert {(e["event"], e["log_level"]) for e in logs} == {("access_log_ingest_waiting", "warning")}
    assert not any("exc_info" in e or "exception" in e for e in logs)
