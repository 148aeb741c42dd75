"""Issue 10, item 6: `EncryptionKey.current` (§5). During a rotation a
principal lists its new key and, for the grace period, the previous one; the
directory marks exactly one as current, and the SDK seals to that one whatever
the order the keys are listed in."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from iclaim.client.keys import sealing_jwk
from iclaim.crypto.envelope import generate_encryption_key, open_envelope, seal
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2
from tests.support.router import PULL, Router, md, running_router

H1 = "10670"


Listing = list[tuple[str, bool]]


async def directory(router: Router, want: dict[str, Listing]) -> dict[str, pb.Insurer]:
    """ListInsurers once the router's directory cache (TTL 2 s) lists exactly
    `want` ({code: [(kid, current), ...]}). Waiting for the whole listing, not
    just the current kid: a snapshot taken mid-rotation can already show the
    right current kid (MTL's original k1) without the key it rotated through."""
    for _ in range(60):
        resp = await router.claims.ListInsurers(
            pb.ListInsurersRequest(page_size=100), metadata=md(H1), timeout=10
        )
        by_code = {i.code: i for i in resp.insurers}
        if all([(k.kid, k.current) for k in by_code[c].keys] == keys for c, keys in want.items()):
            return by_code
        await asyncio.sleep(0.1)
    raise AssertionError(f"directory never showed {want}")


async def test_list_insurers_and_get_hospital_mark_exactly_one_current_key(database_url: str) -> None:
    async with running_router(database_url) as router:
        aia, mtl = "AIA", "MTL"
        new_aia, aia_k2 = generate_encryption_key("AIA-k2")
        await router.registry.add_encryption_key(aia, "AIA-k2", aia_k2)
        # MTL rotates to k2 and back to k1: the current key is now listed first.
        _, mtl_k2 = generate_encryption_key("MTL-k2")
        await router.registry.add_encryption_key(mtl, "MTL-k2", mtl_k2)
        mtl_k1 = {k: v for k, v in router.keys[mtl].items() if k != "d"}
        await router.registry.add_encryption_key(mtl, "MTL-k1", mtl_k1)
        _, h1_k2 = generate_encryption_key(f"{H1}-k2")
        await router.registry.add_encryption_key(H1, f"{H1}-k2", h1_k2)

        # Within the grace period the previous key is still listed, not current.
        insurers = await directory(
            router,
            {aia: [("AIA-k1", False), ("AIA-k2", True)], mtl: [("MTL-k1", True), ("MTL-k2", False)]},
        )
        for ins in insurers.values():
            assert [k.current for k in ins.keys].count(True) == 1, ins

        # The SDK's choice against this real listing: the current key, not the last listed.
        assert sealing_jwk(insurers[aia].keys, aia)["kid"] == "AIA-k2"
        assert sealing_jwk(insurers[mtl].keys, mtl)["kid"] == "MTL-k1"
        envelope = seal(
            b"{}",
            sealing_jwk(insurers[aia].keys, aia),
            sender=H1,
            recipient=aia,
            claim_ref="CK-1",
            amount_satang=100,
        )
        assert open_envelope(envelope, new_aia)[1] == b"{}"  # the insurer's new private key opens it

        hospital = None
        for _ in range(60):
            hospital = await router.insurer.GetHospital(
                insurer_service_pb2.GetHospitalRequest(hospital_code=H1), metadata=md(PULL), timeout=10
            )
            if any(k.kid == f"{H1}-k2" for k in hospital.keys):
                break
            await asyncio.sleep(0.1)
        assert hospital is not None
        assert [(k.kid, k.current) for k in hospital.keys] == [(f"{H1}-k1", False), (f"{H1}-k2", True)]
        assert json.loads(next(k.jwk for k in hospital.keys if k.current))["kid"] == f"{H1}-k2"


async def test_the_registry_holds_at_most_one_current_key(database_url: str) -> None:
    async with running_router(database_url) as router:
        _, other = generate_encryption_key("AIA-kx")
        with pytest.raises(asyncpg.UniqueViolationError):
            await router.pool.execute(
                "INSERT INTO registry.encryption_keys (principal_code, kid, public_jwk, status)"
                " VALUES ('AIA', 'AIA-kx', $1::jsonb, 'current')",
                json.dumps(other),
            )
        # Concurrent rotations queue on the principal: one current key at the end.
        keys = [generate_encryption_key(f"AIA-c{i}")[1] for i in range(6)]
        await asyncio.gather(*(router.registry.add_encryption_key("AIA", k["kid"], k) for k in keys))
        current = await router.pool.fetch(
            "SELECT kid FROM registry.encryption_keys WHERE principal_code = 'AIA' AND status = 'current'"
        )
        assert len(current) == 1
