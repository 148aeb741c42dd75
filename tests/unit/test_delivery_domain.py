"""The delivery layer's pure rules: the circuit per insurer (§10.5), backoff
with full jitter (§10.4), what a webhook answer means (§10.3), and a checked
delivery keeping every field of the request."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from iclaim.crypto.envelope import sha256_hex
from services.insurer_adapter.domain import (
    Backoff,
    Circuit,
    Health,
    PushError,
    answer_type_ok,
    checked,
    grpc_error,
    http_error,
    http_taken,
)
from services.insurer_adapter.model import DeliveryRequest


def test_a_checked_delivery_keeps_every_field_and_adds_the_digest() -> None:
    request = DeliveryRequest(
        transaction_id="txn_" + "a" * 28,
        insurer_code="AIA",
        hospital_code="10670",
        claim_ref="CR-1",
        billed_amount_satang=12_345,
        envelope="header.key.iv.ciphertext.tag",
        submitted_at=datetime(2026, 11, 27, tzinfo=UTC),
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    )
    delivery = checked(request)
    for f in dataclasses.fields(DeliveryRequest):
        assert getattr(delivery, f.name) == getattr(request, f.name), f.name
    assert delivery.envelope_sha256 == sha256_hex(request.envelope)


def test_circuit_degrades_goes_down_at_five_and_probes_one_at_a_time() -> None:
    c = Circuit(probe_s=30)
    assert c.health is Health.UNKNOWN and c.slots(0, 16) == 16
    for n in range(1, 5):
        assert c.record(False, now=n) is False
        assert (c.health, c.failures) == (Health.DEGRADED, n)
        assert c.slots(n, 16) == 16
    c.record(False, now=5)
    assert c.health is Health.DOWN
    assert c.slots(5, 16) == 0 and c.slots(34.9, 16) == 0 and c.wait_s(5) == 30
    assert c.slots(35, 16) == 1 and c.slots(35, 0) == 0
    assert c.started() is True
    assert c.slots(40, 16) == 0  # one probe at a time
    c.record(False, now=36, probe=True)
    assert c.slots(65.9, 16) == 0 and c.slots(66, 16) == 1  # the next one 30 s after the failed probe
    c.started()
    assert c.record(True, now=67, probe=True) is True  # closed
    assert (c.health, c.failures, c.slots(67, 16)) == (Health.HEALTHY, 0, 16)


def test_late_failures_of_pushes_started_before_down_do_not_delay_the_probe() -> None:
    c = Circuit(probe_s=30)
    for _ in range(5):
        c.record(False, now=0)
    c.record(False, now=10)  # an in-flight push from before, not a probe
    assert c.slots(30, 16) == 1


def test_a_success_in_degraded_state_resets_the_count() -> None:
    c = Circuit(probe_s=30)
    c.record(False, now=0)
    c.record(False, now=0)
    assert c.record(True, now=1) is False
    assert (c.health, c.failures) == (Health.HEALTHY, 0)


def test_backoff_is_full_jitter_from_base_to_cap() -> None:
    b = Backoff(base_s=1.0, max_s=60.0)
    assert [b.delay(n, rand=1.0) for n in (1, 2, 3, 6, 7, 50)] == [1, 2, 4, 32, 60, 60]
    assert b.delay(3, rand=0.0) == 0.0
    assert all(0 <= b.delay(10) <= 60 for _ in range(200))


@pytest.mark.parametrize(
    ("status", "taken", "error"),
    [
        (200, True, ""),
        (204, True, ""),
        (409, True, ""),
        (302, False, PushError.HTTP_3XX),
        (401, False, PushError.HTTP_4XX),
        (503, False, PushError.HTTP_5XX),
        (101, False, PushError.HTTP_1XX),
        (999, False, PushError.HTTP_OTHER),
    ],
)
def test_http_status(status: int, taken: bool, error: str) -> None:
    assert http_taken(status) is taken
    if not taken:
        assert http_error(status) == error


def test_answer_types() -> None:
    assert answer_type_ok("", 0) and answer_type_ok("text/html", 0)
    assert answer_type_ok("application/json; charset=utf-8", 10)
    assert answer_type_ok("application/problem+json", 10)
    assert answer_type_ok("text/plain", 2)
    assert not answer_type_ok("text/html", 10)
    assert not answer_type_ok("", 10)


def test_grpc_codes_map_to_the_fixed_vocabulary() -> None:
    assert grpc_error("UNAVAILABLE") is PushError.GRPC_UNAVAILABLE
    assert grpc_error("SOMETHING_NEW") is PushError.GRPC_UNKNOWN
