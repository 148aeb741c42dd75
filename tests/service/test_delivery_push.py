"""Pushes over real TLS to endpoints written from §10 alone (a gRPC
InsurerEndpoint and an HTTPS webhook made in the test from a throwaway CA),
insurer_adapter in-process, real PostgreSQL, a fake of the router's
DeliveryReportService. Every push's §10.1 signature is checked by the endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from iclaim.v1 import insurer_endpoint_pb2
from services.insurer_adapter.model import Delivery, Endpoint, EndpointKey
from services.insurer_adapter.push_grpc import GrpcPusher
from tests.support.delivery_endpoints import HOSPITAL, Harness, TestCA, delivery_harness, wait_for


@pytest.fixture
async def h(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with delivery_harness(database_url, tmp_path) as harness:
        yield harness


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_grpc_push_is_signed_verified_and_reported_taken(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("GRPCINS")
    taken_before = _metric("iclaim_delivery_pushes_total", insurer="GRPCINS", outcome="taken")
    stub = await h.start_adapter()
    txids = await h.deliver(stub, "GRPCINS", 3)

    await wait_for(lambda: sorted(h.reports.acked("taken")) == sorted(txids), what="taken reports")
    assert sorted(endpoint.taken_ids()) == sorted(txids)
    key = await h.registry.endpoint_key("GRPCINS")
    assert key is not None
    assert all(r.verified and r.client == "ICLAIM" and r.key_id == key.key_id for r in endpoint.received)
    assert len(endpoint.received) == 3  # each once
    assert {c.insurer_code for c in h.reports.calls} == {"GRPCINS"}

    # What the insurer got is the ClaimDelivery of §6, as the router handed it off.
    sent = insurer_endpoint_pb2.ReceiveClaimRequest.FromString(endpoint.received[0].body).delivery
    original = h.request("GRPCINS", sent.transaction_id)
    assert (sent.hospital_code, sent.claim_ref, sent.billed_amount_satang, sent.envelope) == (
        original.hospital_code,
        original.claim_ref,
        original.billed_amount_satang,
        original.envelope,
    )
    assert sent.submitted_at == original.submitted_at

    async def all_taken() -> bool:  # the router is told first, then the row is marked
        return set((await h.states(txids)).values()) == {"taken"}

    await wait_for(all_taken, what="rows taken")
    await wait_for(lambda: _report_states(h, txids, "done"), what="reports marked done")
    assert _metric("iclaim_delivery_pushes_total", insurer="GRPCINS", outcome="taken") - taken_before == 3
    await wait_for(lambda: _health_is(h, "GRPCINS", "healthy"), what="health published")
    assert _metric("iclaim_delivery_circuit_state", insurer="GRPCINS") == 1


async def _report_states(h: Harness, txids: list[str], state: str) -> bool:
    rows = await h.pool.fetch(
        "SELECT report_state FROM adapter.deliveries WHERE transaction_id = ANY($1::text[])", txids
    )
    return len(rows) == len(txids) and all(r["report_state"] == state for r in rows)


async def _health_is(h: Harness, code: str, health: str) -> bool:
    row = await h.registry.health(code)
    return row is not None and row.health == health


async def test_grpc_already_exists_means_taken(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("DUPINS")
    endpoint.answer = grpc.StatusCode.ALREADY_EXISTS
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, "DUPINS")
    await wait_for(lambda: h.reports.acked("taken") == [txid], what="taken")
    assert len(endpoint.received) == 1


@pytest.mark.parametrize(("mode", "status"), [("ok", 200), ("text", 200), ("empty", 204), ("conflict", 409)])
async def test_webhook_push_is_proto3_json_signed_over_the_raw_body(
    h: Harness, mode: str, status: int
) -> None:
    endpoint = await h.webhook_endpoint("HOOKINS")
    endpoint.mode = mode
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, "HOOKINS")
    await wait_for(lambda: h.reports.acked("taken") == [txid], what="taken")

    [push] = endpoint.received
    assert push.verified and push.client == "ICLAIM"
    assert push.headers["content-type"] == "application/json"
    document = json.loads(push.body)
    original = h.request("HOOKINS", txid)
    # §10.3: proto3 JSON mapping, camelCase names, int64 as a string, RFC 3339 time.
    assert document == {
        "transactionId": txid,
        "hospitalCode": original.hospital_code,
        "claimRef": original.claim_ref,
        "billedAmountSatang": str(original.billed_amount_satang),
        "envelope": original.envelope,
        "submittedAt": "2026-11-25T08:30:00Z",
    }


async def test_mtls_endpoints_get_the_hub_client_certificate(h: Harness) -> None:
    client = h.ca.issue("iclaim-hub", server=False, hosts=())
    grpc_ep = await h.grpc_endpoint("MTLSG", mtls=True)
    hook_ep = await h.webhook_endpoint("MTLSW", mtls=True)
    stub = await h.start_adapter(client_cert=client.cert_path, client_key=client.key_path)
    ids = await h.deliver(stub, "MTLSG") + await h.deliver(stub, "MTLSW")
    await wait_for(lambda: sorted(h.reports.acked("taken")) == sorted(ids), what="taken over mTLS")
    assert grpc_ep.taken_ids() == ids[:1] and hook_ep.taken_ids() == ids[1:]


async def test_mtls_asked_but_no_client_certificate_configured_is_a_failed_push(h: Harness) -> None:
    hook_ep = await h.webhook_endpoint("MTLSX", mtls=True)
    stub = await h.start_adapter()  # no ICLAIM_DELIVERY_CLIENT_CERT
    [txid] = await h.deliver(stub, "MTLSX")

    async def failed_once() -> bool:
        row = await h.row(txid)
        return row["last_error"] == "CLIENT_CERT_UNCONFIGURED"

    await wait_for(failed_once, what="failed push")
    assert (await h.row(txid))["state"] == "waiting"
    assert hook_ep.received == []


@pytest.mark.parametrize("mode", ["grpc", "webhook"])
@pytest.mark.parametrize("problem", ["other_ca", "wrong_host"])
async def test_a_server_certificate_the_registered_ca_does_not_vouch_for_is_a_failed_push(
    h: Harness, tmp_path: Path, mode: str, problem: str
) -> None:
    if problem == "other_ca":
        cert = TestCA(tmp_path / "other", "impostor-ca").issue("impostor")
    else:
        cert = h.ca.issue("elsewhere", hosts=("insurer.example",))
    if mode == "grpc":
        endpoint = await h.grpc_endpoint("TLSBAD", cert=cert)
        expected = "GRPC_UNAVAILABLE"
    else:
        endpoint = await h.webhook_endpoint("TLSBAD", cert=cert)  # type: ignore[assignment]
        expected = "TLS_FAILED"
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, "TLSBAD")

    async def retried() -> bool:
        row = await h.row(txid)
        return row["attempts"] >= 2 and row["last_error"] == expected

    await wait_for(retried, what="failed attempts")
    assert (await h.row(txid))["state"] == "waiting"
    assert endpoint.received == []  # nothing reached a server we cannot verify
    assert h.reports.calls == []


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("error", "HTTP_5XX"),
        ("html", "ANSWER_CONTENT_TYPE"),
        ("huge", "ANSWER_TOO_LARGE"),
        ("endless", "ANSWER_TOO_LARGE"),
        ("redirect", "HTTP_3XX"),
    ],
)
async def test_garbage_answers_are_failed_pushes_read_within_64_kib(
    h: Harness, mode: str, error: str
) -> None:
    endpoint = await h.webhook_endpoint("GARBAGE")
    endpoint.mode = mode
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, "GARBAGE")

    async def failed() -> bool:
        row = await h.row(txid)
        return row["attempts"] >= 2 and row["last_error"] == error

    await wait_for(failed, what=f"failed push ({mode})")
    assert (await h.row(txid))["state"] == "waiting"
    assert h.reports.acked() == []
    if mode == "endless":
        # The hub stopped reading after 64 KiB and hung up: the endless answer got
        # no further than the sockets' buffers (it would run for the whole 2 s
        # timeout, hundreds of MiB on loopback, if the hub kept reading).
        assert endpoint.streamed < 32 * 1024 * 1024

    endpoint.mode = "ok"  # the insurer fixes its endpoint: the same claim is taken
    await wait_for(lambda: h.reports.acked("taken") == [txid], what="taken after the fix")


async def test_grpc_error_status_is_a_failed_push_then_taken(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("GRPCERR")
    endpoint.answer = grpc.StatusCode.PERMISSION_DENIED
    stub = await h.start_adapter()
    [txid] = await h.deliver(stub, "GRPCERR")

    async def failed() -> bool:
        return (await h.row(txid))["last_error"] == "GRPC_PERMISSION_DENIED"

    await wait_for(failed, what="failed push")
    endpoint.answer = grpc.StatusCode.OK
    await wait_for(lambda: h.reports.acked("taken") == [txid], what="taken")
    assert (await h.taken_row(txid))["last_error"] is None


async def test_after_rotation_only_the_new_endpoint_key_signs(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("ROTINS")
    stub = await h.start_adapter()
    [first] = await h.deliver(stub, "ROTINS")
    await wait_for(lambda: h.reports.acked("taken") == [first], what="first taken")
    old = await h.registry.endpoint_key("ROTINS")
    new = await h.registry.issue_endpoint_key("ROTINS")
    assert old is not None and old.key_id != new.key_id
    endpoint.verifier.keys = {new.key_id: new.secret}  # the insurer trusts only the new key now

    ids = await h.deliver(stub, "ROTINS", 3)
    await wait_for(lambda: set(ids) <= set(h.reports.acked("taken")), what="taken with the new key")
    verified = [r for r in endpoint.received if r.verified]
    assert [r.key_id for r in verified] == [old.key_id] + [new.key_id] * 3
    # Once a push carried the new key, none carried the old one again.
    first_new = next(i for i, r in enumerate(endpoint.received) if r.key_id == new.key_id)
    assert all(r.key_id == new.key_id for r in endpoint.received[first_new:])


async def test_closed_or_pull_insurers_are_not_pushed_and_their_claims_wait(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("PAUSED")
    await h.registry.set_endpoint("PAUSED", available=False)
    stub = await h.start_adapter()
    [closed] = await h.deliver(stub, "PAUSED")
    key = await h.registry.endpoint_key("PAUSED")
    assert key is not None

    # Waiting, not attempted: the lane had several cache periods to (wrongly) push.
    await asyncio.sleep(1.2)
    row = await h.row(closed)
    assert (row["state"], row["attempts"]) == ("waiting", 0)
    assert endpoint.received == []

    await h.registry.set_endpoint("PAUSED", available=True)
    await wait_for(lambda: h.reports.acked("taken") == [closed], what="taken once open")

    await h.registry.set_endpoint("PAUSED", delivery_mode="pull")
    await asyncio.sleep(1.2)  # past the endpoint cache TTL (0.5 s in tests)
    [pulled] = await h.deliver(stub, "PAUSED")
    await asyncio.sleep(1.2)
    row = await h.row(pulled)
    assert (row["state"], row["attempts"]) == ("waiting", 0)
    assert endpoint.taken_ids() == [closed]


async def test_the_first_push_after_an_outage_really_tries_the_endpoint(h: Harness) -> None:
    endpoint = await h.grpc_endpoint("BACKINS", start=False)
    key = await h.registry.endpoint_key("BACKINS")
    assert key is not None
    target = Endpoint("BACKINS", "grpc", f"127.0.0.1:{endpoint.port}", h.ca.pem, False, True, None)
    target = replace(target, key=EndpointKey(key.key_id, key.secret))
    delivery = Delivery(
        "txn_" + "b" * 28, "BACKINS", HOSPITAL, "HN-1", 100, "e.n.v.e.l", None, datetime.now(UTC), 1
    )
    pusher = GrpcPusher(timeout_s=2.0, identity=None)
    try:
        # Seconds of refused connections: a gRPC channel would now be waiting
        # out a reconnect backoff of several seconds, failing calls untried.
        for _ in range(12):
            assert (await pusher.push(target, delivery)).error == "GRPC_UNAVAILABLE"
            await asyncio.sleep(0.5)
        await endpoint.start(endpoint.port)
        assert (await pusher.push(target, delivery)).taken
    finally:
        await pusher.close()
    assert endpoint.taken_ids() == [delivery.transaction_id]
