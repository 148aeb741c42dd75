"""The in-process claim_router harness the router service tests share
(a recording push adapter, the caller identity set as the gateway sets it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from google.protobuf.duration_pb2 import Duration
from grpc_status import rpc_status

from iclaim.errors import error_info_of
from iclaim.limits import CLIENT_OPTIONS
from iclaim.crypto.envelope import generate_encryption_key, seal
from iclaim_hub.common.server import ServeConfig
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.internal.v1 import (
    decision_intake_pb2_grpc,
    delivery_report_pb2,
    delivery_report_pb2_grpc,
    insurer_adapter_pb2,
    insurer_adapter_pb2_grpc,
)
from iclaim_hub.registry.directory import dev_hospitals, pull_insurer, sample_insurers
from iclaim_hub.registry.store import RegistryStore
from iclaim.v1 import claim_service_pb2 as pb
from services.claim_router.server import Config, build_server
from tests.support.router import RouterStubs

H1, H2 = "10670", "10671"
S = pb.ClaimState


class RecordingAdapter(insurer_adapter_pb2_grpc.InsurerAdapterServiceServicer):
    """Records each claim handed off (`calls`) and each call's claims
    (`batches`); `fail_next` calls fail UNAVAILABLE; while `hold` is set, a call
    waits until it is cleared (`held` counts the calls waiting)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.batches: list[list[str]] = []
        self.fail_next = 0
        self.hold: asyncio.Event | None = None
        self.held = 0

    async def _take(self, ids: list[str], context: Any) -> None:
        if self.hold is not None:
            self.held += 1
            await self.hold.wait()
        if self.fail_next:
            self.fail_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        self.batches.append(ids)
        self.calls += ids

    async def DeliverClaim(self, request: Any, context: Any) -> Any:
        await self._take([request.transaction_id], context)
        return insurer_adapter_pb2.DeliverClaimResponse(
            duplicate=self.calls.count(request.transaction_id) > 1
        )

    async def DeliverClaims(self, request: Any, context: Any) -> Any:
        await self._take([c.transaction_id for c in request.claims], context)
        return insurer_adapter_pb2.DeliverClaimsResponse()


@dataclass
class Env(RouterStubs):
    channel: grpc.aio.Channel
    adapter: RecordingAdapter
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # code -> private jwk
    pool: asyncpg.Pool | None = None  # the router's database
    registry: RegistryStore | None = None  # under the router's master key

    def md(self, code: str, role: str = "hospital") -> tuple[tuple[str, str], ...]:
        return (("x-iclaim-principal", code), ("x-iclaim-role", role))

    @property
    def intake(self) -> decision_intake_pb2_grpc.DecisionIntakeServiceStub:
        return decision_intake_pb2_grpc.DecisionIntakeServiceStub(self.channel)

    @property
    def reports(self) -> delivery_report_pb2_grpc.DeliveryReportServiceStub:
        return delivery_report_pb2_grpc.DeliveryReportServiceStub(self.channel)

    async def report_taken(self, claim: pb.Claim) -> int:
        """What the delivery layer sends once the insurer took the claim."""
        resp = await self.reports.ReportTaken(
            delivery_report_pb2.ReportTakenRequest(
                transaction_id=claim.transaction_id, insurer_code=claim.insurer_code
            ),
            timeout=10,
        )
        return resp.state

    async def handed_off(self, transaction_id: str) -> bool:
        assert self.pool is not None
        at = await self.pool.fetchval(
            "SELECT delivered_at FROM router.claims WHERE transaction_id = $1", transaction_id
        )
        return at is not None

    def envelope(self, hospital: str, insurer: str, ref: str, amount: int, body: bytes = b"{}") -> str:
        public = {k: v for k, v in self.keys[insurer].items() if k != "d"}
        return seal(body, public, sender=hospital, recipient=insurer, claim_ref=ref, amount_satang=amount)

    def decision(self, hospital: str, insurer: str, ref: str, amount: int) -> str:
        public = {k: v for k, v in self.keys[hospital].items() if k != "d"}
        return seal(
            b'{"resourceType":"ClaimResponse"}',
            public,
            sender=insurer,
            recipient=hospital,
            claim_ref=ref,
            amount_satang=amount,
        )


@contextlib.asynccontextmanager
async def running_env(database_url: str, **config: Any) -> AsyncIterator[Env]:
    """A router (1 s pull lease unless `config` says otherwise) handing push
    claims to a RecordingAdapter, over a registry seeded with the dev hospitals,
    the first five sample insurers (AIA grpc, MTL webhook, TLI pull, OLI grpc,
    BLA webhook) and TESTPULL."""
    master_key = os.urandom(32)
    box = SecretBox(master_key)
    pool = await asyncpg.create_pool(database_url)
    registry = RegistryStore(pool, box)
    await registry.migrate()
    keys: dict[str, dict[str, Any]] = {}
    for p in [*dev_hospitals(), *sample_insurers()[:5], pull_insurer()]:
        await registry.upsert_principal(p)
        private, public = generate_encryption_key(f"{p.code}-k1")
        await registry.add_encryption_key(p.code, public["kid"], public)
        keys[p.code] = private

    adapter = RecordingAdapter()
    adapter_server = grpc.aio.server()
    insurer_adapter_pb2_grpc.add_InsurerAdapterServiceServicer_to_server(adapter, adapter_server)
    adapter_port = adapter_server.add_insecure_port("127.0.0.1:0")
    await adapter_server.start()

    settings: dict[str, Any] = {"pull_lease_s": 1.0, **config}
    app = await build_server(
        Config(
            serve=ServeConfig(listen_addr="127.0.0.1:0", metrics_port=-1),
            database_url=database_url,
            master_key=master_key,
            adapter_target=f"127.0.0.1:{adapter_port}",
            audit_target="off",
            billing_target="off",
            **settings,
        )
    )
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=CLIENT_OPTIONS)
    try:
        yield Env(channel, adapter, keys, pool, registry)
    finally:
        await channel.close()
        await app.stop(0)
        await adapter_server.stop(0)
        await pool.close()


def reason_of(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, "error without grpc-status-details-bin"
    info = error_info_of(status)
    assert info is not None and info.domain == "iclaim.v1"
    return info.reason


def error_metadata(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)
    info = error_info_of(status) if status is not None else None
    assert info is not None
    return dict(info.metadata)


async def submit(
    env: Env,
    hospital: str,
    insurer: str,
    ref: str,
    amount: int = 10_000,
    envelope: str | None = None,
    wait_s: float = 0,
) -> pb.Claim:
    timeout = Duration()
    timeout.FromNanoseconds(int(wait_s * 1e9))
    resp = await env.claims.SubmitClaim(
        pb.SubmitClaimRequest(
            claim_ref=ref,
            insurer_code=insurer,
            billed_amount_satang=amount,
            envelope=envelope or env.envelope(hospital, insurer, ref, amount),
            decision_timeout=timeout,
        ),
        metadata=env.md(hospital),
        timeout=40,
    )
    return resp.claim


async def wait_handed_off(env: Env, tid: str) -> None:
    """Until the delivery layer (the fake adapter) received the claim. The
    router records the hand-off itself only when the insurer took the claim
    (ReportTaken) or when its poller had to hand it off again."""
    for _ in range(100):
        if tid in env.adapter.calls:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the claim was never handed off")


async def wait_state(env: Env, tid: str, state: int, hospital: str = H1) -> pb.Claim:
    for _ in range(100):
        claim = await env.claims.GetClaim(pb.GetClaimRequest(transaction_id=tid), metadata=env.md(hospital))
        if claim.state == state:
            return claim
        await asyncio.sleep(0.05)
    raise AssertionError(f"claim never reached {S.Name(state)}: {S.Name(claim.state)}")
