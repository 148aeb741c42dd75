"""Load generators, run as their own process so they do not share the
services' CPU accounting: sealed claims through Envoy, or bare echo calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from bench.cpu import machine_shares, machine_ticks
from bench.echo_server import METHOD
from iclaim.client.credentials import load_dev_credentials
from iclaim.client.hospital import HospitalClient
from iclaim.fhir.claim import synthetic_claim
from iclaim.progress import progress
from iclaim.v1 import claim_service_pb2 as pb


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def mode_name(insurer: pb.Insurer) -> str:
    if insurer.delivery == pb.DELIVERY_MODE_UNSPECIFIED:
        return "unknown"
    return pb.DeliveryMode.Name(insurer.delivery).removeprefix("DELIVERY_MODE_").lower()


def latency_summary(latencies: list[float]) -> dict[str, float | int]:
    if not latencies:
        return {"claims": 0}
    return {
        "claims": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


def by_second(samples: list[tuple[float, float]]) -> list[dict[str, float | int]]:
    """Open-loop latencies (scheduled send time from the start, latency), one
    summary per second of sending: a queue that builds over the run and a
    stall of a second or two give the same p99, and this tells them apart."""
    buckets: dict[int, list[float]] = {}
    for at, latency in samples:
        buckets.setdefault(int(at), []).append(latency)
    return [
        {"second": s, **latency_summary(buckets[s]), "max_ms": round(max(buckets[s]) * 1000, 1)}
        for s in sorted(buckets)
    ]


STUCK_EVERY_S = 0.05  # claims to a never-answering insurer, beside the measured ones


def _own_cpu(started_cpu_s: float, sealed_cpu_s: float | None = None) -> dict[str, float]:
    """This load generator's CPU (it is not part of the stack) from
    `started_cpu_s` on, apart from what it spent before: starting Python and
    importing gRPC take about 0.4 s here, 7 % of a 3 s echo run's CPU, which
    would inflate the echo unit and flatter every echo-equivalent. Claims
    sealed ahead of the load (until `sealed_cpu_s`) are kept apart too: the
    hospital's share of a claim, spent before the timed part, is 0.8-1.2 ms a
    claim here, more than the load itself costs at 64 in flight."""
    now = time.process_time()
    load_from_s = started_cpu_s if sealed_cpu_s is None else sealed_cpu_s
    spent = {"load_cpu_s": round(now - load_from_s, 2), "start_up_cpu_s": round(started_cpu_s, 2)}
    if sealed_cpu_s is not None:
        spent["sealing_cpu_s"] = round(sealed_cpu_s - started_cpu_s, 2)
    return spent


async def _flood(
    client: HospitalClient, hospital: str, insurer: str, run_id: str, stop: asyncio.Event
) -> int:
    """Submits claims to `insurer` without waiting for decisions until `stop`;
    returns how many. They only fill its lane: none is ever decided."""
    sent = 0
    while not stop.is_set():
        ref = f"STUCK-{run_id}-{sent}"
        body = synthetic_claim(hospital, insurer, ref, f"POL-S{sent}", 5_000, patient_name="Bench Patient")
        envelope = await client.seal_claim(body, insurer_code=insurer, claim_ref=ref, amount_satang=5_000)
        await client.submit_claim(
            b"",
            insurer_code=insurer,
            claim_ref=ref,
            amount_satang=5_000,
            decision_timeout_s=0,
            envelope=envelope,
        )
        sent += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STUCK_EVERY_S)
    return sent


# Sandbox insurers of every delivery mode (grpc, webhook, pull in turn down the directory).
INSURERS = ("AIA", "MTL", "TLI", "OLI", "BLA", "FWD", "AZAY", "KTAL", "PRU", "TSLI")


async def _sealed(
    client: HospitalClient, hospital: str, total: int, run_id: str
) -> list[tuple[str, str, int, str]]:
    """`total` claims sealed ahead of the timed part: (insurer, claim_ref, amount, envelope)."""
    work = []
    # Progress on stderr (stdout carries the result): a bar on a terminal, else lines.
    with progress(f"sealing {run_id}", total) as sealing:
        for n in range(total):
            insurer = INSURERS[n % len(INSURERS)]
            ref = f"BENCH-{run_id}-{n}"
            amount = 10_000 + n
            body = synthetic_claim(hospital, insurer, ref, f"POL-{n}", amount, patient_name="Bench Patient")
            envelope = await client.seal_claim(
                body, insurer_code=insurer, claim_ref=ref, amount_satang=amount
            )
            work.append((insurer, ref, amount, envelope))
            sealing.advance()
    return work


async def claims_load(
    credentials: Path, total: int, concurrency: int, run_id: str, stuck: str | None = None
) -> dict[str, Any]:
    creds = load_dev_credentials(path=credentials)
    async with HospitalClient(creds) as client:
        modes = {i.code: mode_name(i) for i in await client.list_insurers()}
        started_cpu_s = time.process_time()  # start-up and connecting are not the load's
        work = await _sealed(client, creds.code, total, run_id)
        sealed_cpu_s = time.process_time()
        latencies: list[float] = []
        by_mode: dict[str, list[float]] = {}
        undecided = 0
        queue: asyncio.Queue[tuple[str, str, int, str]] = asyncio.Queue()
        for item in work:
            queue.put_nowait(item)

        async def worker() -> None:
            nonlocal undecided
            while not queue.empty():
                insurer, ref, amount, envelope = queue.get_nowait()
                start = time.perf_counter()
                claim = await client.submit_claim(
                    b"",
                    insurer_code=insurer,
                    claim_ref=ref,
                    amount_satang=amount,
                    decision_timeout_s=10,
                    envelope=envelope,
                )
                if claim.state == pb.CLAIM_STATE_APPROVED:
                    latencies.append(time.perf_counter() - start)
                    by_mode.setdefault(modes.get(insurer, "unknown"), []).append(latencies[-1])
                else:
                    undecided += 1
                submitted.advance()

        stop = asyncio.Event()
        flood = asyncio.create_task(_flood(client, creds.code, stuck, run_id, stop)) if stuck else None
        if flood is not None:
            await asyncio.sleep(2.0)  # let the stuck lane fill its in-flight cap first
        with progress(f"claims {run_id}", total) as submitted:
            start, ticks = time.perf_counter(), machine_ticks()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed, machine = time.perf_counter() - start, machine_shares(ticks, machine_ticks())
        stop.set()
        stuck_sent = await flood if flood is not None else 0
    return {
        "claims": total,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "claims_per_s": round(total / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        "undecided": undecided,
        "by_mode": {mode: latency_summary(values) for mode, values in sorted(by_mode.items())},
        "stuck_claims": stuck_sent,
        "machine": machine,
        **_own_cpu(started_cpu_s, sealed_cpu_s),
    }


async def paced(
    rate: float,
    count: int,
    send: Callable[[int, float], Coroutine[Any, Any, None]],
    sent: Callable[[], None] = lambda: None,
) -> int:
    """Starts `send(n, scheduled)` for n in range(count), `rate` a second from now,
    each at its scheduled time whatever the answers (open loop), and waits for all.
    Returns how many started late: this process fell behind its own schedule."""
    tasks: list[asyncio.Task[None]] = []
    late = 0
    start = time.perf_counter()
    for n in range(count):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01:
            late += 1
        tasks.append(asyncio.create_task(send(n, scheduled)))
        sent()
    await asyncio.gather(*tasks)
    return late


async def open_load(credentials: Path, rate: float, seconds: float, run_id: str) -> dict[str, Any]:
    """Open loop: claims sent at a fixed rate whatever the answers, each
    latency measured from its scheduled send time, so a server that falls
    behind shows its queue instead of slowing the sender down."""
    creds = load_dev_credentials(path=credentials)
    total = max(1, int(rate * seconds))
    async with HospitalClient(creds) as client:
        modes = {i.code: mode_name(i) for i in await client.list_insurers()}
        started_cpu_s = time.process_time()
        work = await _sealed(client, creds.code, total, run_id)
        sealed_cpu_s = time.process_time()
        latencies: list[float] = []
        by_mode: dict[str, list[float]] = {}
        timeline: list[tuple[float, float]] = []
        undecided = 0

        async def one(scheduled: float, item: tuple[str, str, int, str]) -> None:
            nonlocal undecided
            insurer, ref, amount, envelope = item
            claim = await client.submit_claim(
                b"", insurer_code=insurer, claim_ref=ref, amount_satang=amount,
                decision_timeout_s=10, envelope=envelope,
            )  # fmt: skip
            if claim.state == pb.CLAIM_STATE_APPROVED:
                latencies.append(time.perf_counter() - scheduled)
                by_mode.setdefault(modes.get(insurer, "unknown"), []).append(latencies[-1])
                timeline.append((scheduled - start, latencies[-1]))
            else:
                undecided += 1

        start, ticks = time.perf_counter(), machine_ticks()
        with progress(f"open loop {run_id}", total) as sent:
            late_sends = await paced(rate, len(work), lambda n, at: one(at, work[n]), sent.advance)
        elapsed, machine = time.perf_counter() - start, machine_shares(ticks, machine_ticks())
    return {
        "claims": total,
        "target_per_s": round(rate, 1),
        "seconds": round(elapsed, 3),
        "claims_per_s": round(total / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
        "undecided": undecided,
        "by_mode": {mode: latency_summary(values) for mode, values in sorted(by_mode.items())},
        "by_second": by_second(timeline),
        "late_sends": late_sends,
        "machine": machine,
        **_own_cpu(started_cpu_s, sealed_cpu_s),
    }


async def echo_load(port: int, seconds: float, concurrency: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        payload = b"x" * 600  # about a SubmitClaim's size
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await call(payload, timeout=5)
                done += 1
                calls.advance()

        with progress("echo", None) as calls:
            start, started_cpu_s = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
    return {
        "requests": done,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(done / elapsed, 1),
        **_own_cpu(started_cpu_s),
    }


async def echo_paced_load(port: int, rate: float, seconds: float) -> dict[str, Any]:
    """Echo calls sent at `rate` a second whatever the answers (open loop): what
    one call costs at a hub process's own rate, where calls seldom share a
    wakeup of the server's threads, unlike the closed loop's thousands a second."""
    total = max(1, int(rate * seconds))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        payload = b"x" * 600

        async def one(n: int, scheduled: float) -> None:
            await call(payload, timeout=5)

        start, started_cpu_s = time.perf_counter(), time.process_time()
        late_sends = await paced(rate, total, one)
        elapsed = time.perf_counter() - start
    return {
        "requests": total,
        "target_per_s": round(rate, 1),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(total / elapsed, 1),
        "late_sends": late_sends,
        **_own_cpu(started_cpu_s),
    }


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "open":
        result = asyncio.run(
            open_load(Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
        )
    elif mode == "claims":
        stuck = sys.argv[6] if len(sys.argv) > 6 else None
        result = asyncio.run(
            claims_load(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], stuck)
        )
    elif mode == "echo_paced":
        result = asyncio.run(echo_paced_load(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))
    else:
        result = asyncio.run(echo_load(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))
    print(json.dumps(result))
