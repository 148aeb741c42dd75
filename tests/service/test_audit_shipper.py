"""The gateway-pod access-log shipper (python -m services.audit_log.shipper)
against a real audit_log server: fragments, malformed lines, audit_log
outages, SIGKILL/restart, rotation, truncation and the SIGTERM flush."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from iclaim_ops.devstack.stack import free_ports
from services.audit_log.domain import Position
from services.audit_log.ingest import entry_from_line
from services.audit_log.server import AuditApp, build_server
from services.audit_log.shipper_state import load_position, save_position
from tests.support.audit import audit_config, line

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


class Audit:
    """A real audit_log server (no access-log tailing) that can be stopped and
    started again on the same port."""

    def __init__(self, database_url: str) -> None:
        self._dsn = database_url
        self._master_key = os.urandom(32)  # same key across restarts
        self.port = 0
        self.running: AuditApp | None = None

    async def start(self) -> None:
        config = audit_config(
            self._dsn,
            listen_addr=f"127.0.0.1:{self.port}",
            master_key=self._master_key,
            access_log=None,
            checkpoint_interval_s=3600,
            retention_interval_s=86_400,
        )
        self.running = await build_server(config)
        await self.running.start()
        self.port = self.running.port

    async def stop(self) -> None:
        assert self.running is not None
        await self.running.stop(0.2)
        self.running = None


@asynccontextmanager
async def audit_log(database_url: str) -> AsyncIterator[Audit]:
    audit = Audit(database_url)
    await audit.start()
    try:
        yield audit
    finally:
        if audit.running is not None:
            await audit.stop()


class Shipper:
    def __init__(self, access_log: Path, audit_port: int, **env: str) -> None:
        self.access_log = access_log
        self.health_port, self.metrics_port = free_ports(2)
        self.env = dict(os.environ)
        self.env.update(
            {
                "ICLAIM_ENVOY_ACCESS_LOG": str(access_log),
                "ICLAIM_AUDIT_TARGET": f"127.0.0.1:{audit_port}",
                "ICLAIM_SHIPPER_ADDR": f"127.0.0.1:{self.health_port}",
                "ICLAIM_SHIPPER_METRICS_PORT": str(self.metrics_port),
                "ICLAIM_SHIPPER_POLL_S": "0.02",
                "ICLAIM_SHIPPER_BATCH": "7",  # several Append calls per chunk
                "ICLAIM_SHIPPER_DEADLINE_S": "2",
                "ICLAIM_SHIPPER_BACKOFF_MAX_S": "0.3",
                "ICLAIM_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(ROOT),
                **env,
            }
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.audit_log.shipper",
            env=self.env,
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def signal(self, sig: int, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def metric(self, name: str) -> float:
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).read().decode()
        )
        for text in body.splitlines():
            if text.startswith(name + " "):
                return float(text.split()[1])
        raise AssertionError(f"{name} not exported")

    async def wait_serving(self) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.health_port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for _ in range(200):
                try:
                    resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("shipper never reported SERVING")


@asynccontextmanager
async def shipper(access_log: Path, audit_port: int, **env: str) -> AsyncIterator[Shipper]:
    s = Shipper(access_log, audit_port, **env)
    await s.start()
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.returncode is None:
            await s.signal(signal.SIGKILL)


async def _ids(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT event_id FROM audit.leaves ORDER BY leaf_index")
    finally:
        await conn.close()
    return [r["event_id"] for r in rows]


def _eid(i: int) -> str:
    return f"5f0c2c1e-0000-4000-8000-{i:012d}"  # tests.support.audit.line's id


async def _wait_for(database_url: str, expected: set[str], timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        ids = await _ids(database_url)
        if set(ids) >= expected or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.05)


async def _write_fragments(path: Path, data: bytes, rnd: random.Random) -> None:
    """Envoy-like: a line may arrive in several writes."""
    pos = 0
    with path.open("ab") as f:
        while pos < len(data):
            step = rnd.randint(1, 700)
            f.write(data[pos : pos + step])
            f.flush()
            pos += step
            await asyncio.sleep(0.002)


async def test_fragments_malformed_lines_metrics_and_sigterm_flush(database_url: str, tmp_path: Path) -> None:
    rnd = random.Random(1)
    path = tmp_path / "envoy-access.log"
    garbage = [
        b"this is not json\n",
        b"{}\n",
        b'{"start_time": "soon"}\n',
        b"[1, 2]\n",
        line(9999, start_time="1.0"),
    ]  # 1970: not of the expected form
    data = b""
    for i in range(200):
        data += line(i)
        if i % 40 == 5:
            data += garbage[i // 40]
    async with audit_log(database_url) as audit:
        async with shipper(path, audit.port) as s:
            await s.wait_serving()
            await _write_fragments(path, data, rnd)
            expected = {_eid(i) for i in range(200)}
            ids = await _wait_for(database_url, expected)
            assert sorted(ids) == sorted(expected)  # each exactly once, garbage skipped
            assert audit.running is not None
            # Same mapping as in-process ingestion (event id = Envoy's x-request-id).
            leaves = await audit.running.store.list_entries(0, 1000, None)
            by_id = {leaf.event_id: leaf.entry for leaf in leaves}
            for i in (0, 1, 199):
                assert by_id[_eid(i)] == entry_from_line(_stored_line(data, i))
            await _wait_metric(s, "iclaim_shipper_lag_bytes", 0)
            assert s.metric("iclaim_shipper_malformed_lines_total") == len(garbage)
            assert s.metric("iclaim_shipper_lines_shipped_total") == 200
            assert s.metric("iclaim_shipper_batches_total") >= 200 / 7
            assert await s.signal(signal.SIGTERM) == 0

        # SIGTERM flushes what is complete: with a 30 s poll, only the flush
        # ships the lines written after the shipper went idle.
        path2 = tmp_path / "second.log"
        path2.write_bytes(line(500))
        async with shipper(path2, audit.port, ICLAIM_SHIPPER_POLL_S="30") as s:
            await _wait_for(database_url, {_eid(500)})
            await s.wait_serving()
            await _wait_metric(s, "iclaim_shipper_lag_bytes", 0)
            with path2.open("ab") as f:
                f.write(b"".join(line(i) for i in range(501, 520)) + line(520)[:30])
            assert await s.signal(signal.SIGTERM) == 0
            ids = await _ids(database_url)
            assert {_eid(i) for i in range(500, 520)} <= set(ids)
            assert _eid(520) not in ids  # incomplete: left for the next start


async def _wait_metric(s: Shipper, name: str, value: float) -> None:
    for _ in range(200):
        if s.metric(name) == value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never became {value}")


def _stored_line(data: bytes, i: int) -> bytes:
    """The exact bytes written for line i (its start_time was taken at write time)."""
    marker = _eid(i).encode()
    start = data.rfind(b"\n", 0, data.index(marker)) + 1
    return data[start : data.index(b"\n", start) + 1]


async def test_audit_log_down_retries_and_loses_nothing(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "envoy-access.log"
    state = tmp_path / "shipper.state"
    async with audit_log(database_url) as audit:
        env = {"ICLAIM_SHIPPER_STATE": str(state), "ICLAIM_SHIPPER_FLUSH_S": "0.5"}
        async with shipper(path, audit.port, **env) as s:
            path.write_bytes(b"".join(line(i) for i in range(30)))
            assert len(await _wait_for(database_url, {_eid(i) for i in range(30)})) == 30
            # The shipper records its position after the append is acknowledged:
            # the entries can be in the database a moment before the file is written.
            for _ in range(500):
                position = load_position(state)
                if position is not None and position.byte_offset == path.stat().st_size:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the shipper never recorded the first 30 lines")
            before = state.read_bytes()

            await audit.stop()
            with path.open("ab") as f:
                f.write(b"".join(line(i) for i in range(30, 80)))
            await asyncio.sleep(1.5)
            assert s.metric('iclaim_shipper_append_failures_total{code="UNAVAILABLE"}') > 0
            assert state.read_bytes() == before  # nothing acknowledged, nothing recorded
            assert s.metric("iclaim_shipper_lag_bytes") > 0
            # SIGTERM while audit_log is down: gives up after the flush window.
            t0 = time.monotonic()
            assert await s.signal(signal.SIGTERM) == 0
            assert time.monotonic() - t0 < 5
            assert state.read_bytes() == before

        async with shipper(path, audit.port, **env):
            with path.open("ab") as f:
                f.write(b"".join(line(i) for i in range(80, 100)))
            await asyncio.sleep(1.0)  # retrying against a stopped audit_log
            await audit.start()
            ids = await _wait_for(database_url, {_eid(i) for i in range(100)})
            assert sorted(ids) == sorted(_eid(i) for i in range(100))


async def test_sigkill_and_restart_every_event_exactly_once(database_url: str, tmp_path: Path) -> None:
    rnd = random.Random(7)
    path = tmp_path / "envoy-access.log"
    backlog, more = 3000, 400
    # A backlog makes 1 MiB chunks of many Append calls: the kills land mid-chunk,
    # after some batches were acknowledged and before the position was recorded.
    path.write_bytes(b"".join(line(i) for i in range(backlog)))
    conn = await asyncpg.connect(database_url)
    async with audit_log(database_url) as audit:
        s = Shipper(path, audit.port, ICLAIM_SHIPPER_BATCH="50")
        writer = asyncio.create_task(
            _write_fragments(path, b"".join(line(i) for i in range(backlog, backlog + more)), rnd)
        )
        try:
            for _ in range(3):
                before = await conn.fetchval("SELECT count(*) FROM audit.leaves")
                await s.start()
                for _ in range(3000):  # ~15 s at most
                    if await conn.fetchval("SELECT count(*) FROM audit.leaves") >= before + 150:
                        break
                    await asyncio.sleep(0.005)
                assert await s.signal(signal.SIGKILL) == -signal.SIGKILL
            assert await conn.fetchval("SELECT count(*) FROM audit.leaves") < backlog
            await writer
            await s.start()
            expected = {_eid(i) for i in range(backlog + more)}
            ids = await _wait_for(database_url, expected, timeout=30)
            assert len(ids) == len(set(ids)) == len(expected)
            assert set(ids) == expected
            # The restart re-sent what it had not recorded; the log dropped it by event id.
            await _wait_metric(s, "iclaim_shipper_lag_bytes", 0)
            assert s.metric("iclaim_shipper_duplicates_total") > 0
        finally:
            writer.cancel()
            await conn.close()
            if s.proc is not None and s.proc.returncode is None:
                await s.signal(signal.SIGKILL)


async def test_rotation_and_truncation(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "envoy-access.log"
    rotated = tmp_path / "envoy-access.log.1"
    async with audit_log(database_url) as audit:
        async with shipper(path, audit.port) as s:
            path.write_bytes(b"".join(line(i) for i in range(20)) + line(20)[:40])
            await _wait_for(database_url, {_eid(i) for i in range(20)})
            # Rename-rotation: the writer finishes its line in the old file,
            # then starts the new one. Both are shipped, the old one first.
            path.rename(rotated)
            with rotated.open("ab") as f:
                f.write(line(20)[40:] + line(21))
            path.write_bytes(b"".join(line(i) for i in range(22, 30)))
            ids = await _wait_for(database_url, {_eid(i) for i in range(30)})
            assert ids == [_eid(i) for i in range(30)]

            # Copy-truncate in place: the file starts over (re-read lines dedup).
            path.write_bytes(line(28) + line(30) + line(31))
            ids = await _wait_for(database_url, {_eid(i) for i in range(32)})
            assert ids == [_eid(i) for i in range(32)]
            await _wait_metric(s, "iclaim_shipper_lag_bytes", 0)  # position recorded
            assert await s.signal(signal.SIGKILL) == -signal.SIGKILL

        # Rotated while the shipper was down: it finishes the old file, then the new one.
        rotated.unlink()
        with path.open("ab") as f:
            f.write(line(32))
        path.rename(rotated)
        path.write_bytes(line(33) + line(34))
        async with shipper(path, audit.port):
            ids = await _wait_for(database_url, {_eid(i) for i in range(35)})
            assert ids == [_eid(i) for i in range(35)]


def test_state_file_is_replaced_atomically_and_survives_garbage(tmp_path: Path) -> None:
    state = tmp_path / "envoy-access.log.shipper-state"
    assert load_position(state) is None
    save_position(state, Position("1:2:ab", 10))
    save_position(state, Position("1:2:ab", 20))
    assert load_position(state) == Position("1:2:ab", 20)
    assert [p.name for p in tmp_path.iterdir()] == [state.name]  # no temp file left
    for garbage in (b"", b"{", b'{"file_id": "x"}', b'{"file_id": "x", "byte_offset": -1}'):
        state.write_bytes(garbage)
        assert load_position(state) is None  # start over; the log deduplicates
