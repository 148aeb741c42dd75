"""PostPayment.paid_at: protobuf's FromDatetime takes a naive datetime as UTC,
so a Thai insurer's datetime.now() would land 7 h off, possibly on another
statement day (§9, Asia/Bangkok). The SDK refuses naive datetimes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from iclaim.client.billing import BillingClient
from iclaim.client.credentials import Credentials
from iclaim.v1 import billing_service_pb2 as bpb

LINES = [bpb.PaymentLine(transaction_id="txn_1", paid_satang=100)]


class FakeBillingStub:
    def __init__(self) -> None:
        self.requests: list[bpb.PostPaymentRequest] = []

    async def PostPayment(self, request: bpb.PostPaymentRequest, timeout: float) -> bpb.Payment:
        self.requests.append(request)
        return bpb.Payment(trace_no=request.trace_no)


@pytest.fixture
async def client() -> Any:
    c = BillingClient(Credentials("127.0.0.1:9", None, "AIA", "k1", b"\x01" * 32, {}))
    c.stub = FakeBillingStub()  # type: ignore[assignment]
    yield c
    await c.close()


async def test_a_naive_paid_at_is_refused_before_anything_is_sent(client: BillingClient) -> None:
    with pytest.raises(ValueError, match="paid_at"):
        await client.post_payment("TR-1", datetime(2026, 3, 1, 0, 30), LINES)
    assert client.stub.requests == []  # type: ignore[attr-defined]


async def test_an_aware_paid_at_is_sent_as_its_instant(client: BillingClient) -> None:
    bangkok = datetime(2026, 3, 1, 0, 30, tzinfo=ZoneInfo("Asia/Bangkok"))
    await client.post_payment("TR-1", bangkok, LINES)
    [sent] = client.stub.requests  # type: ignore[attr-defined]
    assert sent.paid_at.ToDatetime(tzinfo=UTC) == datetime(2026, 2, 28, 17, 30, tzinfo=UTC)
