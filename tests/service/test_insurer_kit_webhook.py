"""The kit's webhook receiver over real HTTPS (a throwaway CA): §10.3 answers,
§10.1 verification over the raw body before parsing, durable dedupe, limits."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from iclaim.insurer.handler import ApproveInFull
from iclaim.insurer.runner import Running, ServePlan, start
from iclaim.insurer.webhook import MAX_BODY_BYTES
from tests.support.insurer_kit import (
    FakeGateway,
    Party,
    Tls,
    client_ssl,
    delivery,
    delivery_json,
    make_tls,
    push_headers,
    write_credentials,
)


@dataclass
class Receiver:
    tls: Tls
    parties: dict[str, Party]
    gateways: dict[str, FakeGateway]
    running: Running
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"https://localhost:{self.running.webhook_port}"

    async def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, str]]:
        async with self.session.post(
            self.base + path, data=body, headers={**headers, "content-type": content_type}
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def push(
        self, code: str, body: bytes, *, path: str | None = None, **sign: object
    ) -> tuple[int, dict[str, str]]:
        path = path or f"/insurers/{code}/claims"
        signed_path = str(sign.pop("signed_path", path.split("?")[0]))
        headers = push_headers(self.parties[code].creds, f"POST {signed_path}", body, **sign)  # type: ignore[arg-type]
        return await self.post(path, body, headers)

    async def stored(self) -> dict[str, int]:
        return await self.running.host.inbox.counts()


async def _receiver(tmp_path: Path, codes: list[str], *, mtls: bool = False) -> AsyncIterator[Receiver]:
    tls = make_tls(tmp_path / "tls")
    _, parties = write_credentials(tmp_path, codes, tls, mtls=mtls)
    gateways = {c: FakeGateway() for c in codes}
    running = await start(
        ServePlan(webhook=[p.creds for p in parties.values()], webhook_addr="127.0.0.1:0"),
        ApproveInFull(),
        tmp_path / "state",
        clients=gateways,
    )
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl(tls, with_cert=mtls)))
    try:
        yield Receiver(tls, parties, gateways, running, session)
    finally:
        await session.close()
        await running.stop()


@pytest.fixture
async def one(tmp_path: Path) -> AsyncIterator[Receiver]:
    async for r in _receiver(tmp_path, ["AIA"]):
        yield r


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Receiver]:
    async for r in _receiver(tmp_path, ["AIA", "MTL"]):
        yield r


async def test_a_new_claim_is_taken_then_decided_and_a_duplicate_is_409(one: Receiver) -> None:
    d = delivery(one.parties["AIA"], amount=125_000)
    body = delivery_json(d)
    assert await one.push("AIA", body) == (200, {"result": "taken"})
    [posted] = await one.gateways["AIA"].wait_for(1)
    assert (posted.transaction_id, posted.approved) == (d.transaction_id, 125_000)
    # The hub pushes again (it never saw our answer): taken already.
    assert await one.push("AIA", body) == (409, {"result": "duplicate"})
    assert await one.stored() == {"decided": 1}
    assert len(one.gateways["AIA"].posted) == 1


async def test_the_single_insurer_path_and_a_query_string(one: Receiver) -> None:
    d1, d2, d3 = (delivery(one.parties["AIA"]) for _ in range(3))
    assert (await one.push("AIA", delivery_json(d1), path="/iclaim/claims"))[0] == 200
    # A registered URL with a query: the signature over the path alone, or
    # over path and query, both verify.
    assert (await one.push("AIA", delivery_json(d2), path="/insurers/AIA/claims?t=1"))[0] == 200
    q = "/insurers/AIA/claims?t=1"
    assert (await one.push("AIA", delivery_json(d3), path=q, signed_path=q))[0] == 200
    await one.gateways["AIA"].wait_for(3)


@pytest.mark.parametrize(
    ("sign", "reason"),
    [
        ({"secret": b"\x07" * 32}, "BAD_SIGNATURE"),
        ({"timestamp": 1_600_000_000}, "TIMESTAMP_SKEW"),
        ({"client": "AIA"}, "UNKNOWN_CLIENT"),
        ({"signed_path": "/iclaim/claims"}, "BAD_SIGNATURE"),
    ],
)
async def test_a_push_that_does_not_verify_is_401_and_nothing_is_stored(
    one: Receiver, sign: dict[str, object], reason: str
) -> None:
    body = delivery_json(delivery(one.parties["AIA"]))
    assert await one.push("AIA", body, **sign) == (401, {"reason": reason})
    assert await one.stored() == {}
    assert one.gateways["AIA"].posted == []


async def test_a_tampered_body_and_a_replayed_request_are_401(one: Receiver) -> None:
    creds = one.parties["AIA"].creds
    body = delivery_json(delivery(one.parties["AIA"]))
    headers = push_headers(creds, "POST /insurers/AIA/claims", body)
    tampered = body.replace(b'"hospitalCode": "10670"', b'"hospitalCode": "10671"')
    assert tampered != body
    assert await one.post("/insurers/AIA/claims", tampered, headers) == (401, {"reason": "BAD_SIGNATURE"})
    assert (await one.post("/insurers/AIA/claims", body, headers))[0] == 200
    # The same request again, byte for byte: a replay, not a duplicate.
    assert await one.post("/insurers/AIA/claims", body, headers) == (401, {"reason": "NONCE_REUSED"})


async def test_missing_signature_headers_are_401(one: Receiver) -> None:
    body = delivery_json(delivery(one.parties["AIA"]))
    assert await one.post("/insurers/AIA/claims", body, {}) == (401, {"reason": "MALFORMED_METADATA"})


async def test_wrong_content_type_is_415_and_nothing_is_stored(one: Receiver) -> None:
    body = delivery_json(delivery(one.parties["AIA"]))
    headers = push_headers(one.parties["AIA"].creds, "POST /insurers/AIA/claims", body)
    status, answer = await one.post("/insurers/AIA/claims", body, headers, content_type="text/plain")
    assert (status, answer) == (415, {"reason": "CONTENT_TYPE_UNSUPPORTED"})
    assert await one.stored() == {}


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({"transactionId": "txn_1"}).encode(),
        b"\xff\xfe",
        b'{"billedAmountSatang": "x"}',
    ],
)
async def test_a_signed_body_that_is_not_a_claim_delivery_is_400(one: Receiver, body: bytes) -> None:
    assert await one.push("AIA", body) == (400, {"reason": "DELIVERY_INVALID"})
    assert await one.stored() == {}


async def test_a_body_over_the_limit_is_413_by_length_or_by_stream(one: Receiver) -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    headers = push_headers(one.parties["AIA"].creds, "POST /insurers/AIA/claims", big)
    assert await one.post("/insurers/AIA/claims", big, headers) == (413, {"reason": "BODY_TOO_LARGE"})

    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 64 * MAX_BODY_BYTES:  # "endless" for the receiver: far past any limit
            sent += 64 * 1024
            yield b"y" * (64 * 1024)

    try:
        async with one.session.post(
            one.base + "/insurers/AIA/claims",
            data=endless(),
            headers={**headers, "content-type": "application/json"},
        ) as resp:
            assert resp.status == 413
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        pass  # the receiver closed the connection while we were still sending: also refused
    assert sent < 64 * MAX_BODY_BYTES  # it stopped reading; we never sent it all
    assert await one.stored() == {}


async def test_an_unknown_insurer_is_404(one: Receiver) -> None:
    body = delivery_json(delivery(one.parties["AIA"]))
    assert await one.push("AIA", body, path="/insurers/MTL/claims") == (404, {"reason": "UNKNOWN_INSURER"})


async def test_many_insurers_each_on_its_own_path_with_its_own_key(two: Receiver) -> None:
    aia, mtl = delivery(two.parties["AIA"]), delivery(two.parties["MTL"])
    assert (await two.push("AIA", delivery_json(aia)))[0] == 200
    assert (await two.push("MTL", delivery_json(mtl)))[0] == 200
    assert [p.transaction_id for p in await two.gateways["AIA"].wait_for(1)] == [aia.transaction_id]
    assert [p.transaction_id for p in await two.gateways["MTL"].wait_for(1)] == [mtl.transaction_id]
    # AIA's endpoint key does not open MTL's door.
    other = delivery_json(delivery(two.parties["MTL"]))
    headers = push_headers(two.parties["AIA"].creds, "POST /insurers/MTL/claims", other)
    assert await two.post("/insurers/MTL/claims", other, headers) == (401, {"reason": "UNKNOWN_KEY"})
    # With several insurers there is no single-insurer path.
    async with two.session.post(two.base + "/iclaim/claims", data=other) as resp:
        assert resp.status in (404, 405)


async def test_tls_is_real_a_client_trusting_another_ca_cannot_connect(one: Receiver) -> None:
    ctx = client_ssl(one.tls, trust=one.tls.other_ca)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await s.post(one.base + "/iclaim/claims", data=b"{}")


async def test_mtls_when_asked_requires_the_hub_client_certificate(tmp_path: Path) -> None:
    async for r in _receiver(tmp_path, ["AIA"], mtls=True):
        assert (await r.push("AIA", delivery_json(delivery(r.parties["AIA"]))))[0] == 200
        bare = ssl.create_default_context(cafile=str(r.tls.ca))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=bare)) as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.post(r.base + "/iclaim/claims", data=b"{}") as resp:
                    await resp.read()
