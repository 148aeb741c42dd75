"""Adversity: SIGKILL the audit service and a producer mid-run, repeatedly.
Every event (access-log lines and outbox events) ends up in the log exactly
once, and the log verifies."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from iclaim_ops.devstack.stack import free_port
from iclaim_ops.audit_cli import verify_database
from iclaim_hub.crypto.secretbox import SecretBox

ROOT = Path(__file__).resolve().parents[2]
N_LINES = 600
N_OUTBOX = 600

# A producer with a transactional outbox: send unsent events, mark them sent
# only after the audit log acknowledged them. Killed at any point, it resends
# (at least once); the log's event-id dedupe makes that exactly once.
PRODUCER = r"""
import asyncio, sys, time
import asyncpg, grpc
from iclaim_hub.internal.v1 import audit_log_pb2 as pb, audit_log_pb2_grpc as pbg

async def main(dsn, target):
    conn = await asyncpg.connect(dsn)
    channel = grpc.aio.insecure_channel(target)
    stub = pbg.AuditLogServiceStub(channel)
    while True:
        rows = await conn.fetch(
            "SELECT event_id, occurred_s FROM test_outbox WHERE NOT sent ORDER BY seq LIMIT 25")
        if not rows:
            await asyncio.sleep(0.05)
            continue
        events = []
        for r in rows:
            ev = pb.AuditEvent(
                event_id=r["event_id"], kind=pb.AUDIT_EVENT_KIND_CLAIM_STATE_CHANGE,
                origin_principal="10670", destination="AIA",
                route="/iclaim.v1.ClaimService/SubmitClaim", service_type="claim_router",
                outcome_code="OK", outcome_reason="CLAIM_STATE_DELIVERED",
                transaction_id="tx-" + r["event_id"])
            ev.occurred_at.FromSeconds(r["occurred_s"])
            events.append(ev)
        try:
            await stub.Append(pb.AppendRequest(events=events), timeout=5)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)  # service down: retry the same batch
            continue
        await conn.execute(
            "UPDATE test_outbox SET sent = true WHERE event_id = ANY($1::text[])",
            [r["event_id"] for r in rows])

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _line(i: int) -> bytes:
    return (
        json.dumps(
            {
                "event_id": f"00000000-0000-4000-8000-{i:012d}",
                "start_time": f"{time.time():.3f}",
                "principal": "10670",
                "claimed_client": "10670",
                "source_address": "192.0.2.1",
                "route": "/iclaim.v1.ClaimService/GetClaim",
                "upstream_cluster": "claim_router",
                "request_bytes": 100,
                "response_bytes": 200,
                "duration_ms": 3,
                "grpc_status": 0,
                "reason_trailer": None,
                "reason_header": None,
                "req_transaction_id": f"tx-{i}",
                "resp_transaction_id": None,
                "envelope_sha256": None,
            }
        ).encode()
        + b"\n"
    )


async def _spawn(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigkill_service_and_producer_loses_and_duplicates_nothing(
    database_url: str, tmp_path: Path
) -> None:
    rnd = random.Random(4)
    access_log = tmp_path / "envoy-access.log"
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "ICLAIM_DATABASE_URL": database_url,
            "ICLAIM_MASTER_KEY": SecretBox.new_master_key(),
            "ICLAIM_AUDIT_ADDR": f"127.0.0.1:{port}",
            "ICLAIM_AUDIT_METRICS_PORT": "-1",
            "ICLAIM_ENVOY_ACCESS_LOG": str(access_log),
            "ICLAIM_AUDIT_TAIL_POLL_S": "0.02",
            "ICLAIM_AUDIT_CHECKPOINT_INTERVAL_S": "0.3",
            "ICLAIM_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
    )
    conn = await asyncpg.connect(database_url)
    await conn.execute(
        "CREATE TABLE test_outbox (seq serial, event_id text PRIMARY KEY,"
        " occurred_s bigint NOT NULL, sent boolean NOT NULL DEFAULT false)"
    )
    await conn.executemany(
        "INSERT INTO test_outbox (event_id, occurred_s) VALUES ($1, $2)",
        [(f"rt-{i:06d}", int(time.time())) for i in range(N_OUTBOX)],
    )

    service = await _spawn(["-m", "services.audit_log"], env)
    producer = await _spawn(["-c", PRODUCER, database_url, f"127.0.0.1:{port}"], env)

    async def write_log() -> None:
        # Envoy-like writer: lines in arbitrary pieces, so partial lines are common.
        data = b"".join(_line(i) for i in range(N_LINES))
        pos = 0
        with access_log.open("ab") as f:
            while pos < len(data):
                step = rnd.randint(1, 900)
                f.write(data[pos : pos + step])
                f.flush()
                pos += step
                await asyncio.sleep(0.004)

    writer = asyncio.create_task(write_log())
    kills = {"service": 0, "producer": 0}
    try:
        for _ in range(8):
            await asyncio.sleep(rnd.uniform(0.4, 1.2))
            if rnd.random() < 0.5:
                await _kill(service)
                kills["service"] += 1
                service = await _spawn(["-m", "services.audit_log"], env)
            else:
                await _kill(producer)
                kills["producer"] += 1
                producer = await _spawn(["-c", PRODUCER, database_url, f"127.0.0.1:{port}"], env)
        await writer
        expected = N_LINES + N_OUTBOX
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n = await conn.fetchval("SELECT count(*) FROM audit.leaves")
            unsent = await conn.fetchval("SELECT count(*) FROM test_outbox WHERE NOT sent")
            if n >= expected and unsent == 0:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # anything late would show up as an extra row
        ids = [r["event_id"] for r in await conn.fetch("SELECT event_id FROM audit.leaves")]
        assert kills["service"] >= 1 and kills["producer"] >= 1, kills
        assert len(ids) == len(set(ids)) == expected
        assert set(ids) == {f"00000000-0000-4000-8000-{i:012d}" for i in range(N_LINES)} | {
            f"rt-{i:06d}" for i in range(N_OUTBOX)
        }
        assert await conn.fetchval("SELECT count(*) FROM audit.entry_data") == expected
    finally:
        writer.cancel()
        await _kill(producer)
        await _kill(service)
        await conn.close()
    report, _ = await verify_database(database_url)
    assert report.ok, report.findings
    assert report.entries == expected and report.checkpoints >= 2
