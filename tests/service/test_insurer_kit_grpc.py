"""The kit's gRPC `InsurerEndpoint` over real TLS (a throwaway CA): §10.2
answers, §10.1 verification over the raw request bytes before parsing,
durable dedupe, many insurers on one port picked by endpoint key id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from iclaim.insurer.handler import ApproveInFull
from iclaim.insurer.runner import Running, ServePlan, serve_grpc, start
from iclaim.insurer.verify import GRPC_METHOD
from iclaim.limits import MAX_REQUEST_BYTES
from iclaim.v1 import insurer_endpoint_pb2 as epb
from iclaim.v1 import insurer_endpoint_pb2_grpc
from tests.support.insurer_kit import (
    FakeGateway,
    Party,
    Tls,
    delivery,
    error_reason,
    grpc_channel,
    make_tls,
    push_headers,
    write_credentials,
)


@dataclass
class Endpoint:
    tls: Tls
    parties: dict[str, Party]
    gateways: dict[str, FakeGateway]
    running: Running
    channel: grpc.aio.Channel

    async def call(self, body: bytes, headers: dict[str, str]) -> grpc.aio.UnaryUnaryCall:
        # Raw bytes on the wire, as the hub sends them (and garbage, when asked).
        method = self.channel.unary_unary(
            GRPC_METHOD, request_serializer=None, response_deserializer=epb.ReceiveClaimResponse.FromString
        )
        call = method(body, metadata=tuple(headers.items()), timeout=10)
        await call.code()
        return call

    async def push(self, code: str, body: bytes, **sign: object) -> grpc.aio.UnaryUnaryCall:
        return await self.call(body, push_headers(self.parties[code].creds, GRPC_METHOD, body, **sign))  # type: ignore[arg-type]

    async def stored(self) -> dict[str, int]:
        return await self.running.host.inbox.counts()


def _body(party: Party, **kw: object) -> tuple[str, bytes]:
    d = delivery(party, **kw)  # type: ignore[arg-type]
    return d.transaction_id, epb.ReceiveClaimRequest(delivery=d).SerializeToString()


async def _endpoint(tmp_path: Path, codes: list[str], *, mtls: bool = False) -> AsyncIterator[Endpoint]:
    tls = make_tls(tmp_path / "tls")
    _, parties = write_credentials(tmp_path, codes, tls, mtls=mtls)
    gateways = {c: FakeGateway() for c in codes}
    running = await serve_grpc(
        [p.creds for p in parties.values()],
        ApproveInFull(),
        "127.0.0.1:0",
        tmp_path / "state",
        clients=gateways,
    )
    assert running.port is not None
    channel = grpc_channel(tls, running.port, with_cert=mtls)
    try:
        yield Endpoint(tls, parties, gateways, running, channel)
    finally:
        await channel.close()
        await running.stop()


@pytest.fixture
async def ep(tmp_path: Path) -> AsyncIterator[Endpoint]:
    async for e in _endpoint(tmp_path, ["AIA", "MTL"]):
        yield e


async def test_a_push_is_ok_once_stored_then_decided_and_a_duplicate_is_ok_too(ep: Endpoint) -> None:
    txid, body = _body(ep.parties["AIA"], amount=125_000)
    assert await (await ep.push("AIA", body)).code() == grpc.StatusCode.OK
    [posted] = await ep.gateways["AIA"].wait_for(1)
    assert (posted.transaction_id, posted.approved) == (txid, 125_000)
    assert await (await ep.push("AIA", body)).code() == grpc.StatusCode.OK
    assert await ep.stored() == {"decided": 1}
    assert len(ep.gateways["AIA"].posted) == 1


async def test_the_generated_stub_works_as_a_client(ep: Endpoint) -> None:
    txid, body = _body(ep.parties["MTL"])
    stub = insurer_endpoint_pb2_grpc.InsurerEndpointStub(ep.channel)
    request = epb.ReceiveClaimRequest.FromString(body)
    headers = push_headers(ep.parties["MTL"].creds, GRPC_METHOD, request.SerializeToString())
    await stub.ReceiveClaim(request, metadata=tuple(headers.items()), timeout=10)
    [posted] = await ep.gateways["MTL"].wait_for(1)
    assert posted.transaction_id == txid


async def test_insurers_on_one_port_are_picked_by_endpoint_key(ep: Endpoint) -> None:
    a_id, a_body = _body(ep.parties["AIA"])
    m_id, m_body = _body(ep.parties["MTL"])
    for code, body in (("AIA", a_body), ("MTL", m_body)):
        assert await (await ep.push(code, body)).code() == grpc.StatusCode.OK
    assert [p.transaction_id for p in await ep.gateways["AIA"].wait_for(1)] == [a_id]
    assert [p.transaction_id for p in await ep.gateways["MTL"].wait_for(1)] == [m_id]
    inbox = ep.running.host.inbox
    assert await inbox.state_of("AIA", a_id) and await inbox.state_of("MTL", m_id)
    assert await inbox.state_of("MTL", a_id) is None


@pytest.mark.parametrize(
    ("sign", "reason"),
    [
        ({"secret": b"\x07" * 32}, "BAD_SIGNATURE"),
        ({"timestamp": 1_600_000_000}, "TIMESTAMP_SKEW"),
        ({"client": "MTL"}, "UNKNOWN_CLIENT"),
    ],
)
async def test_a_push_that_does_not_verify_is_unauthenticated_and_nothing_is_stored(
    ep: Endpoint, sign: dict[str, object], reason: str
) -> None:
    _, body = _body(ep.parties["AIA"])
    call = await ep.push("AIA", body, **sign)
    assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
    trailing = await call.trailing_metadata()
    assert error_reason(trailing) == reason
    if reason == "TIMESTAMP_SKEW":
        assert any(k == "x-iclaim-server-time" and v.isdigit() for k, v in trailing)
    assert await ep.stored() == {}


async def test_unknown_key_missing_metadata_and_replay(ep: Endpoint) -> None:
    _, body = _body(ep.parties["AIA"])
    headers = push_headers(ep.parties["AIA"].creds, GRPC_METHOD, body)
    unknown = {**headers, "x-iclaim-key-id": "ep-nobody"}
    assert error_reason(await (await ep.call(body, unknown)).trailing_metadata()) == "UNKNOWN_KEY"
    assert error_reason(await (await ep.call(body, {})).trailing_metadata()) == "MALFORMED_METADATA"
    assert await (await ep.call(body, headers)).code() == grpc.StatusCode.OK
    replay = await ep.call(body, headers)
    assert await replay.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(await replay.trailing_metadata()) == "NONCE_REUSED"


async def test_the_signature_is_checked_before_the_bytes_are_parsed(ep: Endpoint) -> None:
    garbage = b"\xff\xff\xff not a protobuf"
    unsigned = await ep.push("AIA", garbage, secret=b"\x07" * 32)
    assert await unsigned.code() == grpc.StatusCode.UNAUTHENTICATED  # not INVALID_ARGUMENT: never parsed
    signed = await ep.push("AIA", garbage)
    assert await signed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(await signed.trailing_metadata()) == "DELIVERY_INVALID"
    empty = await ep.push("AIA", epb.ReceiveClaimRequest().SerializeToString())
    assert error_reason(await empty.trailing_metadata()) == "DELIVERY_INVALID"
    assert await ep.stored() == {}


async def test_a_tampered_request_is_unauthenticated(ep: Endpoint) -> None:
    _, body = _body(ep.parties["AIA"], amount=125_000)
    headers = push_headers(ep.parties["AIA"].creds, GRPC_METHOD, body)
    request = epb.ReceiveClaimRequest.FromString(body)
    request.delivery.billed_amount_satang = 1
    call = await ep.call(request.SerializeToString(), headers)
    assert error_reason(await call.trailing_metadata()) == "BAD_SIGNATURE"


async def test_a_request_over_the_size_limit_is_refused(ep: Endpoint) -> None:
    big = b"\x00" * (MAX_REQUEST_BYTES + 1)
    call = await ep.push("AIA", big)
    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await ep.stored() == {}


async def test_a_full_inbox_is_resource_exhausted_and_retryable(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    _, parties = write_credentials(tmp_path, ["AIA"], tls)
    # A handler that never finishes keeps the first claim open.
    running = await start(
        ServePlan(grpc=[parties["AIA"].creds], grpc_addr="127.0.0.1:0"),
        ApproveInFull(),
        tmp_path / "state",
        clients={"AIA": FakeGateway(errors=[grpc_unavailable()] * 100)},
        host_options={"inbox_options": {"max_undecided": 1}},
    )
    assert running.port is not None
    channel = grpc_channel(tls, running.port)
    try:
        e = Endpoint(tls, parties, {}, running, channel)
        assert await (await e.push("AIA", _body(parties["AIA"])[1])).code() == grpc.StatusCode.OK
        full = await e.push("AIA", _body(parties["AIA"])[1])
        assert await full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(await full.trailing_metadata()) == "INBOX_FULL"
    finally:
        await channel.close()
        await running.stop()


def grpc_unavailable() -> grpc.aio.AioRpcError:
    from tests.support.insurer_kit import rpc_error

    return rpc_error(grpc.StatusCode.UNAVAILABLE, "")


async def test_tls_is_real_a_client_trusting_another_ca_cannot_connect(ep: Endpoint) -> None:
    assert ep.running.port is not None
    channel = grpc_channel(ep.tls, ep.running.port, trust=ep.tls.other_ca)
    try:
        e = Endpoint(ep.tls, ep.parties, ep.gateways, ep.running, channel)
        call = await e.push("AIA", _body(ep.parties["AIA"])[1])
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()
    assert await ep.stored() == {}


async def test_mtls_when_asked_requires_the_hub_client_certificate(tmp_path: Path) -> None:
    async for e in _endpoint(tmp_path, ["AIA"], mtls=True):
        assert await (await e.push("AIA", _body(e.parties["AIA"])[1])).code() == grpc.StatusCode.OK
        assert e.running.port is not None
        bare = grpc_channel(e.tls, e.running.port)
        try:
            anon = Endpoint(e.tls, e.parties, e.gateways, e.running, bare)
            call = await anon.push("AIA", _body(e.parties["AIA"])[1])
            assert await call.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await bare.close()
        assert await e.stored() != {} and sum((await e.stored()).values()) == 1
