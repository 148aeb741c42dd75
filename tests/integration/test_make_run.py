"""`make run`'s program (`iclaim up`): ready line (with the insurers by delivery
mode), demo decisions by gRPC-push, webhook-push and pull sandbox insurers, the
sandbox as its own process, clean stop of everything.

Runs once with the machine's PostgreSQL/Redis (as CI has them) and once fully
embedded (the fresh-machine path)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
import redis

from iclaim_ops.devstack.portals import PORTAL_DB_PREFIX
from tests.support.databases import REDIS_BASE_URL, create_db, database_names, drop_db

pytestmark = pytest.mark.integration

EXPECTED = ["APPROVED", "PARTIALLY_APPROVED", "DENIED", "APPROVED", "APPROVED"]
# The demo's insurers connect by every mode (iclaim_hub.registry.directory.sandbox_modes).
EXPECTED_MODES = ["grpc", "webhook", "pull", "grpc", "webhook"]


def processes_of(state_dir: Path) -> list[int]:
    """PIDs whose environment names this state dir: every child of the stack."""
    marker = f"ICLAIM_STATE_DIR={state_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


async def run_up(state_dir: Path, env_extra: dict[str, str]) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ICLAIM_DATABASE_URL", "ICLAIM_REDIS_URL", "ICLAIM_MASTER_KEY")
    }
    env.update({"ICLAIM_STATE_DIR": str(state_dir), **env_extra})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "iclaim.cli",
        "up",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        async with asyncio.timeout(180):
            assert proc.stdout is not None
            while True:
                raw = await proc.stdout.readline()
                if not raw:
                    break
                line = raw.decode().rstrip()
                lines.append(line)
                if line.startswith("demo done"):
                    break
        ready = [line for line in lines if "iClaim clearinghouse ready" in line]
        assert ready, "\n".join(lines)
        assert "insurers 61 (20 grpc, 20 webhook, 21 pull;" in ready[0], ready[0]
        demo = [line for line in lines if line.startswith("demo: ")]
        assert len(demo) == len(EXPECTED), "\n".join(lines)
        for line, state, mode in zip(demo, EXPECTED, EXPECTED_MODES, strict=True):
            assert f" {state} " in line and f" by {mode} " in line, line
        for name in ("credentials.json", "sandbox.json", "admin.json"):
            path = state_dir / name
            assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600", name
        children = processes_of(state_dir)
        assert children, "stack children not found"
        # The sandbox insurers run as their own process.
        # (started through the launcher-tying wrapper: python -m iclaim_ops.devstack.tied PID sandbox ...)
        assert any(command_line(pid)[2:5:2] == ["iclaim_ops.devstack.tied", "sandbox"] for pid in children)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, rest.decode()
    await asyncio.sleep(0.5)
    assert processes_of(state_dir) == [], "processes left behind after SIGTERM"


async def test_up_with_machine_postgres_and_redis(tmp_path: Path) -> None:
    before = await database_names()
    name, url = await create_db()
    redis_url = f"{REDIS_BASE_URL}/13"
    redis.Redis.from_url(redis_url).flushdb()
    try:
        await run_up(tmp_path / "dev", {"ICLAIM_DATABASE_URL": url, "ICLAIM_REDIS_URL": redis_url})
    finally:
        await drop_db(name)
        # `make run` keeps its portals' databases on the server it was given (their
        # admin is made once per database); on the machine's server, CI's, they go.
        for portal_db in await database_names() - before:
            if portal_db.startswith(f"{PORTAL_DB_PREFIX}_"):
                await drop_db(portal_db)
    assert await database_names() == before, "databases left on the machine's server"


async def test_up_fully_embedded(tmp_path: Path) -> None:
    await run_up(tmp_path / "dev", {})
