"""Envoy access-log ingestion: mapping, sanitising, partial and malformed
lines, truncation and rotation, exactly-once via the committed offset."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from iclaim_hub.common.db import create_pool
from services.audit_log.domain import Position
from services.audit_log.ingest import entry_from_line
from services.audit_log.store import AuditStore
from services.audit_log.tailer import AccessLogTailer
from tests.support.audit import audit_server, line


def test_line_mapping_and_sanitising() -> None:
    e = entry_from_line(line(1))
    assert (e.origin_principal, e.destination, e.service_type, e.kind) == (
        "10670",
        "claim_router",
        "gateway",
        "GATEWAY_CALL",
    )
    assert (e.size_bytes, e.duration_ms, e.outcome_code) == (1500, 12, "OK")
    assert e.transaction_id == ""  # not in the hub's own form: never kept
    assert e.event_id == "5f0c2c1e-0000-4000-8000-000000000001"

    rejected = entry_from_line(
        line(
            2,
            principal=None,
            claimed_client="h:" + "ab" * 16,
            upstream_cluster=None,
            grpc_status=16,
            reason_header="SIGNATURE_INVALID",
            response_bytes=0,
        )
    )
    assert rejected.origin_principal == "unverified:h:" + "ab" * 16
    assert rejected.destination == "gateway"
    assert (rejected.outcome_code, rejected.outcome_reason) == ("UNAUTHENTICATED", "SIGNATURE_INVALID")

    # Attacker-controlled values of the wrong form never reach the log.
    hostile = entry_from_line(
        line(
            3,
            principal=None,
            claimed_client="Somchai Jaidee",
            route="/x/y?name=Somchai Jaidee",
            reason_header="patient has J18.9",
            req_transaction_id="policy 12/345",
            envelope_sha256="not-a-hash",
            source_address="evil",
            event_id="<script>",
            grpc_status=None,
        )
    )
    assert hostile.origin_principal == "unverified:"
    assert (hostile.route, hostile.outcome_reason, hostile.transaction_id) == ("unknown-route", "", "")
    assert (hostile.envelope_sha256, hostile.source_address) == ("", "")
    assert hostile.event_id.startswith("gwline-") and hostile.outcome_code == "UNKNOWN"

    # A fragment left by a crashed writer in front of a complete object.
    joined = b'{"event_id":"dead-beef","start_ti' + line(4)
    assert entry_from_line(joined.rstrip(b"\n")).event_id.endswith("000000000004")


async def _ids(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return [
            r["event_id"] for r in await conn.fetch("SELECT event_id FROM audit.leaves ORDER BY leaf_index")
        ]
    finally:
        await conn.close()


async def _drain(tailer: AccessLogTailer) -> None:
    while await tailer.step():
        pass


async def test_tailer_partial_malformed_truncated_rotated(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "envoy-access.log"
    pool = await create_pool(database_url)
    try:
        store = AuditStore(pool)
        await store.migrate()
        tailer = AccessLogTailer(store, path)
        await _drain(tailer)  # no file yet: nothing, no crash

        with path.open("ab") as f:
            f.write(line(0) + b"this is not json\n" + line(1) + b"\n" + line(2)[:25])
        await _drain(tailer)
        assert len(await _ids(database_url)) == 2  # partial line waits, garbage skipped

        with path.open("ab") as f:
            f.write(line(2)[25:] + line(3))
        await _drain(tailer)
        ids = await _ids(database_url)
        assert [i[-2:] for i in ids] == ["00", "01", "02", "03"]

        # A new tailer (restart) resumes from the committed offset: nothing twice.
        await _drain(AccessLogTailer(AuditStore(pool), path))
        assert len(await _ids(database_url)) == 4

        # Rotation: lines written before the rename are finished from `.1`.
        with path.open("ab") as f:
            f.write(line(4) + line(5))
        path.rename(path.with_name(path.name + ".1"))
        path.write_bytes(line(6) + line(7))
        await _drain(tailer)
        await _drain(tailer)
        ids = await _ids(database_url)
        assert [i[-2:] for i in ids] == [f"{n:02d}" for n in range(8)]

        # Copy-truncate: the file starts over; re-read lines are deduplicated.
        path.write_bytes(line(6))
        with path.open("ab") as f:
            f.write(line(8))
        await _drain(tailer)
        ids = await _ids(database_url)
        assert [i[-2:] for i in ids] == [f"{n:02d}" for n in range(9)]
    finally:
        await pool.close()


class CountingStore(AuditStore):
    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.offset_reads = 0

    async def ingest_offset(self, source: str) -> Position | None:
        self.offset_reads += 1
        return await super().ingest_offset(source)


async def test_an_idle_log_costs_no_database_reads(database_url: str, tmp_path: Path) -> None:
    """While the log has not changed since a step found nothing, a poll reads
    nothing from the database; any write, or a rotation, makes it look again."""
    path = tmp_path / "envoy-access.log"
    pool = await create_pool(database_url)
    try:
        store = CountingStore(pool)
        await store.migrate()
        tailer = AccessLogTailer(store, path)
        path.write_bytes(line(0))
        assert await tailer.step() > 0
        assert await tailer.step() == 0  # caught up: found nothing
        reads = store.offset_reads
        for _ in range(5):
            assert await tailer.step() == 0
        assert store.offset_reads == reads  # five idle polls, no reads
        with path.open("ab") as f:
            f.write(line(1))
        assert await tailer.step() > 0
        assert len(await _ids(database_url)) == 2
        await tailer.step()
        path.rename(path.with_name(path.name + ".1"))
        path.write_bytes(line(2))
        await _drain(tailer)  # finishes `.1` and moves on to the new file
        await _drain(tailer)
        assert [i[-2:] for i in await _ids(database_url)] == ["00", "01", "02"]
    finally:
        await pool.close()


async def test_service_tails_the_access_log(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "envoy-access.log"
    path.write_bytes(b"".join(line(i) for i in range(20)))
    async with audit_server(database_url, access_log=path):
        for _ in range(100):
            if len(await _ids(database_url)) == 20:
                break
            await asyncio.sleep(0.05)
    assert len(await _ids(database_url)) == 20
