"""Isolation phase of `make bench` (issue 9): the latency of claims to ten
working insurers, without and then with an eleventh insurer whose endpoint
accepts TCP and never answers (its lane fills its in-flight cap and backs off).

The stuck insurer is enrolled with `iclaim admin`, as an operator would, and
its endpoint is a socket in this process that accepts and holds connections.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from iclaim.client.credentials import load_dev_credentials
from iclaim.client.hospital import HospitalClient
from iclaim.crypto.envelope import generate_encryption_key

STUCK = "BENCHSTUCK"


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads and discards whatever comes, answers nothing, until the peer leaves."""
    try:
        while await reader.read(65536):
            pass
    finally:
        writer.close()


async def _enroll(admin_config: Path, port: int, workdir: Path) -> None:
    _, public_jwk = generate_encryption_key(f"{STUCK}-k1")
    jwk_file = workdir / "stuck-public.jwk"
    jwk_file.write_text(json.dumps(public_jwk))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iclaim.cli", "admin", "insurer", "add", STUCK,
        "--name", "Never Answers", "--line", "non-life", "--delivery", "grpc",
        "--endpoint", f"127.0.0.1:{port}", "--encryption-jwk", str(jwk_file),
        "--admin-config", str(admin_config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"enrolling {STUCK} failed: {err.decode()[-500:]}")


async def _listed(credentials: Path, timeout_s: float = 30.0) -> None:
    """Waits until the directory shows the stuck insurer (registry caches)."""
    creds = load_dev_credentials(path=credentials)
    async with HospitalClient(creds) as client:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not any(i.code == STUCK for i in await client.list_insurers()):
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{STUCK} never appeared in the directory")
            await asyncio.sleep(0.5)


async def bench_isolation(
    run: Callable[..., Awaitable[dict[str, Any]]],
    credentials: Path,
    admin_config: Path,
    workdir: Path,
    claims: int,
    concurrency: int,
    run_id: str,
) -> dict[str, Any]:
    """`run(*load_args)` runs one measured load (bench/load.py) against the
    stack. Returns both phases' results; the claims to the stuck insurer are
    submitted beside the measured ones and not counted."""
    server = await asyncio.start_server(_hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await _enroll(admin_config, port, workdir)
        await _listed(credentials)
        load = ("claims", str(credentials), str(claims), str(concurrency))
        without = await run(*load, f"{run_id}a")
        with_stuck = await run(*load, f"{run_id}b", STUCK)
    finally:
        server.close()
    return {"without_stuck": without, "with_stuck": with_stuck}
