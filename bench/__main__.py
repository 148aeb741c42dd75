"""`make bench`: claims through Envoy vs a bare grpc.aio echo server, plus the
audit log and billing benchmarks. Prints a table and writes JSON.

The sandbox insurers run in their own process (as in `make run`); each claims
phase reports the CPU seconds of the hub's processes (per service and in total)
apart from the sandbox's, the load generator's and this process's, and the
submit->decision latency per delivery mode. An unloaded phase (one claim in
flight) gives the latency a push adds.

Env: BENCH_CLAIMS (default 2000), BENCH_CONCURRENCY (64), BENCH_UNLOADED_CLAIMS
(300), BENCH_ECHO_S (10), BENCH_SKIP (comma list of: claims, audit, billing)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import cpu
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_ops.devstack.infra import Infra, create_scratch_database, drop_database
from iclaim_ops.devstack.stack import SANDBOX, Ports, Stack, _free_port
from iclaim_ops.devstack.up import prepare


# The machine's PostgreSQL and Redis (as in CI); each run gets a scratch database.
PG_ADMIN_URL = os.environ.get("ICLAIM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("ICLAIM_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version()}


async def _child_json(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed")
    return json.loads(out.decode().strip().splitlines()[-1])


def cpu_report(used: dict[str, float], load_cpu_s: float) -> dict[str, Any]:
    """CPU seconds spent during one phase, the hub apart from the sandbox."""
    hub = {name: s for name, s in used.items() if name not in (SANDBOX.name, "self")}
    return {
        "hub_s": round(sum(hub.values()), 2),
        "hub_by_process_s": hub,
        "sandbox_s": used.get(SANDBOX.name, 0.0),
        "load_generator_s": load_cpu_s,
        "bench_s": used.get("self", 0.0),
    }


async def measured(stack: Stack, *load_args: str) -> dict[str, Any]:
    """One load run (a separate process) with the CPU each part of the stack used."""
    before = cpu.snapshot(stack.pids())
    result = await _child_json("bench.load", *load_args)
    result["cpu"] = cpu_report(cpu.used(before, cpu.snapshot(stack.pids())), result.pop("load_cpu_s", 0.0))
    return result


async def bench_claims(total: int, concurrency: int, echo_s: float, unloaded: int) -> dict[str, Any]:
    name, database_url = await create_scratch_database(PG_ADMIN_URL, "iclaim_bench")
    redis_url = f"{REDIS_BASE_URL}/14"
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    state_dir = Path(tempfile.mkdtemp(prefix="iclaim-bench-"))
    master_key = SecretBox.new_master_key()
    stack = Stack(
        state_dir,
        database_url,
        redis_url,
        master_key,
        Ports.free(),
        {
            "ICLAIM_LOG_LEVEL": "WARNING",
            # One hospital drives the whole load: lift its per-principal limit.
            "ICLAIM_RATE_LIMIT_PER_S": "0",
        },
    )
    creds = state_dir / "credentials.json"
    await prepare(state_dir, Infra(database_url, redis_url, []), master_key, stack.gateway, creds)
    await stack.start()
    try:
        # Warm-up: connections, caches, prepared statements.
        await _child_json("bench.load", "claims", str(creds), "50", "8", "warm")
        claims = await measured(
            stack, "claims", str(creds), str(total), str(concurrency), secrets.token_hex(3)
        )
        if unloaded > 0:
            claims["unloaded"] = await measured(
                stack, "claims", str(creds), str(unloaded), "1", secrets.token_hex(3)
            )
    finally:
        await stack.stop()
        await drop_database(PG_ADMIN_URL, name)
        shutil.rmtree(state_dir, ignore_errors=True)

    port = _free_port()
    echo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.echo_server", str(port), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert echo.stdout is not None
        await echo.stdout.readline()
        echo_result = await _child_json("bench.load", "echo", str(port), str(echo_s), str(concurrency))
    finally:
        echo.terminate()
        await echo.wait()
    claims["echo_requests_per_s"] = echo_result["requests_per_s"]
    claims["ratio_to_echo"] = round(claims["claims_per_s"] / echo_result["requests_per_s"], 3)
    return claims


async def main() -> None:
    skip = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
    results: dict[str, Any] = {"machine": machine()}
    if "claims" not in skip:
        results["claims"] = await bench_claims(
            int(os.environ.get("BENCH_CLAIMS", "2000")),
            int(os.environ.get("BENCH_CONCURRENCY", "64")),
            float(os.environ.get("BENCH_ECHO_S", "10")),
            int(os.environ.get("BENCH_UNLOADED_CLAIMS", "300")),
        )
        print("claims:", json.dumps(results["claims"]), flush=True)
    for key, module, func in (
        ("audit", "bench.audit_bench", "run_audit_bench"),
        ("billing", "bench.billing_bench", "run_billing_bench"),
    ):
        if key in skip:
            continue
        mod = __import__(module, fromlist=[func])
        name, url = await create_scratch_database(PG_ADMIN_URL, "iclaim_bench")
        try:
            # Each bench runs its own event loop: give it a thread without one.
            results[key] = await asyncio.to_thread(getattr(mod, func), url)
        finally:
            await drop_database(PG_ADMIN_URL, name)
        print(f"{key}:", json.dumps(results[key]), flush=True)
    out = Path(".iclaim/bench/results.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
