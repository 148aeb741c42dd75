"""`make bench`: claims through Envoy vs a bare grpc.aio echo server, plus the
audit log and billing benchmarks. Prints a table and writes JSON.

The sandbox insurers run in their own process (as in `make run`). Each claims
phase reports the CPU seconds of the hub (every hub process, PostgreSQL and
Redis) apart from the sandbox's, the load generator's and this process's; per
claim: hub CPU, its cost in echo-equivalents (hub CPU per claim / CPU of one
echo request, server and client, measured in the same run), PostgreSQL write
transactions (transaction ids assigned: each a WAL flush at commit), PostgreSQL
commits as pg_stat_database counts them (read-only ones too; less the idle
stack's, measured once before the phases), the hub's gRPC calls and its
processes' context switches (Envoy's and the Python services' threads, not
PostgreSQL's or Redis's: the 'switches' column); and the submit->decision
latency per delivery mode. Phases: closed loop at each BENCH_CONCURRENCY (1 in flight
gives the latency a push adds), open loop at 70 % of the best closed-loop rate
(latency from the scheduled send time), and isolation: claims to ten insurers
without and with an insurer that never answers (bench/isolation.py). Where the
server runs without autovacuum (CI machines), a stand-in applies its rules while
the claims phases run (bench/autovacuum.py), so PostgreSQL plans with statistics.

Env: BENCH_CLAIMS (per loaded phase, default 2000), BENCH_CONCURRENCY (1,8,64),
BENCH_UNLOADED_CLAIMS (the 1-in-flight phase, 300), BENCH_OPEN_S (20; 0 skips),
BENCH_ISOLATION_CLAIMS (300; 0 skips), BENCH_ECHO_S (10), BENCH_ECHO_PACED_RATE
(the paced echo's calls a second; default: the busiest hub gRPC server's rate
in the fastest closed-loop phase), BENCH_SKIP (comma list of: claims, audit,
billing)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis

from bench import cpu, infra, rpcs
from bench.autovacuum import NAPTIME_S, StandInAutovacuum
from bench.isolation import bench_isolation
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_ops.devstack.infra import Infra, create_scratch_database, drop_database
from iclaim_ops.devstack.stack import SANDBOX, Ports, Stack, free_port, layout_from_env
from iclaim_ops.devstack.up import prepare


# The machine's PostgreSQL and Redis (as in CI); each run gets a scratch database.
PG_ADMIN_URL = os.environ.get("ICLAIM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("ICLAIM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
ISOLATION_CONCURRENCY = 4
# The open-loop phase's arrival rate, as a share of the best closed-loop rate.
OPEN_LOOP_SHARE = 0.7
# A short echo run right before and one right after each claims phase: their
# mean cost per request is that phase's unit, so a shared machine whose speed
# drifts during the run (seen here: ±25 % between phases minutes apart) skews
# echo-equivalents less, and the two apart show how far it drifted.
NEARBY_ECHO_S = 3.0
# The paced echo (open loop at a hub process's call rate): long enough for a few
# thousand calls at that rate.
PACED_ECHO_S = 10.0
# pg_stat_database hears of a backend's commits at most a second after them
# while it is busy and 10 s after it goes idle (PostgreSQL 15+, PGSTAT_IDLE_INTERVAL):
# a phase's commits are read this long after it ends.
STATS_REPORTED_S = 11.0
# The idle stack's own commits per second are measured over this long, once.
IDLE_WINDOW_S = 20.0


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        # Which hub processes ran (ICLAIM_HUB_LAYOUT: split, or cohost with router and adapter in one).
        "hub_layout": layout_from_env(),
    }


async def _child_json(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def cpu_report(used: dict[str, float], infra_used: dict[str, Any], load_cpu_s: float) -> dict[str, Any]:
    """CPU seconds spent during one phase: the hub (its processes, PostgreSQL
    and Redis) apart from the sandbox insurers and the load generator."""
    hub = {name: s for name, s in used.items() if name not in (SANDBOX.name, "self")}
    hub["postgres"] = infra_used["postgres"]
    # Part of PostgreSQL's work, shown apart (bench/autovacuum.py): still in the hub's total.
    hub["postgres_autovacuum_stand_in"] = infra_used.get("postgres_autovacuum_stand_in", 0.0)
    hub["redis"] = infra_used["redis"]
    return {
        "hub_s": round(sum(hub.values()), 2),
        "hub_by_process_s": hub,
        "sandbox_s": used.get(SANDBOX.name, 0.0),
        "load_generator_s": load_cpu_s,
        "bench_s": used.get("self", 0.0),
    }


def switches_per_claim(before: dict[str, int], after: dict[str, int], claims: int) -> dict[str, Any]:
    """Context switches a claim cost each hub process (Envoy, authz, router,
    adapter, audit, billing; PostgreSQL's and Redis's are not counted) and,
    apart, the sandbox's; `hub` is the hub processes' sum."""
    per = {name: round((after[name] - before.get(name, 0)) / claims, 1) for name in after}
    sandbox = per.pop(SANDBOX.name, 0.0)
    return {"hub": round(sum(per.values()), 1), "hub_by_process": per, "sandbox": sandbox}


@dataclass(frozen=True)
class _Mark:
    """Where a measured window starts."""

    infra: infra.InfraSnapshot
    cpu: dict[str, float]
    maintenance: int
    switches: dict[str, int]


@dataclass(frozen=True)
class Measured:
    """What a load runs against, and how to read what it cost."""

    stack: Stack
    database: str
    redis_url: str
    # Its ANALYZEs take transaction ids too: maintenance, not the claims' commits.
    vacuum: StandInAutovacuum | None = None
    # pg_stat_database commits the idle stack makes each second (its polls).
    idle_commits_per_s: float = 0.0

    def metrics_ports(self) -> dict[str, int]:
        """Each hub service's /metrics, by process name (the layout's processes)."""
        p = self.stack.ports
        return {
            s.name: getattr(p, f"{s.grpc_port_field}_metrics")
            for s in self.stack.services
            if s.grpc_port_field is not None
        }

    def _maintenance(self) -> int:
        return self.vacuum.transactions if self.vacuum else 0

    async def _mark(self) -> _Mark:
        return _Mark(
            await infra.snapshot(PG_ADMIN_URL, self.database, self.redis_url),
            cpu.snapshot(self.stack.pids()),
            self._maintenance(),
            cpu.switches_snapshot(self.stack.pids()),
        )

    async def _spent_since(self, mark: _Mark, load_cpu_s: float) -> tuple[dict[str, Any], int, int]:
        """CPU spent since `mark` (cpu_report), and the write transactions and
        the autovacuum stand-in's transactions in that time."""
        after = cpu.snapshot(self.stack.pids())
        maintenance = self._maintenance() - mark.maintenance
        infra_used = infra.used(
            mark.infra,
            await infra.snapshot(PG_ADMIN_URL, self.database, self.redis_url),
            self.vacuum.backend_pid if self.vacuum else None,
        )
        spent = cpu_report(cpu.used(mark.cpu, after), infra_used, load_cpu_s)
        return spent, int(infra_used["write_transactions"]), maintenance

    async def __call__(self, *load_args: str) -> dict[str, Any]:
        """One load run (a separate process) with the CPU each part of the stack
        used, PostgreSQL's write transactions and commits and the hub's gRPC calls."""
        rpcs_before = rpcs.scrape(self.metrics_ports())
        mark = await self._mark()
        result = await _child_json("bench.load", *load_args)
        result["cpu"], writes, maintenance = await self._spent_since(mark, result.pop("load_cpu_s", 0.0))
        switched = cpu.switches_snapshot(self.stack.pids())
        rpcs_after = rpcs.scrape(self.metrics_ports())
        result["autovacuum_stand_in_transactions"] = maintenance
        claims = max(int(result["claims"]), 1)
        result["per_claim"] = {
            "hub_cpu_ms": round(result["cpu"]["hub_s"] * 1000 / claims, 2),
            "postgres_write_transactions": round((writes - maintenance) / claims, 2),
            "postgres_commits": await self._commits_since(mark, claims),
            "rpcs": rpcs.used(rpcs_before, rpcs_after, claims),
            "context_switches": switches_per_claim(mark.switches, switched, claims),
        }
        return result

    async def _commits_since(self, mark: _Mark, claims: int) -> float:
        """pg_stat_database's commits per claim since `mark`: read once every
        backend has reported the load's, less what the idle stack and the
        autovacuum stand-in committed meanwhile."""
        await asyncio.sleep(STATS_REPORTED_S)
        after = await infra.commits(PG_ADMIN_URL, self.database)
        maintenance = self._maintenance() - mark.maintenance
        idle = self.idle_commits_per_s * STATS_REPORTED_S
        return round((after - mark.infra.commits - maintenance - idle) / claims, 2)

    async def measure_idle(self, window_s: float = IDLE_WINDOW_S) -> dict[str, Any]:
        """What the idle stack spends (its polls and timers) over `window_s`,
        once what came before has been reported: pg_stat_database commits and
        CPU seconds each second."""
        await asyncio.sleep(STATS_REPORTED_S)
        mark = await self._mark()
        await asyncio.sleep(window_s)
        spent, _, maintenance = await self._spent_since(mark, 0.0)
        commits = await infra.commits(PG_ADMIN_URL, self.database) - mark.infra.commits
        return {
            "seconds": window_s,
            "postgres_commits_per_s": round(max(commits - maintenance, 0) / window_s, 2),
            "hub_cpu_s_per_s": round(spent["hub_s"] / window_s, 4),
            "hub_by_process_s": spent["hub_by_process_s"],
            "sandbox_cpu_s_per_s": round(spent["sandbox_s"] / window_s, 4),
        }


async def bench_echo(echo_s: float, concurrency: int, paced_per_s: float | None = None) -> dict[str, Any]:
    """A bare grpc.aio echo: its requests/s and the CPU one request costs, server
    and client together, as the unit of cost. `paced_per_s`: sent at that rate
    (open loop) instead of `concurrency` calls in a closed loop."""
    port = free_port()
    echo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.echo_server", str(port), stdout=asyncio.subprocess.PIPE
    )
    load = (
        ("echo_paced", str(port), str(paced_per_s), str(echo_s))
        if paced_per_s is not None
        else ("echo", str(port), str(echo_s), str(concurrency))
    )
    try:
        assert echo.stdout is not None
        await echo.stdout.readline()
        server_before = cpu.cpu_seconds(echo.pid)
        result = await _child_json("bench.load", *load)
        server_s = cpu.cpu_seconds(echo.pid) - server_before
    finally:
        echo.terminate()
        await echo.wait()
    cpu_s = server_s + result.pop("load_cpu_s", 0.0)
    result["cpu_s"] = round(cpu_s, 2)
    result["cpu_us_per_request"] = round(cpu_s * 1e6 / max(int(result["requests"]), 1), 1)
    return result


async def bench_claims(
    total: int, concurrencies: list[int], echo_s: float, unloaded: int, isolation: int, open_s: float
) -> dict[str, Any]:
    name, database_url = await create_scratch_database(PG_ADMIN_URL, "iclaim_bench")
    redis_url = f"{REDIS_BASE_URL}/14"
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
            # One hospital drives the whole load: a limit it never reaches, but
            # one that is checked, as every production check takes a token.
            "ICLAIM_RATE_LIMIT_PER_S": "1000000",
        },
    )
    creds = state_dir / "credentials.json"
    await prepare(state_dir, Infra(database_url, redis_url, []), master_key, stack.gateway, creds)
    await stack.start()
    claims: dict[str, Any] = {"closed_loop": {}}
    # What autovacuum does on a running system (bench/autovacuum.py).
    vacuum = StandInAutovacuum(database_url)
    stood_in = await vacuum.start()
    measured = Measured(stack, name, redis_url, vacuum)
    try:
        # Warm-up: connections, caches, prepared statements.
        await _child_json("bench.load", "claims", str(creds), "50", "8", "warm")
        claims["idle"] = idle = await measured.measure_idle()
        measured = replace(measured, idle_commits_per_s=idle["postgres_commits_per_s"])
        echo_concurrency = max(concurrencies)
        for concurrency in concurrencies:
            n = unloaded if concurrency == 1 else total
            if n > 0:
                claims["closed_loop"][str(concurrency)] = await _beside_echo(
                    measured("claims", str(creds), str(n), str(concurrency), secrets.token_hex(3)),
                    echo_concurrency,
                )
        peak = max((r["claims_per_s"] for r in claims["closed_loop"].values()), default=0.0)
        # BENCH_OPEN_RATE: a fixed arrival rate instead, to compare trees at one load.
        fixed = float(os.environ.get("BENCH_OPEN_RATE", "0"))
        if open_s > 0 and (peak > 0 or fixed > 0):
            rate = fixed or OPEN_LOOP_SHARE * peak
            claims["open_loop"] = await _beside_echo(
                measured("open", str(creds), f"{rate:.2f}", str(open_s), secrets.token_hex(3)),
                echo_concurrency,
            )
            claims["open_loop"]["share_of_peak"] = round(rate / peak, 3) if peak else None
        if isolation > 0:
            claims["isolation"] = await bench_isolation(
                measured,
                creds,
                stack.admin_config,
                state_dir,
                isolation,
                ISOLATION_CONCURRENCY,
                secrets.token_hex(3),
            )
    finally:
        await vacuum.stop()
        await stack.stop()
        await drop_database(PG_ADMIN_URL, name)
        shutil.rmtree(state_dir, ignore_errors=True)
    claims["autovacuum_stand_in"] = {
        "ran": stood_in,
        "naptime_s": NAPTIME_S,
        "transactions": vacuum.transactions,
    }

    echo = await bench_echo(echo_s, max(concurrencies))
    claims["echo"] = echo
    paced_rate = paced_echo_rate(claims["closed_loop"], os.environ.get("BENCH_ECHO_PACED_RATE", ""))
    if paced_rate:
        claims["echo_paced"] = paced = await bench_echo(PACED_ECHO_S, 0, paced_per_s=paced_rate)
    for result in (*claims["closed_loop"].values(), claims.get("open_loop")):
        if result:
            if paced_rate:
                result["per_claim"]["echo_equivalents_vs_paced_echo"] = round(
                    result["per_claim"]["hub_cpu_ms"] * 1000 / max(paced["cpu_us_per_request"], 0.1), 1
                )
            result["ratio_to_echo"] = round(result["claims_per_s"] / echo["requests_per_s"], 3)
            # Cost per claim in echo-equivalents: hub CPU per claim / CPU per echo
            # request, the echo runs on either side of the phase (and the long one, apart).
            unit = result["echo_nearby"]["cpu_us_per_request"]
            result["per_claim"]["echo_equivalents"] = round(
                result["per_claim"]["hub_cpu_ms"] * 1000 / unit, 1
            )
            result["per_claim"]["echo_equivalents_vs_long_echo"] = round(
                result["per_claim"]["hub_cpu_ms"] * 1000 / max(echo["cpu_us_per_request"], 0.1), 1
            )
    return claims


def _fastest(closed_loop: dict[str, Any]) -> dict[str, Any] | None:
    return max(closed_loop.values(), key=lambda r: r["claims_per_s"], default=None)


def paced_echo_rate(closed_loop: dict[str, Any], override: str) -> float:
    """The echo's rate for the paced run: BENCH_ECHO_PACED_RATE, else the calls a
    second the busiest hub gRPC server took in the fastest closed-loop phase (0:
    no such phase, no paced run)."""
    if override:
        return float(override)
    fastest = _fastest(closed_loop)
    if fastest is None:
        return 0.0
    per_claim = fastest["per_claim"]["rpcs"]["by_process_per_claim"].values()
    return round(float(max(per_claim, default=0.0)) * float(fastest["claims_per_s"]), 1)


def nearby_unit(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The phase's unit of cost from the short echo runs on either side of it:
    their mean, and each apart, since the machine's speed drifts within minutes
    (the README's runs: the same tree 30 % apart an hour later)."""
    before_us = max(before["cpu_us_per_request"], 0.1)
    after_us = max(after["cpu_us_per_request"], 0.1)
    return {
        "requests_per_s": round((before["requests_per_s"] + after["requests_per_s"]) / 2, 1),
        "cpu_us_per_request": round((before_us + after_us) / 2, 1),
        "before_us": before_us,
        "after_us": after_us,
    }


async def _beside_echo(phase: Awaitable[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """The phase's result, with short echo runs measured just before and just
    after it (the stack idle meanwhile) as its unit of cost."""
    before = await bench_echo(NEARBY_ECHO_S, concurrency)
    result = await phase
    after = await bench_echo(NEARBY_ECHO_S, concurrency)
    result["echo_nearby"] = nearby_unit(before, after)
    return result


def _busy(phase: dict[str, Any]) -> str:
    """How busy the machine's CPUs were while the load ran, in percent."""
    shares = phase.get("machine")
    return f"{round(shares['busy'] * 100)}%" if shares else "-"


OPEN_LOOP_P99_TARGET_MS = 150.0  # issue 13's open-loop target


def open_loop_seconds(seconds: list[dict[str, Any]]) -> str:
    """Whether the open loop's tail is a few slow seconds or the whole run."""
    over = [s for s in seconds if s["p99_ms"] > OPEN_LOOP_P99_TARGET_MS]
    worst = max(seconds, key=lambda s: s["p99_ms"])
    return (
        f"open loop by second of sending: {len(over)} of {len(seconds)} seconds with p99 over"
        f" {OPEN_LOOP_P99_TARGET_MS:.0f} ms; worst second {worst['second']}: p99 {worst['p99_ms']} ms,"
        f" p50 {worst['p50_ms']} ms"
    )


def table(claims: dict[str, Any]) -> str:
    """One line per phase: what a reader compares between runs."""
    head = (
        f"{'phase':<18}{'claims/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'hub ms/claim':>13}"
        f"{'echo-eq':>9}{'echo µs':>9}{'PG writes':>10}{'PG commits':>11}{'int. RPCs':>10}"
        f"{'sandbox s':>10}{'switches':>9}{'busy':>6}"
    )
    rows = [head]
    phases = [(f"closed {c}", r) for c, r in claims.get("closed_loop", {}).items()]
    if "open_loop" in claims:
        phases.append((f"open {claims['open_loop']['target_per_s']}/s", claims["open_loop"]))
    for label, key in (("without stuck", "without_stuck"), ("with stuck", "with_stuck")):
        if key in claims.get("isolation", {}):
            phases.append((label, claims["isolation"][key]))
    for label, r in phases:
        pc = r["per_claim"]
        unit = r.get("echo_nearby", {}).get("cpu_us_per_request", "-")
        rows.append(
            f"{label:<18}{r['claims_per_s']:>9}{r['p50_ms']!s:>9}{r['p99_ms']!s:>9}{pc['hub_cpu_ms']:>13}"
            f"{pc.get('echo_equivalents', '-')!s:>9}{unit!s:>9}"
            f"{pc['postgres_write_transactions']:>10}{pc.get('postgres_commits', '-')!s:>11}"
            f"{pc['rpcs']['internal_per_claim']:>10}{r['cpu']['sandbox_s']:>10}"
            f"{pc.get('context_switches', {}).get('hub', '-')!s:>9}{_busy(r):>6}"
        )
    drift = [
        f"{label} {r['echo_nearby']['before_us']:.0f}→{r['echo_nearby']['after_us']:.0f}"
        for label, r in phases
        if "before_us" in r.get("echo_nearby", {})
    ]
    if drift:
        rows.append("echo µs before→after each phase: " + ", ".join(drift))
    seconds = claims.get("open_loop", {}).get("by_second")
    if seconds:
        rows.append(open_loop_seconds(seconds))
    idle = claims.get("idle")
    if idle:
        rows.append(
            f"idle stack: {idle['hub_cpu_s_per_s']} CPU-s/s of hub, "
            f"{idle['postgres_commits_per_s']} PG commits/s (taken out of 'PG commits' above)"
        )
    echo = claims.get("echo")
    if echo:
        rows.append(
            f"echo: {echo['requests_per_s']} requests/s, {echo['cpu_us_per_request']} µs CPU per request"
            " (echo-eq. uses the short echo runs before and after each phase, their mean: 'echo µs')"
        )
    paced = claims.get("echo_paced")
    if paced:
        top = _fastest(claims.get("closed_loop", {}))
        at_peak = top["per_claim"].get("echo_equivalents_vs_paced_echo", "-") if top else "-"
        rows.append(
            f"echo paced at {paced['target_per_s']}/s (the busiest hub server's call rate at the"
            f" peak): {paced['cpu_us_per_request']} µs CPU per request;"
            f" the peak's hub cost = {at_peak} of those"
        )
    return "\n".join(rows)


async def main() -> None:
    skip = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
    results: dict[str, Any] = {"machine": machine()}
    if "claims" not in skip:
        results["claims"] = await bench_claims(
            int(os.environ.get("BENCH_CLAIMS", "2000")),
            [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,8,64").split(",") if c],
            float(os.environ.get("BENCH_ECHO_S", "10")),
            int(os.environ.get("BENCH_UNLOADED_CLAIMS", "300")),
            int(os.environ.get("BENCH_ISOLATION_CLAIMS", "300")),
            float(os.environ.get("BENCH_OPEN_S", "20")),
        )
        print("claims:", json.dumps(results["claims"]), flush=True)
        print(table(results["claims"]), flush=True)
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
