"""Load generators, run as their own process so they do not share the
services' CPU accounting: sealed claims through Envoy, or bare echo calls."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import grpc

from bench.echo_server import METHOD
from iclaim.client.credentials import load_dev_credentials
from iclaim.client.hospital import HospitalClient
from iclaim.fhir.claim import synthetic_claim
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


async def claims_load(credentials: Path, total: int, concurrency: int, run_id: str) -> dict:
    creds = load_dev_credentials(path=credentials)
    # Sandbox insurers of every delivery mode (grpc, webhook, pull in turn down the directory).
    insurers = ["AIA", "MTL", "TLI", "OLI", "BLA", "FWD", "AZAY", "KTAL", "PRU", "TSLI"]
    async with HospitalClient(creds) as client:
        modes = {i.code: mode_name(i) for i in await client.list_insurers()}
        work = []
        for n in range(total):
            insurer = insurers[n % len(insurers)]
            ref = f"BENCH-{run_id}-{n}"
            amount = 10_000 + n
            body = synthetic_claim(creds.code, insurer, ref, f"POL-{n}", amount, patient_name="Bench Patient")
            envelope = await client.seal_claim(
                body, insurer_code=insurer, claim_ref=ref, amount_satang=amount
            )
            work.append((insurer, ref, amount, envelope))
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

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
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
        # This load generator's own CPU (it is not part of the stack).
        "load_cpu_s": round(time.process_time(), 2),
    }


async def echo_load(port: int, seconds: float, concurrency: int) -> dict:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        payload = b"x" * 600  # about a SubmitClaim's size
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await call(payload, timeout=5)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"requests": done, "seconds": round(elapsed, 3), "requests_per_s": round(done / elapsed, 1)}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "claims":
        result = asyncio.run(claims_load(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
    else:
        result = asyncio.run(echo_load(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))
    print(json.dumps(result))
