"""audit_log over gRPC with real PostgreSQL: append, dedupe, validation,
checkpoints, proofs, per-principal reads, append-only enforcement."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from grpc_status import rpc_status

from iclaim.audit import merkle
from iclaim.audit.entry import entry_leaf_hash
from iclaim.audit.note import open_checkpoint, parse_verifier_key
from iclaim_hub.audit.wire import entry_of_event
from iclaim.audit.trail import verify_trail
from iclaim_ops.audit_cli import InternalTrail, verify_database
from iclaim.errors import error_info_of
from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from tests.support.audit import audit_server, event


def _reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    return info.reason


async def test_append_is_durable_deduplicated_and_provable(database_url: str) -> None:
    async with audit_server(database_url) as (running, stub):
        resp = await stub.Append(pb.AppendRequest(events=[event(i) for i in range(10)]))
        assert (resp.appended, resp.duplicates) == (10, 0)
        # Redelivery (producer retried after a lost ack) and a repeat inside one call.
        resp = await stub.Append(pb.AppendRequest(events=[event(3), event(10), event(10)]))
        assert (resp.appended, resp.duplicates) == (1, 2)

        # Durable: visible from an independent connection once acknowledged.
        conn = await asyncpg.connect(database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM audit.leaves") == 11
        finally:
            await conn.close()

        cp = (await stub.SignCheckpoint(pb.SignCheckpointRequest())).checkpoint
        assert cp.tree_size == 11
        verifier = parse_verifier_key(cp.verifier_key)
        parsed = open_checkpoint(cp.note, verifier, "iclaim.dev/audit")
        assert parsed.root_hash == cp.root_hash

        listed = await stub.ListEntries(pb.ListEntriesRequest(start_index=0, max_entries=100))
        assert [e.leaf_index for e in listed.entries] == list(range(11))
        assert [e.event.event_id for e in listed.entries] == [f"ev-{i}" for i in range(11)]
        hashes = []
        for e in listed.entries:
            h = entry_leaf_hash(entry_of_event(e.event), e.leaf_index)
            assert h == e.leaf_hash
            hashes.append(h)
        assert merkle.root_of(hashes) == cp.root_hash
        for i in range(11):
            p = await stub.GetInclusionProof(pb.GetInclusionProofRequest(leaf_index=i))
            merkle.verify_inclusion(i, 11, hashes[i], list(p.proof), cp.root_hash)

        await stub.Append(pb.AppendRequest(events=[event(i) for i in range(11, 30)]))
        cp2 = (await stub.SignCheckpoint(pb.SignCheckpointRequest())).checkpoint
        for m in range(1, 12):
            old_root = merkle.root_of(hashes[:m])
            c = await stub.GetConsistencyProof(pb.GetConsistencyProofRequest(first_size=m, second_size=30))
            merkle.verify_consistency(m, 30, list(c.proof), old_root, cp2.root_hash)

        by_tx = await stub.ListEntriesByTransaction(pb.ListEntriesByTransactionRequest(transaction_id="tx-5"))
        assert [e.leaf_index for e in by_tx.entries] == [5]

        report, _ = await verify_database(database_url)
        assert report.ok, report.findings
        assert report.entries == 30 and report.checkpoints == 3  # sizes 0, 11, 30


async def test_concurrent_appends_get_distinct_positions(database_url: str) -> None:
    async with audit_server(database_url) as (_running, stub):
        results = await asyncio.gather(
            *(stub.Append(pb.AppendRequest(events=[event(i), event(i + 1000)])) for i in range(50))
        )
        assert sum(r.appended for r in results) == 100
        await stub.SignCheckpoint(pb.SignCheckpointRequest())
        report, _ = await verify_database(database_url)
        assert report.ok and report.entries == 100


@pytest.mark.parametrize(
    "field,value",
    [
        ("origin_principal", "Somchai Jaidee"),
        ("origin_principal", "unverified:somchai"),
        ("destination", "patient 1234567890123"),
        ("route", "/iclaim.v1.ClaimService/Submit Claim for Mr X"),
        ("outcome_reason", "diagnosis: J18.9 pneumonia"),
        ("transaction_id", "policy no. 12/345"),
        ("envelope_sha256", "AB" * 32),
        ("source_address", "somewhere"),
        ("service_type", "Claim Router"),
        ("outcome_code", "FINE"),
        ("event_id", ""),
    ],
)
async def test_free_text_is_refused(database_url: str, field: str, value: str) -> None:
    async with audit_server(database_url) as (_running, stub):
        bad = event(1)
        setattr(bad, field, value)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Append(pb.AppendRequest(events=[event(0), bad]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _reason(err.value) == "AUDIT_EVENT_INVALID"
        assert value not in (err.value.details() or "") or value == ""
        listed = await stub.ListEntries(pb.ListEntriesRequest())
        assert list(listed.entries) == []  # the whole call is refused


async def test_principal_filter_never_returns_other_principals_entries(database_url: str) -> None:
    async with audit_server(database_url) as (_running, stub):
        evs = []
        for i in range(60):
            origin, dest = [("10670", "AIA"), ("10671", "MTL"), ("AIA", "10670"), ("MTL", "10671")][i % 4]
            evs.append(event(i, origin=origin, destination=dest, tx=f"tx-{i % 7}"))
        await stub.Append(pb.AppendRequest(events=evs))
        await stub.SignCheckpoint(pb.SignCheckpointRequest())

        for who in ("10670", "AIA", "10671", "MTL"):
            seen = []
            start = 0
            while True:
                page = await stub.ListEntries(
                    pb.ListEntriesRequest(start_index=start, max_entries=7, principal=who)
                )
                seen.extend(page.entries)
                if page.next_start_index >= page.tree_size:
                    break
                start = page.next_start_index
            assert len(seen) == 30
            assert all(who in (e.event.origin_principal, e.event.destination) for e in seen)
            for tx in range(7):
                got = await stub.ListEntriesByTransaction(
                    pb.ListEntriesByTransactionRequest(transaction_id=f"tx-{tx}", principal=who)
                )
                assert all(who in (e.event.origin_principal, e.event.destination) for e in got.entries)

        # A proof for someone else's entry is NOT_FOUND, not a proof.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetInclusionProof(pb.GetInclusionProofRequest(leaf_index=1, principal="10670"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        # A call carrying a gateway-verified principal cannot ask for another's trail.
        md = (("x-iclaim-principal", "10671"), ("x-iclaim-role", "hospital"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListEntries(pb.ListEntriesRequest(principal="10670"), metadata=md)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        mine = await stub.ListEntries(pb.ListEntriesRequest(max_entries=1000), metadata=md)
        assert mine.entries and all(
            "10671" in (e.event.origin_principal, e.event.destination) for e in mine.entries
        )

        trail = await verify_trail(InternalTrail(stub, "AIA"), "AIA", None)
        assert trail.ok and trail.verified == 30
        assert all("AIA" in (e.origin_principal, e.destination) for e in trail.entries)


async def test_writer_role_cannot_update_or_delete_and_triggers_stop_the_owner(
    database_url: str,
) -> None:
    async with audit_server(database_url) as (running, stub):
        await stub.Append(pb.AppendRequest(events=[event(i) for i in range(3)]))
        # Signed here, not left to the checkpoint loop's first pass, which a slow
        # machine may not reach before the server stops: the UPDATE below needs a row.
        await stub.SignCheckpoint(pb.SignCheckpointRequest())
        assert running.store.writer_role_enforced
    conn = await asyncpg.connect(database_url)
    try:
        # Each statement below must touch a row for a row trigger to refuse it.
        assert await conn.fetchval("SELECT count(*) FROM audit.checkpoints") >= 1
        assert await conn.fetchval("SELECT count(*) FROM audit.leaves WHERE leaf_index = 2") == 1
        for sql in (
            "UPDATE audit.entry_data SET outcome_code = 'INTERNAL' WHERE leaf_index = 1",
            "DELETE FROM audit.entry_data WHERE leaf_index = 1",
            "UPDATE audit.leaves SET leaf_hash = leaf_hash WHERE leaf_index = 1",
            "DELETE FROM audit.nodes",
            "INSERT INTO audit.expired (leaf_index) VALUES (1)",
        ):
            async with conn.transaction():
                await conn.execute("SET LOCAL ROLE iclaim_audit_writer")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
        # The superuser has the privileges; the triggers still refuse.
        for sql in (
            "UPDATE audit.entry_data SET outcome_code = 'INTERNAL' WHERE leaf_index = 1",
            "DELETE FROM audit.entry_data WHERE leaf_index = 1",
            "DELETE FROM audit.leaves WHERE leaf_index = 2",
            "UPDATE audit.checkpoints SET note = ''",
            "TRUNCATE audit.leaves CASCADE",
        ):
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await conn.execute(sql)
        assert await conn.fetchval("SELECT count(*) FROM audit.entry_data") == 3
    finally:
        await conn.close()


async def test_metrics_are_exported(database_url: str) -> None:
    from prometheus_client import REGISTRY, generate_latest

    async with audit_server(database_url) as (_running, stub):
        before = REGISTRY.get_sample_value("iclaim_audit_entries_appended_total", {"source": "rpc"}) or 0.0
        await stub.Append(pb.AppendRequest(events=[event(i) for i in range(5)]))
        await stub.SignCheckpoint(pb.SignCheckpointRequest())
        after = REGISTRY.get_sample_value("iclaim_audit_entries_appended_total", {"source": "rpc"})
        assert after == before + 5
        assert REGISTRY.get_sample_value("iclaim_audit_tree_size") == 5
        assert REGISTRY.get_sample_value("iclaim_audit_checkpoint_tree_size") == 5
        age = REGISTRY.get_sample_value("iclaim_audit_checkpoint_age_seconds")
        assert age is not None and 0 <= age < 5
        text = generate_latest().decode()
        assert "iclaim_audit_append_seconds_bucket" in text


async def test_cli_commands(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from iclaim.cli import build_parser

    parser = build_parser()  # the hub's operator commands join through the entry point
    async with audit_server(database_url) as (running, stub):
        await stub.Append(
            pb.AppendRequest(
                events=[
                    event(i, origin=("10670", "AIA")[i % 2], destination=("AIA", "10670")[i % 2])
                    for i in range(6)
                ]
                + [event(9, origin="MTL", destination="10671")]
            )
        )
        target = f"127.0.0.1:{running.port}"
        # A command owns its event loop, as it does under the real `iclaim` entry point.
        args = parser.parse_args(["audit", "checkpoint", "--sign", "--target", target])
        assert await asyncio.to_thread(args.func, args) == 0
        out = capsys.readouterr().out
        assert "\niclaim.dev/audit\n7\n" in "\n" + out
        vkey = next(x for x in out.splitlines() if x.startswith("verifier key: "))[14:]
        args = parser.parse_args(
            ["audit", "operator-trail", "--principal", "10670", "--target", target, "--verifier-key", vkey]
        )
        assert await asyncio.to_thread(args.func, args) == 0
        assert "OK: 6 entries of 10670 proved in the log at size 7" in capsys.readouterr().out
        args = parser.parse_args(
            [
                "audit",
                "operator-trail",
                "--principal",
                "10670",
                "--target",
                target,
                "--transaction-id",
                "tx-9",
                "--verifier-key",
                vkey,
            ]
        )
        assert await asyncio.to_thread(args.func, args) == 0
        assert "OK: 0 entries" in capsys.readouterr().out  # tx-9 is MTL's, not 10670's
    args = parser.parse_args(["audit", "verify", "--database-url", database_url, "--verifier-key", vkey])
    assert await asyncio.to_thread(args.func, args) == 0
    assert "OK: 7 entries" in capsys.readouterr().out
    other = parser.parse_args(
        [
            "audit",
            "verify",
            "--database-url",
            database_url,
            "--verifier-key",
            "iclaim.dev/audit+00000000+" + "A" * 44,
        ]
    )
    assert await asyncio.to_thread(other.func, other) == 1


async def test_storage_outage_is_unavailable_not_acknowledged(database_url: str) -> None:
    async with audit_server(database_url) as (running, stub):
        await running.pool.close()  # the database goes away under the service
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Append(pb.AppendRequest(events=[event(1)]))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # producer keeps it and retries
        assert _reason(err.value) == "AUDIT_STORE_UNAVAILABLE"
