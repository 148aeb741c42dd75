"""Retention: expiry removes entry data but keeps leaf hashes, so old
checkpoints and proofs still verify; legal holds keep their entries."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from iclaim.audit import merkle
from iclaim.audit.note import open_checkpoint, parse_verifier_key
from iclaim_ops.audit_cli import verify_database
from iclaim_hub.common.config import ConfigError
from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from tests.support.audit import audit_config, audit_server, event


async def test_expiry_keeps_proofs_and_holds_keep_entries(database_url: str) -> None:
    async with audit_server(database_url) as (_running, stub):
        old = [event(i, age_days=100) for i in range(10)]
        held_principal = [event(i, origin="MTL", destination="10671", age_days=120) for i in range(10, 15)]
        held_tx = [event(i, tx="tx-dispute", age_days=95) for i in range(15, 18)]
        fresh = [event(i, age_days=89) for i in range(18, 23)]
        await stub.Append(pb.AppendRequest(events=old + held_principal + held_tx + fresh))
        cp_old = (await stub.SignCheckpoint(pb.SignCheckpointRequest())).checkpoint
        verifier = parse_verifier_key(cp_old.verifier_key)
        size_old = cp_old.tree_size
        assert size_old == 23
        proofs_before = {
            i: list(
                (
                    await stub.GetInclusionProof(
                        pb.GetInclusionProofRequest(leaf_index=i, tree_size=size_old)
                    )
                ).proof
            )
            for i in range(size_old)
        }
        hashes = [e.leaf_hash for e in (await stub.ListEntries(pb.ListEntriesRequest())).entries]

        hold_p = (
            await stub.PlaceLegalHold(
                pb.PlaceLegalHoldRequest(
                    scope=pb.LEGAL_HOLD_SCOPE_PRINCIPAL, value="MTL", reference="CASE-2026-001"
                )
            )
        ).hold
        await stub.PlaceLegalHold(
            pb.PlaceLegalHoldRequest(
                scope=pb.LEGAL_HOLD_SCOPE_TRANSACTION, value="tx-dispute", reference="CASE-2026-002"
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PlaceLegalHold(
                pb.PlaceLegalHoldRequest(
                    scope=pb.LEGAL_HOLD_SCOPE_PRINCIPAL, value="MTL", reference="Mr Somchai's case"
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        r = await stub.ApplyRetention(pb.ApplyRetentionRequest())
        assert (r.expired, r.retention_days) == (10, 90)

        listed = (await stub.ListEntries(pb.ListEntriesRequest())).entries
        assert [e.expired for e in listed] == [True] * 10 + [False] * 13
        assert all(e.event.origin_principal == "" and e.event.event_id for e in listed[:10])
        assert [e.leaf_hash for e in listed] == hashes  # leaf hashes stay

        # Old checkpoint and the proofs issued under it still verify.
        cp = open_checkpoint(cp_old.note, verifier, "iclaim.dev/audit")
        for i in range(size_old):
            again = list(
                (
                    await stub.GetInclusionProof(
                        pb.GetInclusionProofRequest(leaf_index=i, tree_size=size_old)
                    )
                ).proof
            )
            assert again == proofs_before[i]
            merkle.verify_inclusion(i, size_old, hashes[i], again, cp.root_hash)

        await stub.Append(pb.AppendRequest(events=[event(i) for i in range(23, 30)]))
        cp_new = (await stub.SignCheckpoint(pb.SignCheckpointRequest())).checkpoint
        c = await stub.GetConsistencyProof(
            pb.GetConsistencyProofRequest(first_size=size_old, second_size=cp_new.tree_size)
        )
        merkle.verify_consistency(size_old, cp_new.tree_size, list(c.proof), cp.root_hash, cp_new.root_hash)
        report, _ = await verify_database(database_url)
        assert report.ok, report.findings
        assert report.expired == 10

        # Releasing the principal hold lets its entries expire; the transaction hold remains.
        await stub.ReleaseLegalHold(pb.ReleaseLegalHoldRequest(hold_id=hold_p.hold_id))
        r = await stub.ApplyRetention(pb.ApplyRetentionRequest())
        assert r.expired == 5
        listed = (await stub.ListEntries(pb.ListEntriesRequest())).entries
        assert [e.leaf_index for e in listed if not e.expired] == list(range(15, 30))
        holds = (await stub.ListLegalHolds(pb.ListLegalHoldsRequest())).holds
        assert [h.value for h in holds] == ["tx-dispute"]
        report, _ = await verify_database(database_url)
        assert report.ok and report.expired == 15


async def test_retention_period_is_bounded(database_url: str) -> None:
    with pytest.raises(ConfigError):
        audit_config(database_url, retention_days=30)
    with pytest.raises(ConfigError):
        audit_config(database_url, retention_days=731)
    audit_config(database_url, retention_days=730)
    async with audit_server(database_url) as (_running, stub):
        await stub.Append(pb.AppendRequest(events=[event(1, age_days=40)]))
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE iclaim_audit_writer")
            # Even the service's own role cannot shorten the period below 90 days.
            with pytest.raises(asyncpg.RaiseError, match="90..730"):
                await conn.fetchval("SELECT audit.expire_entries(30, 100)")
        assert await conn.fetchval("SELECT count(*) FROM audit.entry_data") == 1
    finally:
        await conn.close()
