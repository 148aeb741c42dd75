"""Audit log benchmark: durable append throughput/latency, then proof latency
at 1,000,000 entries.

Runs in a throw-away database created next to `database_url` (dropped at the
end), so it never touches a real audit log. The 1M-entry tree is loaded
through the production append path (AuditStore.append: canonical JSON, leaf
hashes, subtree nodes, COPY) in 10k-entry transactions.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from iclaim.audit import merkle
from iclaim.audit.entry import AuditEntry
from iclaim.audit.note import Checkpoint, NoteVerifier, sign_checkpoint
from iclaim.audit.verifier import verify_log
from iclaim.progress import progress
from iclaim_hub.common.db import create_pool
from iclaim_hub.crypto.secretbox import SecretBox
from services.audit_log import proofs
from services.audit_log.checkpointer import load_or_create_signer
from services.audit_log.domain import StoredCheckpoint
from services.audit_log.store import AuditStore

DEFAULT_ENTRIES = 1_000_000
ORIGIN = "iclaim.dev/audit"
BULK_BATCH = 10_000


def _entry(i: int, now_us: int) -> AuditEntry:
    return AuditEntry(
        event_id=f"bench-{i:09d}",
        kind="GATEWAY_CALL",
        origin_principal=("10670", "10671", "AIA", "MTL")[i % 4],
        source_address="192.0.2.1",
        destination="claim_router",
        route="/iclaim.v1.ClaimService/SubmitClaim",
        occurred_at_us=now_us,
        size_bytes=1500 + i % 1000,
        duration_ms=i % 40,
        service_type="gateway",
        outcome_code="OK",
        outcome_reason="",
        transaction_id=f"tx-{i // 3:09d}",
        envelope_sha256="ab" * 32,
    )


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 3)


async def _timed(samples: int, fn: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for k in range(samples):
        start = time.perf_counter()
        await fn(k)
        out.append(time.perf_counter() - start)
    return out


async def _rpc_throughput(url: str, master_key: bytes, n: int, now_us: int) -> tuple[int, int]:
    import grpc

    from iclaim_hub.internal.v1 import audit_log_pb2 as pb
    from iclaim_hub.internal.v1 import audit_log_pb2_grpc as pbg
    from services.audit_log.server import Config, build_server
    from iclaim_hub.audit.wire import event_of_entry

    from iclaim_hub.common.server import ServeConfig

    running = await build_server(
        Config(
            serve=ServeConfig("127.0.0.1:0", -1),
            database_url=url,
            master_key=master_key,
            access_log=None,
            checkpoint_interval_s=3600,
        )
    )
    await running.start()
    producers, per = 64, 40
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pbg.AuditLogServiceStub(channel)

            async def producer(p: int) -> None:
                for k in range(per):
                    ev = event_of_entry(_entry(n + p * per + k, now_us))
                    await stub.Append(pb.AppendRequest(events=[ev]), timeout=30)

            start = time.perf_counter()
            await asyncio.gather(*(producer(p) for p in range(producers)))
            elapsed = time.perf_counter() - start
    finally:
        await running.stop(1.0)
    return round(producers * per / elapsed), n + producers * per


async def _bench(url: str, entries: int) -> dict[str, Any]:
    pool = await create_pool(url, max_size=4)
    try:
        store = AuditStore(pool)
        await store.migrate()
        now_us = int(time.time() * 1_000_000)
        master_key = os.urandom(32)
        box = SecretBox(master_key)
        result: dict[str, Any] = {"audit_writer_role_enforced": store.writer_role_enforced}

        # 1. Durable single-event appends (one commit each): latency.
        single = await _timed(300, lambda k: store.append([_entry(k, now_us)]))
        result["audit_append_single_p50_ms"] = _pct(single, 0.5)
        result["audit_append_single_p99_ms"] = _pct(single, 0.99)

        # 2. Group-committed appends (500 per transaction): throughput.
        n, start = 300, time.perf_counter()
        for b in range(40):
            await store.append([_entry(n + b * 500 + j, now_us) for j in range(500)])
        grouped = time.perf_counter() - start
        result["audit_append_batched_entries_per_s"] = round(40 * 500 / grouped)
        n += 40 * 500

        # 2b. Through gRPC: 64 concurrent producers, one event per Append (group commit).
        result["audit_append_rpc_entries_per_s"], n = await _rpc_throughput(url, master_key, n, now_us)

        # 3. Fill to `entries` through the same path, 10k per transaction.
        start, start_n = time.perf_counter(), n
        with progress("audit fill", entries - start_n) as filling:  # minutes: show it
            while n < entries:
                take = min(BULK_BATCH, entries - n)
                await store.append([_entry(n + j, now_us) for j in range(take)])
                n += take
                filling.advance(take)
        fill = time.perf_counter() - start
        result["audit_fill_seconds"] = round(fill, 1)
        result["audit_fill_entries_per_s"] = round((entries - start_n) / fill) if fill else None
        size = await store.tree_size()
        result["audit_tree_size"] = size

        # 4. Proofs at full size (store reads + hashing + verification).
        root = await proofs.root_at(store, size)
        rnd = random.Random(1)
        idx = [rnd.randrange(size) for _ in range(300)]

        async def inclusion(k: int) -> None:
            i = idx[k]
            proof = await proofs.inclusion_proof(store, i, size)
            leaf = (await store.get_nodes([(0, i)]))[(0, i)]
            merkle.verify_inclusion(i, size, leaf, proof, root)

        incl = await _timed(300, inclusion)
        result["audit_inclusion_proof_p50_ms"] = _pct(incl, 0.5)
        result["audit_inclusion_proof_p99_ms"] = _pct(incl, 0.99)

        olds = [rnd.randrange(1, size) for _ in range(100)]
        old_roots = [await proofs.root_at(store, m) for m in olds]

        async def consistency(k: int) -> None:
            proof = await proofs.consistency_proof(store, olds[k], size)
            merkle.verify_consistency(olds[k], size, proof, old_roots[k], root)

        cons = await _timed(100, consistency)
        result["audit_consistency_proof_p50_ms"] = _pct(cons, 0.5)
        result["audit_consistency_proof_p99_ms"] = _pct(cons, 0.99)

        signer = await load_or_create_signer(store, box, ORIGIN)

        async def checkpoint(_k: int) -> None:
            r = await proofs.root_at(store, size)
            sign_checkpoint(signer, Checkpoint(ORIGIN, size, r, datetime.now(UTC)))

        cps = await _timed(50, checkpoint)
        result["audit_checkpoint_sign_p50_ms"] = _pct(cps, 0.5)

        # 5. Durable appends on top of the 1M tree (state reload included once).
        at_size = await _timed(100, lambda k: store.append([_entry(entries + k, now_us)]))
        result["audit_append_single_at_size_p50_ms"] = _pct(at_size, 0.5)
        result["audit_proof_mean_ms"] = round(statistics.mean(incl) * 1000, 3)

        # 6. Full `iclaim audit verify` of the whole log (re-hash every entry).
        await store.add_checkpoint(
            StoredCheckpoint(
                size,
                root,
                datetime.now(UTC).replace(microsecond=0),
                sign_checkpoint(
                    signer, Checkpoint(signer.name, size, root, datetime.now(UTC).replace(microsecond=0))
                ),
            )
        )
        start = time.perf_counter()
        with progress("audit verify", size) as verifying:
            report = await verify_log(
                proofs.VerifiableLog(store),
                NoteVerifier(signer.name, signer.public_key),
                signer.name,
                progress=verifying,
            )
        result["audit_verify_seconds"] = round(time.perf_counter() - start, 1)
        result["audit_verify_ok"] = report.ok
        return result
    finally:
        await pool.close()


async def _run(database_url: str, entries: int) -> dict[str, Any]:
    base, _, _ = database_url.rpartition("/")
    name = f"iclaim_bench_audit_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        started = time.perf_counter()
        result = await _bench(f"{base}/{name}", entries)
        result["audit_bench_total_seconds"] = round(time.perf_counter() - started, 1)
        return result
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def run_audit_bench(database_url: str, entries: int | None = None) -> dict[str, Any]:
    """Called by `make bench`. ICLAIM_BENCH_AUDIT_ENTRIES overrides the size."""
    n = entries or int(os.environ.get("ICLAIM_BENCH_AUDIT_ENTRIES", DEFAULT_ENTRIES))
    return asyncio.run(_run(database_url, max(n, 30_000)))


if __name__ == "__main__":
    import json
    import sys

    url = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"
    print(json.dumps(run_audit_bench(url), indent=2))
