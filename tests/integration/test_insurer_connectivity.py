"""Issue 9 end to end, through the real stack (Envoy, PostgreSQL, Redis, real
TLS): an insurer enrolled with `iclaim admin`, served by a webhook endpoint
written from docs/protocol.md §10 alone (tests/support/delivery_endpoints.py,
not the kit), receives signed pushes, decides through the gateway; rotation,
an outage, expiry with the hospital's WatchClaim ending, and redrive."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from iclaim.client.credentials import Credentials
from iclaim.client.hospital import HospitalClient
from iclaim.client.insurer import InsurerClient
from iclaim.crypto.envelope import generate_encryption_key
from iclaim.crypto.signing import b64url_decode
from iclaim.fhir.claim_response import build_claim_response
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb
from tests.support.claims import fhir
from tests.support.delivery_endpoints import PushVerifier, TestCA, WebhookEndpoint, free_port
from tests.support.stack import RunningStack, run_admin, running_stack_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Short clocks so that an outage, its DOWN health and expiry happen within a test.
FAST_DELIVERY = {
    "ICLAIM_DELIVERY_EXPIRY_S": "12",
    "ICLAIM_DELIVERY_BACKOFF_BASE_S": "0.2",
    "ICLAIM_DELIVERY_BACKOFF_MAX_S": "1",
    "ICLAIM_DELIVERY_PROBE_S": "1",
    "ICLAIM_DELIVERY_TIMEOUT_S": "3",
}
CODE = "XHOOK"


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    async with running_stack_in(tmp_path_factory.mktemp("stack9"), FAST_DELIVERY, redis_db=11) as s:
        yield s


async def wait_for(predicate: Any, timeout_s: float = 20.0, every_s: float = 0.2) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every_s)


def delivery_of(body: bytes) -> ipb.ClaimDelivery:
    return json_format.Parse(body, ipb.ClaimDelivery(), ignore_unknown_fields=True)


async def listed(hospital: HospitalClient) -> pb.Insurer | None:
    return next((i for i in await hospital.list_insurers() if i.code == CODE), None)


async def test_enrolled_webhook_insurer_end_to_end(stack: RunningStack, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    cert = ca.issue("xhook")
    private_jwk, public_jwk = generate_encryption_key(f"{CODE}-k1")
    (tmp_path / "public.jwk").write_text(json.dumps(public_jwk))
    port = free_port()
    url = f"https://127.0.0.1:{port}/iclaim/claims"

    enrolled = await run_admin(
        stack, "insurer", "add", CODE, "--name", "Hook Insurance", "--line", "non-life",
        "--delivery", "webhook", "--endpoint", url, "--ca", str(ca.path),
        "--encryption-jwk", str(tmp_path / "public.jwk"),
    )  # fmt: skip
    assert set(enrolled) >= {"code", "key_id", "secret", "endpoint_key_id", "endpoint_secret"}
    first_key = enrolled["endpoint_key_id"]
    verifier = PushVerifier({first_key: b64url_decode(enrolled["endpoint_secret"])})
    endpoint = WebhookEndpoint(cert, verifier)
    await endpoint.start(port)

    hospital_creds = stack.creds()
    insurer_creds = Credentials(
        gateway=hospital_creds.gateway,
        ca_cert=hospital_creds.ca_cert,
        code=CODE,
        key_id=enrolled["key_id"],
        secret=b64url_decode(enrolled["secret"]),
        encryption_private_jwk=private_jwk,
    )
    try:
        async with HospitalClient(hospital_creds) as hospital, InsurerClient(insurer_creds) as insurer:
            # The directory shows it within 5 s (registry caches), as a webhook insurer.
            entry = await wait_for(lambda: listed(hospital), 8)
            assert entry.delivery == pb.DELIVERY_MODE_WEBHOOK and entry.available

            ref = f"HOOK-{secrets.token_hex(3)}"
            claim = await hospital.submit_claim(
                fhir(hospital_creds.code, CODE, ref, "POL-HOOK", 77_700),
                insurer_code=CODE, claim_ref=ref, amount_satang=77_700,
            )  # fmt: skip
            # Pushed, signed with the endpoint key the operator was given; DELIVERED once taken.
            await wait_for(lambda: _taken(endpoint, claim.transaction_id), 20)
            push = next(r for r in endpoint.received if r.transaction_id == claim.transaction_id)
            assert push.verified and push.client == "ICLAIM" and push.key_id == first_key
            await wait_for(lambda: _in_state(hospital, claim.transaction_id, pb.CLAIM_STATE_DELIVERED), 10)

            # The insurer opens the claim with its own key and decides through the gateway.
            delivery = delivery_of(push.body)
            header, document = insurer.open_claim(delivery)
            assert header.claim_ref == ref and json.loads(document)["resourceType"] == "Claim"
            response = build_claim_response(
                claim_ref=ref, hospital_code=hospital_creds.code, insurer_code=CODE,
                state="APPROVED", billed_satang=77_700, approved_satang=77_700,
            )  # fmt: skip
            await insurer.decide(
                delivery,
                state=pb.CLAIM_STATE_APPROVED,
                approved_amount_satang=77_700,
                claim_response=response,
            )
            decided = await hospital.get_claim(claim.transaction_id)
            assert decided.state == pb.CLAIM_STATE_APPROVED
            assert hospital.open_decision(decided).claim_response["resourceType"] == "ClaimResponse"

            # After rotate-endpoint-key only the new key signs.
            rotated = await run_admin(stack, "insurer", "rotate-endpoint-key", CODE)
            assert rotated["endpoint_key_id"] != first_key
            verifier.keys = {rotated["endpoint_key_id"]: b64url_decode(rotated["endpoint_secret"])}
            await asyncio.sleep(5)  # the hub's endpoint cache (≤ 4 s)
            ref2 = f"HOOK-{secrets.token_hex(3)}"
            claim2 = await hospital.submit_claim(
                fhir(hospital_creds.code, CODE, ref2, "POL-HOOK", 1_000),
                insurer_code=CODE, claim_ref=ref2, amount_satang=1_000,
            )  # fmt: skip
            await wait_for(lambda: _taken(endpoint, claim2.transaction_id), 20)
            pushes = [r for r in endpoint.received if r.transaction_id == claim2.transaction_id]
            assert all(r.key_id == rotated["endpoint_key_id"] for r in pushes)
            assert pushes[-1].verified

            # Endpoint down: claims are accepted and wait; health goes DOWN.
            await endpoint.stop()
            waiting = []
            for _ in range(3):
                r = f"HOOK-{secrets.token_hex(3)}"
                c = await hospital.submit_claim(
                    fhir(hospital_creds.code, CODE, r, "POL-HOOK", 500), insurer_code=CODE, claim_ref=r,
                    amount_satang=500,
                )  # fmt: skip
                assert c.state == pb.CLAIM_STATE_RECEIVED
                waiting.append(c.transaction_id)
            watch = asyncio.create_task(_watch_states(hospital, waiting[0]))
            await wait_for(lambda: _health(hospital, pb.INSURER_HEALTH_DOWN), 20)

            # Nobody takes them before expiry: FAILED / DELIVERY_EXPIRED, and WatchClaim ends on it.
            states = await asyncio.wait_for(watch, 40)
            assert states[-1] == (pb.CLAIM_STATE_FAILED, "DELIVERY_EXPIRED")

            # The first to expire ended the watch; the others (stored a moment
            # later) may expire at the next sweep.
            async def all_failed() -> bool:
                failed = await run_admin(stack, "deliveries", "list", "--insurer", CODE, "--state", "failed")
                return set(waiting) <= {d["transaction_id"] for d in failed["deliveries"]}

            await wait_for(all_failed, 10)

            # Back up, redriven: each is taken and DELIVERED.
            endpoint2 = WebhookEndpoint(cert, verifier)
            await endpoint2.start(port)
            try:
                redriven = await run_admin(stack, "deliveries", "redrive", *waiting)
                assert sorted(redriven["redriven"]) == sorted(waiting)
                for tid in waiting:
                    await wait_for(lambda t=tid: _in_state(hospital, t, pb.CLAIM_STATE_DELIVERED), 30)
                    assert len([r for r in endpoint2.received if r.transaction_id == tid and r.verified]) == 1
                await wait_for(lambda: _health(hospital, pb.INSURER_HEALTH_HEALTHY), 15)
            finally:
                await endpoint2.stop()
    finally:
        await endpoint.stop()


async def _taken(endpoint: WebhookEndpoint, tid: str) -> bool:
    return tid in endpoint.taken_ids()


async def _in_state(hospital: HospitalClient, tid: str, state: int) -> bool:
    return (await hospital.get_claim(tid)).state == state


async def _health(hospital: HospitalClient, health: int) -> bool:
    entry = await listed(hospital)
    return entry is not None and entry.health == health


async def _watch_states(hospital: HospitalClient, tid: str) -> list[tuple[int, str]]:
    return [(c.state, c.status_reason) async for c in hospital.watch_claim(tid, timeout_s=60)]
