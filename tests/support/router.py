"""An in-process claim_router on port 0 over real PostgreSQL, with a seeded
registry (dev hospitals, a few simulated insurers, TESTPULL) and no push
adapter: claims to TESTPULL are pulled and decided through InsurerService.

The caller identity is set the way the gateway sets it (trusted headers). The
outbox relays are off unless targets are given, so a test decides what billing
and the audit log receive, and when."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc

from iclaim.crypto.envelope import generate_encryption_key, seal
from iclaim.limits import CLIENT_OPTIONS
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import claim_service_pb2_grpc, insurer_service_pb2, insurer_service_pb2_grpc
from iclaim_hub.common.server import GrpcApp, ServeConfig
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.internal.v1 import decision_intake_pb2_grpc
from iclaim_hub.registry.directory import dev_hospitals, pull_insurer, sample_insurers
from iclaim_hub.registry.store import RegistryStore
from services.claim_router.server import Config, build_server

PULL = "TESTPULL"


def md(code: str) -> tuple[tuple[str, str], ...]:
    role = "hospital" if code.isdigit() else "insurer"
    return (("x-iclaim-principal", code), ("x-iclaim-role", role))


class RouterStubs:
    """The router's public stubs on `channel` (shared by this harness and
    tests/support/router_env.py)."""

    channel: grpc.aio.Channel

    @property
    def claims(self) -> claim_service_pb2_grpc.ClaimServiceStub:
        return claim_service_pb2_grpc.ClaimServiceStub(self.channel)

    @property
    def insurer(self) -> insurer_service_pb2_grpc.InsurerServiceStub:
        return insurer_service_pb2_grpc.InsurerServiceStub(self.channel)


@dataclass
class Router(RouterStubs):
    app: GrpcApp
    channel: grpc.aio.Channel
    pool: asyncpg.Pool
    registry: RegistryStore
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # code -> private jwk

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    @property
    def settlement(self) -> decision_intake_pb2_grpc.ClaimSettlementServiceStub:
        return decision_intake_pb2_grpc.ClaimSettlementServiceStub(self.channel)

    def _public(self, code: str) -> dict[str, Any]:
        return {k: v for k, v in self.keys[code].items() if k != "d"}

    async def submit(self, hospital: str, ref: str, amount: int, insurer: str = PULL) -> pb.Claim:
        envelope = seal(
            b"{}",
            self._public(insurer),
            sender=hospital,
            recipient=insurer,
            claim_ref=ref,
            amount_satang=amount,
        )
        resp = await self.claims.SubmitClaim(
            pb.SubmitClaimRequest(
                claim_ref=ref, insurer_code=insurer, billed_amount_satang=amount, envelope=envelope
            ),
            metadata=md(hospital),
            timeout=10,
        )
        return resp.claim

    async def decide(self, claim: pb.Claim, state: int, approved: int) -> pb.Claim:
        """TESTPULL's decision, as it would post it through the gateway."""
        envelope = seal(
            b'{"resourceType":"ClaimResponse"}',
            self._public(claim.hospital_code),
            sender=claim.insurer_code,
            recipient=claim.hospital_code,
            claim_ref=claim.claim_ref,
            amount_satang=approved,
        )
        return await self.insurer.PostDecision(
            insurer_service_pb2.PostDecisionRequest(
                transaction_id=claim.transaction_id,
                state=state,  # type: ignore[arg-type]
                approved_amount_satang=approved,
                decision_envelope=envelope,
            ),
            metadata=md(claim.insurer_code),
            timeout=10,
        )

    async def get(self, claim: pb.Claim) -> pb.Claim:
        return await self.claims.GetClaim(
            pb.GetClaimRequest(transaction_id=claim.transaction_id),
            metadata=md(claim.hospital_code),
            timeout=10,
        )


async def seed_registry(database_url: str, box: SecretBox) -> dict[str, dict[str, Any]]:
    """Hospitals and insurers with one encryption key each (kid `<code>-k1`)."""
    pool = await asyncpg.create_pool(database_url)
    try:
        registry = RegistryStore(pool, box)
        await registry.migrate()
        keys: dict[str, dict[str, Any]] = {}
        for p in [*dev_hospitals(), *sample_insurers()[:3], pull_insurer()]:
            await registry.upsert_principal(p)
            private, public = generate_encryption_key(f"{p.code}-k1")
            await registry.add_encryption_key(p.code, public["kid"], public)
            keys[p.code] = private
        return keys
    finally:
        await pool.close()


@asynccontextmanager
async def running_router(
    database_url: str, *, billing_target: str = "off", audit_target: str = "off"
) -> AsyncIterator[Router]:
    master_key = os.urandom(32)
    box = SecretBox(master_key)
    keys = await seed_registry(database_url, box)
    config = Config(
        serve=ServeConfig(listen_addr="127.0.0.1:0", metrics_port=-1),
        database_url=database_url,
        master_key=master_key,
        adapter_target="off",
        audit_target=audit_target,
        billing_target=billing_target,
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        app = await build_server(config)
        await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=CLIENT_OPTIONS)
        try:
            yield Router(app, channel, pool, RegistryStore(pool, box), keys)
        finally:
            await channel.close()
            await app.stop(0)
    finally:
        await pool.close()
